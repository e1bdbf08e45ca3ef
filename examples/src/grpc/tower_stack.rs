//! The gRPC client on tower's own balancer: sdkit's discovery as a tower `Discover`
//! ([`sd_lb::tower::Discover`]) → `tower::load::PeakEwmaDiscover` →
//! `tower::balance::p2c::Balance` → `tower::buffer::Buffer` (the balancer is not `Clone`),
//! handed to the generated `GreeterClient` as its transport.
//!
//! Two sdkit pieces make it survive a crash without a failed call:
//! - each instance's `Channel` is wrapped in [`Eject`]: a call that fails at the transport
//!   (the connection was cut or refused) makes that endpoint unready for a while, so P2C
//!   stops picking it at once (peak EWMA alone would prefer it: refusals are its fastest
//!   answers) and discovery drops it later. Measured with `Eject` turned off
//!   (`consecutive_failures: 0`): in the phase where the server is killed, 80 retries and
//!   8 failed calls of 200 (four attempts were not enough); with it, 1–2 retries and none;
//! - the call is retried above the generated client, where the request is a cloneable
//!   message (below it, a tonic request is an HTTP body that cannot be replayed), only for the
//!   codes of [`retryable`](super::retryable), within a deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_lb::tower::{Discover, Eject, EjectConfig, EjectHandle};
use sdkit::{BoxError, DefaultEndpointer, Instance, Instancer};
use tonic::codegen::http;
use tonic::transport::Channel;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::util::BoxCloneSyncService;

use super::pb::greeter_client::GreeterClient;
use super::pb::{HelloReply, HelloRequest};
use super::retryable;

/// The client's transport: the buffered tower balancer, boxed (its full type is long).
pub type Transport = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    BoxError,
>;

/// At most this many attempts per call...
const MAX_ATTEMPTS: usize = 4;
/// ...each within this...
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// ...and all within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Discovery → `Eject<Channel>` per instance → peak EWMA → tower P2C → buffer.
pub(super) struct TowerStack {
    endpointer: Arc<DefaultEndpointer<Eject<Channel>>>,
    transport: Transport,
    /// A handle on each instance's `Eject` by its `name` metadata, to report ejections
    /// (weak: it keeps no `Channel` alive; gone ones are pruned at each insert).
    ejects: Arc<Mutex<HashMap<String, EjectHandle>>>,
}

impl TowerStack {
    /// Builds the stack over `instancer`'s instances. Must run inside a tokio runtime (the
    /// buffer spawns its worker).
    pub(super) fn new(instancer: &Arc<dyn Instancer>, service: &str) -> TowerStack {
        let ejects: Arc<Mutex<HashMap<String, EjectHandle>>> = Arc::default();
        let seen = ejects.clone();
        let endpointer = Arc::new(
            DefaultEndpointer::builder(
                instancer,
                move |i: &Instance| -> Result<Eject<Channel>, BoxError> {
                    let channel =
                        tonic::transport::Endpoint::from_shared(format!("http://{}", i.addr()))?
                            .connect_timeout(Duration::from_millis(500))
                            .connect_lazy();
                    // One transport failure ejects: a crashed server refuses every call.
                    let eject = Eject::new(
                        channel,
                        EjectConfig {
                            consecutive_failures: 1,
                            base_ejection: Duration::from_secs(5),
                            max_ejection: Duration::from_secs(60),
                        },
                    );
                    if let Some(name) = i.meta().get("name") {
                        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        seen.retain(|_, h| !h.is_gone());
                        seen.insert(name.to_string(), eject.handle());
                    }
                    Ok(eject)
                },
            )
            .name(service.to_string())
            .build(),
        );
        let discover = PeakEwmaDiscover::new(
            Discover::new(endpointer.clone()),
            Duration::from_millis(30),
            Duration::from_secs(10),
            CompleteOnResponse::default(),
        );
        let transport = BoxCloneSyncService::new(Buffer::new(Balance::new(discover), 1024));
        TowerStack {
            endpointer,
            transport,
            ejects,
        }
    }

    /// Calls `SayHello`, retrying what [`retryable`] allows; returns the reply and the
    /// number of attempts made.
    pub(super) async fn say_hello(&self, name: &str) -> (Result<HelloReply, BoxError>, usize) {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut client = GreeterClient::new(self.transport.clone());
            let request = HelloRequest { name: name.into() };
            let attempt_deadline = deadline.min(tokio::time::Instant::now() + ATTEMPT_TIMEOUT);
            let result =
                match tokio::time::timeout_at(attempt_deadline, client.say_hello(request)).await {
                    Ok(Ok(response)) => return (Ok(response.into_inner()), attempts),
                    Ok(Err(status)) => BoxError::from(status),
                    Err(_) => BoxError::from("attempt timed out"),
                };
            if attempts >= MAX_ATTEMPTS
                || !retryable(&result)
                || tokio::time::Instant::now() >= deadline
            {
                return (Err(result), attempts);
            }
        }
    }

    /// The discovered endpoints.
    pub(super) fn endpointer(&self) -> &Arc<DefaultEndpointer<Eject<Channel>>> {
        &self.endpointer
    }

    /// Whether the instance with meta `name` is ejected now.
    pub(super) fn is_ejected(&self, name: &str) -> bool {
        let ejects = self.ejects.lock().unwrap_or_else(|e| e.into_inner());
        ejects.get(name).is_some_and(EjectHandle::is_ejected)
    }
}
