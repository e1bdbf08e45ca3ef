//! The backend against real etcd servers: 3.4 (`SD_TEST_ETCD`) and 3.5 (`SD_TEST_ETCD35`).
//! Every test runs once per server (`<test>::etcd34`, `<test>::etcd35`) and holds
//! `sd_testkit::shared(server)` so the fault tests never restart the server under it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{addr, by_id, ids, registry, ttl_registration, wait_for_set, BOUND};
use sd_core::{
    Backoff, Event, Health, Instance, Instancer, Registrar, Registration, RegistrationGuard,
    Registry, ServiceQuery,
};
use sd_etcdv3::{EtcdInstancer, PrefixSource, ValueFormat};
use sd_testkit::{shared, unique_name, Server};

async fn register_discover_deregister(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "rdd", "");
    let service = unique_name("users");
    let inst = Instance::builder("10.0.0.5", 8080)
        .id("users-1")
        .tags(["v2", "eu"])
        .meta("zone", "a")
        .weight(7)
        .build();
    let registrar = reg
        .etcd_registrar(
            Registration::new(service.as_str(), inst.clone())
                .check(sd_core::HealthCheck::Ttl(Duration::from_secs(5))),
        )
        .unwrap();
    registrar.register().await.unwrap();
    assert_ne!(registrar.lease_id(), 0);
    // Registering again is harmless: a fresh lease, the same key.
    let first_lease = registrar.lease_id();
    registrar.register().await.unwrap();
    assert_ne!(registrar.lease_id(), first_lease);

    let instancer = reg
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "registered", |s| s.len() == 1).await;
    assert_eq!(set[0], inst, "the whole instance round-trips");

    // The key is where the docs say, leased with the registrar's lease.
    let key = format!("{}/{service}/users-1", reg.client().prefix());
    assert_eq!(registrar.key(), key);
    assert_eq!(
        reg.client().key_lease(&key).await.unwrap(),
        Some(registrar.lease_id())
    );
    let lease = registrar.lease_id();

    registrar.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    assert_eq!(reg.client().key_lease(&key).await.unwrap(), None);
    // The lease was revoked, not left to expire.
    assert!(!reg.client().keep_alive_once(lease).await.unwrap());
    registrar.deregister().await.unwrap();
    instancer.stop().await;
    instancer.stop().await;
}
both_servers!(register_discover_deregister);

async fn the_service_directory_ends_in_a_slash(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "slash", "");
    let service = unique_name("users");
    let admin = format!("{service}-admin");
    let a = reg
        .etcd_registrar(Registration::new(
            service.as_str(),
            Instance::builder("10.0.0.1", 1).id("u").build(),
        ))
        .unwrap();
    let b = reg
        .etcd_registrar(Registration::new(
            admin.as_str(),
            Instance::builder("10.0.0.2", 2).id("a").build(),
        ))
        .unwrap();
    a.register().await.unwrap();
    b.register().await.unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "users only", |s| !s.is_empty()).await;
    assert_eq!(ids(&set), ["u"], "{service} must not match {admin}");
    a.deregister().await.unwrap();
    b.deregister().await.unwrap();
    instancer.stop().await;
}
both_servers!(the_service_directory_ends_in_a_slash);

async fn gokit_values_are_read_and_a_bad_entry_is_skipped_alone(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "gokit", "");
    let service = unique_name("legacy");
    let c = reg.client();
    let dir = c.service_dir(&service);
    c.put(&format!("{dir}a"), b"http://1.2.3.4:8080", 0)
        .await
        .unwrap();
    c.put(&format!("{dir}b"), b"1.2.3.5:8081", 0).await.unwrap();
    c.put(&format!("{dir}bad"), b"not an instance", 0)
        .await
        .unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "two good ones", |s| s.len() == 2).await;
    assert_eq!(
        set.iter().map(|i| i.addr()).collect::<Vec<_>>(),
        ["1.2.3.4:8080", "1.2.3.5:8081"]
    );
    assert_eq!(ids(&set), ["a", "b"]);
    // A bad value arriving by the watch is skipped too; fixing it brings the key in.
    c.put(&format!("{dir}b"), b"{broken json", 0).await.unwrap();
    let set = wait_for_set(&mut sub, "b went bad", |s| s.len() == 1).await;
    assert_eq!(ids(&set), ["a"]);
    c.put(&format!("{dir}bad"), b"1.2.3.6:8082", 0)
        .await
        .unwrap();
    let set = wait_for_set(&mut sub, "bad fixed", |s| s.len() == 2).await;
    assert_eq!(ids(&set), ["a", "bad"]);
    // Everything after the first read came by watch events, one by one.
    assert_eq!(instancer.stats().full_reads(), 1);
    assert_eq!(instancer.stats().events(), 2);
    instancer.stop().await;
    common::delete_dir(c, &dir).await;
}
both_servers!(gokit_values_are_read_and_a_bad_entry_is_skipped_alone);

/// The deterministic R+1 test: a key written after the `Get` at revision R and before the
/// watch starts is delivered by the watch (it starts at R+1). go-kit's watch started "now"
/// and would miss it until the next unrelated change.
async fn a_write_between_the_get_and_the_watch_is_not_lost(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "rplus1", "");
    let service = unique_name("race");
    let client = reg.client().clone();
    let dir = client.service_dir(&service);
    client
        .put(&format!("{dir}first"), b"10.0.0.1:1", 0)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_client = client.clone();
    let hook_calls = calls.clone();
    let hook_key = format!("{dir}between");
    let source = PrefixSource::new(client.clone(), ServiceQuery::new(service.as_str())).after_get(
        Arc::new(move |_revision| {
            let c = hook_client.clone();
            let key = hook_key.clone();
            let n = hook_calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n == 0 {
                    c.put(&key, b"10.0.0.2:2", 0).await.unwrap();
                }
            })
        }),
    );
    let instancer = EtcdInstancer::start_source(source, Backoff::default()).await;
    // The first published set is the Get's: without the write.
    match instancer.state() {
        Some(Event::Instances(set)) => assert_eq!(ids(&set), ["first"]),
        other => panic!("first state: {other:?}"),
    }
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "the write in between", |s| s.len() == 2).await;
    assert_eq!(ids(&set), ["between", "first"]);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no re-read was needed");
    assert_eq!(instancer.stats().full_reads(), 1);
    instancer.stop().await;
}
both_servers!(a_write_between_the_get_and_the_watch_is_not_lost);

/// Compaction past the watch's revision: etcd cancels the watch; the instancer reads again
/// and ends with the right set, without publishing an error.
async fn compaction_past_the_watch_revision_is_recovered(server: Server) {
    let Some(addr) = addr(server) else { return };
    // Compacting the shared server would make other tests' watches re-read (they assert
    // that they did not): run alone.
    let _lock = sd_testkit::exclusive(server);
    let reg = registry(&addr, "compact", "");
    let service = unique_name("compact");
    let client = reg.client().clone();
    let dir = client.service_dir(&service);
    client
        .put(&format!("{dir}a"), b"10.0.0.1:1", 0)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (hook_client, hook_calls, hook_dir) = (client.clone(), calls.clone(), dir.clone());
    // After the first read (at R): write b and c, delete a, and compact up to the current
    // revision, so the watch from R+1 asks for compacted history.
    let source = PrefixSource::new(client.clone(), ServiceQuery::new(service.as_str())).after_get(
        Arc::new(move |_revision| {
            let (c, dir) = (hook_client.clone(), hook_dir.clone());
            let n = hook_calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n == 0 {
                    c.put(&format!("{dir}b"), b"10.0.0.2:2", 0).await.unwrap();
                    c.put(&format!("{dir}c"), b"10.0.0.3:3", 0).await.unwrap();
                    c.delete(&format!("{dir}a")).await.unwrap();
                    let mut raw = c.etcd().await.unwrap();
                    let rev = raw
                        .get("compaction-probe", None)
                        .await
                        .unwrap()
                        .header()
                        .unwrap()
                        .revision();
                    raw.compact(rev, None).await.unwrap();
                }
            })
        }),
    );
    let instancer = EtcdInstancer::start_source(source, Backoff::default()).await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "set after compaction", |s| ids(s) == ["b", "c"]).await;
    assert_eq!(set.len(), 2);
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "the directory was read again"
    );
    assert!(instancer.stats().full_reads() >= 2);
    // And the new watch works.
    client
        .put(&format!("{dir}d"), b"10.0.0.4:4", 0)
        .await
        .unwrap();
    wait_for_set(&mut sub, "after the re-watch", |s| s.len() == 3).await;
    instancer.stop().await;
}
both_servers!(compaction_past_the_watch_revision_is_recovered);

/// One changed key among many costs one event, not a re-read.
async fn updates_are_applied_incrementally(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "incr", "");
    let service = unique_name("many");
    let client = reg.client().clone();
    let dir = client.service_dir(&service);
    let mut txn_ops = Vec::new();
    for i in 0..500u32 {
        txn_ops.push(sd_etcdv3::etcd_client::TxnOp::put(
            format!("{dir}i{i:04}"),
            format!("10.0.{}.{}:80", i / 250, i % 250),
            None,
        ));
    }
    let mut raw = client.etcd().await.unwrap();
    for chunk in txn_ops.chunks(100) {
        raw.txn(sd_etcdv3::etcd_client::Txn::new().and_then(chunk.to_vec()))
            .await
            .unwrap();
    }
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "500", |s| s.len() == 500).await;
    for n in 0..5u16 {
        client
            .put(
                &format!("{dir}i0007"),
                format!("10.9.9.9:{}", 100 + n).as_bytes(),
                0,
            )
            .await
            .unwrap();
        let port = 100 + n;
        wait_for_set(&mut sub, "one change", |s| {
            by_id(s, "i0007").is_some_and(|i| i.port() == port)
        })
        .await;
    }
    assert_eq!(instancer.stats().full_reads(), 1);
    assert_eq!(instancer.stats().events(), 5);
    instancer.stop().await;
    common::delete_dir(&client, &dir).await;
}
both_servers!(updates_are_applied_incrementally);

async fn tags_health_and_passing_only_filter_client_side(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "filter", "");
    let service = unique_name("filter");
    let mk = |id: &str, port: u16, tags: &[&str], health: Health| {
        reg.etcd_registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", port)
                .id(id)
                .tags(tags.iter().copied())
                .health(health)
                .build(),
        ))
        .unwrap()
    };
    let rs = [
        mk("ab", 1, &["a", "b"], Health::Passing),
        mk("a", 2, &["a"], Health::Passing),
        mk("ab-warn", 3, &["a", "b"], Health::Warning),
        mk("crit", 4, &[], Health::Critical),
    ];
    for r in &rs {
        r.register().await.unwrap();
    }
    let both = reg
        .instancer(&ServiceQuery::new(service.as_str()).tag("a").tag("b"))
        .await
        .unwrap();
    let passing = reg
        .instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await
        .unwrap();
    let mut s1 = both.subscribe();
    let mut s2 = passing.subscribe();
    let set = wait_for_set(&mut s1, "tags ANDed", |s| s.len() == 2).await;
    assert_eq!(ids(&set), ["ab", "ab-warn"]);
    let set = wait_for_set(&mut s2, "passing only", |s| s.len() == 2).await;
    assert_eq!(ids(&set), ["a", "ab"]);
    for r in &rs {
        r.deregister().await.unwrap();
    }
    both.stop().await;
    passing.stop().await;
}
both_servers!(tags_health_and_passing_only_filter_client_side);

async fn plain_format_writes_gokit_values(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "plain", "&format=plain");
    let service = unique_name("plain");
    let r = reg
        .registrar(ttl_registration(
            &service,
            9000,
            "p1",
            Duration::from_secs(3),
        ))
        .await
        .unwrap();
    let guard = RegistrationGuard::register(r).await.unwrap();
    let (_, entries) = reg
        .client()
        .get_prefix(&reg.client().service_dir(&service))
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].value, b"127.0.0.1:9000");
    assert!(entries[0].key.ends_with("/p1"));
    guard.deregister().await.unwrap();
    let (_, entries) = reg
        .client()
        .get_prefix(&reg.client().service_dir(&service))
        .await
        .unwrap();
    assert!(entries.is_empty());
}
both_servers!(plain_format_writes_gokit_values);

/// The registrant vanishes (registrar dropped, no deregistration): the key goes with its
/// lease, within the TTL plus etcd's lease-expiry granularity.
async fn a_dropped_registrar_expires_with_its_lease(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "expire", "");
    let service = unique_name("expire");
    let r = reg
        .etcd_registrar(ttl_registration(
            &service,
            1,
            "gone",
            Duration::from_secs(2),
        ))
        .unwrap();
    r.register().await.unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "registered", |s| s.len() == 1).await;
    drop(r);
    let started = std::time::Instant::now();
    wait_for_set(&mut sub, "expired", |s| s.is_empty()).await;
    eprintln!(
        "{server}: key gone {:?} after the registrar was dropped (TTL 2 s)",
        started.elapsed()
    );
    instancer.stop().await;
}
both_servers!(a_dropped_registrar_expires_with_its_lease);

/// Keep-alive holds a registration well past its TTL, and a key deleted behind the
/// registrar's back is put again.
async fn keep_alive_holds_and_a_deleted_key_is_put_again(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "keep", "");
    let service = unique_name("keep");
    let r = reg
        .etcd_registrar(ttl_registration(&service, 1, "k", Duration::from_secs(1)))
        .unwrap();
    let mut rereg = r.watch_reregistrations();
    r.register().await.unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "registered", |s| s.len() == 1).await;
    reg.client().delete(r.key()).await.unwrap();
    wait_for_set(&mut sub, "deleted", |s| s.is_empty()).await;
    tokio::time::timeout(BOUND, rereg.wait_for(|n| *n >= 1))
        .await
        .expect("re-registered")
        .unwrap();
    wait_for_set(&mut sub, "put again", |s| s.len() == 1).await;
    // Three TTLs later it is still there (the lease is renewed every third of the TTL).
    let lease = r.lease_id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reg.client().key_lease(r.key()).await.unwrap(), Some(lease));
    r.deregister().await.unwrap();
    instancer.stop().await;
}
both_servers!(keep_alive_holds_and_a_deleted_key_is_put_again);

async fn sdkit_connect_and_two_endpoints_one_dead(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    // The first endpoint refuses connections; the client moves on to the second.
    let prefix = format!("/sdtest/{}", unique_name("multi"));
    let reg = sd_etcdv3::EtcdRegistry::from_url(&format!(
        "etcdv3://127.0.0.1:1,{addr}?prefix={prefix}&timeout=3s"
    ))
    .unwrap();
    let service = unique_name("multi");
    let r = reg
        .registrar(Registration::new(
            service.as_str(),
            Instance::new("10.1.1.1", 5),
        ))
        .await
        .unwrap();
    r.register().await.unwrap();
    let instancer = reg
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "via the live endpoint", |s| s.len() == 1).await;
    r.deregister().await.unwrap();
    instancer.stop().await;
    assert_eq!(reg.format(), ValueFormat::Json);
}
both_servers!(sdkit_connect_and_two_endpoints_one_dead);

/// `services()` reads keys only, a page at a time: a service with more keys than a page,
/// services sorting before and after it, and a key right under the prefix (no service
/// directory: not listed). The keys are leased for a minute, so nothing stays behind.
async fn services_are_listed_past_a_page(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "list", "");
    let client = reg.client().clone();
    let lease = client.grant(60).await.unwrap();
    let big = sd_etcdv3::client::SERVICES_PAGE as usize + 5;
    for chunk in (0..big).collect::<Vec<_>>().chunks(100) {
        futures::future::join_all(chunk.iter().map(|i| {
            let key = client.instance_key("big", &format!("i{i:05}"));
            let client = client.clone();
            async move { client.put(&key, b"127.0.0.1:1", lease).await.unwrap() }
        }))
        .await;
    }
    for (service, id) in [("a-small", "x"), ("zz", "y")] {
        let key = client.instance_key(service, id);
        client.put(&key, b"127.0.0.1:2", lease).await.unwrap();
    }
    let stray = format!("{}/stray", client.prefix());
    client.put(&stray, b"127.0.0.1:3", lease).await.unwrap();
    assert_eq!(
        reg.services().await.unwrap(),
        ["a-small", "big", "zz"],
        "{server:?}"
    );
    client.revoke(lease).await.unwrap();
    assert!(reg.services().await.unwrap().is_empty());
}
both_servers!(services_are_listed_past_a_page);
