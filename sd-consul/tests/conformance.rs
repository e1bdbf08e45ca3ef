//! The shared conformance suite (sd-testkit) against the real Consul agent started by
//! `scripts/registries`. Every behaviour is its own test: `consul::<behaviour>`.

use std::sync::Arc;

use sd_testkit::conformance::Target;
use sd_testkit::Server;

sd_testkit::conformance!(consul, || async {
    let addr = sd_testkit::require(Server::Consul)?;
    let registry =
        sd_consul::ConsulRegistry::from_url(&format!("consul://{addr}?wait=5s&timeout=60s"))
            .expect("consul URL");
    Some(
        Target::new(Arc::new(registry))
            .server(Server::Consul)
            .bad_entry(move |service: String| {
                let addr = addr.clone();
                async move {
                    // Port 0 cannot be dialled: the instancer must skip this entry alone.
                    let body = serde_json::json!({
                        "ID": format!("{service}-bad"),
                        "Name": service,
                        "Address": "127.0.0.1",
                        "Port": 0,
                    });
                    reqwest::Client::new()
                        .put(format!("http://{addr}/v1/agent/service/register"))
                        .json(&body)
                        .send()
                        .await
                        .and_then(|r| r.error_for_status())
                        .expect("register the bad entry");
                }
            }),
    )
});
