//! The quickstart runs unchanged on the embedded registry and, selected only by URL, on a real
//! Consul agent.

use examples::{run, Options};

#[tokio::test]
async fn quickstart_on_the_embedded_registry() {
    let registry = sdkit::connect("memory://quickstart-test").unwrap();
    let report = run(registry, Options::default()).await.unwrap();
    report.check().unwrap();
    assert_eq!(report.registry, "memory");
}

#[tokio::test]
async fn quickstart_on_consul_selected_by_url() {
    let addr = sd_testkit::require!(sd_testkit::Server::Consul);
    let registry = sdkit::connect(&format!("consul://{addr}")).unwrap();
    let opts = Options {
        service: sd_testkit::unique_name("quickstart"),
        ..Options::default()
    };
    let report = run(registry, opts).await.unwrap();
    report.check().unwrap();
    assert_eq!(report.registry, "consul");
}
