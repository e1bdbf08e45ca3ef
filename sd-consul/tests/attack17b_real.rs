//! Attack on issue 17's gzip answers and packed metadata against the real agent
//! (`SD_TEST_CONSUL`, `scripts/registries up`): a health answer big enough for the agent
//! to compress, with metadata of many keys and multi-byte values, read back exactly.

mod common;

use std::time::Duration;

use common::{by_id, wait_for_set};
use sd_consul::{ConsulRegistry, META_DATACENTER, META_NODE};
use sd_core::{HealthCheck, Instance, Instancer, Registrar, Registration, ServiceQuery};
use sd_testkit::{require, shared, unique_name, Server};

const N: u16 = 12;

/// The metadata of instance `i`: keys that are prefixes of each other, an empty value,
/// multi-byte values of every UTF-8 width.
fn meta(i: u16) -> Vec<(String, String)> {
    vec![
        ("a".into(), format!("é{i}")),
        ("ab".into(), String::new()),
        ("abc".into(), format!("\u{10348}{}", "ü".repeat(100))),
        ("zone".into(), format!("eu-{}", i % 3)),
        ("Z_up".into(), "日本".into()),
    ]
}

#[tokio::test]
async fn a_compressed_answer_from_the_agent_carries_every_instances_metadata() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul);
    let reg = ConsulRegistry::from_url(&format!("consul://{addr}?wait=2s&timeout=5s")).unwrap();
    let service = unique_name("attack17b-gzip");
    let mut registrars = Vec::new();
    for i in 0..N {
        let mut b = Instance::builder("127.0.0.1", 21000 + i).id(format!("g{i}"));
        for (k, v) in meta(i) {
            b = b.meta(k, v);
        }
        let r = reg
            .consul_registrar(
                Registration::new(service.as_str(), b.build())
                    .check(HealthCheck::Ttl(Duration::from_secs(60))),
            )
            .unwrap();
        r.register().await.unwrap();
        registrars.push(r);
    }

    // The agent does compress this answer when asked (so the path under test is taken).
    let url = reg
        .client()
        .base_url()
        .join(&format!("v1/health/service/{service}"))
        .unwrap();
    let raw = reqwest::Client::builder()
        .no_gzip()
        .build()
        .unwrap()
        .get(url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        raw.headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("gzip".to_string()),
        "{:?}",
        raw.headers()
    );

    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "all registered", |s| s.len() == usize::from(N)).await;
    for i in 0..N {
        let got = by_id(&set, &format!("g{i}")).unwrap().meta();
        let mut want: std::collections::BTreeMap<String, String> = meta(i).into_iter().collect();
        want.insert(META_NODE.into(), got.get(META_NODE).unwrap().into());
        want.insert(META_DATACENTER.into(), "dc1".into());
        assert_eq!(got, &want, "g{i}");
    }
    for r in &registrars {
        r.deregister().await.unwrap();
    }
    instancer.stop().await;
}
