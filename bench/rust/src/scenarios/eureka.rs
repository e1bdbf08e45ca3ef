//! The Eureka row: propagation on the real Eureka server started by `scripts/registries`
//! (`SD_TEST_EUREKA`), polling every second, mirroring `bench` in `bench/gokit-eureka/bench.go`.
//! An anchor instance stays registered (go-kit publishes an error, not an empty set, for an
//! app without instances), a second one is registered and deregistered in turn; each time,
//! after a random 0..1 s pause (so changes are not in phase with the polls), the time from
//! issuing the request to the `DefaultEndpointer` following an `EurekaInstancer` showing it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sd_core::backoff::jittered;
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Instance, Registrar, Registration, ServiceQuery,
};
use sd_eureka::EurekaRegistry;

use super::emit_propagation;
use crate::Record;

const POLL: Duration = Duration::from_secs(1);

pub fn run(scale: usize) -> Result<(), String> {
    let changes = (20 / scale).max(6);
    let addr = match std::env::var("SD_TEST_EUREKA") {
        Ok(a) if !a.is_empty() => a,
        _ => {
            let why = "SD_TEST_EUREKA is not set (run: eval \"$(scripts/registries up eureka)\")";
            eprintln!("sdkit eureka scenario skipped: {why}");
            let mut r = Record::new("eureka", 0, 1);
            r.skipped = Some(why.into());
            r.emit();
            return Ok(());
        }
    };
    let rest = addr
        .strip_prefix("http://")
        .ok_or_else(|| format!("SD_TEST_EUREKA={addr:?} is not an http:// URL"))?;
    let registry =
        EurekaRegistry::from_url(&format!("eureka://{rest}?poll=1s")).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let service = format!("sdbench-sdkit-{}-{nanos}", std::process::id());
    let (lat, req) = rt.block_on(measure(&registry, &service, changes))?;
    emit_propagation("eureka", &lat, &req);
    Ok(())
}

/// Waits (at most 30 s) until the endpointer holds `want` endpoints.
async fn wait(
    endpointer: &DefaultEndpointer<String>,
    changed: &mut sd_core::Changes,
    want: usize,
    what: &str,
) -> Result<(), String> {
    while endpointer.endpoints().all().len() != want {
        tokio::time::timeout(Duration::from_secs(30), changed.changed())
            .await
            .map_err(|_| format!("{what} not seen within 30 s"))?;
    }
    Ok(())
}

async fn measure(
    registry: &EurekaRegistry,
    service: &str,
    changes: usize,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let registrar = |id: &str, port: u16| {
        registry
            .eureka_registrar(Registration::new(
                service,
                Instance::builder("127.0.0.1", port).id(id).build(),
            ))
            .map_err(|e| e.to_string())
    };
    let anchor = registrar("anchor", 18080)?;
    let moving = registrar("moving", 18081)?;
    anchor.register().await.map_err(|e| e.to_string())?;
    let instancer = registry.eureka_instancer(&ServiceQuery::new(service)).await;
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.addr().to_string())
        });
    let mut changed = endpointer.changes();
    wait(&endpointer, &mut changed, 1, "the anchor").await?;
    let (mut lat, mut req) = (Vec::with_capacity(changes), Vec::with_capacity(changes));
    for i in 0..changes {
        tokio::time::sleep(jittered(POLL / 2, 1.0)).await;
        let t0 = Instant::now();
        let want = if i % 2 == 0 {
            moving.register().await.map_err(|e| e.to_string())?;
            2
        } else {
            moving.deregister().await.map_err(|e| e.to_string())?;
            1
        };
        req.push(t0.elapsed().as_nanos() as f64);
        wait(&endpointer, &mut changed, want, &format!("change {i}")).await?;
        lat.push(t0.elapsed().as_nanos() as f64);
    }
    let _ = moving.deregister().await;
    let _ = anchor.deregister().await;
    endpointer.close().await;
    sd_core::Instancer::stop(&instancer).await;
    Ok((lat, req))
}
