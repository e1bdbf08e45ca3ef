//! TSIG-signed dynamic updates against the real BIND: its `tsig.<zone>` accepts only updates
//! signed with the test key of `scripts/registries`.

mod common;

use common::{tsig_zone, wait_for_addrs};
use sd_core::{Error, Instance, Instancer, Registrar, Registration, Registry, ServiceQuery};
use sd_dnssrv::DnsRegistry;
use sd_testkit::{require, shared, unique_name, Server};

fn registry(addr: &str, zone: &str, extra: &str) -> DnsRegistry {
    DnsRegistry::from_url(&format!(
        "dns+srv://{addr}/?zone={zone}&min_refresh=50ms&max_refresh=500ms&resolve_targets=1{extra}"
    ))
    .unwrap()
}

#[tokio::test]
async fn signed_updates_are_accepted_and_seen() {
    let addr = require!(Server::Dns);
    let tsig = tsig_zone(&addr).await;
    let _lock = shared(Server::Dns);
    let reg = registry(
        &addr,
        &tsig.zone,
        &format!(
            "&tsig_name={}&tsig_secret_env={}",
            tsig.key, tsig.secret_var
        ),
    );
    let svc = unique_name("dns-tsig");
    let instancer = reg.instancer(&ServiceQuery::new(&svc)).await.unwrap();
    let mut sub = instancer.subscribe();
    let r = reg
        .registrar(Registration::new(
            &svc,
            Instance::builder("127.0.0.41", 7100).id("t1").build(),
        ))
        .await
        .unwrap();
    r.register().await.unwrap();
    wait_for_addrs(&mut sub, &["127.0.0.41:7100"]).await;
    r.deregister().await.unwrap();
    wait_for_addrs(&mut sub, &[]).await;
    instancer.stop().await;
}

#[tokio::test]
async fn unsigned_or_wrongly_signed_updates_are_rejected_with_a_hint() {
    let addr = require!(Server::Dns);
    let tsig = tsig_zone(&addr).await;
    let _lock = shared(Server::Dns);
    let reg = |extra: &str| registry(&addr, &tsig.zone, extra);
    let registration = Registration::new(
        unique_name("dns-tsig-no"),
        Instance::new("127.0.0.42", 7101),
    );

    let unsigned = reg("").registrar(registration.clone()).await.unwrap();
    let err = unsigned.register().await.unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Refused") && text.contains("tsig_name"),
        "{text}"
    );

    // A key the server does not know, and the right key with the wrong secret.
    for extra in [
        format!("&tsig_name=nobody&tsig_secret_env={}", tsig.secret_var),
        format!(
            "&tsig_name={}&tsig_secret=d3JvbmctLXNlY3JldC0tMTIzNDU2Nzg5MA==",
            tsig.key
        ),
    ] {
        let wrong = reg(&extra).registrar(registration.clone()).await.unwrap();
        let err = wrong.register().await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::Rejected { .. } | Error::Unavailable { .. }),
            "{extra}: {err:?}"
        );
        assert!(
            text.contains("TSIG") || text.contains("tsig"),
            "{extra}: {text}"
        );
        assert!(
            !text.contains("d3JvbmctLXNlY3JldC0tMTIzNDU2Nzg5MA"),
            "{text}"
        );
    }
}
