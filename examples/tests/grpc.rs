//! The gRPC example runs unchanged on the embedded registry and, selected only by the
//! `SD_REGISTRY` variable (the way the binary picks it), on a real Consul agent.

mod common;

use examples::grpc::{retryable, run, Balancing, Options};

#[tokio::test]
async fn grpc_on_the_embedded_registry() {
    let registry = sdkit::connect("memory://grpc-test").unwrap();
    let report = run(registry, Options::default()).await.unwrap();
    println!("{report}");
    report.check().unwrap();
    assert_eq!(report.registry, "memory");
    // Nothing reached the killed server after discovery dropped it, and the survivors
    // shared the last phase.
    assert_eq!(report.phases[2].hits.len(), 2, "{report}");
}

/// The same run with tower's own P2C (`tower::balance::p2c::Balance` over
/// `PeakEwmaDiscover` over `sd_lb::tower::Discover`, each `Channel` in `Eject`).
#[tokio::test]
async fn grpc_on_tower_balance_on_the_embedded_registry() {
    let registry = sdkit::connect("memory://grpc-tower-test").unwrap();
    let opts = Options {
        balancing: Balancing::Tower,
        ..Options::default()
    };
    let report = run(registry, opts).await.unwrap();
    println!("{report}");
    report.check().unwrap();
    assert_eq!(report.phases[2].hits.len(), 2, "{report}");
    assert_eq!(
        report.ejected,
        Some(true),
        "Eject took the killed server out before discovery did: {report}"
    );
}

#[test]
fn balancing_parses_and_refuses_unknown_names() {
    assert_eq!("tower".parse::<Balancing>(), Ok(Balancing::Tower));
    assert_eq!("sdkit".parse::<Balancing>(), Ok(Balancing::Sdkit));
    let err = "envoy".parse::<Balancing>().unwrap_err();
    assert!(err.contains("\"sdkit\" or \"tower\""), "{err}");
}

/// The only test in this binary that touches `SD_REGISTRY`, so there is no race on it.
#[tokio::test]
async fn grpc_on_consul_selected_by_sd_registry() {
    let Some((registry, _consul)) = common::consul_by_sd_registry() else {
        return;
    };
    let opts = Options {
        service: sd_testkit::unique_name("grpc"),
        ..Options::default()
    };
    let report = run(registry.clone(), opts).await.unwrap();
    println!("{report}");
    report.check().unwrap();
    assert_eq!(report.registry, "consul");
    // And on tower's balancer.
    let opts = Options {
        service: sd_testkit::unique_name("grpc-tower"),
        balancing: Balancing::Tower,
        ..Options::default()
    };
    let report = run(registry, opts).await.unwrap();
    println!("{report}");
    report.check().unwrap();
    assert_eq!(report.ejected, Some(true), "{report}");
}

#[test]
fn only_transport_failures_are_retried() {
    use tonic::{Code, Status};
    let err = |code| -> sdkit::BoxError { Box::new(Status::new(code, "x")) };
    for code in [Code::Unavailable, Code::Unknown, Code::Cancelled] {
        assert!(retryable(&err(code)), "{code:?}");
    }
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::PermissionDenied,
        Code::Internal,
    ] {
        assert!(!retryable(&err(code)), "{code:?}");
    }
    assert!(retryable(&"no endpoints available".into()));
}
