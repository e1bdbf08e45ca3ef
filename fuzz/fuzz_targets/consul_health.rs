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
use sd_core::Registration;

/// go-kit's plain form of the instance's address reads back as the same host and port.
fn plain_form_reads_back(i: &sd_core::Instance) {
    let back = sd_core::Instance::parse(i.addr())
        .unwrap_or_else(|e| panic!("the address of {i:?} does not parse back: {e}"));
    assert_eq!((back.host(), back.port()), (i.host(), i.port()), "{i:?}");
}

fuzz_target!(|data: &[u8]| {
    // The smallest cap a client accepts: the entry bound is reached with small inputs.
    let max_body = MIN_MAX_BODY;
    let Ok((instances, skipped, reasons)) = sd_consul::fuzzing::health_body(data, max_body) else {
        return;
    };
    assert!(instances.len() + skipped <= (max_body / MIN_ENTRY_BYTES).max(1));
    assert!(reasons.len() <= MAX_SKIP_REASONS.min(skipped));
    for i in &instances {
        assert!(!i.host().is_empty(), "instance without a host: {i:?}");
        assert_ne!(i.port(), 0, "instance with port 0: {i:?}");
        plain_form_reads_back(&i);
        Registration::new("svc", i.clone())
            .validate()
            .unwrap_or_else(|e| panic!("decoded {i:?} is not registrable: {e}"));
    }
});
