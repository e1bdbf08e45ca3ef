use std::sync::Arc;
use std::time::{Duration, Instant};
use sd_core::{HealthCheck, Instance, Registrar, Registration, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_connections_per_registration() {
    let addr = sd_testkit::require(sd_testkit::Server::Consul).unwrap();
    let reg: Arc<dyn Registry> = Arc::new(sd_consul::ConsulRegistry::from_url(&format!("consul://{addr}?wait=5s&timeout=60s")).unwrap());
    let svc = sd_testkit::unique_name("scratch");
    let mut rs = Vec::new();
    let t0 = Instant::now();
    for i in 0..200u16 {
        let r = reg.registrar(Registration::new(&svc, Instance::builder("127.0.0.1", 40000 + i).id(format!("{svc}-{i}")).build()).check(HealthCheck::Ttl(Duration::from_secs(300)))).await.unwrap();
        r.register().await.unwrap();
        rs.push(r);
        if i % 50 == 49 {
            let n = std::process::Command::new("sh").arg("-c").arg("ss -tn | grep -c ':18500'").output().unwrap();
            eprintln!("after {} registrations ({:?}): {} conns", i + 1, t0.elapsed(), String::from_utf8_lossy(&n.stdout).trim());
        }
    }
    for r in rs { r.deregister().await.unwrap(); }
}
