//! Attack on the etcd watch resume (commits c603c19, db7f8d4): `PrefixSource::resume`
//! trusts "same cluster id and a header revision not behind" to mean "same store". A single
//! etcd restarted without its data keeps its cluster id (member and cluster ids are hashes of
//! the peer URLs and the cluster token), so once it has been written past the instancer's
//! revision, the resume succeeds and the set keeps keys that no longer exist.

mod common;

use std::time::{Duration, Instant};

use common::{ids, wait_for_set_within};
use sd_core::{Instancer, ServiceQuery};
use sd_etcdv3::EtcdRegistry;
use sd_testkit::{exclusive, unique_name, Server};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(60);

/// A TCP proxy to `target` that never passes on the upstream side closing: the downstream
/// connection stays open (silent) until [`Proxy::cut`] resets every connection open then,
/// like a connection whose peer vanished without a FIN reaching us (a NAT, a partition).
/// New connections after a cut are forwarded normally.
struct Proxy {
    addr: String,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (cut, _) = watch::channel(0u64);
        let cuts = cut.clone();
        let target = target.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let rx = cuts.subscribe();
                tokio::spawn(pipe(down, target.clone(), rx));
            }
        });
        Proxy { addr, cut }
    }

    /// Resets every connection open now.
    fn cut(&self) {
        self.cut.send_modify(|c| *c += 1);
    }
}

async fn pipe(mut down: TcpStream, target: String, mut cut: watch::Receiver<u64>) {
    if let Ok(mut up) = TcpStream::connect(&target).await {
        let (mut dr, mut dw) = down.split();
        let (mut ur, mut uw) = up.split();
        let fwd = async {
            let _ = tokio::io::copy(&mut dr, &mut uw).await;
            futures::future::pending::<()>().await
        };
        let back = async {
            let _ = tokio::io::copy(&mut ur, &mut dw).await;
            futures::future::pending::<()>().await
        };
        tokio::select! {
            _ = async { tokio::join!(fwd, back) } => {}
            _ = cut.changed() => {}
        }
    } else {
        let _ = cut.changed().await;
    }
    #[allow(deprecated)]
    let _ = down.set_linger(Some(Duration::ZERO));
    drop(down);
}

/// A TCP proxy to `target` that can be frozen: while frozen it forwards nothing (in either
/// direction) but keeps every connection open, like a hung member.
struct FreezableProxy {
    addr: String,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableProxy {
    async fn start(target: &str) -> FreezableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = frozen.clone();
        let target = target.to_string();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let f = f.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(
                        copy_unless_frozen(dr, uw, f.clone()),
                        copy_unless_frozen(ur, dw, f)
                    );
                });
            }
        });
        FreezableProxy { addr, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn copy_unless_frozen(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn header(client: &sd_etcdv3::Client) -> (u64, i64) {
    let deadline = Instant::now() + BOUND;
    loop {
        match client.etcd().await {
            Ok(mut c) => match c.get("/attack20b-probe", None).await {
                Ok(r) => {
                    let h = r.header().unwrap();
                    return (h.cluster_id(), h.revision());
                }
                Err(e) => assert!(Instant::now() < deadline, "get: {e}"),
            },
            Err(e) => assert!(Instant::now() < deadline, "connect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put_retrying(client: &sd_etcdv3::Client, key: &str, value: &[u8]) {
    let deadline = Instant::now() + BOUND;
    while let Err(e) = client.put(key, value, 0).await {
        assert!(Instant::now() < deadline, "put {key}: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// etcd (3.4, a single server) loses its data and is written past the instancer's revision
/// before the instancer's watch notices: the watch resumes there (same cluster id, revision
/// not behind) and the instancer keeps `a`, which no longer exists, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_resume_on_a_server_restarted_empty_and_written_past_keeps_a_deleted_key() {
    let Some(addr) = sd_testkit::require(Server::Etcd) else {
        return;
    };
    let _lock = exclusive(Server::Etcd);
    sd_testkit::wait_ready(Server::Etcd).await.unwrap();
    // Start from a small revision, so writing past it is quick.
    sd_testkit::restart_empty(Server::Etcd).await.unwrap();

    let proxy = Proxy::start(&addr).await;
    let prefix = format!("/sdtest/{}", unique_name("attack20b-empty"));
    // A long keep-alive: the held connection is not given up by pings during the test.
    let watcher = EtcdRegistry::from_url(&format!(
        "etcd://{}?prefix={prefix}&timeout=2s&dial_timeout=1s&keep_alive=120s",
        proxy.addr
    ))
    .unwrap();
    let writer = EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix={prefix}&timeout=2s&dial_timeout=1s"
    ))
    .unwrap();
    let service = unique_name("wiped");
    let dir = writer.client().service_dir(&service);
    put_retrying(writer.client(), &format!("{dir}a"), b"10.0.0.1:80").await;
    let instancer = watcher
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a", BOUND, |s| ids(s) == ["a"]).await;
    let (cluster_before, applied) = header(writer.client()).await;

    // The server loses its data; `a` is gone.
    sd_testkit::restart_empty(Server::Etcd).await.unwrap();
    let (cluster_after, fresh) = header(writer.client()).await;
    eprintln!(
        "before: cluster {cluster_before:x} revision {applied}; after the wipe: cluster \
         {cluster_after:x} revision {fresh}"
    );
    // Written past the instancer's revision elsewhere under the prefix.
    for i in 0..=(applied - fresh + 2) {
        put_retrying(
            writer.client(),
            &format!("{prefix}/filler"),
            i.to_string().as_bytes(),
        )
        .await;
    }
    let (_, now) = header(writer.client()).await;
    assert!(now > applied, "written past: {now} > {applied}");
    assert_eq!(
        writer.client().key_lease(&format!("{dir}a")).await.unwrap(),
        None,
        "a is gone from etcd"
    );

    // Now the instancer's connection breaks; it reconnects to the wiped server.
    proxy.cut();
    put_retrying(writer.client(), &format!("{dir}b"), b"10.0.0.2:80").await;
    let set =
        wait_for_set_within(&mut sub, "b", BOUND, |s| ids(s).contains(&"b".to_string())).await;
    // Give a full read (if any) the time to run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let current = match sub.current() {
        Some(sd_core::Event::Instances(s)) => s,
        _ => set,
    };
    let stats = instancer.stats();
    eprintln!(
        "set {:?}; resumes {}, full reads {}",
        ids(&current),
        stats.resumes(),
        stats.full_reads()
    );
    instancer.stop().await;
    let _ = writer.client().delete(&format!("{dir}b")).await;
    let _ = writer.client().delete(&format!("{prefix}/filler")).await;
    assert_eq!(
        ids(&current),
        ["b"],
        "the instancer shows only what etcd holds: `a` was lost with the server's data \
         ({} resumes, {} full reads)",
        stats.resumes(),
        stats.full_reads()
    );
}

/// A listener that accepts connections and never answers (a frozen endpoint).
async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A move made before the watch was opened (the first read timed out at a frozen first
/// endpoint and the client moved on) is still unseen by the source when its first watch
/// starts on the good endpoint: that healthy, brand-new watch is torn down and "resumed" at
/// once, for nothing (one more watch, a quick restart counted). `resync` never marks the
/// moves seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_before_the_first_watch_resumes_the_healthy_watch_for_nothing() {
    let Some(addr) = sd_testkit::require(Server::Etcd) else {
        return;
    };
    let _lock = sd_testkit::shared(Server::Etcd);
    let hole = black_hole().await;
    let prefix = format!("/sdtest/{}", unique_name("attack20b-early-move"));
    let registry = EtcdRegistry::from_url(&format!(
        "etcd://{hole},{addr}?prefix={prefix}&timeout=2s&dial_timeout=1s"
    ))
    .unwrap();
    let writer = EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix={prefix}&timeout=2s&dial_timeout=1s"
    ))
    .unwrap();
    let service = unique_name("early");
    let dir = writer.client().service_dir(&service);
    put_retrying(writer.client(), &format!("{dir}a"), b"10.0.0.1:80").await;
    let mut moves = registry.client().moves();
    let instancer = registry
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a", BOUND, |s| ids(s) == ["a"]).await;
    let moved = moves.borrow_and_update().0;
    put_retrying(writer.client(), &format!("{dir}b"), b"10.0.0.2:80").await;
    wait_for_set_within(&mut sub, "a and b", BOUND, |s| ids(s) == ["a", "b"]).await;
    let stats = instancer.stats();
    eprintln!(
        "moves {moved}, resumes {}, full reads {}, events {}",
        stats.resumes(),
        stats.full_reads(),
        stats.events()
    );
    instancer.stop().await;
    for k in ["a", "b"] {
        let _ = writer.client().delete(&format!("{dir}{k}")).await;
    }
    assert!(
        moved >= 1,
        "the client moved off the frozen endpoint: {moved}"
    );
    assert_eq!(
        stats.resumes(),
        0,
        "no watch broke after the first one was opened on the good endpoint: nothing to resume"
    );
}

/// Several instancers share one client whose endpoints are a frozen one and a good one.
/// A move makes every watch resume on the next endpoint; each resume that lands on the
/// frozen one times out there and moves the client again (the timeout path gives up the
/// *current* connection, which another instancer may just have opened on the good one),
/// which makes every watch resume again... The moves must settle once every watch is on the
/// good endpoint, and a change must then arrive promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_settle_when_several_instancers_share_a_client_with_a_frozen_endpoint() {
    let Some(addr) = sd_testkit::require(Server::Etcd) else {
        return;
    };
    let _lock = sd_testkit::shared(Server::Etcd);
    let hole = black_hole().await;
    let prefix = format!("/sdtest/{}", unique_name("attack20b-cascade"));
    let registry = EtcdRegistry::from_url(&format!(
        "etcd://{hole},{addr}?prefix={prefix}&timeout=2s&dial_timeout=1s"
    ))
    .unwrap();
    let writer = EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix={prefix}&timeout=2s&dial_timeout=1s"
    ))
    .unwrap();
    let services: Vec<String> = (0..4)
        .map(|i| unique_name(&format!("cascade{i}")))
        .collect();
    for s in &services {
        let dir = writer.client().service_dir(s);
        put_retrying(writer.client(), &format!("{dir}a"), b"10.0.0.1:80").await;
    }
    let moves = registry.client().moves();
    let queries: Vec<ServiceQuery> = services
        .iter()
        .map(|s| ServiceQuery::new(s.as_str()))
        .collect();
    let instancers =
        futures::future::join_all(queries.iter().map(|q| registry.etcd_instancer(q))).await;
    let mut subs: Vec<_> = instancers.iter().map(|i| i.subscribe()).collect();
    for sub in &mut subs {
        wait_for_set_within(sub, "a", BOUND, |s| ids(s) == ["a"]).await;
    }
    // Let whatever cascade there is run for a while.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let m0 = moves.borrow().0;
    let r0: Vec<u64> = instancers.iter().map(|i| i.stats().resumes()).collect();
    let f0: Vec<u64> = instancers.iter().map(|i| i.stats().full_reads()).collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let m1 = moves.borrow().0;
    let r1: Vec<u64> = instancers.iter().map(|i| i.stats().resumes()).collect();
    let f1: Vec<u64> = instancers.iter().map(|i| i.stats().full_reads()).collect();
    eprintln!("moves {m0} -> {m1}; resumes {r0:?} -> {r1:?}; full reads {f0:?} -> {f1:?}");
    let start = Instant::now();
    for s in &services {
        let dir = writer.client().service_dir(s);
        put_retrying(writer.client(), &format!("{dir}b"), b"10.0.0.2:80").await;
    }
    for sub in &mut subs {
        wait_for_set_within(sub, "a and b", BOUND, |s| ids(s) == ["a", "b"]).await;
    }
    let latency = start.elapsed();
    eprintln!("b seen by all after {latency:?}");
    for i in &instancers {
        i.stop().await;
    }
    for s in &services {
        let dir = writer.client().service_dir(s);
        for k in ["a", "b"] {
            let _ = writer.client().delete(&format!("{dir}{k}")).await;
        }
    }
    assert_eq!(m1, m0, "the client kept moving: {m0} -> {m1} moves in 10 s");
    assert_eq!(r1, r0, "the watches kept resuming");
    assert!(
        latency < Duration::from_secs(2),
        "a change took {latency:?}"
    );
}

/// The same with the good endpoint first: the watches are all on it, it freezes for one
/// request's timeout (the client moves to the frozen endpoint), then thaws. Every watch
/// resumes on the frozen endpoint, times out there, moves the client again (possibly away
/// from the good endpoint another instancer just reached)... The moves must settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_settle_after_a_brief_freeze_with_several_instancers_on_one_client() {
    let Some(addr) = sd_testkit::require(Server::Etcd) else {
        return;
    };
    let _lock = sd_testkit::shared(Server::Etcd);
    let hole = black_hole().await;
    let good = FreezableProxy::start(&addr).await;
    let prefix = format!("/sdtest/{}", unique_name("attack20b-cascade2"));
    let registry = EtcdRegistry::from_url(&format!(
        "etcd://{},{hole}?prefix={prefix}&timeout=2s&dial_timeout=1s&keep_alive=120s",
        good.addr
    ))
    .unwrap();
    let writer = EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix={prefix}&timeout=2s&dial_timeout=1s"
    ))
    .unwrap();
    let services: Vec<String> = (0..8)
        .map(|i| unique_name(&format!("cascade{i}")))
        .collect();
    for s in &services {
        let dir = writer.client().service_dir(s);
        put_retrying(writer.client(), &format!("{dir}a"), b"10.0.0.1:80").await;
    }
    let moves = registry.client().moves();
    let queries: Vec<ServiceQuery> = services
        .iter()
        .map(|s| ServiceQuery::new(s.as_str()))
        .collect();
    let instancers =
        futures::future::join_all(queries.iter().map(|q| registry.etcd_instancer(q))).await;
    let mut subs: Vec<_> = instancers.iter().map(|i| i.subscribe()).collect();
    for sub in &mut subs {
        wait_for_set_within(sub, "a", BOUND, |s| ids(s) == ["a"]).await;
    }
    // Each round: one brief freeze (one request's timeout), 10 s to settle, then 6 s in which
    // nothing may move. Whether the storm starts is a race: a few rounds.
    let mut storm = None;
    for round in 0..4 {
        good.freeze(true);
        let e = registry
            .client()
            .put(&format!("{prefix}/x"), b"x", 0)
            .await
            .expect_err("the frozen endpoint times out");
        good.freeze(false);
        eprintln!(
            "round {round}: put while frozen: {e}; moves {}",
            moves.borrow().0
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        let m0 = moves.borrow().0;
        let r0: Vec<u64> = instancers.iter().map(|i| i.stats().resumes()).collect();
        let f0: Vec<u64> = instancers.iter().map(|i| i.stats().full_reads()).collect();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let m1 = moves.borrow().0;
        let r1: Vec<u64> = instancers.iter().map(|i| i.stats().resumes()).collect();
        let f1: Vec<u64> = instancers.iter().map(|i| i.stats().full_reads()).collect();
        eprintln!(
            "round {round}: moves {m0} -> {m1}; resumes {r0:?} -> {r1:?}; full reads {f0:?} -> {f1:?}"
        );
        if m1 != m0 {
            storm = Some(format!(
                "round {round}: 10 s after a 2 s freeze the client still moved {m0} -> {m1} \
                 in 6 s; resumes {r0:?} -> {r1:?}; full reads {f0:?} -> {f1:?}"
            ));
            break;
        }
    }
    let start = Instant::now();
    for s in &services {
        let dir = writer.client().service_dir(s);
        put_retrying(writer.client(), &format!("{dir}b"), b"10.0.0.2:80").await;
    }
    for sub in &mut subs {
        wait_for_set_within(sub, "a and b", BOUND, |s| ids(s) == ["a", "b"]).await;
    }
    let latency = start.elapsed();
    eprintln!("b seen by all after {latency:?}");
    for i in &instancers {
        i.stop().await;
    }
    for s in &services {
        let dir = writer.client().service_dir(s);
        for k in ["a", "b"] {
            let _ = writer.client().delete(&format!("{dir}{k}")).await;
        }
    }
    let _ = writer.client().delete(&format!("{prefix}/x")).await;
    assert!(
        latency < Duration::from_secs(2),
        "a change took {latency:?} ({storm:?})"
    );
    assert!(
        storm.is_none(),
        "a move storm: {}",
        storm.unwrap_or_default()
    );
}
