//! The ZooKeeper backend against the real server started by `scripts/registries` (ZooKeeper
//! 3.8, `SD_TEST_ZK`). Every test uses its own service name; none disturbs the server, so
//! each takes `sd_testkit::shared(Server::Zk)` to wait while a fault test runs.

mod common;

use std::time::Duration;

use common::{by_id, expire_session, ids, raw, registry, wait_for_error, wait_for_set, BOUND};
use sd_core::{Error, Health, Instance, Instancer, Registrar, Registration, ServiceQuery};
use sd_testkit::{require, shared, unique_name, Server};
use zookeeper_client as zk;

fn reg(service: &str, port: u16, id: &str) -> Registration {
    Registration::new(
        service,
        Instance::builder("127.0.0.1", port)
            .id(id)
            .tag("blue")
            .meta("zone", "z1")
            .weight(3)
            .build(),
    )
}

#[tokio::test]
async fn register_discover_deregister_round_trips_the_payload() {
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let registry = registry(&addr, "");
    let service = unique_name("zk-basic");
    let r = registry.zk_registrar(reg(&service, 9001, "b1")).unwrap();
    r.register().await.unwrap();
    r.register().await.unwrap(); // idempotent: still one node
    let path = r.node_path().unwrap();
    let name = path.rsplit('/').next().unwrap();
    assert!(name.starts_with(r.node_prefix()), "{path}");
    assert_eq!(
        name.len(),
        r.node_prefix().len() + 10,
        "10-digit sequence: {path}"
    );
    assert_eq!(r.dir(), format!("/sdkit-tests/{service}"));

    let (instancer, mut sub) = common::watch(&registry, &service).await;
    let set = wait_for_set(&mut sub, "registered", |s| by_id(s, "b1").is_some()).await;
    assert_eq!(set.len(), 1, "{set:?}");
    let i = by_id(&set, "b1").unwrap();
    assert_eq!(i.addr(), "127.0.0.1:9001");
    assert_eq!(i.tags(), ["blue"]);
    assert_eq!(i.meta().get("zone").unwrap(), "z1");
    assert_eq!((i.weight(), i.health()), (3, Health::Passing));

    // The node is ephemeral and owned by the registry's session.
    let zk = raw(&addr).await;
    let (_, stat) = zk.get_data(&path).await.unwrap();
    assert_eq!(
        stat.ephemeral_owner,
        registry.client().current().await.unwrap().session_id().0
    );

    r.deregister().await.unwrap();
    r.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    assert_eq!(zk.check_stat(&path).await.unwrap(), None);
    instancer.stop().await;
}

/// ZK-6: go-kit deletes the service's parent node, which fails while any instance is
/// registered, so nothing is deregistered. Each registrar must delete its own node only.
#[tokio::test]
async fn zk6_two_registrars_each_deregister_only_their_own_node() {
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let registry = registry(&addr, "");
    let service = unique_name("zk-six");
    let a = registry.zk_registrar(reg(&service, 9011, "a")).unwrap();
    let b = registry.zk_registrar(reg(&service, 9012, "b")).unwrap();
    a.register().await.unwrap();
    b.register().await.unwrap();
    let (instancer, mut sub) = common::watch(&registry, &service).await;
    wait_for_set(&mut sub, "both", |s| s.len() == 2).await;

    let zk = raw(&addr).await;
    a.deregister().await.unwrap();
    let set = wait_for_set(&mut sub, "a gone", |s| s.len() == 1).await;
    assert_eq!(ids(&set), ["b"]);
    let children = zk.list_children(a.dir()).await.unwrap();
    assert_eq!(children.len(), 1, "{children:?}");
    assert!(children[0].starts_with(b.node_prefix()), "{children:?}");
    // The service directory stays (persistent), b's node with it.
    assert!(zk.check_stat(a.dir()).await.unwrap().is_some());

    b.deregister().await.unwrap();
    wait_for_set(&mut sub, "b gone", |s| s.is_empty()).await;
    instancer.stop().await;
}

/// ZK-10: go-kit's plain `host:port` data is read, with the znode name as id; undecodable
/// data is skipped alone; data changes are seen (go-kit's child watch misses them).
async fn gokit_data_bad_data_and_changes(extra: &str) {
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let registry = registry(&addr, extra);
    let service = unique_name("zk-plain");
    let dir = registry.client().service_dir(&service);
    let zk = raw(&addr).await;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    zk.mkdir(&dir, &persistent).await.unwrap();
    let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let (_, seq) = zk
        .create(&format!("{dir}/_c_0123-"), b"10.0.0.9:8080", &ephemeral)
        .await
        .unwrap();
    let gokit = format!("_c_0123-{seq}");
    zk.create(&format!("{dir}/junk"), b"not an instance", &persistent)
        .await
        .unwrap();

    let (instancer, mut sub) = common::watch(&registry, &service).await;
    let set = wait_for_set(&mut sub, "the go-kit node", |s| s.len() == 1).await;
    let i = by_id(&set, &gokit).unwrap();
    assert_eq!((i.addr(), i.weight()), ("10.0.0.9:8080", 1));

    let r = registry.zk_registrar(reg(&service, 9021, "rust")).unwrap();
    r.register().await.unwrap();
    wait_for_set(&mut sub, "both good ones", |s| s.len() == 2).await;

    // A data change is an update of the same node.
    zk.set_data(&format!("{dir}/{gokit}"), b"10.0.0.9:9090", None)
        .await
        .unwrap();
    wait_for_set(&mut sub, "changed data", |s| {
        by_id(s, &gokit).map(|i| i.port()) == Some(9090)
    })
    .await;
    // The bad node becomes good: it appears.
    zk.set_data(&format!("{dir}/junk"), b"10.0.0.10:1", None)
        .await
        .unwrap();
    wait_for_set(&mut sub, "repaired node", |s| by_id(s, "junk").is_some()).await;
    zk.delete(&format!("{dir}/junk"), None).await.unwrap();
    r.deregister().await.unwrap();
    let set = wait_for_set(&mut sub, "only go-kit's", |s| s.len() == 1).await;
    assert!(by_id(&set, &gokit).is_some());
    instancer.stop().await;
}

#[tokio::test]
async fn persistent_watch_reads_gokit_data_skips_bad_data_and_sees_data_changes() {
    gokit_data_bad_data_and_changes("").await;
}

#[tokio::test]
async fn oneshot_watch_reads_gokit_data_skips_bad_data_and_sees_data_changes() {
    gokit_data_bad_data_and_changes("&watch=oneshot").await;
}

/// Reading writes nothing (go-kit's instancer creates the path, ZK-8); `create_parents=true`
/// restores go-kit's behaviour. A missing directory is an empty set, and instances appear
/// once a registrar creates it.
#[tokio::test]
async fn zk8_the_read_path_writes_nothing_unless_asked() {
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let zk = raw(&addr).await;
    for (extra, created) in [
        ("", false),
        ("&watch=oneshot", false),
        ("&create_parents=true", true),
    ] {
        let registry = registry(&addr, extra);
        let service = unique_name("zk-read");
        let (instancer, mut sub) = common::watch(&registry, &service).await;
        wait_for_set(&mut sub, "empty", |s| s.is_empty()).await;
        let dir = registry.client().service_dir(&service);
        assert_eq!(
            zk.check_stat(&dir).await.unwrap().is_some(),
            created,
            "{extra}"
        );
        let r = registry.zk_registrar(reg(&service, 9031, "x")).unwrap();
        r.register().await.unwrap();
        wait_for_set(&mut sub, "appeared", |s| by_id(s, "x").is_some()).await;
        r.deregister().await.unwrap();
        wait_for_set(&mut sub, "gone", |s| s.is_empty()).await;
        instancer.stop().await;
    }
}

/// ZK-9: go-kit's instancer keeps the nil watch channel of a failed call and never wakes
/// again. Here the session is ended under the instancer (another connection joins and closes
/// it, which the server reports as an expiry): an error event, then it re-arms on a new
/// session and keeps seeing changes. The registrar re-creates its node on the new session.
async fn zk9_instancer_survives_an_error_mid_watch(extra: &str) {
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let proxy = sd_testkit::proxy::Proxy::start(&addr).await;
    let registry = common::registry_via(&proxy, extra);
    let service = unique_name("zk-nine");
    let r = registry.zk_registrar(reg(&service, 9041, "r1")).unwrap();
    r.register().await.unwrap();
    let before = r.node_path().unwrap();
    let (instancer, mut sub) = common::watch(&registry, &service).await;
    wait_for_set(&mut sub, "registered", |s| by_id(s, "r1").is_some()).await;
    let mut recreated = r.watch_recreations();
    let sessions = registry.client().sessions_opened();

    expire_session(&addr, &proxy, &registry).await;
    let err = wait_for_error(&mut sub, "session ended mid-watch").await;
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    tokio::time::timeout(BOUND, recreated.wait_for(|n| *n >= 1))
        .await
        .expect("the registrar re-created its node")
        .unwrap();
    assert_ne!(r.node_path().unwrap(), before);
    assert!(registry.client().sessions_opened() > sessions);
    wait_for_set(&mut sub, "recovered", |s| by_id(s, "r1").is_some()).await;

    // Still watching: a new registration and a deregistration are both seen.
    let r2 = registry.zk_registrar(reg(&service, 9042, "r2")).unwrap();
    r2.register().await.unwrap();
    wait_for_set(&mut sub, "new registration after the error", |s| {
        s.len() == 2
    })
    .await;
    r.deregister().await.unwrap();
    let set = wait_for_set(&mut sub, "deregistration after the error", |s| s.len() == 1).await;
    assert_eq!(ids(&set), ["r2"]);
    r2.deregister().await.unwrap();
    instancer.stop().await;
}

#[tokio::test]
async fn zk9_persistent_instancer_survives_an_error_mid_watch() {
    zk9_instancer_survives_an_error_mid_watch("").await;
}

#[tokio::test]
async fn zk9_oneshot_instancer_survives_an_error_mid_watch() {
    zk9_instancer_survives_an_error_mid_watch("&watch=oneshot").await;
}

/// Someone deletes the registrar's node: it is created again.
#[tokio::test]
async fn a_deleted_node_is_created_again() {
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let registry = registry(&addr, "");
    let service = unique_name("zk-deleted");
    let r = registry.zk_registrar(reg(&service, 9051, "d1")).unwrap();
    r.register().await.unwrap();
    let first = r.node_path().unwrap();
    let mut recreated = r.watch_recreations();
    raw(&addr).await.delete(&first, None).await.unwrap();
    tokio::time::timeout(BOUND, recreated.wait_for(|n| *n >= 1))
        .await
        .expect("re-created")
        .unwrap();
    let second = r.node_path().unwrap();
    assert_ne!(first, second);
    assert!(raw(&addr)
        .await
        .check_stat(&second)
        .await
        .unwrap()
        .is_some());
    r.deregister().await.unwrap();
}

/// A registrar dropped while registered deletes its node (the session is shared and would
/// keep it); the other registrars of the registry stay.
#[tokio::test]
async fn a_dropped_registrar_takes_its_node_with_it() {
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    let registry = registry(&addr, "");
    let service = unique_name("zk-drop");
    let stays = registry.zk_registrar(reg(&service, 9061, "stays")).unwrap();
    let goes = registry.zk_registrar(reg(&service, 9062, "goes")).unwrap();
    stays.register().await.unwrap();
    goes.register().await.unwrap();
    let (instancer, mut sub) = common::watch(&registry, &service).await;
    wait_for_set(&mut sub, "both", |s| s.len() == 2).await;
    drop(goes);
    let set = wait_for_set(&mut sub, "dropped one gone", |s| s.len() == 1).await;
    assert_eq!(ids(&set), ["stays"]);
    stays.deregister().await.unwrap();
    instancer.stop().await;
}

/// Several servers in the URL: a dead one first is skipped.
#[tokio::test]
async fn fails_over_past_a_dead_server() {
    let addr = require!(Server::Zk);
    let _shared = shared(Server::Zk);
    // Port 1 on loopback refuses connections.
    let registry = registry(&format!("127.0.0.1:1,{addr}"), "");
    let service = unique_name("zk-failover");
    let r = registry.zk_registrar(reg(&service, 9071, "f1")).unwrap();
    r.register().await.unwrap();
    let (instancer, mut sub) = common::watch(&registry, &service).await;
    wait_for_set(&mut sub, "registered", |s| by_id(s, "f1").is_some()).await;
    r.deregister().await.unwrap();
    instancer.stop().await;
}

/// An instancer whose server cannot be reached starts with an error event and never panics;
/// `stop()` ends it during its backoff.
#[tokio::test]
async fn unreachable_server_is_an_error_event() {
    let registry = registry("127.0.0.1:1", "");
    let instancer = registry
        .zk_instancer(&ServiceQuery::new("anything"))
        .await
        .unwrap();
    let state = instancer.state().unwrap();
    let err = state.as_error().expect("an error event");
    assert!(err.is_transient(), "{err}");
    tokio::time::timeout(Duration::from_secs(10), instancer.stop())
        .await
        .expect("stop ends the backoff");
}
