//! The Eureka backend's propagation delay against the real server (`SD_TEST_EUREKA`), read
//! back from sd-testkit's global recorder: a new instance's `lastUpdatedTimestamp` feeds
//! `sdkit_instancer_propagation_delay_seconds`; the first answer and a removal do not.

mod common;

use std::sync::Arc;

use common::{registry, BOUND};
use sd_testkit::recorded;
use sd_testkit::{require, shared, unique_name, Server};

/// An instance registered while the instancer polls records its propagation delay (its
/// `lastUpdatedTimestamp` to our clock, poll and response cache included); the first answer
/// and a removal record none.
#[tokio::test]
async fn a_new_instance_records_its_propagation_delay() {
    let addr = require!(Server::Eureka);
    let _shared = shared(Server::Eureka);
    let service = unique_name("eu-metric-delay");
    // Labelled with the service as the user named it (not the app Eureka upper-cases).
    let labels: &[(&str, &str)] = &[("backend", "eureka"), ("service", &service)];
    recorded::propagation_delay_scenario(Arc::new(registry(&addr)), &service, labels, BOUND).await;
}
