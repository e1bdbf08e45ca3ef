//! Registries as they run in production (issue 20): three-member clusters on 127.0.0.1
//! (`scripts/registries up etcd-cluster zk-ensemble consul-cluster eureka-peers`), and a
//! client that lives through the loss of a member.
//!
//! For each backend a live client — a registrar, an instancer, a `DefaultEndpointer` under a
//! steady pick load — goes through three faults, and the test checks what the client sees:
//! - **the leader dies** (SIGKILL; Eureka: the peer the client talks to first) → the
//!   endpointer is never empty, no instance appears twice, the registration made before the
//!   fault stays, one made during it arrives (no event lost);
//! - **a member pauses longer than the session / lease / TTL** (SIGSTOP) → the registration
//!   survives (every registry here promises that while a majority, or a peer, still serves);
//! - **a rolling restart of every member** → the client never publishes an empty set and
//!   loses no registration.
//!
//! `SD_CLUSTER_REPS=N` repeats each fault N times (default 1) and prints one
//! `cluster-figure` line per run (recovery times): docs/TESTING.md, "Clusters", has the
//! table made from 10 repetitions. No wall-clock time is asserted; every wait is bounded.
#![cfg(all(
    feature = "consul",
    feature = "etcd",
    feature = "zk",
    feature = "eureka"
))]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_testkit::cluster::{self, Cluster, Member};
use sd_testkit::unique_name;
use sdkit::{
    BoxError, DefaultEndpointer, Endpointer, Instance, Instancer, Registrar, Registration,
    Registry, ServiceQuery,
};

/// Bound of every wait: a fault and its recovery.
const BOUND: Duration = Duration::from_secs(90);

/// A cluster and how the client reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Every member's address in the URL.
    Etcd,
    /// Every server's address in the URL.
    Zk,
    /// The client agent (Consul's recommended set-up), which follows the servers itself.
    ConsulAgent,
    /// The three servers' addresses in the URL, no client agent: the client moves itself.
    ConsulServers,
    /// Both peers' addresses in the URL.
    Eureka,
}

impl Variant {
    fn cluster(self) -> Cluster {
        match self {
            Variant::Etcd => Cluster::Etcd,
            Variant::Zk => Cluster::Zk,
            Variant::ConsulAgent | Variant::ConsulServers => Cluster::Consul,
            Variant::Eureka => Cluster::Eureka,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::ConsulAgent => "consul-cluster(client-agent)",
            Variant::ConsulServers => "consul-cluster(servers)",
            v => v.cluster().name(),
        }
    }
}

/// The URL the application uses for `cluster`, with short leases so that a pause can
/// outlast them: every member's address, or (Consul) the client agent.
fn client_url(v: Variant, addrs: &[String]) -> String {
    match v {
        Variant::Etcd => format!("etcd://{}?prefix=/sdkit-cluster&ttl=3s", addrs.join(",")),
        Variant::Zk => format!("zk://{}/sdkit-cluster?session_timeout=4s", addrs.join(",")),
        Variant::ConsulAgent => {
            let agent = cluster::require_consul_client().expect("the client agent");
            format!("consul://{agent}?wait=2s")
        }
        Variant::ConsulServers => format!("consul://{}?wait=2s&timeout=2s", addrs.join(",")),
        Variant::Eureka => {
            let hosts: Vec<&str> = addrs
                .iter()
                .map(|a| a.trim_start_matches("http://").trim_end_matches("/eureka"))
                .collect();
            format!(
                "eureka://{}/eureka?poll=1s&renew=1s&lease=4s&timeout=2s",
                hosts.join(",")
            )
        }
    }
}

/// How long a pause must last to outlast the session / lease / TTL of [`client_url`].
fn beyond_lease(v: Variant) -> Duration {
    match v.cluster() {
        Cluster::Etcd => Duration::from_secs(5),
        Cluster::Zk => Duration::from_secs(6),
        // The client agent holds the registration; a server pause outlasts the raft
        // leader lease and election timeouts many times over.
        Cluster::Consul => Duration::from_secs(5),
        Cluster::Eureka => Duration::from_secs(6),
    }
}

/// The member a fault hits: the leader, or for Eureka (no leader) the first peer, the one
/// the client reads from and renews with while it answers.
async fn target(c: Cluster) -> Member {
    if c == Cluster::Eureka {
        return c.members()[0];
    }
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(m) = cluster::leader(c).await.unwrap() {
            return m;
        }
        assert!(Instant::now() < deadline, "{c}: no leader within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn factory(i: &Instance) -> Result<String, BoxError> {
    Ok(i.id().to_string())
}

/// A live client: the registrar of `base`, an instancer, an endpointer and a task picking
/// from it every 2 ms, which records every pick that found no endpoint.
struct Live {
    cluster: &'static str,
    url: String,
    registry: Arc<dyn Registry>,
    service: String,
    base: Arc<dyn Registrar>,
    instancer: Arc<dyn Instancer>,
    endpointer: Arc<DefaultEndpointer<String>>,
    empty_picks: Arc<AtomicU64>,
    picks: Arc<AtomicU64>,
    /// Every set the instancer published (addresses), with any duplicate address counted.
    seen: Arc<Mutex<Vec<Vec<String>>>>,
    duplicates: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn instance(service: &str, port: u16) -> Instance {
    Instance::builder("127.0.0.1", port)
        .id(format!("{service}-{port}"))
        .build()
}

impl Live {
    async fn start(v: Variant, addrs: &[String], base_port: u16) -> Live {
        let c = v.cluster();
        // The leader first: the client connects to the first address, so killing or
        // pausing the leader also cuts the member the client is connected to.
        let mut addrs = addrs.to_vec();
        if c != Cluster::Eureka {
            let leader = target(c).await;
            addrs.rotate_left(leader.index() - 1);
        }
        let url = client_url(v, &addrs);
        let registry: Arc<dyn Registry> = sdkit::connect(&url).unwrap();
        let service = unique_name(&format!("cluster-{}", c.name()));
        let base = registry
            .registrar(Registration::new(
                service.as_str(),
                instance(&service, base_port),
            ))
            .await
            .unwrap();
        base.register().await.unwrap();
        let instancer = registry
            .instancer(&ServiceQuery::new(service.as_str()))
            .await
            .unwrap();
        let endpointer = Arc::new(DefaultEndpointer::new(&instancer, factory));
        let stop = Arc::new(AtomicBool::new(false));
        let (empty_picks, picks) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let duplicates = Arc::new(AtomicU64::new(0));
        let mut live = Live {
            cluster: v.label(),
            url: url.clone(),
            registry,
            service,
            base,
            instancer,
            endpointer,
            empty_picks,
            picks,
            seen,
            duplicates,
            stop,
            tasks: Vec::new(),
        };
        let want = [format!("{}-{base_port}", live.service)];
        live.wait_for(&want, "the first registration").await;
        live.spawn_observers();
        live
    }

    fn spawn_observers(&mut self) {
        let (ep, stop, empty, picks) = (
            self.endpointer.clone(),
            self.stop.clone(),
            self.empty_picks.clone(),
            self.picks.clone(),
        );
        self.tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let snapshot = ep.endpoints();
                match snapshot.get() {
                    Ok(list) if !list.is_empty() => {}
                    _ => {
                        empty.fetch_add(1, Ordering::Relaxed);
                    }
                }
                picks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
        let mut sub = self.instancer.subscribe();
        let (seen, dups, stop) = (
            self.seen.clone(),
            self.duplicates.clone(),
            self.stop.clone(),
        );
        self.tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(event)) =
                    tokio::time::timeout(Duration::from_millis(200), sub.next()).await
                else {
                    continue;
                };
                if event.as_instances().is_some() {
                    // Sets are de-duplicated by id; the same address twice would still be
                    // one instance served twice.
                    let addrs = event.addrs();
                    let unique: BTreeSet<&String> = addrs.iter().collect();
                    if unique.len() != addrs.len() {
                        dups.fetch_add(1, Ordering::Relaxed);
                    }
                    seen.lock().unwrap().push(addrs);
                }
            }
        }));
    }

    /// Waits until the endpointer serves exactly `ids`; the time it took.
    async fn wait_for(&self, ids: &[String], what: &str) -> Duration {
        let t0 = Instant::now();
        let mut want: Vec<String> = ids.to_vec();
        want.sort();
        let mut changes = self.endpointer.changes();
        let current = |ep: &DefaultEndpointer<String>| -> Vec<String> {
            let mut got: Vec<String> = ep
                .endpoints()
                .get()
                .map(|l| l.iter().map(|e| e.value().clone()).collect())
                .unwrap_or_default();
            got.sort();
            got
        };
        let r = tokio::time::timeout(BOUND, async {
            while current(&self.endpointer) != want {
                changes.changed().await;
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "{}: {what}: the endpointer did not serve {want:?} within {BOUND:?}; it serves {:?}",
            self.cluster,
            current(&self.endpointer)
        );
        t0.elapsed()
    }

    /// Registers `port` through a new registrar of the same registry, retrying until the
    /// cluster accepts it (the application's own retry); the registrar and the time it took.
    async fn register_retrying(&self, port: u16) -> (Arc<dyn Registrar>, Duration) {
        let t0 = Instant::now();
        let registrar = self
            .registry
            .registrar(Registration::new(
                self.service.as_str(),
                instance(&self.service, port),
            ))
            .await
            .unwrap();
        loop {
            match registrar.register().await {
                Ok(()) => return (registrar, t0.elapsed()),
                Err(e) => {
                    eprintln!("{}: register at {:?}: {e}", self.cluster, t0.elapsed());
                    assert!(
                        t0.elapsed() < BOUND,
                        "{}: register never succeeded within {BOUND:?}: {e}",
                        self.cluster
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn id(&self, port: u16) -> String {
        format!("{}-{port}", self.service)
    }

    /// The faults so far never emptied the endpointer nor published a duplicate.
    fn check_invariants(&self, what: &str) {
        let empty = self.empty_picks.load(Ordering::Relaxed);
        let picks = self.picks.load(Ordering::Relaxed);
        assert_eq!(
            empty, 0,
            "{}: {what}: {empty} of {picks} picks found no endpoint",
            self.cluster
        );
        assert!(picks > 0, "the pick task ran");
        let seen = self.seen.lock().unwrap();
        assert_eq!(
            self.duplicates.load(Ordering::Relaxed),
            0,
            "{}: {what}: an instance was published twice in one set: {seen:?}",
            self.cluster
        );
        assert!(
            seen.iter().all(|s| !s.is_empty()),
            "{}: {what}: an empty set was published: {seen:?}",
            self.cluster
        );
    }

    /// Stops the client and deregisters; then a fresh client without empty-set protection
    /// must find nothing left of the service anywhere in the cluster (Consul's catalog lists
    /// every node's copy: a registration left at an agent the client moved away from shows).
    async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        let deregistered = self.base.deregister().await;
        self.endpointer.close().await;
        self.instancer.stop().await;
        assert!(
            deregistered.is_ok(),
            "{}: deregister: {deregistered:?}",
            self.cluster
        );
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let fresh = sdkit::connect(&format!("{}{sep}protect=false", self.url)).unwrap();
        let check = fresh
            .instancer(&ServiceQuery::new(self.service.as_str()))
            .await
            .unwrap();
        let mut sub = check.subscribe();
        let mut last = Vec::new();
        let empty = tokio::time::timeout(BOUND, async {
            while let Some(event) = sub.next().await {
                if event.as_instances().is_some() {
                    last = event.addrs();
                    if last.is_empty() {
                        return;
                    }
                }
            }
        })
        .await;
        check.stop().await;
        assert!(
            empty.is_ok(),
            "{}: {} still registered after deregister: {last:?}",
            self.cluster,
            self.service
        );
    }
}

/// Waits until every member of `c` serves again and (etcd, ZooKeeper, Consul) a leader is
/// elected.
async fn settle(c: Cluster) {
    for m in c.members() {
        m.wait_ready().await.unwrap();
    }
    if c != Cluster::Eureka {
        let _ = target(c).await;
    }
}

fn reps() -> usize {
    std::env::var("SD_CLUSTER_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, 50)
}

/// The leader dies: the registration made before stays, one made during the outage
/// arrives, the endpointer never empties. Each repetition starts a new client connected to
/// the leader first (etcd, ZooKeeper: its address comes first), so the member that dies is
/// also the one the client talks to. One `cluster-figure` line per repetition.
async fn leader_dies(v: Variant, port: u16) {
    let c = v.cluster();
    let Some(addrs) = cluster::require(c) else {
        return;
    };
    let _lock = cluster::exclusive(c);
    for rep in 0..reps() {
        settle(c).await;
        let live = Live::start(v, &addrs, port).await;
        let victim = target(c).await;
        let t0 = Instant::now();
        victim.kill().await.unwrap();
        let (registrar, registered) = live.register_retrying(port + 1).await;
        let want = [live.id(port), live.id(port + 1)];
        let after_register = live
            .wait_for(&want, "the registration made during the outage")
            .await;
        let discovered = t0.elapsed();
        live.check_invariants("the leader died");
        println!(
            "cluster-figure backend={} fault=leader-killed rep={rep} victim={victim} \
             registrar_ms={} instancer_ms={} served_after_register_ms={} events_lost=0 \
             registrations_lost=0",
            v.label(),
            registered.as_millis(),
            discovered.as_millis(),
            after_register.as_millis()
        );
        victim.restart().await.unwrap();
        settle(c).await;
        registrar.deregister().await.unwrap();
        live.wait_for(&[live.id(port)], "the deregistration after the restart")
            .await;
        live.check_invariants("after the restart");
        live.finish().await;
    }
}

/// A member pauses longer than the session / lease / TTL: the registration survives. The
/// member is the leader, the one the client talks to (etcd, ZooKeeper: first address;
/// Eureka: the first peer).
async fn member_pauses_beyond_the_lease(v: Variant, port: u16) {
    let c = v.cluster();
    let Some(addrs) = cluster::require(c) else {
        return;
    };
    let _lock = cluster::exclusive(c);
    for rep in 0..reps() {
        settle(c).await;
        let live = Live::start(v, &addrs, port).await;
        let victim = target(c).await;
        victim.pause().await.unwrap();
        tokio::time::sleep(beyond_lease(v)).await;
        // Still registered and served while the member is frozen...
        let during = live.wait_for(&[live.id(port)], "during the pause").await;
        // ...a registration made now arrives...
        let t0 = Instant::now();
        let (registrar, registered) = live.register_retrying(port + 1).await;
        let want = [live.id(port), live.id(port + 1)];
        live.wait_for(&want, "a registration during the pause")
            .await;
        let discovered = t0.elapsed();
        // ...and both stay once the member is back (Eureka: the resumed peer may evict the
        // leases it missed; renewals replicated from the other peer bring them back).
        victim.resume().await.unwrap();
        victim.wait_ready().await.unwrap();
        live.wait_for(&want, "after the pause").await;
        live.check_invariants("a member paused beyond the lease");
        println!(
            "cluster-figure backend={} fault=paused-beyond-lease rep={rep} victim={victim} \
             pause_ms={} served_during_ms={} registrar_ms={} instancer_ms={} events_lost=0 \
             registrations_lost=0",
            v.label(),
            beyond_lease(v).as_millis(),
            during.as_millis(),
            registered.as_millis(),
            discovered.as_millis()
        );
        registrar.deregister().await.unwrap();
        live.wait_for(&[live.id(port)], "the deregistration").await;
        live.check_invariants("after the pause");
        live.finish().await;
    }
}

/// Every member restarted, one at a time: never an empty set, no registration lost, and
/// the registrar still works afterwards. One `cluster-figure` line per repetition.
async fn rolling_restart(v: Variant, port: u16) {
    let c = v.cluster();
    let Some(addrs) = cluster::require(c) else {
        return;
    };
    let _lock = cluster::exclusive(c);
    for rep in 0..reps() {
        settle(c).await;
        let live = Live::start(v, &addrs, port).await;
        let t0 = Instant::now();
        for m in c.members() {
            m.restart().await.unwrap();
            settle(c).await;
            live.wait_for(&[live.id(port)], &format!("after restarting {m}"))
                .await;
        }
        let total = t0.elapsed();
        let (registrar, registered) = live.register_retrying(port + 1).await;
        live.wait_for(
            &[live.id(port), live.id(port + 1)],
            "after the rolling restart",
        )
        .await;
        live.check_invariants("a rolling restart");
        println!(
            "cluster-figure backend={} fault=rolling-restart rep={rep} total_ms={} \
             register_after_ms={} events_lost=0 registrations_lost=0",
            v.label(),
            total.as_millis(),
            registered.as_millis()
        );
        registrar.deregister().await.unwrap();
        live.wait_for(&[live.id(port)], "the deregistration").await;
        live.finish().await;
    }
}

macro_rules! cluster_tests {
    ($($name:ident => $cluster:expr, $port:expr;)*) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn fault_leader_dies() {
                    leader_dies($cluster, $port).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn fault_member_pauses_beyond_the_lease() {
                    member_pauses_beyond_the_lease($cluster, $port + 100).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn fault_rolling_restart() {
                    rolling_restart($cluster, $port + 200).await;
                }
            }
        )*
    };
}

cluster_tests! {
    etcd => Variant::Etcd, 26000;
    zk => Variant::Zk, 26300;
    consul_agent => Variant::ConsulAgent, 26600;
    consul_servers => Variant::ConsulServers, 27200;
    eureka => Variant::Eureka, 26900;
}
