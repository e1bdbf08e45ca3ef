//! The scenarios, each mirroring the function of the same name in `bench/gokit/main.go`.

pub mod consulreq;
pub mod dnssrv;
pub mod eureka;
pub mod fanout;
pub mod lbextra;
pub mod memory;
pub mod pick;
pub mod registries;
pub mod scale;
pub mod sweep;
pub mod update;

use sd_core::{BoxError, Instance};

/// The host of instance `i`: `10.x.y.z`, as on the Go side.
pub fn host(i: usize) -> String {
    format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
}

/// `n` instances `10.x.y.z:8080`.
pub fn instances(n: usize) -> Vec<Instance> {
    (0..n).map(|i| Instance::new(host(i), 8080)).collect()
}

/// The factory: the endpoint holds its instance (the Go factory's closure captures the
/// instance string; a real one would hold a client).
pub fn factory(i: &Instance) -> Result<Instance, BoxError> {
    Ok(i.clone())
}

/// The median and the 99th percentile (nearest rank), as in the Go program.
pub fn percentiles(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[(q * (s.len() - 1) as f64 + 0.5) as usize];
    (at(0.50), at(0.99))
}

/// Emits the record of a propagation scenario: latencies and request times in ns.
pub fn emit_propagation(scenario: &'static str, lat: &[f64], req: &[f64]) {
    let (p50, p99) = percentiles(lat);
    let mut r = crate::Record::new(scenario, 1, 1);
    r.ops = Some(lat.len());
    r.ns_per_op = Some(p50);
    r.p50_ns = Some(p50);
    r.p99_ns = Some(p99);
    r.request_p50_ns = Some(percentiles(req).0);
    r.emit();
}

/// A current-thread tokio runtime (the endpointer spawns its follower task on it).
pub fn current_thread() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// The default multi-thread tokio runtime (what a service runs its clients on).
pub fn multi_thread() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// A service name unique to this run: `<prefix>-<pid>-<ns since the epoch>`.
pub fn unique_service(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_round_to_the_nearest_rank_like_the_go_side() {
        let v: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        // index round(q * (n - 1)): 0.5 * 199 = 99.5 -> 100 (value 101); 0.99 * 199 = 197.01 -> 197.
        assert_eq!(percentiles(&v), (101.0, 198.0));
        assert_eq!(percentiles(&[7.0]), (7.0, 7.0));
        assert_eq!(percentiles(&[]), (0.0, 0.0));
    }

    #[test]
    fn instances_use_the_go_sides_addresses() {
        let v = instances(258);
        assert_eq!(v[0].addr(), "10.0.0.0:8080");
        assert_eq!(v[257].addr(), "10.0.1.1:8080");
        assert_eq!(factory(&v[3]).unwrap().addr(), "10.0.0.3:8080");
    }
}
