//! The scale sweeps of issue 17, each mirroring the case of the same name in
//! `bench/gokit/sweep.go`:
//!
//! - `updatescale`: the cost of one update as the set grows, N = 10 … 100 000
//!   ([`SWEEP`]): the endpointer step alone (`update_scale`, as `update`) and the whole path
//!   from the registry answer to the endpointer (`update_path_scale`, as `update_path`), one
//!   record per N. Fewer updates at large N ([`step_updates`], [`path_rounds`]: the same
//!   counts on the go-kit side) keep the sweep to seconds a side.
//!   `bench/compare.py` prints the per-instance cost (time ÷ N) under the table.
//! - `fanoutscale`: the `fanout` scenario at 10 000 instances (100 subscribers).

use super::{fanout, update};

/// The set sizes of the `updatescale` sweep.
pub const SWEEP: [usize; 5] = [10, 100, 1_000, 10_000, 100_000];

/// Timed updates of the endpointer step at `n` instances (before the `--quick` scale): the
/// same on the go-kit side (`stepUpdates`).
pub fn step_updates(n: usize) -> usize {
    (2_000_000 / n.max(1)).clamp(20, 2_000)
}

/// Timed updates of the whole path at `n` instances (before the `--quick` scale): the same
/// on the go-kit side (`pathRounds`).
pub fn path_rounds(n: usize) -> usize {
    (1_000_000 / n.max(1)).clamp(20, 1_000)
}

/// The `updatescale` sweep.
pub fn updates(scale: usize) -> Result<(), String> {
    for n in SWEEP {
        update::step_n("update_scale", n, step_updates(n) / scale + 10)?;
        update::path_n("update_path_scale", n, path_rounds(n) / scale + 5)?;
    }
    Ok(())
}

/// The `fanoutscale` scenario: 100 subscribers at 10 000 instances.
pub fn fanout(scale: usize) -> Result<(), String> {
    fanout::one(10_000, 100, 200 / scale + 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The go-kit side (`bench/gokit`, `TestScaleRoundsMatchRustSide`) checks the same figures.
    #[test]
    fn the_sweep_runs_the_go_sides_counts() {
        assert_eq!(SWEEP, [10, 100, 1_000, 10_000, 100_000]);
        let steps: Vec<usize> = SWEEP.iter().map(|&n| step_updates(n)).collect();
        assert_eq!(steps, [2_000, 2_000, 2_000, 200, 20]);
        let paths: Vec<usize> = SWEEP.iter().map(|&n| path_rounds(n)).collect();
        assert_eq!(paths, [1_000, 1_000, 1_000, 100, 20]);
    }
}
