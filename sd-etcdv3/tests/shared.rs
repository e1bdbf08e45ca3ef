//! The shared watch of the prefix (`watch=shared`, [`sd_etcdv3::shared`]) against the real
//! etcd servers: routing by key, late join at an exact revision, a broken stream and a
//! compaction handled once for every instancer, stopping one instancer and the last one,
//! and the `auto` policy. (The conformance suite also runs on the shared path:
//! `tests/conformance.rs`, `etcd34_shared::*` and `etcd35_shared::*`.)

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{addr, ids, registry, wait_for_set};
use sd_core::{Backoff, Instancer, Registry, ServiceQuery};
use sd_etcdv3::{Client, EtcdInstancer, EtcdRegistry, SharedSource, WatchMode};
use sd_testkit::{shared, unique_name, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A registry whose instancers all use the shared watch.
fn shared_registry(addr: &str, what: &str) -> EtcdRegistry {
    registry(addr, what, "&watch=shared")
}

async fn put(client: &Client, key: &str, value: &str) {
    client.put(key, value.as_bytes(), 0).await.unwrap();
}

async fn keys_of_one_service_never_reach_another(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = shared_registry(&addr, "route");
    let client = reg.client().clone();
    // `svc` and `svc2`: a raw byte prefix of one another.
    let svc = unique_name("svc");
    let svc2 = format!("{svc}2");
    let a = reg.etcd_instancer(&ServiceQuery::new(svc.as_str())).await;
    let b = reg.etcd_instancer(&ServiceQuery::new(svc2.as_str())).await;
    assert!(a.is_shared() && b.is_shared());
    let stats = client.shared_watch_stats().unwrap();
    assert_eq!((stats.members, stats.opened), (2, 1), "{stats:?}");
    let (mut sa, mut sb) = (a.subscribe(), b.subscribe());
    wait_for_set(&mut sa, "svc empty", |s| s.is_empty()).await;
    wait_for_set(&mut sb, "svc2 empty", |s| s.is_empty()).await;

    let prefix = client.prefix().to_string();
    // svc2's key, a key named like svc's directory without the slash, a key of a service
    // nobody watches, then svc's own key (last: when A has it, the others were routed).
    put(&client, &format!("{prefix}/{svc2}/x"), "10.0.0.2:2").await;
    put(&client, &format!("{prefix}/{svc}"), "10.0.0.9:9").await;
    put(&client, &format!("{prefix}/{svc}x/y"), "10.0.0.8:8").await;
    put(&client, &format!("{prefix}/{svc}/a"), "10.0.0.1:1").await;
    let set = wait_for_set(&mut sa, "svc's key", |s| !s.is_empty()).await;
    assert_eq!(ids(&set), ["a"]);
    assert_eq!(
        a.stats().events(),
        1,
        "svc received only its own key's change"
    );
    let set = wait_for_set(&mut sb, "svc2's key", |s| !s.is_empty()).await;
    assert_eq!(ids(&set), ["x"]);
    assert_eq!(
        b.stats().events(),
        1,
        "svc2 received only its own key's change"
    );
    // One read each (their own directory), nothing else.
    assert_eq!((a.stats().full_reads(), b.stats().full_reads()), (1, 1));
    a.stop().await;
    b.stop().await;
    common::delete_dir(&client, &format!("{prefix}/")).await;
}
both_servers!(keys_of_one_service_never_reach_another);

async fn a_late_join_is_exact_and_other_services_lose_nothing(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = shared_registry(&addr, "late");
    let client = reg.client().clone();
    let (s1, s2) = (unique_name("early"), unique_name("late"));
    let (dir1, dir2) = (client.service_dir(&s1), client.service_dir(&s2));
    let early = reg.etcd_instancer(&ServiceQuery::new(s1.as_str())).await;
    let mut se = early.subscribe();
    wait_for_set(&mut se, "early empty", |s| s.is_empty()).await;
    put(&client, &format!("{dir2}a"), "10.0.0.1:1").await;

    // Joined (changes buffered from here), then `c` is written: the read includes it, and
    // its buffered event must be skipped, not applied again. After the read, `b` (of the late
    // service) and `z` (of the early one) are written: both must arrive by the watch.
    let calls = Arc::new(AtomicUsize::new(0));
    let (jc, jd) = (client.clone(), dir2.clone());
    let (gc, gd2, gd1, gcalls) = (client.clone(), dir2.clone(), dir1.clone(), calls.clone());
    let source = SharedSource::new(client.clone(), ServiceQuery::new(s2.as_str()))
        .after_join(Arc::new(move |_revision| {
            let (c, d) = (jc.clone(), jd.clone());
            Box::pin(async move { put(&c, &format!("{d}c"), "10.0.0.3:3").await })
        }))
        .after_get(Arc::new(move |_revision| {
            let (c, d2, d1) = (gc.clone(), gd2.clone(), gd1.clone());
            let first = gcalls.fetch_add(1, Ordering::SeqCst) == 0;
            Box::pin(async move {
                if first {
                    put(&c, &format!("{d2}b"), "10.0.0.2:2").await;
                    put(&c, &format!("{d1}z"), "10.0.0.26:26").await;
                }
            })
        }));
    let late = EtcdInstancer::start_shared_source(source, Backoff::default()).await;
    let mut sl = late.subscribe();
    let set = wait_for_set(&mut sl, "a, b and c", |s| s.len() == 3).await;
    assert_eq!(ids(&set), ["a", "b", "c"]);
    assert_eq!(
        late.stats().events(),
        1,
        "only `b` was applied as an event: `c` was in the read"
    );
    assert_eq!(late.stats().full_reads(), 1);
    let set = wait_for_set(&mut se, "z", |s| !s.is_empty()).await;
    assert_eq!(ids(&set), ["z"]);
    assert_eq!(early.stats().events(), 1);
    assert_eq!(client.shared_watch_stats().unwrap().opened, 1);
    early.stop().await;
    late.stop().await;
    common::delete_dir(&client, &dir1).await;
    common::delete_dir(&client, &dir2).await;
}
both_servers!(a_late_join_is_exact_and_other_services_lose_nothing);

async fn stopping_one_keeps_the_others_and_the_last_stop_ends_the_watch(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = shared_registry(&addr, "stop");
    let client = reg.client().clone();
    let (s1, s2) = (unique_name("one"), unique_name("two"));
    let one = reg
        .instancer(&ServiceQuery::new(s1.as_str()))
        .await
        .unwrap();
    let two = reg
        .instancer(&ServiceQuery::new(s2.as_str()))
        .await
        .unwrap();
    let mut st = two.subscribe();
    assert_eq!(client.shared_watch_stats().unwrap().members, 2);
    one.stop().await;
    put(&client, &client.instance_key(&s2, "x"), "10.0.0.1:1").await;
    let set = wait_for_set(&mut st, "x after the other stopped", |s| !s.is_empty()).await;
    assert_eq!(ids(&set), ["x"]);
    let stats = client.shared_watch_stats().expect("still running");
    assert_eq!((stats.members, stats.opened), (1, 1), "{stats:?}");
    two.stop().await;
    assert_eq!(
        client.shared_watch_stats(),
        None,
        "the last stop ended the shared watch"
    );
    // A new instancer opens a new one.
    let three = reg
        .instancer(&ServiceQuery::new(s2.as_str()))
        .await
        .unwrap();
    let mut s3 = three.subscribe();
    wait_for_set(&mut s3, "x again", |s| ids(s) == ["x"]).await;
    let stats = client.shared_watch_stats().unwrap();
    assert_eq!((stats.members, stats.opened), (1, 1), "{stats:?}");
    drop(s3);
    three.stop().await;
    assert_eq!(client.shared_watch_stats(), None);
    common::delete_dir(&client, &client.service_dir(&s2)).await;
}
both_servers!(stopping_one_keeps_the_others_and_the_last_stop_ends_the_watch);

/// A TCP proxy to etcd that can hold back what the server sends ([`stall`](Proxy::stall))
/// and then reset every connection open then ([`reset`](Proxy::reset)): what they held
/// back is never delivered, and new connections are forwarded at once. (sd-testkit's proxy
/// cannot promise the first: a stalled connection may forward before its abort lands.)
struct Proxy {
    addr: String,
    /// (generation, stalled): a connection of an older generation is closed.
    state: watch::Sender<(u64, bool)>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = watch::Sender::new((0u64, false));
        let (states, target) = (state.clone(), target.to_string());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(&target).await else {
                    continue;
                };
                let generation = states.borrow().0;
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pipe(dr, uw, states.subscribe(), generation));
                tokio::spawn(pipe(ur, dw, states.subscribe(), generation));
            }
        });
        Proxy { addr, state }
    }

    /// Holds back everything from now on.
    fn stall(&self) {
        self.state.send_modify(|s| s.1 = true);
    }

    /// Closes every connection open now (dropping what they held back) and forwards again.
    fn reset(&self) {
        self.state.send_modify(|s| *s = (s.0 + 1, false));
    }
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<(u64, bool)>,
    generation: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = state.wait_for(|s| s.0 != generation) => return,
        };
        // Forward only while this connection's generation is current and not stalled.
        let current = match state.wait_for(|s| s.0 != generation || !s.1).await {
            Ok(s) => s.0,
            Err(_) => return,
        };
        if current != generation || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Two shared instancers behind a proxy, a writer direct; returns the watcher registry,
/// the writer client, the two services and their instancers (each showing `a`).
struct Pair {
    proxy: Proxy,
    watcher: EtcdRegistry,
    writer: Client,
    services: [String; 2],
    instancers: [EtcdInstancer; 2],
}

async fn pair(addr: &str, what: &str) -> Pair {
    let proxy = Proxy::start(addr).await;
    let prefix = format!("/sdtest/{}", unique_name(what));
    let watcher = EtcdRegistry::from_url(&format!(
        "etcd://{}?prefix={prefix}&timeout=2s&dial_timeout=1s&keep_alive=60s&watch=shared",
        proxy.addr
    ))
    .unwrap()
    .with_backoff(Backoff::new(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_millis(200),
    ));
    let writer = EtcdRegistry::from_url(&format!("etcd://{addr}?prefix={prefix}&timeout=2s"))
        .unwrap()
        .client()
        .clone();
    let services = [unique_name("s1"), unique_name("s2")];
    for s in &services {
        put(&writer, &writer.instance_key(s, "a"), "10.0.0.1:1").await;
    }
    let mut instancers = Vec::new();
    for s in &services {
        let i = watcher.etcd_instancer(&ServiceQuery::new(s.as_str())).await;
        let mut sub = i.subscribe();
        wait_for_set(&mut sub, "a", |s| ids(s) == ["a"]).await;
        instancers.push(i);
    }
    let instancers: [EtcdInstancer; 2] = instancers.try_into().unwrap();
    Pair {
        proxy,
        watcher,
        writer,
        services,
        instancers,
    }
}

async fn a_broken_stream_is_handled_once_for_all_and_loses_nothing(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let p = pair(&addr, "broken").await;
    let client = p.watcher.client().clone();
    // Changes made while the stream forwards nothing, then the connection is cut: the
    // stream breaks with them undelivered.
    p.proxy.stall();
    put(
        &p.writer,
        &p.writer.instance_key(&p.services[0], "b"),
        "10.0.0.2:2",
    )
    .await;
    p.writer
        .delete(&p.writer.instance_key(&p.services[1], "a"))
        .await
        .unwrap();
    p.proxy.reset();
    let mut s0 = p.instancers[0].subscribe();
    let mut s1 = p.instancers[1].subscribe();
    wait_for_set(&mut s0, "b", |s| ids(s) == ["a", "b"]).await;
    wait_for_set(&mut s1, "a deleted", |s| s.is_empty()).await;
    let stats = client.shared_watch_stats().unwrap();
    // Resumed from the last revision, once for both, without reading anything again.
    assert_eq!((stats.resumes, stats.full_reads), (1, 0), "{stats:?}");
    for i in &p.instancers {
        assert_eq!(
            (i.stats().resumes(), i.stats().full_reads()),
            (1, 1),
            "its own read, then one check of its keys"
        );
    }
    // And the watch goes on.
    put(
        &p.writer,
        &p.writer.instance_key(&p.services[1], "c"),
        "10.0.0.3:3",
    )
    .await;
    wait_for_set(&mut s1, "c", |s| ids(s) == ["c"]).await;
    for i in &p.instancers {
        i.stop().await;
    }
    common::delete_dir(&p.writer, &format!("{}/", p.writer.prefix())).await;
}
both_servers!(a_broken_stream_is_handled_once_for_all_and_loses_nothing);

async fn a_compaction_is_one_read_of_the_prefix_for_all(server: Server) {
    let Some(addr) = addr(server) else { return };
    // Compacting the shared server would make other tests' watches re-read: run alone.
    let _lock = sd_testkit::exclusive(server);
    let p = pair(&addr, "compact").await;
    let client = p.watcher.client().clone();
    p.proxy.stall();
    put(
        &p.writer,
        &p.writer.instance_key(&p.services[0], "b"),
        "10.0.0.2:2",
    )
    .await;
    p.writer
        .delete(&p.writer.instance_key(&p.services[1], "a"))
        .await
        .unwrap();
    put(
        &p.writer,
        &p.writer.instance_key(&p.services[1], "c"),
        "10.0.0.3:3",
    )
    .await;
    let mut raw = p.writer.etcd().await.unwrap();
    let rev = raw
        .get("compaction-probe", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    raw.compact(rev, None).await.unwrap();
    p.proxy.reset();
    let mut s0 = p.instancers[0].subscribe();
    let mut s1 = p.instancers[1].subscribe();
    wait_for_set(&mut s0, "b", |s| ids(s) == ["a", "b"]).await;
    wait_for_set(&mut s1, "c only", |s| ids(s) == ["c"]).await;
    let stats = client.shared_watch_stats().unwrap();
    assert_eq!(
        (stats.resumes, stats.full_reads),
        (0, 1),
        "the history was compacted: one read of the prefix ({stats:?})"
    );
    for i in &p.instancers {
        assert_eq!(i.stats().full_reads(), 2, "its own read, then the snapshot");
    }
    put(
        &p.writer,
        &p.writer.instance_key(&p.services[0], "d"),
        "10.0.0.4:4",
    )
    .await;
    wait_for_set(&mut s0, "d", |s| ids(s) == ["a", "b", "d"]).await;
    for i in &p.instancers {
        i.stop().await;
    }
    common::delete_dir(&p.writer, &format!("{}/", p.writer.prefix())).await;
}
both_servers!(a_compaction_is_one_read_of_the_prefix_for_all);

async fn auto_shares_beyond_the_threshold(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = registry(&addr, "auto", "&shared_after=2");
    assert_eq!(reg.watch_mode(), WatchMode::Auto { shared_after: 2 });
    let mut instancers = Vec::new();
    for i in 0..4 {
        let svc = unique_name(&format!("auto{i}"));
        instancers.push(reg.etcd_instancer(&ServiceQuery::new(svc.as_str())).await);
    }
    let shared: Vec<bool> = instancers.iter().map(EtcdInstancer::is_shared).collect();
    assert_eq!(shared, [false, false, true, true]);
    assert_eq!(reg.client().live_instancers(), 4);
    assert_eq!(reg.client().shared_watch_stats().unwrap().members, 2);
    for i in &instancers {
        i.stop().await;
    }
    assert_eq!(reg.client().live_instancers(), 0);
    assert_eq!(reg.client().shared_watch_stats(), None);
    let own = registry(&addr, "own", "&watch=own");
    let i = own.etcd_instancer(&ServiceQuery::new("x")).await;
    assert!(!i.is_shared());
    i.stop().await;
}
both_servers!(auto_shares_beyond_the_threshold);

/// A member that joined reads its own directory *after* the shared watch re-read the
/// prefix (compaction): the snapshot the watch hands it is older than its own read. It must
/// not replace the newer set with the older one (the set would go backwards) and then apply
/// again the changes that were already in its read.
async fn a_snapshot_older_than_the_own_read_never_rewinds(server: Server) {
    let Some(addr) = addr(server) else { return };
    // Compacts the server: run alone.
    let _lock = sd_testkit::exclusive(server);
    let p = Arc::new(pair(&addr, "rewind").await);
    let mut s0 = p.instancers[0].subscribe();
    let late = unique_name("late");
    let late_dir = p.writer.service_dir(&late);
    let hook_pair = p.clone();
    let (hook_late, hook_dir) = (late.clone(), late_dir.clone());
    let source = SharedSource::new(p.watcher.client().clone(), ServiceQuery::new(late.as_str()))
        .after_join(Arc::new(move |_revision| {
            let p = hook_pair.clone();
            let (_late, dir) = (hook_late.clone(), hook_dir.clone());
            Box::pin(async move {
                // Joined. Make the watch lose its history and re-read the prefix at R1 ...
                p.proxy.stall();
                put(
                    &p.writer,
                    &p.writer.instance_key(&p.services[0], "b"),
                    "10.0.0.2:2",
                )
                .await;
                let mut raw = p.writer.etcd().await.unwrap();
                let rev = raw.get("compaction-probe", None).await.unwrap();
                raw.compact(rev.header().unwrap().revision(), None)
                    .await
                    .unwrap();
                p.proxy.reset();
                // ... (the other member got its snapshot: so did this one) ...
                let mut s0 = p.instancers[0].subscribe();
                wait_for_set(&mut s0, "b by the re-read", |s| ids(s) == ["a", "b"]).await;
                // ... then write `k` (at R2 > R1): this member's own read includes it.
                put(&p.writer, &format!("{dir}k"), "10.0.0.11:11").await;
            })
        }));
    let i = EtcdInstancer::start_shared_source(source, Backoff::default()).await;
    assert_eq!(
        p.watcher.client().shared_watch_stats().unwrap().full_reads,
        1
    );
    let mut sl = i.subscribe();
    // The own read, then the snapshot handled (loaded, or a read again in its place): wait
    // for the second read to be in, a condition, bounded.
    let bound = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while i.stats().full_reads() < 2 {
        assert!(
            tokio::time::Instant::now() < bound,
            "the snapshot never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // A later key: once it is in, every message before it was handled.
    put(&p.writer, &format!("{late_dir}m"), "10.0.0.12:12").await;
    let set = wait_for_set(&mut sl, "k and m", |s| ids(s) == ["k", "m"]).await;
    assert_eq!(ids(&set), ["k", "m"]);
    assert_eq!(
        i.stats().events(),
        1,
        "only `m` is applied as an event: `k` was in the own read (the older snapshot \
         must not rewind the set and make `k` apply again)"
    );
    wait_for_set(&mut s0, "a and b", |s| ids(s) == ["a", "b"]).await;
    i.stop().await;
    for i in &p.instancers {
        i.stop().await;
    }
    common::delete_dir(&p.writer, &format!("{}/", p.writer.prefix())).await;
}
both_servers!(a_snapshot_older_than_the_own_read_never_rewinds);

/// The typed [`EtcdRegistry::etcd_instancer`] takes any service name (the `Registry` entry
/// point refuses `/`): a name of several path segments cannot be routed by the shared
/// watch (keys go to their first segment), so it keeps a watch of its own and sees its
/// changes; [`EtcdInstancer::start_shared`] with it publishes a clear error.
async fn a_service_of_several_segments_is_not_lost_by_the_shared_watch(server: Server) {
    let Some(addr) = addr(server) else { return };
    let _lock = shared(server);
    let reg = shared_registry(&addr, "segments");
    let client = reg.client().clone();
    let svc = format!("{}/b", unique_name("a"));
    let dir = client.service_dir(&svc);
    put(&client, &format!("{dir}x"), "10.0.0.1:1").await;
    let i = reg.etcd_instancer(&ServiceQuery::new(svc.as_str())).await;
    let mut sub = i.subscribe();
    wait_for_set(&mut sub, "x", |s| ids(s) == ["x"]).await;
    put(&client, &format!("{dir}y"), "10.0.0.2:2").await;
    wait_for_set(&mut sub, "y by the watch", |s| ids(s) == ["x", "y"]).await;
    i.stop().await;

    let forced = EtcdInstancer::start_shared(client.clone(), ServiceQuery::new(svc.as_str())).await;
    let Some(sd_core::Event::Error(err)) = forced.state() else {
        panic!("a name the shared watch cannot route: {:?}", forced.state());
    };
    assert!(
        matches!(err, sd_core::Error::Config(_)) && err.to_string().contains("'/'"),
        "{err}"
    );
    forced.stop().await;
    common::delete_dir(&client, &format!("{}/", client.prefix())).await;
}
both_servers!(a_service_of_several_segments_is_not_lost_by_the_shared_watch);
