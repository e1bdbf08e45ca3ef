//! The Eureka backend's propagation delay against the real server (`SD_TEST_EUREKA`), read
//! back from sd-testkit's global recorder: a new instance's `lastUpdatedTimestamp` feeds
//! `sdkit_instancer_propagation_delay_seconds`; the first answer and a removal do not.

mod common;

use common::{registry, wait_for_set, BOUND};
use sd_core::{Instance, Instancer, Registrar, Registration, ServiceQuery};
use sd_testkit::recorded;
use sd_testkit::{require, shared, unique_name, Server};

const DELAY: &str = "sdkit_instancer_propagation_delay_seconds";

#[tokio::test]
async fn a_new_instance_records_its_propagation_delay() {
    recorded::install();
    let addr = require!(Server::Eureka);
    let _shared = shared(Server::Eureka);
    let registry = registry(&addr);
    let service = unique_name("eu-metric-delay");
    let target = format!("app {}", service.to_uppercase());
    let labels: &[(&str, &str)] = &[("backend", "eureka"), ("service", &target)];
    let first = registry
        .eureka_registrar(Registration::new(
            &service,
            Instance::new("127.0.0.1", 9081),
        ))
        .unwrap();
    first.register().await.unwrap();
    let instancer = registry
        .eureka_instancer(&ServiceQuery::new(&service))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "the first instance", |s| s.len() == 1).await;
    // (A sample from the first answer, recorded a moment after this, fails the count below.)
    assert!(
        recorded::histogram(DELAY, labels).is_empty(),
        "the first answer is no change"
    );
    let second = registry
        .eureka_registrar(Registration::new(
            &service,
            Instance::new("127.0.0.1", 9082),
        ))
        .unwrap();
    second.register().await.unwrap();
    wait_for_set(&mut sub, "the second instance", |s| s.len() == 2).await;
    let delays = recorded::wait_histogram(DELAY, labels, 1, BOUND).await;
    assert_eq!(delays.len(), 1, "{delays:?}");
    // Same machine, same clock: between zero and the bound (poll and response cache included).
    assert!(
        (0.0..BOUND.as_secs_f64()).contains(&delays[0]),
        "{delays:?}"
    );
    // A removal carries no time: nothing more is recorded.
    second.deregister().await.unwrap();
    wait_for_set(&mut sub, "the second instance gone", |s| s.len() == 1).await;
    // Once a later round has published, the removal's round has been recorded (or not).
    first.deregister().await.unwrap();
    wait_for_set(&mut sub, "all gone", |s| s.is_empty()).await;
    assert_eq!(recorded::histogram(DELAY, labels).len(), 1);
    instancer.stop().await;
}
