package main

// The scale sweeps of issue 17 (bench/rust/src/scenarios/sweep.rs is the Rust side):
// "updatescale" runs update (the endpointer step, as update_scale) and updatePath (the whole
// path, as update_path_scale) for every n of sweep; "fanoutscale" runs fanout at 10 000
// instances. Fewer updates at large n keep the sweep to seconds a side.

// sweep is the set sizes of the updatescale sweep.
var sweep = []int{10, 100, 1_000, 10_000, 100_000}

func clamp(v, lo, hi int) int {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}

// stepUpdates is the number of timed endpointer updates at n instances (Rust: step_updates).
func stepUpdates(n int) int { return clamp(2_000_000/max(n, 1), 20, 2_000) }

// pathRounds is the number of timed whole-path updates at n instances (Rust: path_rounds).
func pathRounds(n int) int { return clamp(1_000_000/max(n, 1), 20, 1_000) }
