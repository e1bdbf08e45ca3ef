//! A registering process that dies without closing its session: its node is gone after the
//! session timeout, and the instancer publishes the smaller set.
//!
//! The test re-runs its own binary as the registering process: with `SD_ZK_CHILD_SERVICE`
//! set, the same test registers, prints the node path, and waits to be killed (SIGKILL, so
//! the session is never closed).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{by_id, registry, wait_for_set, SESSION};
use sd_core::{Instance, Instancer, Registrar, Registration};
use sd_testkit::{require, shared, unique_name, Server};

const CHILD_ENV: &str = "SD_ZK_CHILD_SERVICE";
const TEST_NAME: &str = "a_killed_registrants_node_is_gone_after_the_session_timeout";

async fn child(addr: &str, service: &str) {
    let registry = registry(addr, "");
    let r = registry
        .zk_registrar(Registration::new(
            service,
            Instance::builder("127.0.0.1", 9201).id("child").build(),
        ))
        .unwrap();
    r.register().await.unwrap();
    println!("REGISTERED {}", r.node_path().unwrap());
    // Wait to be killed; bounded, so a lost parent does not leave it running for long.
    tokio::time::sleep(Duration::from_secs(120)).await;
    std::process::exit(3);
}

#[tokio::test]
async fn a_killed_registrants_node_is_gone_after_the_session_timeout() {
    let addr = require!(Server::Zk);
    if let Ok(service) = std::env::var(CHILD_ENV) {
        return child(&addr, &service).await;
    }
    let _shared = shared(Server::Zk);
    let service = unique_name("zk-dead");
    let registry = registry(&addr, "");
    let survivor = registry
        .zk_registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 9202).id("survivor").build(),
        ))
        .unwrap();
    survivor.register().await.unwrap();
    let (instancer, mut sub) = common::watch(&registry, &service).await;

    let mut process = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &service)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // The harness prints `test <name> ... ` before it, on the same line.
            .find_map(|l| {
                l.split_once("REGISTERED ")
                    .map(|(_, node)| node.trim().to_string())
            })
    });
    let line = tokio::time::timeout(common::BOUND, line)
        .await
        .expect("the child registered in time")
        .unwrap()
        .expect("the child printed its node");
    let node = line;
    assert!(node.contains(&service), "{node}");
    wait_for_set(&mut sub, "child and survivor", |s| s.len() == 2).await;

    process.kill().unwrap(); // SIGKILL: no close-session, as in a crash
    let killed = Instant::now();
    process.wait().unwrap();
    let set = wait_for_set(&mut sub, "the dead child's node expired", |s| s.len() == 1).await;
    assert!(by_id(&set, "survivor").is_some(), "{set:?}");
    eprintln!(
        "session timeout {SESSION:?}: the killed registrant's node was gone {:?} after the kill",
        killed.elapsed()
    );
    survivor.deregister().await.unwrap();
    instancer.stop().await;
}
