//! The ZooKeeper backend's metrics against the real server (`SD_TEST_ZK`), read back from
//! sd-testkit's global recorder: a node created again counts as a re-registration, and a
//! new node's `mtime` feeds the propagation-delay histogram. Each test uses its own service
//! name, so they share the one recorder without seeing each other's series.

mod common;

use common::{raw, registry, wait_for_set, BOUND};
use sd_core::{Instance, Instancer, Registrar, Registration, ServiceQuery};
use sd_testkit::recorded;
use sd_testkit::{require, shared, unique_name, Server};

const REREGISTRATIONS: &str = "sdkit_registrar_reregistrations_total";
const DELAY: &str = "sdkit_instancer_propagation_delay_seconds";

/// Someone deletes the registrar's node: it is created again, and counted once.
#[tokio::test]
async fn a_recreated_node_counts_as_a_reregistration() {
    recorded::install();
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let registry = registry(&addr, "");
    let service = unique_name("zk-metric-rereg");
    let labels: &[(&str, &str)] = &[("backend", "zk"), ("service", &service)];
    let r = registry
        .zk_registrar(Registration::new(
            &service,
            Instance::new("127.0.0.1", 9061),
        ))
        .unwrap();
    r.register().await.unwrap();
    assert_eq!(
        recorded::counter(REREGISTRATIONS, labels),
        0,
        "registering is not re-registering"
    );
    let mut recreated = r.watch_recreations();
    raw(&addr)
        .await
        .delete(&r.node_path().unwrap(), None)
        .await
        .unwrap();
    tokio::time::timeout(BOUND, recreated.wait_for(|n| *n >= 1))
        .await
        .expect("re-created")
        .unwrap();
    assert_eq!(recorded::counter(REREGISTRATIONS, labels), 1);
    r.deregister().await.unwrap();
}

/// The first read records no delay (it finds registrations, not changes); a node created
/// while the instancer watches records one sample, its `mtime` to our clock: the same
/// machine, so between zero and the bound.
#[tokio::test]
async fn a_new_node_records_its_propagation_delay() {
    recorded::install();
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let registry = registry(&addr, "");
    let service = unique_name("zk-metric-delay");
    let dir = registry.client().service_dir(&service);
    let labels: &[(&str, &str)] = &[("backend", "zk"), ("service", &dir)];
    let first = registry
        .zk_registrar(Registration::new(
            &service,
            Instance::new("127.0.0.1", 9071),
        ))
        .unwrap();
    first.register().await.unwrap();
    let instancer = registry
        .zk_instancer(&ServiceQuery::new(&service))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "the first instance", |s| s.len() == 1).await;
    // (A sample from the first read, recorded a moment after this, fails the count below.)
    assert!(
        recorded::histogram(DELAY, labels).is_empty(),
        "the first read is no change"
    );
    let second = registry
        .zk_registrar(Registration::new(
            &service,
            Instance::new("127.0.0.1", 9072),
        ))
        .unwrap();
    second.register().await.unwrap();
    wait_for_set(&mut sub, "the second instance", |s| s.len() == 2).await;
    let delays = recorded::wait_histogram(DELAY, labels, 1, BOUND).await;
    assert_eq!(delays.len(), 1, "{delays:?}");
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
