//! Attack on issue 15's metrics labels. docs/OBSERVABILITY.md: "Every series has the labels
//! `backend` ... and `service`", and "Two instancers of the same backend and service share
//! their series". So the instancer, registrar and balancer series of service S must all say
//! `service="S"`, whatever the backend. A test binary of its own: it installs the
//! process-wide Prometheus recorder (as examples/src/metrics.rs does).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sd_testkit::Server;
use sdkit::{HealthCheck, Instance, Registration, ServiceQuery};

fn handle() -> &'static PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// The `service` label values of the series of `family` with `backend="<backend>"`.
fn service_labels(body: &str, family: &str, backend: &str) -> Vec<String> {
    let b = format!("backend=\"{backend}\"");
    let mut v: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with(family) && l.contains(&b))
        .filter_map(|l| l.split("service=\"").nth(1))
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn eureka_url() -> Option<String> {
    let addr = sd_testkit::require(Server::Eureka)?;
    let rest = addr.trim_start_matches("http://").to_string();
    Some(format!("eureka://{rest}?poll=1s&timeout=20s"))
}

/// Eureka's registrar labels its registrations with the service as given but its renewals
/// (and re-registrations) with Eureka's upper-cased app name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eureka_registrar_series_share_the_service_label() {
    let Some(url) = eureka_url() else { return };
    let _hold = sd_testkit::shared(Server::Eureka);
    let h = handle();
    let registry = sdkit::connect(&url).unwrap();
    let service = sd_testkit::unique_name("labels");
    let reg = Registration::new(&service, Instance::builder("127.0.0.1", 18999).build())
        .check(HealthCheck::Ttl(Duration::from_secs(3)));
    let registrar = registry.registrar(reg).await.unwrap();
    registrar.register().await.unwrap();
    // Renewals every TTL/3 = 1 s: wait for one.
    let end = Instant::now() + Duration::from_secs(60);
    let body = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let body = h.render();
        if !service_labels(&body, "sdkit_registrar_renewals_total", "eureka").is_empty() {
            break body;
        }
        assert!(Instant::now() < end, "no renewal counted:\n{body}");
    };
    registrar.deregister().await.unwrap();
    let regs = service_labels(&body, "sdkit_registrar_registrations_total", "eureka");
    let renewals = service_labels(&body, "sdkit_registrar_renewals_total", "eureka");
    assert_eq!(regs, std::slice::from_ref(&service), "{body}");
    assert_eq!(
        renewals,
        std::slice::from_ref(&service),
        "registrations labelled {regs:?}, renewals {renewals:?}"
    );
}

/// The instancer series of every backend carry the service name as `service`, not the
/// backend's internal watch target (etcd prefix, ZooKeeper path, Eureka "app X", Consul
/// service plus tag filter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instancer_series_are_labelled_with_the_service() {
    let h = handle();
    let mut urls: Vec<(Server, &str, String, bool)> = Vec::new();
    if let Some(a) = sd_testkit::require(Server::Consul) {
        urls.push((Server::Consul, "consul", format!("consul://{a}"), true));
    }
    if let Some(a) = sd_testkit::require(Server::Etcd) {
        urls.push((Server::Etcd, "etcd", format!("etcd://{a}"), false));
    }
    if let Some(a) = sd_testkit::require(Server::Zk) {
        urls.push((Server::Zk, "zk", format!("zk://{a}"), false));
    }
    if let Some(u) = eureka_url() {
        urls.push((Server::Eureka, "eureka", u, false));
    }
    let mut wrong = Vec::new();
    for (server, backend, url, tagged) in urls {
        let _hold = sd_testkit::shared(server);
        let registry = sdkit::connect(&url).unwrap();
        let service = sd_testkit::unique_name("lbl");
        let mut q = ServiceQuery::new(&service);
        if tagged {
            q = q.tag("blue");
        }
        let inst = tokio::time::timeout(Duration::from_secs(60), registry.instancer(&q))
            .await
            .expect("instancer in time")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let body = h.render();
        inst.stop().await;
        let labels = service_labels(&body, "sdkit_instancer_", backend);
        if labels != [service.clone()] {
            wrong.push(format!(
                "{backend}: service={labels:?}, expected {service:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "instancer series labels:\n{}",
        wrong.join("\n")
    );
}
