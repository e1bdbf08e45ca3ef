//! Scenario 2: one instance changed in a set of 10 000, applied to the endpointer.
//!
//! `DefaultEndpointer::apply` runs the update on the caller's thread. The two sets alternate;
//! unchanged instances share their handles, as the `InstanceCache` arranges for every real
//! instancer (the go-kit side sends the same strings in fresh slices, as its cache does).

use std::time::Instant;

use sd_core::{DefaultEndpointer, Endpointer, Event, Instance, InstanceCache, InstanceSet};

use super::{current_thread, factory, instances};
use crate::{alloc, Record};

pub fn run(scale: usize) -> Result<(), String> {
    let n = 10_000;
    let updates = 2000 / scale + 10;
    let rt = current_thread()?;
    let _guard = rt.enter();
    let src = InstanceCache::new();
    let ep = DefaultEndpointer::new(&src, factory);
    let base = instances(n);
    let a = InstanceSet::new(base.clone());
    let mut changed = base;
    changed[n / 2] = Instance::new("192.168.0.1", 9);
    let b = InstanceSet::new(changed);
    ep.apply(Event::Instances(a.clone()));
    let step = |k: usize| {
        ep.apply(Event::Instances(if k % 2 == 0 {
            b.clone()
        } else {
            a.clone()
        }))
    };
    for k in 0..20 {
        step(k);
    }
    let m0 = alloc::allocs();
    let t0 = Instant::now();
    for k in 0..updates {
        step(k);
    }
    let d = t0.elapsed();
    let m1 = alloc::allocs();
    let snap = ep.endpoints();
    if snap.get().map(|l| l.len()).unwrap_or(0) != n {
        return Err("endpointer lost instances".into());
    }
    drop(snap);
    let mut r = Record::new("update", n, 1);
    r.ops = Some(updates);
    r.ns_per_op = Some(d.as_nanos() as f64 / updates as f64);
    r.allocs_per_op = (m1 - m0) as f64 / updates as f64;
    r.emit();
    Ok(())
}
