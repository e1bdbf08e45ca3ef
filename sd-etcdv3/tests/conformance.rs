//! The shared conformance suite (sd-testkit) against the real etcd servers started by
//! `scripts/registries`: etcd 3.4 (`etcd34::<behaviour>`) and etcd 3.5
//! (`etcd35::<behaviour>`), each with a watch per instancer and with every instancer on the
//! client's shared watch (`etcd34_shared::<behaviour>`, `etcd35_shared::<behaviour>`).

use std::sync::Arc;
use std::time::Duration;

use sd_etcdv3::EtcdRegistry;
use sd_testkit::conformance::Target;
use sd_testkit::Server;

/// The target for `server`: registrations leased for 2 s, gone within 15 s of their owner
/// vanishing; the bad entry is a value that is neither sdkit's JSON nor a go-kit address.
async fn target(server: Server) -> Option<Target> {
    target_watching(server, "own").await
}

/// [`target`] with every instancer on its client's shared watch of the prefix.
async fn shared_target(server: Server) -> Option<Target> {
    target_watching(server, "shared").await
}

async fn target_watching(server: Server, watch: &str) -> Option<Target> {
    let addr = sd_testkit::require(server)?;
    let registry = EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix=/sdkit-conformance&watch={watch}"
    ))
    .expect("etcd URL");
    let client = registry.client().clone();
    Some(
        Target::new(Arc::new(registry))
            .server(server)
            .ttl(Duration::from_secs(2))
            .expiry_deadline(Duration::from_secs(15))
            .bad_entry(move |service: String| {
                let client = client.clone();
                async move {
                    let key = client.instance_key(&service, "undecodable");
                    client
                        .put(&key, b"{\"host\":\"127.0.0.1\",\"port\":0}", 0)
                        .await
                        .expect("write the bad entry");
                }
            }),
    )
}

sd_testkit::conformance!(etcd34, || target(Server::Etcd));
sd_testkit::conformance!(etcd35, || target(Server::Etcd35));
sd_testkit::conformance!(etcd34_shared, || shared_target(Server::Etcd));
sd_testkit::conformance!(etcd35_shared, || shared_target(Server::Etcd35));
