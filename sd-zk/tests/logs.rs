//! Digest authentication and ACLs against the real server, with every `tracing` event
//! captured (TRACE level, all targets, so the ZooKeeper library's too): the owner's
//! credentials never appear in the logs nor in the `Debug` of anything involved; another
//! client, with other credentials or none, can read the node but not delete it. The
//! scenario registers, discovers, fails (a session ended while the path to the server is
//! cut) and recovers (a new session, authenticated again, re-creates the node).
//!
//! A test binary of its own with a single test: it installs the global subscriber and sets
//! environment variables before any other thread exists.

mod common;

use common::{by_id, wait_for_set};
use sd_core::{Error, Instance, Instancer, Registrar, Registration, ServiceQuery};
use sd_testkit::LogCapture as Capture;
use sd_testkit::{require, shared, unique_name, Server};
use sd_zk::ZkRegistry;
use tracing_subscriber::util::SubscriberInitExt;
use zookeeper_client as zk;

const OWNER_VAR: &str = "SD_ZK_LOGS_TEST_DIGEST";
const PASSWORD: &str = "Zk-s3cret-7f1c9a";

fn assert_clean(what: &str, value: &dyn std::fmt::Debug) {
    let text = format!("{value:?} {value:#?}");
    assert!(
        !text.contains(PASSWORD),
        "{what}: the password in Debug: {text}"
    );
}

#[test]
fn digest_acl_protects_the_node_and_the_secret_is_never_logged() {
    let addr = require!(Server::Zk);
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .try_init()
        .unwrap();
    std::env::set_var(OWNER_VAR, format!("owner:{PASSWORD}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&addr));
    let logs = capture.text();
    let lines = logs.lines().count();
    eprintln!("captured {lines} log lines");
    assert!(lines > 20, "suspiciously few logs captured:\n{logs}");
    assert!(
        !logs.contains(PASSWORD),
        "the password appears in the logs:\n{}",
        logs.lines()
            .filter(|l| l.contains(PASSWORD))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The capture saw the interesting paths: registration, the session, the library itself.
    for needle in [
        "action=\"register\"",
        "action=\"deregister\"",
        "session opened",
        "zookeeper_client",
    ] {
        assert!(logs.contains(needle), "{needle:?} not logged:\n{logs}");
    }
}

async fn run(addr: &str) {
    let _shared = shared(Server::Zk);
    let url = format!(
        "zk://{addr}/sdkit-secure?session_timeout=2s&connect_timeout=5s&digest_env={OWNER_VAR}"
    );
    let owner = ZkRegistry::from_url(&url).unwrap();
    assert_eq!(
        owner
            .client()
            .config()
            .digest
            .as_ref()
            .map(|d| d.expose().to_string()),
        Some(format!("owner:{PASSWORD}"))
    );
    assert_clean("registry", &owner);
    assert_clean("client config", owner.client().config());
    let service = unique_name("zk-acl");
    let r = owner
        .zk_registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 9301).id("owned").build(),
        ))
        .unwrap();
    r.register().await.unwrap();
    assert_clean("registrar", &r);
    let node = r.node_path().unwrap();

    // Anyone can discover it: an instancer without credentials.
    let reader =
        ZkRegistry::from_url(&format!("zk://{addr}/sdkit-secure?session_timeout=2s")).unwrap();
    let instancer = reader
        .zk_instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "visible to a reader", |s| {
        by_id(s, "owned").is_some()
    })
    .await;

    // The ACLs the registrar set.
    let anonymous = common::raw(addr).await;
    let (acl, _) = anonymous.get_acl(&node).await.unwrap();
    assert!(
        acl.iter().any(|a| a.scheme() == "digest"
            && a.id().starts_with("owner:")
            && a.permission() == zk::Permission::ALL),
        "{acl:?}"
    );
    assert!(
        acl.iter()
            .any(|a| a.scheme() == "world" && a.permission() == zk::Permission::READ),
        "{acl:?}"
    );
    assert!(
        !acl.iter().any(|a| a.id().contains(PASSWORD)),
        "the digest id is a hash: {acl:?}"
    );

    // Nobody else can delete it: no credentials, other credentials, the right user with
    // the wrong password.
    let other = zk::Client::connector()
        .with_auth("digest", b"intruder:pw")
        .connect(addr)
        .await
        .unwrap();
    let wrong = zk::Client::connector()
        .with_auth("digest", b"owner:wrong-password")
        .connect(addr)
        .await
        .unwrap();
    for (who, client) in [
        ("anonymous", &anonymous),
        ("other user", &other),
        ("wrong password", &wrong),
    ] {
        assert_eq!(
            client.delete(&node, None).await,
            Err(zk::Error::NoAuth),
            "{who}"
        );
        assert_eq!(
            client
                .set_data(&node, b"10.6.6.6:1", None)
                .await
                .map(|_| ()),
            Err(zk::Error::NoAuth),
            "{who}"
        );
    }
    // Another registry with other credentials cannot register in the owner's service (its
    // directory is the owner's), and says so.
    std::env::set_var("SD_ZK_LOGS_TEST_OTHER", "intruder:pw");
    let intruder = ZkRegistry::from_url(&format!(
        "zk://{addr}/sdkit-secure?session_timeout=2s&digest_env=SD_ZK_LOGS_TEST_OTHER"
    ))
    .unwrap();
    let err = intruder
        .zk_registrar(Registration::new(
            service.as_str(),
            Instance::new("127.0.0.1", 9302),
        ))
        .unwrap()
        .register()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert_clean("error", &err);

    // Fail and recover with the credentials set: a second owner registry reaches the server
    // through a proxy; its session is ended from outside while the path is cut; it opens a
    // new session (authenticating again) and re-creates its node.
    let proxy = sd_testkit::proxy::Proxy::start(addr).await;
    let via = ZkRegistry::from_url(&format!(
        "zk://{}/sdkit-secure?session_timeout=2s&connect_timeout=5s&digest_env={OWNER_VAR}",
        proxy.addr
    ))
    .unwrap();
    let r2 = via
        .zk_registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 9303).id("owned-2").build(),
        ))
        .unwrap();
    r2.register().await.unwrap();
    let before = r2.node_path().unwrap();
    let mut recreated = r2.watch_recreations();
    let sessions = via.client().sessions_opened();
    common::expire_session(addr, &proxy, &via).await;
    tokio::time::timeout(common::BOUND, recreated.wait_for(|n| *n >= 1))
        .await
        .expect("the registrar re-created its node")
        .unwrap();
    assert_ne!(r2.node_path().unwrap(), before, "a new node");
    assert!(via.client().sessions_opened() > sessions, "a new session");
    wait_for_set(&mut sub, "the re-created node", |s| {
        by_id(s, "owned-2").is_some()
    })
    .await;
    assert_clean("registry via the proxy", &via);
    assert_clean("its registrar", &r2);
    r2.deregister().await.unwrap();

    // The owner deletes it.
    r.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    assert_eq!(anonymous.check_stat(&node).await.unwrap(), None);
    instancer.stop().await;
}
