//! Attacks on the RFC 2136 registrar against the real BIND of `scripts/registries`: two live
//! instances that the registrar maps onto the same SRV target.
//!
//! Run: `cargo test -p sd-dnssrv --test attack_bind_registrar`

mod common;

use std::time::Duration;

use common::registry;
use sd_core::{Event, Instance, Instancer, Registration, Registry, ServiceQuery};
use sd_dnssrv::DnsRegistry;
use sd_testkit::{require, shared, unique_name, Server};

fn zone() -> String {
    sd_testkit::dns_zone()
}

/// The addresses a fresh lookup finds now (a new instancer's first state).
async fn lookup_now(reg: &DnsRegistry, svc: &str) -> Vec<String> {
    let inst = reg.dns_instancer(&ServiceQuery::new(svc)).await.unwrap();
    let state = inst.state();
    inst.stop().await;
    let mut v: Vec<String> = match state {
        Some(Event::Instances(set)) => set.iter().map(|i| i.addr().to_string()).collect(),
        other => panic!("lookup of {svc}: {other:?}"),
    };
    v.sort();
    v
}

/// Registers `instances` of `svc`, in order; returns their registrars.
async fn register_both(
    reg: &DnsRegistry,
    svc: &str,
    instances: [Instance; 2],
) -> [std::sync::Arc<dyn sd_core::Registrar>; 2] {
    let mut out = Vec::new();
    for i in instances {
        let r = reg.registrar(Registration::new(svc, i)).await.unwrap();
        r.register().await.unwrap();
        out.push(r);
    }
    out.try_into().unwrap_or_else(|_| unreachable!())
}

/// Two processes on one host (a host name, as most deployments register), two ids, two
/// ports. `Shared::register` used to delete, as "stale", every record with the same *target*
/// but another port, so the second registration deleted the first instance's record; now a
/// host-name target (shared by every instance on the host) has nothing replaced. docs/DNS.md says only "registering
/// the same id again with a new port replaces the record" — here the ids differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_host_name_both_stay_registered() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let svc = unique_name("atk-host");
    let reg = registry(&addr, "");
    let host = format!("web1.{}", zone());
    let [r1, r2] = register_both(
        &reg,
        &svc,
        [
            Instance::builder(&host, 9101).id("proc-1").build(),
            Instance::builder(&host, 9102).id("proc-2").build(),
        ],
    )
    .await;
    let got = lookup_now(&reg, &svc).await;
    r1.deregister().await.unwrap();
    r2.deregister().await.unwrap();
    assert_eq!(
        got,
        [format!("{host}:9101"), format!("{host}:9102")],
        "registering proc-2 deleted proc-1's SRV record"
    );
}

/// Instance ids are turned into one DNS label by `label()`. It used to lower-case, turn every
/// other character into '-' and cut at 63, so distinct ids such as `api_1` and `api.1` (or two
/// long ids that share their first 63 characters) got the same target `api-1.<svc>.<zone>`:
/// the second registration deleted the first's SRV record (same target, other port) and
/// wiped the target's A record (`ANY A` delete) to put its own address there. A lossy id now
/// gets a hash suffix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_map_to_one_label_do_not_clobber_each_other() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let svc = unique_name("atk-label");
    let reg = registry(&addr, "&resolve_targets=1");
    let [r1, r2] = register_both(
        &reg,
        &svc,
        [
            Instance::builder("127.0.0.31", 9201).id("api_1").build(),
            Instance::builder("127.0.0.32", 9202).id("api.1").build(),
        ],
    )
    .await;
    let got = lookup_now(&reg, &svc).await;
    r1.deregister().await.unwrap();
    r2.deregister().await.unwrap();
    assert_eq!(
        got,
        ["127.0.0.31:9201", "127.0.0.32:9202"],
        "ids api_1 and api.1 share the target api-1.{svc}.{}: the second registration removed the first",
        zone()
    );
}

/// The same collision once the keep-alive has re-asserted the first registration
/// (`reassert=1s`): the re-assertion added its A record back next to the other's, so both SRV
/// records point at a name with both addresses and instancers publish cross-wired instances
/// (127.0.0.31:9202 and 127.0.0.32:9201): traffic for one instance goes to the other's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_ids_never_publish_cross_wired_addresses() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let svc = unique_name("atk-cross");
    let z = zone();
    let reg = DnsRegistry::from_url(&format!(
        "dns+srv://{addr}/?zone={z}&min_refresh=50ms&max_refresh=300ms&resolve_targets=1&reassert=1s&record_ttl=0s"
    ))
    .unwrap();
    let long = "x".repeat(63);
    let [r1, r2] = register_both(
        &reg,
        &svc,
        [
            Instance::builder("127.0.0.41", 9301)
                .id(format!("{long}-a"))
                .build(),
            Instance::builder("127.0.0.42", 9302)
                .id(format!("{long}-b"))
                .build(),
        ],
    )
    .await;
    let inst = reg.dns_instancer(&ServiceQuery::new(&svc)).await.unwrap();
    let mut sub = inst.subscribe();
    let right = ["127.0.0.41:9301".to_string(), "127.0.0.42:9302".to_string()];
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Event::Instances(set) = &e {
            let mut a: Vec<String> = set.iter().map(|i| i.addr().to_string()).collect();
            a.sort();
            if !seen.contains(&a) {
                seen.push(a);
            }
        }
    }
    inst.stop().await;
    r1.deregister().await.unwrap();
    r2.deregister().await.unwrap();
    let wrong: Vec<&Vec<String>> = seen
        .iter()
        .filter(|s| s.iter().any(|a| !right.contains(a)))
        .collect();
    assert!(
        wrong.is_empty(),
        "instancer published addresses no instance registered: {wrong:?} (all sets seen: {seen:?})"
    );
}

/// A service name that is a CNAME to the SRV records (legal DNS: RFC 2782 only forbids
/// aliases as *targets*), written with BIND's own nsupdate and served by the real BIND, which
/// answers the SRV query with the CNAME and the SRV records in one response. The instancer
/// used to publish the **empty set** (no error): hickory-resolver 0.25's CachingClient folds an SRV
/// answer's search name into the SRV *target* and then filters out the SRV records themselves
/// (their owner is neither the query name nor the folded name), follows "the CNAME" to
/// `SRV <target>`, gets NXDOMAIN, and sd-dnssrv classifies that as "no records".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_at_the_service_name_is_followed_on_real_bind() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let svc = unique_name("atk-cname");
    let z = zone();
    common::nsupdate(
        &addr,
        &format!(
            "update add _{svc}._tcp.{z}. 5 IN CNAME _{svc}-real._tcp.{z}.\n\
             update add _{svc}-real._tcp.{z}. 5 IN SRV 0 1 8080 web1.{z}."
        ),
    )
    .await;
    let reg = registry(&addr, "");
    let direct = lookup_now(&reg, &format!("_{svc}-real._tcp.{z}")).await;
    let via_cname = lookup_now(&reg, &svc).await;
    common::nsupdate(
        &addr,
        &format!("update delete _{svc}._tcp.{z}. CNAME\nupdate delete _{svc}-real._tcp.{z}. SRV"),
    )
    .await;
    assert_eq!(
        direct,
        [format!("web1.{z}:8080")],
        "the SRV records themselves"
    );
    assert_eq!(
        via_cname,
        [format!("web1.{z}:8080")],
        "the service name is a CNAME to those records: `dig SRV _{svc}._tcp.{z}` returns them"
    );
}
