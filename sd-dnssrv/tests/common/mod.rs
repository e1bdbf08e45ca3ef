//! Helpers for the tests against the real BIND server of `scripts/registries` (`SD_TEST_DNS`,
//! zone `SD_TEST_DNS_ZONE`, unsigned dynamic updates allowed from 127.0.0.1).
#![allow(dead_code)]

use std::time::Duration;

use sd_core::{Event, Subscription};
use sd_dnssrv::DnsRegistry;

/// The generous deadline of every event wait (never a timing assertion: only a bound on a
/// hang, on a loaded 2-core machine).
pub const BOUND: Duration = Duration::from_secs(60);

/// A registry for the test server with tight refresh bounds, plus `extra` options.
pub fn registry(addr: &str, extra: &str) -> DnsRegistry {
    let zone = sd_testkit::dns_zone();
    DnsRegistry::from_url(&format!(
        "dns+srv://{addr}/?zone={zone}&min_refresh=50ms&max_refresh=500ms{extra}"
    ))
    .expect("test registry URL")
}

/// Sends `commands` (nsupdate syntax, one per line; `send` is added) to the server with
/// BIND's own `nsupdate`, so what the instancer reads was written by an independent client.
pub async fn nsupdate(addr: &str, commands: &str) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script = format!(
        "server {host} {port}\nzone {}\n{commands}\nsend\n",
        sd_testkit::dns_zone()
    );
    let mut child = tokio::process::Command::new("nsupdate")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nsupdate (bind9-dnsutils, installed by scripts/registries) runs");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("nsupdate finished")
        .unwrap();
    assert!(
        out.status.success(),
        "nsupdate failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `_<service>._tcp.<zone>.`, the owner name of a service's SRV records.
pub fn owner(service: &str) -> String {
    format!("_{service}._tcp.{}.", sd_testkit::dns_zone())
}

/// Waits (bounded) for an event satisfying `pred`; returns it.
pub async fn wait_for(sub: &mut Subscription, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(BOUND, async {
        loop {
            let e = sub.next().await.expect("instancer closed");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event with {what} within {BOUND:?}"))
}

/// Waits for the instance set to be exactly `addrs` (sorted).
pub async fn wait_for_addrs(sub: &mut Subscription, addrs: &[&str]) -> Event {
    let mut want: Vec<String> = addrs.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(sub, &format!("addresses {want:?}"), |e| {
        matches!(e, Event::Instances(_)) && e.addrs() == want
    })
    .await
}

/// The TSIG-only zone of the test server and its key (`scripts/registries` exports them;
/// the defaults are the script's).
pub struct Tsig {
    pub zone: String,
    pub key: String,
    /// The name of the environment variable holding the secret.
    pub secret_var: &'static str,
}

pub const TSIG_SECRET_VAR: &str = "SD_TEST_DNS_TSIG_SECRET";

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The TSIG zone, serving it first if the running server predates it: a server started by
/// an older `scripts/registries` is restarted (under the exclusive lock) with the new config.
pub async fn tsig_zone(addr: &str) -> Tsig {
    if std::env::var(TSIG_SECRET_VAR).map_or(true, |v| v.is_empty()) {
        std::env::set_var(
            TSIG_SECRET_VAR,
            "Nx36eiA3DHWVbuqBSsUEpKjhMDNMvjGBdN/MS+MoirA=",
        );
    }
    let zone = env_or(
        "SD_TEST_DNS_TSIG_ZONE",
        &format!("tsig.{}", sd_testkit::dns_zone()),
    );
    let serves = |zone: String| {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let (host, port) = (host.to_string(), port.to_string());
        async move {
            let out = tokio::process::Command::new("dig")
                .args([
                    "+short",
                    "+time=2",
                    "+tries=2",
                    "-p",
                    &port,
                    &format!("@{host}"),
                    "SOA",
                    &zone,
                ])
                .output()
                .await
                .expect("dig (bind9-dnsutils) runs");
            !out.stdout.is_empty()
        }
    };
    if !serves(zone.clone()).await {
        let _lock = sd_testkit::exclusive(sd_testkit::Server::Dns);
        if !serves(zone.clone()).await {
            eprintln!("the DNS server predates the TSIG zone {zone}: restarting it");
            sd_testkit::restart(sd_testkit::Server::Dns).await.unwrap();
        }
    }
    Tsig {
        zone,
        key: env_or("SD_TEST_DNS_TSIG_KEY", "sdkit-test"),
        secret_var: TSIG_SECRET_VAR,
    }
}
