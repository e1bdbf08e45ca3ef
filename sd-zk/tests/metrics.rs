//! The ZooKeeper backend's metrics against the real server (`SD_TEST_ZK`), read back from
//! sd-testkit's global recorder: a node created again counts as a re-registration, and a
//! new node's `mtime` feeds the propagation-delay histogram. Each test uses its own service
//! name, so they share the one recorder without seeing each other's series.

mod common;

use std::sync::Arc;

use common::{raw, registry, BOUND};
use sd_core::{Instance, Registrar, Registration};
use sd_testkit::recorded;
use sd_testkit::{require, shared, unique_name, Server};

const REREGISTRATIONS: &str = "sdkit_registrar_reregistrations_total";

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

/// A node created while the instancer watches records its propagation delay (its `mtime`
/// to our clock); the first read and a removal record none.
#[tokio::test]
async fn a_new_node_records_its_propagation_delay() {
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let registry = registry(&addr, "");
    let service = unique_name("zk-metric-delay");
    // Labelled with the service, not the watched directory.
    let labels: &[(&str, &str)] = &[("backend", "zk"), ("service", &service)];
    recorded::propagation_delay_scenario(Arc::new(registry), &service, labels, BOUND).await;
}
