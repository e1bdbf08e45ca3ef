//! Agent traffic never goes through a proxy: `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY`
//! are ignored (the agent is local by design, and a proxy would see the `X-Consul-Token`
//! header). This test binary holds a single test because it sets process-wide environment
//! variables, before any other thread exists.

mod common;

use std::time::Duration;

use common::{by_id, wait_for_set};
use sd_consul::ConsulRegistry;
use sd_core::{HealthCheck, Instance, Instancer, Registrar, Registration, ServiceQuery};
use sd_testkit::{require, shared, unique_name, Server};

/// A proxy address where nothing listens (the discard port): anything sent through it fails.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

#[test]
fn proxy_variables_are_ignored() {
    let addr = require!(Server::Consul);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        std::env::set_var(var, DEAD_PROXY);
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _shared = shared(Server::Consul);
        // Control: a default reqwest client does use the proxy, even for 127.0.0.1, so the
        // variables above really are in effect.
        let err = reqwest::Client::new()
            .get(format!("http://{addr}/v1/status/leader"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect_err("a default client goes through the dead proxy");
        assert!(err.is_connect(), "{err:?}");

        let reg = ConsulRegistry::from_url(&format!("consul://{addr}?wait=2s&timeout=5s")).unwrap();
        let service = unique_name("consul-noproxy");
        let registrar = reg
            .consul_registrar(
                Registration::new(
                    service.as_str(),
                    Instance::builder("127.0.0.1", 20901).id("np1").build(),
                )
                .check(HealthCheck::Ttl(Duration::from_secs(30))),
            )
            .unwrap();
        registrar
            .register()
            .await
            .expect("register without the proxy");
        let instancer = reg
            .consul_instancer(&ServiceQuery::new(service.as_str()))
            .await;
        let mut sub = instancer.subscribe();
        wait_for_set(&mut sub, "discovered without the proxy", |s| {
            by_id(s, "np1").is_some()
        })
        .await;
        registrar
            .deregister()
            .await
            .expect("deregister without the proxy");
        wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
        instancer.stop().await;
    });
}
