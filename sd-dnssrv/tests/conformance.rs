//! The shared conformance suite (sd-testkit) against the real BIND server started by
//! `scripts/registries`. Every behaviour is its own test: `dnssrv::<behaviour>`.
//!
//! Registrations go through RFC 2136 updates; `resolve_targets` is on so instances are
//! `127.0.0.1:<port>` as registered. DNS declares registration and weight only: ids (the
//! published id is the SRV target name), expiry, tags, metadata and health are skipped loudly.

mod common;

use std::sync::Arc;
use std::time::Duration;

use sd_testkit::conformance::Target;
use sd_testkit::Server;

sd_testkit::conformance!(dnssrv, || async {
    let addr = sd_testkit::require(Server::Dns)?;
    let zone = sd_testkit::dns_zone();
    // reassert=5s: each registrar re-sends its records every 5 s (400 of them in the churn
    // behaviour: 80 small updates a second), and a restarted server gets them back within
    // that.
    let registry = sd_dnssrv::DnsRegistry::from_url(&format!(
        "dns+srv://{addr}/?zone={zone}&min_refresh=100ms&max_refresh=2s&resolve_targets=1\
         &record_ttl=5s&reassert=5s&timeout=3s"
    ))
    .expect("dns+srv URL");
    Some(
        Target::new(Arc::new(registry))
            .server(Server::Dns)
            .ttl(Duration::from_secs(2))
            // One SRV answer must fit one DNS message (64 KiB over TCP; SRV targets are never
            // compressed), and BIND keeps a record set under 64 KiB too. The suite's targets,
            // `<id>.<service>.<zone>` with its long unique names, are ~70 bytes: 1 000 of them
            // do not fit (BIND answers the update "ran out of space"), 400 do.
            .churn(400)
            .bad_entry(move |service: String| {
                let addr = addr.clone();
                async move {
                    // Port 0 cannot be dialled (go-kit's DNS-3 poisoned the whole set with it).
                    let zone = sd_testkit::dns_zone();
                    common::nsupdate(
                        &addr,
                        &format!(
                            "update add {} 0 IN SRV 0 1 0 ns.{zone}.",
                            common::owner(&service)
                        ),
                    )
                    .await;
                }
            }),
    )
});
