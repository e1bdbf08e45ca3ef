package main

import "testing"

// The services changed are the Rust side's (bench/rust/src/scenarios/scale.rs, picks).
func TestScalePicksMatchTheRustSide(t *testing.T) {
	want := []int{989, 574, 30, 260, 268}
	got := scalePicks(1000, 5)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if h := instanceHost(1, 2); h != "10.0.0.22" {
		t.Fatalf("instanceHost(1, 2) = %s, want 10.0.0.22", h)
	}
}
