//! The shared conformance suite (sd-testkit) against the real ZooKeeper server started by
//! `scripts/registries`. Every behaviour is its own test: `zk::<behaviour>`.
//!
//! Expiry is the session's: a 2 s session timeout, so a vanished registrant is gone within
//! seconds (the registrations' `HealthCheck::Ttl` is accepted and not used).

use std::sync::Arc;
use std::time::Duration;

use sd_testkit::conformance::Target;
use sd_testkit::Server;
use zookeeper_client as zkc;

sd_testkit::conformance!(zk, || async {
    let addr = sd_testkit::require(Server::Zk)?;
    let registry = sd_zk::ZkRegistry::from_url(&format!(
        "zk://{addr}/sdkit-conformance?session_timeout=2s&connect_timeout=5s"
    ))
    .expect("zk URL");
    let base = registry.client().config().base.clone();
    Some(
        Target::new(Arc::new(registry))
            .server(Server::Zk)
            .ttl(Duration::from_secs(2))
            .expiry_deadline(Duration::from_secs(15))
            .bad_entry(move |service: String| {
                let (addr, dir) = (addr.clone(), format!("{base}/{service}"));
                async move {
                    // A child whose data is neither sdkit's JSON nor host:port.
                    let zk = zkc::Client::connect(&addr).await.expect("connect");
                    let open = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
                    zk.mkdir(&dir, &open).await.expect("service directory");
                    zk.create(&format!("{dir}/bad"), b"{\"host\":\"h\"}", &open)
                        .await
                        .expect("create the bad node");
                }
            }),
    )
});
