//! Scenario 2: one instance changed in a set of 10 000, applied to the endpointer.
//!
//! `DefaultEndpointer::apply` runs the update on the caller's thread. The two sets alternate;
//! unchanged instances share their handles, as the `InstanceCache` arranges for every real
//! instancer (the go-kit side sends the same strings in fresh slices, as its cache does).

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use std::convert::Infallible;

use sd_core::{
    DefaultEndpointer, Endpointer, Event, Instance, InstanceCache, InstanceReuse, InstanceSet,
};

use super::{current_thread, factory, instances, percentiles};
use crate::{alloc, Record};

pub fn run(scale: usize) -> Result<(), String> {
    step_n("update", 10_000, 2000 / scale + 10)
}

/// The endpointer step for `n` instances, `updates` timed updates, emitted as `scenario`.
pub fn step_n(scenario: &'static str, n: usize, updates: usize) -> Result<(), String> {
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
    let mut r = Record::new(scenario, n, 1);
    r.ops = Some(updates);
    r.ns_per_op = Some(d.as_nanos() as f64 / updates as f64);
    r.allocs_per_op = (m1 - m0) as f64 / updates as f64;
    r.emit();
    Ok(())
}

/// Decodes a registry answer (SRV-like records: target and port, as go-kit's side gets them
/// from its lookup) as a backend does: each record through the watch's `InstanceReuse`,
/// keyed by the record's raw form (its fields' bytes), so an unchanged record gets the
/// previous answer's instance back and only a changed one is built; then the set, sorted
/// through the same `InstanceReuse` (its memory of the last answer's order: only the
/// changed record is compared), as sd-consul's `HealthSource` does.
pub fn decode(answer: &[(String, u16)], reuse: &mut InstanceReuse) -> InstanceSet {
    let mut v = decode_records(answer, reuse);
    reuse.sort(&mut v);
    InstanceSet::new(v)
}

/// The instances of [`decode`], in the answer's order.
fn decode_records(answer: &[(String, u16)], reuse: &mut InstanceReuse) -> Vec<Instance> {
    let mut raw = Vec::with_capacity(64);
    let v = answer
        .iter()
        .map(|(h, p)| {
            raw.clear();
            raw.extend_from_slice(&p.to_be_bytes());
            raw.extend_from_slice(h.as_bytes());
            let built = reuse.instance(&raw, || Ok::<_, Infallible>(Instance::new(h.as_str(), *p)));
            match built {
                Ok(i) => i,
                Err(never) => match never {},
            }
        })
        .collect();
    reuse.finish();
    v
}

/// Scenario 2b: the whole update path. One record changed in a registry answer of 10 000;
/// the time from the answer in hand to the endpointer serving the new set: the answer is
/// decoded as a backend does ([`decode`]: only the changed record is built), the
/// `InstanceCache` compares and publishes, and the endpointer (following the cache on its
/// own task) rebuilds and publishes its snapshot. A task waiting on `Endpointer::changes`
/// takes t1. Mirrors `updatePath` in bench/gokit.
pub fn run_path(scale: usize) -> Result<(), String> {
    path_n("update_path", 10_000, 100 / scale + 5)
}

/// The whole update path for `n` instances, `rounds` timed updates, emitted as `scenario`.
pub fn path_n(scenario: &'static str, n: usize, rounds: usize) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let _guard = rt.enter();
    let answer = |k: u16| -> Vec<(String, u16)> {
        let mut v: Vec<(String, u16)> = (0..n).map(|i| (super::host(i), 8080)).collect();
        v[n / 2].1 = 9000 + k;
        v
    };
    let answers = [answer(0), answer(1)];
    let cache = Arc::new(InstanceCache::new());
    let mut reuse = InstanceReuse::new();
    cache.update(Event::Instances(decode(&answers[0], &mut reuse)));
    let ep = DefaultEndpointer::new(&*cache, factory);

    let (done_tx, done_rx) = mpsc::channel::<Instant>();
    let mut changes = ep.changes();
    let watcher = rt.spawn(async move {
        while changes.changed().await {
            if done_tx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    let (go_tx, mut go_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let (t0_tx, t0_rx) = mpsc::channel::<Instant>();
    let publisher = {
        let cache = cache.clone();
        rt.spawn(async move {
            while let Some(k) = go_rx.recv().await {
                let t0 = Instant::now();
                cache.update(Event::Instances(decode(&answers[k], &mut reuse)));
                if t0_tx.send(t0).is_err() {
                    return;
                }
            }
        })
    };
    let timeout = Duration::from_secs(10);
    let mut lat = Vec::with_capacity(rounds);
    let mut m0 = 0;
    for r in 1..=rounds + 5 {
        if r == 6 {
            m0 = alloc::allocs();
        }
        go_tx
            .send(r % 2)
            .map_err(|_| "the publisher task ended".to_string())?;
        let t0 = t0_rx
            .recv_timeout(timeout)
            .map_err(|_| "the publisher did not publish within 10 s".to_string())?;
        let t1 = done_rx
            .recv_timeout(timeout)
            .map_err(|_| "the endpointer did not change within 10 s".to_string())?;
        let snap = ep.endpoints();
        let list = snap.get().map_err(|e| e.to_string())?;
        if list.len() != n || list.iter().all(|e| e.port() != 9000 + (r % 2) as u16) {
            return Err("the endpointer does not serve the new set".into());
        }
        drop(snap);
        if r > 5 {
            lat.push(t1.duration_since(t0).as_nanos() as f64);
        }
    }
    let m1 = alloc::allocs();
    drop(go_tx);
    watcher.abort();
    rt.block_on(async {
        let _ = publisher.await;
        ep.close().await;
    });
    let (p50, p99) = percentiles(&lat);
    let mut rec = Record::new(scenario, n, 1);
    rec.ops = Some(rounds);
    rec.ns_per_op = Some(p50);
    rec.p50_ns = Some(p50);
    rec.p99_ns = Some(p99);
    rec.allocs_per_op = (m1 - m0) as f64 / rounds as f64;
    rec.emit();
    Ok(())
}

/// Where the whole update path's time goes on the sdkit side (not part of the comparison
/// table): decoding the 10 000 records of a registry answer as [`decode`] does (through
/// the watch's `InstanceReuse`: one instance built, the others handed back), then
/// `InstanceReuse::sort` and `InstanceSet::new` (the order from the last answer's, the
/// order check and dedup), `InstanceCache::update` (the merge against
/// the previous set), dropping what the update replaced, and the endpointer's apply.
/// Medians over 50 updates, one change each, on one thread.
pub fn breakdown(scale: usize) -> Result<(), String> {
    let n = 10_000;
    let rounds = 50 / scale + 5;
    let rt = current_thread()?;
    let _guard = rt.enter();
    let answer = |k: u16| -> Vec<(String, u16)> {
        let mut v: Vec<(String, u16)> = (0..n).map(|i| (super::host(i), 8080)).collect();
        v[n / 2].1 = 9000 + k;
        v
    };
    let answers = [answer(0), answer(1)];
    let cache = InstanceCache::new();
    let mut reuse = InstanceReuse::new();
    cache.update(Event::Instances(decode(&answers[0], &mut reuse)));
    let ep = DefaultEndpointer::new(&cache, factory);
    let mut sub = cache.subscribe();
    let _ = sub.try_next();
    let mut parts: [Vec<f64>; 5] = Default::default();
    for r in 1..=rounds {
        let t0 = Instant::now();
        let mut v = decode_records(&answers[r % 2], &mut reuse);
        let t1 = Instant::now();
        reuse.sort(&mut v);
        let set = InstanceSet::new(v);
        let fresh = set.clone();
        let t2 = Instant::now();
        cache.update(Event::Instances(set));
        let t3 = Instant::now();
        drop(fresh);
        let t4 = Instant::now();
        let event = sub.try_next().ok_or("the cache did not publish")?;
        let t5 = Instant::now();
        ep.apply(event);
        let t6 = Instant::now();
        let spans = [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5];
        for (p, d) in parts.iter_mut().zip(spans) {
            p.push(d.as_nanos() as f64);
        }
    }
    let med = |v: &[f64]| percentiles(v).0;
    let line = serde_json::json!({
        "impl": "sdkit",
        "scenario": "update_path_breakdown",
        "n": n,
        "threads": 1,
        "decode_with_reuse_ns": med(&parts[0]),
        "instance_set_new_ns": med(&parts[1]),
        "cache_update_ns": med(&parts[2]),
        "drop_replaced_ns": med(&parts[3]),
        "endpointer_apply_ns": med(&parts[4]),
    });
    println!("{line}");
    Ok(())
}
