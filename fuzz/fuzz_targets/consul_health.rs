//! Consul `/v1/health/service/<name>` bodies, decoded as `Client::health_service` does
//! (`sd_consul::fuzzing::health_body`: the body cap, the entry count bound, and
//! `entry_to_instance` per entry).
//!
//! Properties: no panic; bounded allocation (scripts/fuzz sets `-malloc_limit_mb`); at most
//! one entry per `MIN_ENTRY_BYTES` of the cap; every instance kept is usable (a host, a
//! port other than 0) and registrable again (`Registration::validate`); the skipped entries
//! are counted, with at most `MAX_SKIP_REASONS` reasons.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_consul::{MAX_SKIP_REASONS, MIN_ENTRY_BYTES, MIN_MAX_BODY};

fuzz_target!(|data: &[u8]| {
    // The smallest cap a client accepts: the entry bound is reached with small inputs.
    let max_body = MIN_MAX_BODY;
    let Ok((instances, skipped, reasons)) = sd_consul::fuzzing::health_body(data, max_body) else {
        return;
    };
    assert!(instances.len() + skipped <= (max_body / MIN_ENTRY_BYTES).max(1));
    assert!(reasons.len() <= MAX_SKIP_REASONS.min(skipped));
    for i in &instances {
        sdkit_fuzz::check_instance(i);
    }
});
