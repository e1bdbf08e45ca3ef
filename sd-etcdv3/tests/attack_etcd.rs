//! Attacks on sd-etcdv3 (issue 11): hostile values and keys, things done behind the
//! registrar's back, URL edge cases. Each integration test runs against etcd 3.4 and 3.5.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{addr, ids, registry, ttl_registration, wait_for_set, BOUND};
use sd_core::{Error, Instance, Instancer, Registrar, Registration, Registry, ServiceQuery};
use sd_etcdv3::{decode_value, EtcdRegistry};
use sd_testkit::proxy::Proxy;
use sd_testkit::{shared, unique_name, Server};

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

/// docs/ETCD.md: "A value that is neither (bad JSON, port 0, not UTF-8, "hello") is skipped
/// alone". The JSON path refuses port 0; go-kit's plain path must too.
#[test]
fn plain_values_with_port_zero_are_refused() {
    for v in [
        &b"1.2.3.4:0"[..],
        b"http://1.2.3.4:0",
        b"[::1]:0",
        b"host:0",
    ] {
        let r = decode_value("k", v);
        assert!(
            r.is_err(),
            "{:?} decoded to {:?} (port 0 must be refused, as in JSON)",
            String::from_utf8_lossy(v),
            r.map(|i| i.addr().to_string())
        );
    }
}

/// Hostile JSON never panics (deep nesting, huge numbers, wrong types) and is refused.
#[test]
fn hostile_json_is_refused_without_panicking() {
    let deep = format!(
        "{{\"host\":\"h\",\"port\":1,\"meta\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for v in [
        deep.as_str(),
        r#"{"host":"h","port":1e400}"#,
        r#"{"host":"h","port":"80"}"#,
        r#"{"host":["h"],"port":80}"#,
        r#"{"host":"h","port":80,"tags":"v2"}"#,
        r#"{"host":"h","port":80,"weight":4294967296}"#,
        r#"{"host":"h","port":80,"weight":-1}"#,
        r#"{"host":"h","port":80,"meta":{"a":1}}"#,
        r#"{"host":"h","port":80.5}"#,
    ] {
        assert!(decode_value("k", v.as_bytes()).is_err(), "{v:.80}");
    }
}

/// End to end: a go-kit plain value with port 0 written under the directory is published as
/// an instance on port 0 (docs/ETCD.md says it is skipped alone).
async fn a_plain_port_zero_value_is_not_published(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "port0", "");
    let service = unique_name("port0");
    let c = reg.client();
    let dir = c.service_dir(&service);
    c.put(&format!("{dir}good"), b"10.0.0.1:80", 0)
        .await
        .unwrap();
    c.put(&format!("{dir}zero"), b"10.0.0.2:0", 0)
        .await
        .unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "first set", |s| !s.is_empty()).await;
    let ports: Vec<u16> = set.iter().map(|i| i.port()).collect();
    instancer.stop().await;
    common::delete_dir(c, &dir).await;
    assert_eq!(ids(&set), ["good"], "published ports {ports:?}");
}
both_servers!(a_plain_port_zero_value_is_not_published);

/// Two distinct keys whose last part is not UTF-8 (`\xff` and `\xfe`) are two instances.
/// Keys are decoded lossily (both become U+FFFD) and used as the map key of the set, so one
/// overwrites the other; deleting either then removes the survivor too.
async fn non_utf8_keys_do_not_collide(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "utf8", "");
    let service = unique_name("utf8");
    let c = reg.client();
    let dir = c.service_dir(&service);
    let mut raw = c.etcd().await.unwrap();
    let key = |b: u8| {
        let mut k = dir.as_bytes().to_vec();
        k.push(b);
        k
    };
    raw.put(key(0xff), "10.0.0.1:1", None).await.unwrap();
    raw.put(key(0xfe), "10.0.0.2:2", None).await.unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    let first = wait_for_set(&mut sub, "first set", |s| !s.is_empty()).await;
    let first_addrs: Vec<String> = first.iter().map(|i| i.addr().to_string()).collect();
    // A watch event too: delete one of them; the other must stay.
    raw.delete(key(0xff), None).await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(sd_core::Event::Instances(s)) = sub.next().await {
                if !s.iter().any(|i| i.addr() == "10.0.0.1:1") || s.is_empty() {
                    return s;
                }
            }
        }
    })
    .await;
    instancer.stop().await;
    common::delete_dir(c, &dir).await;
    assert_eq!(
        first.len(),
        2,
        "the first read kept {first_addrs:?} of two keys with different bytes"
    );
    let after = after.expect("an event after the delete");
    assert_eq!(
        after
            .iter()
            .map(|i| i.addr().to_string())
            .collect::<Vec<_>>(),
        ["10.0.0.2:2"],
        "after deleting the \\xff key"
    );
}
both_servers!(non_utf8_keys_do_not_collide);

/// Thousands of keys with hostile values: every bad one is skipped alone, the good ones all
/// arrive, nothing panics.
async fn many_hostile_values_are_skipped_alone(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "hostile", "");
    let service = unique_name("hostile");
    let c = reg.client();
    let dir = c.service_dir(&service);
    let mut raw = c.etcd().await.unwrap();
    let bad: Vec<Vec<u8>> = vec![
        b"\xff\xfe\xfd".to_vec(),
        b"{".to_vec(),
        vec![b'{'; 512 * 1024],
        format!(
            "{{\"host\":\"h\",\"port\":1,\"tags\":{}}}",
            "[".repeat(5000)
        )
        .into_bytes(),
        br#"{"host":"h","port":70000}"#.to_vec(),
        br#"{"host":"h","port":1,"weight":-5}"#.to_vec(),
        b"hello".to_vec(),
        b"".to_vec(),
    ];
    let mut ops = Vec::new();
    let mut good = 0usize;
    for i in 0..2000u32 {
        let k = format!("{dir}k{i:05}");
        let v = if i % 4 == 0 {
            bad[(i as usize / 4) % bad.len()].clone()
        } else {
            good += 1;
            format!(
                "10.{}.{}.{}:{}",
                i / 65536,
                (i / 256) % 256,
                i % 256,
                1000 + i % 5000
            )
            .into_bytes()
        };
        ops.push(sd_etcdv3::etcd_client::TxnOp::put(k, v, None));
    }
    for chunk in ops.chunks(10) {
        raw.txn(sd_etcdv3::etcd_client::Txn::new().and_then(chunk.to_vec()))
            .await
            .unwrap();
    }
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "all good ones", |s| s.len() == good).await;
    assert!(set.iter().all(|i| i.port() != 0));
    // And through the watch: overwrite 100 good values with bad ones.
    for i in (1..400u32).filter(|i| i % 4 != 0) {
        raw.put(format!("{dir}k{i:05}"), "{\"host\":\"\",\"port\":1}", None)
            .await
            .unwrap();
    }
    let n = (1..400u32).filter(|i| i % 4 != 0).count();
    wait_for_set(&mut sub, "bad overwrites skipped", |s| s.len() == good - n).await;
    instancer.stop().await;
    common::delete_dir(c, &dir).await;
}
both_servers!(many_hostile_values_are_skipped_alone);

// ---------------------------------------------------------------------------------------
// Prefixes, names
// ---------------------------------------------------------------------------------------

/// `prefix=/p` and `prefix=/p/` are the same directory; unicode service names, ids with
/// slashes; `svc` never sees `svc-admin` nor `svc/..` siblings.
async fn prefixes_unicode_and_slashes(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let prefix = format!("/sdtest/{}", unique_name("pfx"));
    let a = EtcdRegistry::from_url(&format!("etcd://{addr}?prefix={prefix}&timeout=3s")).unwrap();
    let b = EtcdRegistry::from_url(&format!("etcd://{addr}?prefix={prefix}/&timeout=3s")).unwrap();
    let service = format!("ユーザー-{}", unique_name("u"));
    let admin = format!("{service}-admin");
    let r1 = a
        .etcd_registrar(Registration::new(
            service.as_str(),
            Instance::builder("10.0.0.1", 1).id("a/b").build(),
        ))
        .unwrap();
    let r2 = a
        .etcd_registrar(Registration::new(
            service.as_str(),
            Instance::builder("10.0.0.2", 2).id("ü").build(),
        ))
        .unwrap();
    let r3 = a
        .etcd_registrar(Registration::new(
            admin.as_str(),
            Instance::builder("10.0.0.3", 3).id("x").build(),
        ))
        .unwrap();
    for r in [&r1, &r2, &r3] {
        r.register().await.unwrap();
    }
    let instancer = b.etcd_instancer(&ServiceQuery::new(service.as_str())).await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "both", |s| s.len() >= 2).await;
    assert_eq!(ids(&set), ["a/b", "ü"]);
    r1.deregister().await.unwrap();
    wait_for_set(&mut sub, "one", |s| s.len() == 1).await;
    for r in [&r2, &r3] {
        r.deregister().await.unwrap();
    }
    instancer.stop().await;
}
both_servers!(prefixes_unicode_and_slashes);

// ---------------------------------------------------------------------------------------
// Behind the registrar's back
// ---------------------------------------------------------------------------------------

/// The lease revoked with a raw client (the key goes with it): the registrar grants a new
/// lease and puts the key again within TTL + 2 s.
async fn a_revoked_lease_is_replaced(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "revoke", "");
    let service = unique_name("revoke");
    let r = reg
        .etcd_registrar(ttl_registration(&service, 7, "r1", Duration::from_secs(2)))
        .unwrap();
    r.register().await.unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "registered", |s| s.len() == 1).await;
    let lease = r.lease_id();
    let mut rereg = r.watch_reregistrations();
    let mut raw = reg.client().etcd().await.unwrap();
    raw.lease_revoke(lease).await.unwrap();
    let t0 = Instant::now();
    wait_for_set(&mut sub, "revoked", |s| s.is_empty()).await;
    wait_for_set(&mut sub, "back", |s| s.len() == 1).await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "back after {took:?}");
    tokio::time::timeout(BOUND, rereg.wait_for(|n| *n >= 1))
        .await
        .expect("counted")
        .unwrap();
    assert_ne!(r.lease_id(), lease);
    assert_eq!(
        reg.client().key_lease(r.key()).await.unwrap(),
        Some(r.lease_id())
    );
    r.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}
both_servers!(a_revoked_lease_is_replaced);

/// Someone overwrites the registrar's key with a value of their own (no lease): the
/// registrar notices (the key is not on its lease) and puts its value back.
async fn a_foreign_overwrite_is_undone(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "overwrite", "");
    let service = unique_name("overwrite");
    let r = reg
        .etcd_registrar(ttl_registration(&service, 7, "r1", Duration::from_secs(2)))
        .unwrap();
    r.register().await.unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "registered", |s| s.len() == 1 && s[0].port() == 7).await;
    reg.client().put(r.key(), b"10.9.9.9:9", 0).await.unwrap();
    wait_for_set(&mut sub, "overwritten", |s| {
        s.len() == 1 && s[0].port() == 9
    })
    .await;
    wait_for_set(&mut sub, "restored", |s| s.len() == 1 && s[0].port() == 7).await;
    r.deregister().await.unwrap();
    instancer.stop().await;
}
both_servers!(a_foreign_overwrite_is_undone);

/// register() again while registered, many times, with a fast keep-alive running: nothing was
/// lost, so the registrar must not count (nor log) a single "registration lost".
/// The keep-alive round is not stopped by register(): a round that read the old lease before
/// register() swapped it finds "its" lease revoked or the key on another lease and
/// "re-registers".
async fn re_register_does_not_look_like_a_loss(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "rereg", "");
    let service = unique_name("rereg");
    let r = reg
        .etcd_registrar(ttl_registration(&service, 7, "r1", Duration::from_secs(3)))
        .unwrap()
        .period(Duration::from_millis(10));
    r.register().await.unwrap();
    for _ in 0..60 {
        r.register().await.unwrap();
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spurious = r.reregistrations();
    let on_lease = reg.client().key_lease(r.key()).await.unwrap();
    let lease = r.lease_id();
    r.deregister().await.unwrap();
    assert_eq!(on_lease, Some(lease), "key on the registrar's lease");
    assert_eq!(
        spurious, 0,
        "{spurious} 'registration lost; registering again' while nothing was lost"
    );
}
both_servers!(re_register_does_not_look_like_a_loss);

/// The same race, seen by a watcher: while one registrar calls register() again and again
/// (nothing is ever deregistered), the instance must never vanish from discovery. A
/// keep-alive round that read the old lease puts the key on a lease of its own; register()
/// then revokes "the old lease" it got back from set_lease, which is the keep-alive's, and
/// the key goes with it.
async fn re_register_never_drops_the_instance(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "regap", "");
    let service = unique_name("regap");
    let r = reg
        .etcd_registrar(ttl_registration(&service, 7, "r1", Duration::from_secs(3)))
        .unwrap()
        .period(Duration::from_millis(10));
    r.register().await.unwrap();
    let mut raw = reg.client().etcd().await.unwrap();
    let (_watcher_unused, mut stream) = {
        let s = raw
            .watch(
                r.key(),
                Some(sd_etcdv3::etcd_client::WatchOptions::new().with_prev_key()),
            )
            .await
            .unwrap();
        ((), s)
    };
    let deletes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let d = deletes.clone();
    let counter = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events() {
                if ev.event_type() == sd_etcdv3::etcd_client::EventType::Delete {
                    d.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });
    for _ in 0..800 {
        r.register().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = deletes.load(std::sync::atomic::Ordering::SeqCst);
    r.deregister().await.unwrap();
    counter.abort();
    assert_eq!(
        n, 0,
        "the key of a registrar that was only ever registered was deleted {n} times"
    );
}
both_servers!(re_register_never_drops_the_instance);

/// A registrar dropped inside a RegistrationGuard: the key is deleted at once, not left to
/// its lease.
async fn a_dropped_guard_deletes_the_key(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "guard", "");
    let service = unique_name("guard");
    let r: Arc<dyn Registrar> = Arc::new(
        reg.etcd_registrar(ttl_registration(&service, 7, "g1", Duration::from_secs(30)))
            .unwrap(),
    );
    let key = reg.client().instance_key(&service, "g1");
    let guard = sd_core::RegistrationGuard::register(r).await.unwrap();
    assert!(reg.client().key_lease(&key).await.unwrap().is_some());
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reg.client().key_lease(&key).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "key still there 10 s after the guard was dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
both_servers!(a_dropped_guard_deletes_the_key);

// ---------------------------------------------------------------------------------------
// URLs and secrets
// ---------------------------------------------------------------------------------------

/// Credentials in the authority are refused, and the error must not print them.
#[test]
fn credentials_in_the_authority_are_not_echoed() {
    for url in [
        "etcd://root:hunter2@127.0.0.1:2379",
        "etcdv3://root:hunter2@127.0.0.1:2379?prefix=/s",
        "etcd://hunter2@127.0.0.1",
    ] {
        let err = EtcdRegistry::from_url(url).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(
            !err.to_string().contains("hunter2") && !format!("{err:?}").contains("hunter2"),
            "the password is in the error: {err}"
        );
    }
}

/// A TTL etcd cannot grant is accepted by the URL parser and the registrar, and register()
/// then fails with a *transient* error (callers retry for ever) instead of a Config error.
async fn an_impossible_ttl_is_a_config_error(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let prefix = format!("/sdtest/{}", unique_name("bigttl"));
    let parsed = EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix={prefix}&ttl=10000000000s&timeout=3s"
    ));
    let reg = match parsed {
        Err(e) => {
            assert!(matches!(e, Error::Config(_)), "{e}");
            return;
        }
        Ok(r) => r,
    };
    let r = match reg
        .registrar(Registration::new("big", Instance::new("10.0.0.1", 1)))
        .await
    {
        Err(e) => {
            assert!(matches!(e, Error::Config(_)), "{e}");
            return;
        }
        Ok(r) => r,
    };
    let err = r.register().await.expect_err("etcd grants at most 9e9 s");
    let _ = r.deregister().await;
    assert!(
        !err.is_transient(),
        "a TTL etcd refuses is reported as transient: {err:?}"
    );
}
both_servers!(an_impossible_ttl_is_a_config_error);

/// Durations are accepted up to u64 seconds; the client then adds them up (and tokio adds
/// them to Instant::now()): a panic on the first request instead of a Config error at parse.
#[tokio::test]
async fn huge_timeouts_do_not_panic() {
    let url = "etcd://127.0.0.1:1?dial_timeout=10000000000000000000s&timeout=10000000000000000000s";
    let reg = match EtcdRegistry::from_url(url) {
        Err(e) => {
            assert!(matches!(e, Error::Config(_)), "{e}");
            return;
        }
        Ok(r) => r,
    };
    let c = reg.client().clone();
    let outcome = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(5), c.get_prefix("/x/")).await
    })
    .await;
    match outcome {
        Err(join) if join.is_panic() => {
            let p = join.into_panic();
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("a request with the URL's timeouts panicked: {msg}");
        }
        _ => {}
    }
}

#[allow(dead_code)]
fn _bound() -> Duration {
    BOUND
}

/// E3-4/E3-5: go-kit's registrar closed the watcher its instancer shared. Here registrars
/// registering and deregistering (and being dropped) on the same registry never end an
/// instancer's watch: a raw write afterwards is still seen, with no re-read.
async fn registrars_never_end_an_instancers_watch(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "indep", "");
    let service = unique_name("indep");
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "empty", |s| s.is_empty()).await;
    for i in 0..3u16 {
        let r = reg
            .etcd_registrar(ttl_registration(
                &service,
                100 + i,
                &format!("r{i}"),
                Duration::from_secs(5),
            ))
            .unwrap();
        r.register().await.unwrap();
        wait_for_set(&mut sub, "registered", |s| s.len() == 1).await;
        r.deregister().await.unwrap();
        wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
        drop(r);
    }
    let c = reg.client();
    c.put(&c.instance_key(&service, "raw"), b"10.0.0.9:9", 0)
        .await
        .unwrap();
    wait_for_set(&mut sub, "raw write", |s| s.len() == 1).await;
    assert_eq!(
        instancer.stats().full_reads(),
        1,
        "the watch was never re-created"
    );
    instancer.stop().await;
    common::delete_dir(c, &c.service_dir(&service)).await;
}
both_servers!(registrars_never_end_an_instancers_watch);

// ---------------------------------------------------------------------------------------
// Through sd_testkit's TCP proxy: cut or stall the path to the server, not the server.
// ---------------------------------------------------------------------------------------

/// Only this client's connection is cut (the server stays up) while the directory changes:
/// the watch ends, the instancer reads again once the path is back and has the new set; the
/// registration (TTL 10 s, cut ~1 s) survives without a re-registration.
async fn changes_while_the_connection_is_cut_are_not_lost(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let proxy = Proxy::start(&addr).await;
    let reg = registry(&proxy.addr.to_string(), "cut", "");
    let direct = registry(&addr, "cut-direct", "");
    let service = unique_name("cut");
    let r = reg
        .etcd_registrar(ttl_registration(
            &service,
            7,
            "mine",
            Duration::from_secs(10),
        ))
        .unwrap();
    r.register().await.unwrap();
    // The direct client writes under the proxied registry's prefix.
    let dc = direct.client();
    let x = reg.client().instance_key(&service, "x");
    let y = reg.client().instance_key(&service, "y");
    dc.put(&x, b"10.0.0.1:1", 0).await.unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "x and mine", |s| s.len() == 2).await;
    proxy.cut();
    common::wait_for_error(&mut sub, "connection cut").await;
    dc.delete(&x).await.unwrap();
    dc.put(&y, b"10.0.0.2:2", 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let set = wait_for_set(&mut sub, "after the cut", |s| {
        s.iter().any(|i| i.id() == "y") && !s.iter().any(|i| i.id() == "x")
    })
    .await;
    assert_eq!(ids(&set), ["mine", "y"]);
    assert_eq!(r.reregistrations(), 0);
    r.deregister().await.unwrap();
    instancer.stop().await;
    dc.delete(&y).await.unwrap();
}
both_servers!(changes_while_the_connection_is_cut_are_not_lost);

/// A stalled path (TCP open, nothing forwarded: what a frozen server or a black-holed
/// network looks like) for longer than the TTL: etcd expires the lease and deletes the key;
/// once the path is back, the registrar re-registers within TTL + 2 s and the instancer,
/// which published an error meanwhile, shows the instance again.
async fn a_stall_longer_than_the_ttl_is_recovered(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let proxy = Proxy::start(&addr).await;
    let reg = registry(&proxy.addr.to_string(), "stall", "");
    let direct = registry(&addr, "stall-direct", "");
    let service = unique_name("stall");
    let r = reg
        .etcd_registrar(ttl_registration(
            &service,
            7,
            "mine",
            Duration::from_secs(2),
        ))
        .unwrap();
    r.register().await.unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "mine", |s| s.len() == 1).await;
    proxy.stall();
    let t0 = Instant::now();
    let err = common::wait_for_error(&mut sub, "stalled").await;
    let noticed = t0.elapsed();
    // The lease expires on the (healthy) server.
    let key = r.key().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while direct.client().key_lease(&key).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    let restored = Instant::now();
    let deadline = restored + Duration::from_secs(4);
    while direct.client().key_lease(&key).await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "not re-registered within TTL + 2 s of the path coming back (error was {err}, noticed after {noticed:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_set(&mut sub, "back", |s| s.len() == 1).await;
    eprintln!(
        "stall noticed after {noticed:?}; re-registered {:?} after the path came back; instancer error: {err}",
        restored.elapsed()
    );
    r.deregister().await.unwrap();
    instancer.stop().await;
}
both_servers!(a_stall_longer_than_the_ttl_is_recovered);
