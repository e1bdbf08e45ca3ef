//! The metrics example: the Prometheus endpoint it serves on 127.0.0.1, scraped over HTTP,
//! holds the instancer, registrar and balancer series with their values and labels.
//! A test binary of its own: it installs the process-wide recorder.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scraped_endpoint_has_every_family_of_series() {
    let exposed = examples::metrics::serve(0).await.unwrap();
    let registry = sdkit::connect("memory://metrics-example-test").unwrap();
    examples::metrics::traffic(registry, "scraped", 8080, 7)
        .await
        .unwrap();
    let body = reqwest::get(exposed.url())
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let l = r#"backend="memory",service="scraped""#;
    for series in [
        format!("sdkit_balancer_picks_total{{{l}}} 7"),
        format!("sdkit_balancer_no_endpoints_total{{{l}}} 0"),
        format!("sdkit_balancer_retries_total{{{l}}} 0"),
        format!("sdkit_registrar_registrations_total{{{l},outcome=\"ok\"}} 1"),
        format!("sdkit_registrar_deregistrations_total{{{l},outcome=\"ok\"}} 1"),
        format!("sdkit_instancer_events_total{{{l},kind=\"instances\"}}"),
        format!("sdkit_instancer_instances{{{l}}}"),
        format!("sdkit_instancer_staleness_seconds{{{l}}} 0"),
    ] {
        assert!(body.contains(&series), "{series:?} not scraped:\n{body}");
    }
}
