//! Helpers shared by the tests against the real agent.
#![allow(dead_code)]

use std::time::Duration;

pub mod http;
pub mod secure;

use sd_consul::{ConsulInstancer, ConsulRegistrar, ConsulRegistry};
use sd_core::{
    Event, HealthCheck, Instance, InstanceSet, Instancer, Registrar, Registration, ServiceQuery,
    Subscription,
};

/// The longest any test waits for one expected state.
pub const BOUND: Duration = Duration::from_secs(20);

/// Waits (bounded by [`BOUND`]) for an instances event satisfying `pred`; returns it.
/// Error events on the way are skipped.
pub async fn wait_for_set(
    sub: &mut Subscription,
    what: &str,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    wait_for_set_within(sub, what, BOUND, pred).await
}

/// [`wait_for_set`] with another bound.
pub async fn wait_for_set_within(
    sub: &mut Subscription,
    what: &str,
    bound: Duration,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    let mut last = None;
    let found = tokio::time::timeout(bound, async {
        loop {
            match sub.next().await {
                Some(Event::Instances(set)) if pred(&set) => return set,
                Some(e) => last = Some(e),
                None => panic!("{what}: the instancer ended"),
            }
        }
    })
    .await;
    match found {
        Ok(set) => set,
        Err(_) => panic!("{what}: not seen within {bound:?}; last event: {last:?}"),
    }
}

/// Waits (bounded) for an error event; returns it.
pub async fn wait_for_error(sub: &mut Subscription, what: &str) -> sd_core::Error {
    tokio::time::timeout(BOUND, async {
        loop {
            match sub.next().await {
                Some(Event::Error(e)) => return e,
                Some(_) => continue,
                None => panic!("{what}: the instancer ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: no error within {BOUND:?}"))
}

/// The instance with `id` in `set`.
pub fn by_id<'a>(set: &'a InstanceSet, id: &str) -> Option<&'a Instance> {
    set.iter().find(|i| i.id() == id)
}

/// The ids in `set`, sorted.
pub fn ids(set: &InstanceSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|i| i.id().to_string()).collect();
    v.sort();
    v
}

/// A registration of `127.0.0.1:port` with id `id` under `service`, with a TTL check.
pub fn ttl_registration(service: &str, port: u16, id: &str, ttl: Duration) -> Registration {
    Registration::new(service, Instance::builder("127.0.0.1", port).id(id).build())
        .check(HealthCheck::Ttl(ttl))
}

/// A registered instance and a passing-only watch of its service that has seen it.
pub struct Watched {
    /// The registrar, registered.
    pub registrar: ConsulRegistrar,
    /// A passing-only instancer on the registration's service.
    pub instancer: ConsulInstancer,
    /// A subscription to `instancer`, past the state that first held the instance.
    pub sub: Subscription,
    /// That state.
    pub set: InstanceSet,
}

/// Registers `registration`, starts a passing-only instancer on its service and waits
/// (bounded by [`BOUND`]) until the instance is in it.
pub async fn register_and_watch(reg: &ConsulRegistry, registration: Registration) -> Watched {
    let service = registration.service.clone();
    let id = registration.instance.id().to_string();
    let registrar = reg.consul_registrar(registration).unwrap();
    registrar.register().await.unwrap();
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "registered", |s| by_id(s, &id).is_some()).await;
    Watched {
        registrar,
        instancer,
        sub,
        set,
    }
}

/// A TCP proxy on 127.0.0.1 in front of the real agent that forwards every request but,
/// while [`hold`](Self::hold) is on, throws the agent's answers away: the agent applies a
/// request and the client never hears back (what a timeout after the fact looks like).
pub struct HoldingProxy {
    /// `host:port` to give the client.
    pub addr: String,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldingProxy {
    /// Starts a proxy to `upstream`, holding answers back from the start.
    pub async fn start(upstream: &str) -> HoldingProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let upstream = upstream.to_string();
        let h = hold.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(agent) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut agent_rx, mut agent_tx) = agent.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut agent_tx).await;
                });
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        match agent_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) if !h.load(Ordering::SeqCst) => {
                                if client_tx.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {} // held: the client never sees it
                        }
                    }
                });
            }
        });
        HoldingProxy { addr, hold, task }
    }

    /// Holds the answers back (`true`) or forwards them (`false`), from the next bytes on.
    pub fn hold(&self, yes: bool) {
        self.hold.store(yes, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls the agent (bounded by [`BOUND`]) until it knows (`true`) or no longer knows
/// (`false`) the service `id`.
pub async fn wait_agent_knows(client: &sd_consul::Client, id: &str, knows: bool) {
    tokio::time::timeout(BOUND, async {
        loop {
            if client.agent_service(id).await.unwrap().is_some() == knows {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the agent {} {id:?} within {BOUND:?}",
            if knows { "never got" } else { "still has" }
        )
    });
}

/// `body` gzip-compressed (what an agent sends when asked for gzip).
pub fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}
