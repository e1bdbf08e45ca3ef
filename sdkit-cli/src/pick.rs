//! `sdkit pick`: which instances a balancer of sd-lb picks, and how often.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use sdkit::lb::{Balancer, ConsistentHash, P2c, Random, Request, RoundRobin, Weighted};
use sdkit::{FixedEndpointer, InstanceSet};
use serde_json::{json, Value};

use crate::cli::BalancerKind;
use crate::failure::Failure;
use crate::output::{self, styled};

/// How many picks are shown in order.
const SHOWN: usize = 20;

/// The result of `n` picks over a set of instances.
#[derive(Debug, PartialEq, Eq)]
pub struct Picks {
    /// The index of each of the first [`SHOWN`] picks.
    pub sequence: Vec<usize>,
    /// How often each instance (by index in the set) was picked.
    pub counts: Vec<u64>,
}

/// Refuses option combinations that mean nothing: `hash` needs `--key`, only `hash` takes
/// one, only `random` and `p2c` take `--seed`.
pub fn check_options(
    kind: BalancerKind,
    key: Option<&str>,
    seed: Option<u64>,
) -> Result<(), Failure> {
    match (kind, key) {
        (BalancerKind::Hash, None) => return Err(Failure::usage(
            "--balancer hash needs --key K (use {} in K for the pick number, e.g. --key 'user-{}')",
        )),
        (k, Some(_)) if k != BalancerKind::Hash => {
            return Err(Failure::usage(format!(
                "--key is for --balancer hash only, not {}",
                k.name()
            )))
        }
        _ => {}
    }
    if seed.is_some() && !matches!(kind, BalancerKind::Random | BalancerKind::P2c) {
        return Err(Failure::usage(format!(
            "--seed is for --balancer random or p2c only, not {}",
            kind.name()
        )));
    }
    Ok(())
}

/// Picks `n` times from `set` with `kind`. `key` is required for `hash` (with `{}` replaced
/// by the pick number) and refused for the others.
pub fn simulate(
    set: &InstanceSet,
    kind: BalancerKind,
    key: Option<&str>,
    n: u32,
    seed: Option<u64>,
) -> Result<Picks, Failure> {
    check_options(kind, key, seed)?;
    // The endpoint value is the instance's index in the set (the set is sorted, and so is
    // the endpointer: the indexes agree).
    let endpointer = Arc::new(FixedEndpointer::new(
        set.iter().cloned().enumerate().map(|(i, inst)| (inst, i)),
    ));
    let balancer: Box<dyn Balancer<usize>> = match kind {
        BalancerKind::Rr => Box::new(RoundRobin::new(endpointer)),
        BalancerKind::Random => match seed {
            Some(s) => Box::new(Random::with_seed(endpointer, s)),
            None => Box::new(Random::new(endpointer)),
        },
        // Built at construction from the fixed set: every pick uses the finished schedule.
        BalancerKind::Weighted => Box::new(Weighted::new(endpointer)),
        BalancerKind::P2c => {
            let p = P2c::pending_requests(endpointer);
            Box::new(match seed {
                Some(s) => p.seed(s),
                None => p,
            })
        }
        BalancerKind::Hash => Box::new(ConsistentHash::new(endpointer)),
    };
    let mut picks = Picks {
        sequence: Vec::with_capacity(SHOWN.min(n as usize)),
        counts: vec![0; set.len()],
    };
    for round in 0..n {
        let request = match key {
            Some(k) => Request::new().key_of(k.replace("{}", &round.to_string()).as_str()),
            None => Request::new(),
        };
        let picked = balancer
            .pick_with(&request)
            .map_err(|e| Failure::runtime(format!("the {} balancer failed: {e}", kind.name())))?;
        let index = **picked.endpoint();
        // Count it as a request that finished at once (P2C's load stays at zero).
        drop(picked.into_endpoint());
        picks.counts[index] += 1;
        if picks.sequence.len() < SHOWN {
            picks.sequence.push(index);
        }
    }
    Ok(picks)
}

/// Prints the picks.
pub fn print(
    set: &InstanceSet,
    service: &str,
    kind: BalancerKind,
    key: Option<&str>,
    n: u32,
    picks: &Picks,
    as_json: bool,
) -> Result<ExitCode, Failure> {
    let share = |c: u64| c as f64 / n as f64;
    if as_json {
        let distribution: Vec<Value> = set
            .iter()
            .zip(&picks.counts)
            .map(|(i, &c)| json!({"instance": output::instance_json(i), "picks": c, "share": share(c)}))
            .collect();
        let sequence: Vec<&str> = picks.sequence.iter().map(|&i| set[i].addr()).collect();
        output::print_json(&json!({
            "service": service,
            "balancer": kind.name(),
            "key": key,
            "picks": n,
            "sequence": sequence,
            "distribution": distribution,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(vec!["ID", "ADDRESS", "WEIGHT", "HEALTH", "PICKS", "SHARE"]);
    for (i, &c) in set.iter().zip(&picks.counts) {
        table.add_row(vec![
            i.id().to_string(),
            i.addr().to_string(),
            i.weight().to_string(),
            i.health().as_str().to_string(),
            c.to_string(),
            format!("{:.1}%", share(c) * 100.0),
        ]);
    }
    let first: Vec<&str> = picks.sequence.iter().map(|&i| set[i].addr()).collect();
    let mut out = anstream::stdout().lock();
    writeln!(
        out,
        "{} {service}: {n} pick{} with {}{}",
        styled(output::BOLD, "pick"),
        if n == 1 { "" } else { "s" },
        kind.name(),
        key.map(|k| format!(" (key {k:?})")).unwrap_or_default()
    )?;
    writeln!(
        out,
        "{} {}{}",
        styled(output::DIM, "first picks:"),
        first.join(" "),
        if n as usize > SHOWN { " ..." } else { "" }
    )?;
    writeln!(out, "{}", output::table_text(&table))?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdkit::{Health, Instance};

    fn set() -> InstanceSet {
        InstanceSet::new(vec![
            Instance::builder("10.0.0.1", 80).weight(3).build(),
            Instance::builder("10.0.0.2", 80).weight(1).build(),
        ])
    }

    #[test]
    fn round_robin_alternates_and_weighted_follows_weights() {
        let p = simulate(&set(), BalancerKind::Rr, None, 4, None).unwrap();
        assert_eq!(p.sequence, [0, 1, 0, 1]);
        assert_eq!(p.counts, [2, 2]);
        let p = simulate(&set(), BalancerKind::Weighted, None, 400, None).unwrap();
        assert_eq!(p.counts, [300, 100]);
    }

    #[test]
    fn hash_keeps_a_key_on_one_instance_and_spreads_many() {
        let p = simulate(&set(), BalancerKind::Hash, Some("user-42"), 50, None).unwrap();
        assert!(p.counts.contains(&50), "{:?}", p.counts);
        // Weighted Maglev: the weight-3 instance owns about three quarters of the keys
        // (750 ± 5σ, σ ≈ 14).
        let p = simulate(&set(), BalancerKind::Hash, Some("user-{}"), 1000, None).unwrap();
        assert!((680..=820).contains(&p.counts[0]), "{:?}", p.counts);
    }

    #[test]
    fn seeded_random_and_p2c_repeat() {
        for kind in [BalancerKind::Random, BalancerKind::P2c] {
            let a = simulate(&set(), kind, None, 200, Some(7)).unwrap();
            let b = simulate(&set(), kind, None, 200, Some(7)).unwrap();
            assert_eq!(a, b);
            assert!(a.counts.iter().all(|&c| c > 50), "{kind:?}: {:?}", a.counts);
        }
    }

    #[test]
    fn passing_instances_are_preferred() {
        let set = InstanceSet::new(vec![
            Instance::new("10.0.0.1", 80),
            Instance::builder("10.0.0.2", 80)
                .health(Health::Critical)
                .build(),
        ]);
        let p = simulate(&set, BalancerKind::Rr, None, 10, None).unwrap();
        assert_eq!(p.counts, [10, 0]);
    }

    #[test]
    fn key_and_seed_only_where_they_mean_something() {
        let e = simulate(&set(), BalancerKind::Hash, None, 1, None).unwrap_err();
        assert!(e.to_string().contains("needs --key"), "{e}");
        let e = simulate(&set(), BalancerKind::Rr, Some("k"), 1, None).unwrap_err();
        assert!(
            e.to_string().contains("--key is for --balancer hash"),
            "{e}"
        );
        let e = simulate(&set(), BalancerKind::Weighted, None, 1, Some(1)).unwrap_err();
        assert!(e.to_string().contains("--seed"), "{e}");
    }
}
