//! HTTP/2 keep-alive pings and etcd's ping policy: with the default `keep_alive`, an idle
//! watch is not torn down by the server. An etcd server answers pings more frequent than its
//! `--grpc-keepalive-min-time` (5 s by default) with `GOAWAY too_many_pings`; with the old
//! default (3 s, pinging idle connections too) every idle watch was ended every few seconds
//! and read again in full (4 full reads in 25 s), invisible to the user but a full read of
//! the directory each time.

mod common;

use std::time::Duration;

use common::{addr, BOUND};
use sd_core::{Event, Instancer, ServiceQuery};
use sd_etcdv3::EtcdRegistry;
use sd_testkit::{shared, unique_name, Server};

async fn idle_watch_is_not_torn_down_by_the_servers_ping_policy(server: Server) {
    let Some(addr) = addr(server) else {
        return;
    };
    let _lock = shared(server);
    // The defaults, as a user gets them (only the prefix is the test's own).
    let registry = EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix=/sdtest/{}",
        unique_name("pings")
    ))
    .unwrap();
    let instancer = registry.etcd_instancer(&ServiceQuery::new("idle")).await;
    let mut sub = instancer.subscribe();
    tokio::time::timeout(BOUND, sub.next())
        .await
        .expect("first state")
        .expect("not stopped");
    // Idle for two of the server's ping strikes and more: 25 s (the scenario, not a
    // synchronisation).
    let idle = Duration::from_secs(25);
    let mut errors = Vec::new();
    let _ = tokio::time::timeout(idle, async {
        while let Some(ev) = sub.next().await {
            if let Event::Error(e) = ev {
                errors.push(e.to_string());
            }
        }
    })
    .await;
    let reads = instancer.stats().full_reads();
    eprintln!("{server}: {reads} full read(s) in {idle:?} of an idle watch; errors {errors:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        reads, 1,
        "the idle watch was ended and the directory read again"
    );
    instancer.stop().await;
}
both_servers!(idle_watch_is_not_torn_down_by_the_servers_ping_policy);
