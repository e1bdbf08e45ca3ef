//! Scenario "dns": propagation on the real BIND server started by `scripts/registries`
//! (`SD_TEST_DNS=host:port`, zone `SD_TEST_DNS_ZONE`), mirroring `dnsPropagation` in
//! `bench/gokit/dnsprop.go`: the same refresh (200 ms: `min_refresh = max_refresh`), the same
//! anchor record, the same second record added and deleted in turn with BIND's `nsupdate`;
//! each time, the time from starting `nsupdate` to the `DefaultEndpointer` showing it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sd_core::{DefaultEndpointer, Endpointer, Instancer, ServiceQuery};
use sd_dnssrv::DnsRegistry;

use super::{emit_propagation, factory};
use crate::Record;

/// The refresh of both sides (go-kit's ticker).
const REFRESH: &str = "200ms";

fn skip(why: String) -> Result<(), String> {
    eprintln!("sdkit dns scenario skipped: {why}");
    let mut r = Record::new("dns", 0, 1);
    r.skipped = Some(why);
    r.emit();
    Ok(())
}

fn nsupdate(addr: &str, zone: &str, commands: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or("SD_TEST_DNS is not host:port")?;
    let mut child = Command::new("nsupdate")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nsupdate: {e}"))?;
    let script = format!("server {host} {port}\nzone {zone}\n{commands}\nsend\n");
    child
        .stdin
        .take()
        .ok_or("nsupdate stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| format!("nsupdate: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nsupdate: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nsupdate: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn run(scale: usize) -> Result<(), String> {
    let changes = 40 / scale + 4;
    let addr = match std::env::var("SD_TEST_DNS") {
        Ok(a) if !a.is_empty() => a,
        _ => return skip("SD_TEST_DNS is not set (run: eval \"$(scripts/registries up)\")".into()),
    };
    let zone = std::env::var("SD_TEST_DNS_ZONE").unwrap_or_else(|_| "sd.test".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let service = format!("sdbench-sdkit-{}-{nanos}", std::process::id());
    let name = format!("_{service}._tcp.{zone}.");
    let moving = format!("{name} 0 IN SRV 0 1 18080 moving.{zone}.");
    if let Err(e) = nsupdate(
        &addr,
        &zone,
        &format!("update add {name} 0 IN SRV 0 1 9 anchor.{zone}."),
    ) {
        return skip(e);
    }
    let registry = DnsRegistry::from_url(&format!(
        "dns+srv://{addr}/?zone={zone}&min_refresh={REFRESH}&max_refresh={REFRESH}"
    ))
    .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let result = rt.block_on(async {
        let instancer = registry
            .dns_instancer(&ServiceQuery::new(&service))
            .await
            .map_err(|e| e.to_string())?;
        let endpointer = DefaultEndpointer::new(&instancer, factory);
        endpointer.ready().await;
        let mut changed = endpointer.changes();
        let (mut lat, mut req) = (Vec::new(), Vec::new());
        for i in 0..changes {
            let (want, op) = if i % 2 == 0 {
                (2, "update add")
            } else {
                (1, "update delete")
            };
            let t0 = Instant::now();
            nsupdate(&addr, &zone, &format!("{op} {moving}"))?;
            req.push(t0.elapsed().as_nanos() as f64);
            tokio::time::timeout(Duration::from_secs(10), async {
                while endpointer.endpoints().all().len() != want {
                    changed.changed().await;
                }
            })
            .await
            .map_err(|_| format!("dns: change {i} not seen within 10 s"))?;
            lat.push(t0.elapsed().as_nanos() as f64);
        }
        endpointer.close().await;
        instancer.stop().await;
        Ok::<_, String>((lat, req))
    });
    let _ = nsupdate(&addr, &zone, &format!("update delete {name} SRV"));
    let (lat, req) = result?;
    emit_propagation("dns", &lat, &req);
    Ok(())
}
