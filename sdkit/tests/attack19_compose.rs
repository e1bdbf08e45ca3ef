//! Attack on issue 19's composed URLs through `sdkit::connect`: the README's own `merge:`
//! example and registration, a failover that starts on its standby before the primary's
//! first answer, secrets of members in Debug output, errors and logs, many members.
#![cfg(all(feature = "consul", feature = "etcd", feature = "dnssrv"))]

use std::time::Duration;

use sd_testkit::{require, shared, unique_name, LogCapture, Server};
use sdkit::compose::SOURCE_META;
use sdkit::{Event, Instance, Registration, Registry, ServiceQuery};

const BOUND: Duration = Duration::from_secs(30);

fn capture_logs() -> (LogCapture, tracing::subscriber::DefaultGuard) {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}

fn sources(event: &Event) -> Vec<String> {
    event
        .as_instances()
        .map(|s| {
            s.iter()
                .map(|i| i.meta().get(SOURCE_META).unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn held(registry: &dyn Registry, service: &str) -> Vec<String> {
    let instancer = registry
        .instancer(&ServiceQuery::new(service))
        .await
        .unwrap();
    let event = tokio::time::timeout(BOUND, instancer.subscribe().first())
        .await
        .expect("a state in time")
        .unwrap();
    instancer.stop().await;
    event.addrs()
}

/// README.md ("Registries") and docs/URLS.md give `merge:consul://127.0.0.1:8500,dns+srv://10.0.0.53/`
/// as the migration example and say "Registration goes to every member"; URLS.md's table:
/// "`register` fails only if no member accepts". Through that very URL (Consul of the
/// harness), `registrar()` fails at once and nothing reaches Consul: the dns+srv member
/// has no `zone=` and its `registrar()` errs, and `ComposedRegistry::registrar`
/// (sd-core/src/compose/mod.rs:357-360) fails the whole call on any member's error.
#[tokio::test]
async fn attack19_readme_merge_example_registers_in_consul() {
    let consul = require!(Server::Consul);
    let _lock = shared(Server::Consul);
    let registry =
        sdkit::connect(&format!("merge:consul://{consul},dns+srv://10.0.0.53/")).unwrap();
    let service = unique_name("a19-readme-merge");
    let registration = Registration::new(
        service.as_str(),
        Instance::builder("127.0.0.1", 24901).id("a19-1").build(),
    );
    let result = match registry.registrar(registration).await {
        Ok(r) => {
            let out = r.register().await;
            if out.is_ok() {
                let direct = sdkit::connect(&format!("consul://{consul}")).unwrap();
                assert_eq!(held(&*direct, &service).await, ["127.0.0.1:24901"]);
                r.deregister().await.ok();
            }
            out
        }
        Err(e) => Err(e),
    };
    assert!(
        result.is_ok(),
        "Consul accepts, but registering through the README's merge URL fails: {}",
        result.unwrap_err()
    );
}

/// `failover:consul://...,memory://standby`: through `sdkit::connect` every member's
/// instancer has run its first round before the composed instancer starts
/// (`WatchedInstancer::start`, sd-core/src/watch_loop.rs:283-288), so the first state is
/// the primary's and no switch is logged. (Holds through `connect`; the hand-built case
/// fails in sd-core/tests/attack19_compose.rs.)
#[tokio::test]
async fn attack19_failover_starts_on_the_primary_not_on_a_faster_standby() {
    let consul = require!(Server::Consul);
    let _lock = shared(Server::Consul);
    let (logs, _guard) = capture_logs();
    let service = unique_name("a19-failover-start");
    let standby_name = unique_name("a19-standby");
    let direct = sdkit::connect(&format!("consul://{consul}")).unwrap();
    let in_consul = direct
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 24911).id("a19-p").build(),
        ))
        .await
        .unwrap();
    in_consul.register().await.unwrap();
    let standby = sdkit::connect(&format!("memory://{standby_name}")).unwrap();
    let in_standby = standby
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 24912).id("a19-s").build(),
        ))
        .await
        .unwrap();
    in_standby.register().await.unwrap();

    let registry = sdkit::connect(&format!(
        "failover:consul://{consul},memory://{standby_name}"
    ))
    .unwrap();
    let instancer = registry
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    let mut seen = Vec::new();
    let reached = tokio::time::timeout(BOUND, async {
        loop {
            let e = sub.next().await.expect("not ended");
            let from = sources(&e);
            seen.push(from.clone());
            if from.iter().any(|s| s.starts_with("consul://")) {
                return;
            }
        }
    })
    .await;
    instancer.stop().await;
    in_consul.deregister().await.ok();
    in_standby.deregister().await.ok();
    assert!(reached.is_ok(), "Consul's set never served: {seen:?}");
    let text = logs.text();
    let switch_logged = text.contains("serving another member's set");
    assert!(
        seen.len() == 1 && !switch_logged,
        "states before Consul's: {seen:?}; switch logged: {switch_logged}"
    );
}

/// Secrets of members (a Consul token, etcd credentials) in a composed URL: not in the
/// Debug output of the registry, its instancer and registrar, nor in the composed error
/// events and registration errors, nor in the logs, nor in `sd.source`. (Holds.)
#[tokio::test]
async fn attack19_member_secrets_stay_out_of_debug_errors_and_logs() {
    let (logs, _guard) = capture_logs();
    let url = "failover:consul://127.0.0.1:1?token=s3cretA19&timeout=1s&wait=1s,\
               consul://127.0.0.1:2?token=hunter2A19&timeout=1s&wait=1s";
    let registry = match sdkit::connect(url) {
        Ok(r) => r,
        Err(e) => {
            let e = e.to_string();
            assert!(!e.contains("s3cretA19") && !e.contains("hunter2A19"), "{e}");
            panic!("connect failed (no secret in it): {e}");
        }
    };
    let mut texts = vec![format!("{registry:?}")];
    // A bad option in a member: the error names it, not the secrets.
    for bad in [
        "failover:consul://127.0.0.1:1?token=s3cretA19&bogus=1,consul://127.0.0.1:2",
        "merge:consul://127.0.0.1:1,etcd://root:hunter2A19@127.0.0.1:2?nope=1",
        "merge:consul://127.0.0.1:1?token=s3cretA19,etcd://root:hunter2A19@127.0.0.1:2?cache=",
    ] {
        texts.push(sdkit::connect(bad).unwrap_err().to_string());
    }
    let instancer = registry
        .instancer(&ServiceQuery::new("a19-secrets"))
        .await
        .unwrap();
    texts.push(format!("{instancer:?}"));
    let mut sub = instancer.subscribe();
    let error = tokio::time::timeout(BOUND, async {
        loop {
            if let Event::Error(e) = sub.next().await.expect("not ended") {
                return e;
            }
        }
    })
    .await
    .expect("an error state: both members are unreachable");
    let error_text = error.to_string();
    texts.push(error_text.clone());
    texts.push(format!("{error:?}"));
    let registrar = registry
        .registrar(Registration::new(
            "a19-secrets",
            Instance::builder("127.0.0.1", 24921).build(),
        ))
        .await
        .unwrap();
    texts.push(format!("{registrar:?}"));
    let e = tokio::time::timeout(BOUND, registrar.register())
        .await
        .expect("register answers in time")
        .unwrap_err();
    texts.push(e.to_string());
    texts.push(format!("{e:?}"));
    drop(registrar);
    instancer.stop().await;
    texts.push(logs.text());
    for t in &texts {
        assert!(
            !t.contains("s3cretA19") && !t.contains("hunter2A19"),
            "a secret leaked: {t}"
        );
    }
    // The error names both members (without their secrets).
    assert!(
        error_text.contains("consul://127.0.0.1:1") && error_text.contains("consul://127.0.0.1:2"),
        "{error_text}"
    );
}

/// `merge:` of 300 `memory://` members from one URL: registration through it reaches every
/// member, the union shows the instance once, deregistration removes it from every member.
/// (Holds.)
#[tokio::test]
async fn attack19_merge_of_many_members() {
    let base = unique_name("a19-many");
    let names: Vec<String> = (0..300).map(|i| format!("{base}-{i}")).collect();
    let url = format!(
        "merge:{}",
        names
            .iter()
            .map(|n| format!("memory://{n}"))
            .collect::<Vec<_>>()
            .join(" , ")
    );
    let registry = sdkit::connect(&url).unwrap();
    let registrar = registry
        .registrar(Registration::new(
            "web",
            Instance::builder("10.0.0.9", 80).id("a19-many").build(),
        ))
        .await
        .unwrap();
    registrar.register().await.unwrap();
    assert_eq!(held(&*registry, "web").await, ["10.0.0.9:80"]);
    for n in [&names[0], &names[150], &names[299]] {
        let one = sdkit::connect(&format!("memory://{n}")).unwrap();
        assert_eq!(held(&*one, "web").await, ["10.0.0.9:80"], "{n}");
    }
    registrar.deregister().await.unwrap();
    assert!(held(&*registry, "web").await.is_empty());
}

/// `stop()` of `failover:memory://...,consul://...` (both members serve the service): on a
/// current-thread runtime the memory member ends at once while the Consul member's stop
/// awaits its watch task, and the composed follower, still running
/// (sd-core/src/follow.rs:35-36 stops the members before the follower), fails over to
/// Consul: its set is published and a switch is logged at warn, during a clean shutdown.
#[tokio::test]
async fn attack19_stopping_failover_through_connect_does_not_switch() {
    let consul = require!(Server::Consul);
    let _lock = shared(Server::Consul);
    let (logs, _guard) = capture_logs();
    let service = unique_name("a19-stop-switch");
    let primary = unique_name("a19-primary");
    let direct = sdkit::connect(&format!("consul://{consul}")).unwrap();
    let in_consul = direct
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 24931).id("a19-c").build(),
        ))
        .await
        .unwrap();
    in_consul.register().await.unwrap();
    let in_memory = sdkit::connect(&format!("memory://{primary}"))
        .unwrap()
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 24932).id("a19-m").build(),
        ))
        .await
        .unwrap();
    in_memory.register().await.unwrap();
    let registry =
        sdkit::connect(&format!("failover:memory://{primary},consul://{consul}")).unwrap();
    let mut switched = Vec::new();
    for round in 0..3 {
        let instancer = registry
            .instancer(&ServiceQuery::new(service.as_str()))
            .await
            .unwrap();
        let mut sub = instancer.subscribe();
        let first = tokio::time::timeout(BOUND, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert!(sources(&first)[0].starts_with("memory://"), "{first:?}");
        let collector = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(e)) = tokio::time::timeout(BOUND, sub.next()).await {
                seen.push(sources(&e));
            }
            seen
        });
        tokio::task::yield_now().await;
        instancer.stop().await;
        let seen = collector.await.unwrap();
        if seen
            .iter()
            .any(|s| s.iter().any(|x| x.starts_with("consul://")))
        {
            switched.push((round, seen));
        }
    }
    in_consul.deregister().await.ok();
    in_memory.deregister().await.ok();
    let text = logs.text();
    let warned = text.matches("serving another member's set").count();
    assert!(
        switched.is_empty() && warned == 0,
        "stop() switched to Consul in rounds {switched:?}; switch warnings logged: {warned}"
    );
}

/// `ComposedRegistry::instancer`'s rustdoc: "Starts an instancer on every member at once (so
/// a slow or unreachable member does not delay the others)". But it `join_all`s the
/// members. `instancer()` calls (sd-core/src/compose/mod.rs:332-334), and every backend's
/// `instancer()` runs its first round before returning (`WatchedInstancer::start`,
/// sd-core/src/watch_loop.rs:283-288): a standby that accepts connections and answers
/// nothing (a black-holed host, here a stalled proxy) delays the failover instancer, and so
/// the application's start, by the standby's request timeout (Consul's default 10 s), while
/// the primary answered in milliseconds.
#[tokio::test]
async fn attack19_a_stalled_standby_does_not_delay_the_failover_instancer() {
    let consul = require!(Server::Consul);
    let _lock = shared(Server::Consul);
    let proxy = sd_testkit::proxy::Proxy::start(&consul).await;
    proxy.stall();
    let registry = sdkit::connect(&format!(
        "failover:consul://{consul},consul://{}",
        proxy.addr
    ))
    .unwrap();
    let service = unique_name("a19-stalled-standby");
    let started = std::time::Instant::now();
    let instancer = tokio::time::timeout(
        BOUND,
        registry.instancer(&ServiceQuery::new(service.as_str())),
    )
    .await
    .expect("instancer() within 30 s")
    .unwrap();
    let took = started.elapsed();
    let state = instancer.subscribe().current();
    instancer.stop().await;
    assert!(
        took < Duration::from_secs(8),
        "instancer() of failover:<answering primary>,<stalled standby> took {took:?} \
         (state then: {state:?})"
    );
}

/// The same for registration: `register` "succeeds when at least one member accepted;
/// members that could not be reached are retried in the background" (RegisterIn::All's
/// rustdoc), but `register_all` awaits every member's `register()` together
/// (sd-core/src/compose/registrar.rs:94-95): with a stalled standby, `register()` returns
/// only after the standby's request timeout, although the primary accepted at once.
#[tokio::test]
async fn attack19_a_stalled_member_does_not_delay_register() {
    let consul = require!(Server::Consul);
    let _lock = shared(Server::Consul);
    let proxy = sd_testkit::proxy::Proxy::start(&consul).await;
    proxy.stall();
    let registry = sdkit::connect(&format!(
        "failover:consul://{consul},consul://{}",
        proxy.addr
    ))
    .unwrap();
    let service = unique_name("a19-stalled-register");
    let registrar = registry
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 24941).id("a19-r").build(),
        ))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(BOUND, registrar.register())
        .await
        .expect("register() within 30 s");
    let took = started.elapsed();
    proxy.restore();
    registrar.deregister().await.ok();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        took < Duration::from_secs(8),
        "register() through failover:<accepting primary>,<stalled standby> took {took:?}"
    );
}
