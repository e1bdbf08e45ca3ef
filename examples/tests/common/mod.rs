//! What the examples' tests share.

use std::sync::Arc;

use sd_testkit::{Server, SharedGuard};

/// The Consul agent of the harness, selected only by the `SD_REGISTRY` variable (the way the
/// example binaries pick it), with a shared hold on the server (not while a fault test has
/// it down); `None` (the test is skipped) when Consul is unavailable and SD_INTEGRATION is
/// not 1. Call it from one test per binary only: it sets and removes `SD_REGISTRY`.
pub fn consul_by_sd_registry() -> Option<(Arc<dyn sdkit::Registry>, SharedGuard)> {
    let addr = sd_testkit::require(Server::Consul)?;
    let hold = sd_testkit::shared(Server::Consul);
    std::env::set_var(sdkit::ENV_VAR, format!("consul://{addr}"));
    let registry = sdkit::from_env();
    std::env::remove_var(sdkit::ENV_VAR);
    Some((registry.unwrap(), hold))
}
