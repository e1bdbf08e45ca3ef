//! The quickstart runs unchanged on the embedded registry and, selected only by the
//! `SD_REGISTRY` variable (the way the binary picks it), on a real Consul agent.

mod common;

use examples::{run, Options};

#[tokio::test]
async fn quickstart_on_the_embedded_registry() {
    let registry = sdkit::connect("memory://quickstart-test").unwrap();
    let report = run(registry, Options::default()).await.unwrap();
    report.check().unwrap();
    assert_eq!(report.registry, "memory");
}

/// The only test in this binary that touches `SD_REGISTRY`, so there is no race on it.
#[tokio::test]
async fn quickstart_on_consul_selected_by_sd_registry() {
    let Some((registry, _consul)) = common::consul_by_sd_registry() else {
        return;
    };
    let opts = Options {
        service: sd_testkit::unique_name("quickstart"),
        ..Options::default()
    };
    let report = run(registry, opts).await.unwrap();
    report.check().unwrap();
    assert_eq!(report.registry, "consul");
}
