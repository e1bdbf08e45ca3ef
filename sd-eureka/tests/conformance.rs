//! The shared conformance suite (sd-testkit) against the real Spring Cloud Netflix Eureka
//! server started by `scripts/registries`. Every behaviour is its own test:
//! `eureka::<behaviour>`.
//!
//! Poll 1 s, request timeout 20 s, TTL 30 s (lease 30 s, renewed every 10 s). The churn
//! behaviour keeps 1 000 registrations renewed: with a 2 s TTL that is 1 500 renewals a
//! second against a JVM that shares two cores with everything else, and every registration
//! or cancellation makes the server serialise the whole app again for the next poll (3 s
//! for 900 instances under a load average of 40, measured). Shorter leases then lapse under
//! load, and evictions and re-registrations keep the server busy. The server evicts an
//! instance about one lease plus its 1 s eviction interval after the last renewal
//! (measured: 2.2 s for a 2 s lease, see tests/server.rs), so 120 s is a generous expiry
//! deadline.

use std::sync::Arc;
use std::time::Duration;

use sd_testkit::conformance::Target;
use sd_testkit::Server;

mod common;

sd_testkit::conformance!(eureka, || async {
    let addr = sd_testkit::require(Server::Eureka)?;
    let url = common::url(&addr, "poll=1s&timeout=20s");
    let registry = sd_eureka::EurekaRegistry::from_url(&url).expect("eureka URL");
    Some(
        Target::new(Arc::new(registry))
            .server(Server::Eureka)
            .ttl(Duration::from_secs(30))
            .expiry_deadline(Duration::from_secs(120))
            .bad_entry(move |service: String| {
                let addr = addr.clone();
                async move {
                    // Port 0 cannot be dialled: the instancer must skip this entry alone.
                    common::register_unusable(&addr, &service, &format!("{service}-bad")).await
                }
            }),
    )
});
