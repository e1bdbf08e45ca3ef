package main

import (
	"encoding/json"
	"testing"
)

// The percentile rule is the Rust side's (bench/rust/src/scenarios/mod.rs).
func TestPercentilesNearestRank(t *testing.T) {
	v := make([]float64, 0, 200)
	for i := 200; i >= 1; i-- {
		v = append(v, float64(i))
	}
	if p50, p99 := percentiles(v); p50 != 101 || p99 != 198 {
		t.Fatalf("got p50=%v p99=%v, want 101 and 198", p50, p99)
	}
	if p50, p99 := percentiles(nil); p50 != 0 || p99 != 0 {
		t.Fatalf("empty: got %v %v", p50, p99)
	}
}

// The JSON line has the keys compare.py reads, named as on the Rust side.
func TestResultShape(t *testing.T) {
	b, err := json.Marshal(result{Impl: "gokit", Scenario: "pick", N: 10, Threads: 2, NsPerOp: 8.5})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"impl", "scenario", "n", "threads", "ns_per_op", "allocs_per_op"} {
		if _, ok := m[k]; !ok {
			t.Errorf("key %q missing in %s", k, b)
		}
	}
	if _, ok := m["skipped"]; ok {
		t.Errorf("unset optional field printed: %s", b)
	}
}

func TestAddrMatchesRustSide(t *testing.T) {
	if got := addr(257); got != "10.0.1.1:8080" {
		t.Fatalf("addr(257) = %q", got)
	}
}

// The sweep's counts are the Rust side's (sweep.rs, the_sweep_runs_the_go_sides_counts).
func TestScaleRoundsMatchRustSide(t *testing.T) {
	want := map[int][2]int{10: {2000, 1000}, 100: {2000, 1000}, 1000: {2000, 1000}, 10_000: {200, 100}, 100_000: {20, 20}}
	if len(sweep) != len(want) {
		t.Fatalf("sweep = %v", sweep)
	}
	for _, n := range sweep {
		if got := [2]int{stepUpdates(n), pathRounds(n)}; got != want[n] {
			t.Errorf("n=%d: got %v, want %v", n, got, want[n])
		}
	}
}
