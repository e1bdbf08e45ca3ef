//! A real SIGTERM takes an instance of the axum example out of rotation: it deregisters,
//! then drains (a long request in flight gets its answer), then exits. Alone in its test
//! binary: it installs a process-wide SIGTERM handler and sends the signal to its own
//! process.
#![cfg(unix)]

use std::time::Duration;

use examples::axum_service::{sigterm, ServeOptions, Service};
use sdkit::{BoxError, DefaultEndpointer, Endpointer, Instance, ServiceQuery};

#[tokio::test]
async fn sigterm_deregisters_then_drains_then_exits() {
    let registry = sdkit::connect("memory://axum-sigterm").unwrap();
    let term = sigterm().unwrap(); // the handler is in from here on
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let opts = ServeOptions {
        service: "sigterm".into(),
        name: "only".into(),
        ..ServeOptions::default()
    };
    // What `serve` does, with a look inside between the steps.
    let service = Service::start(registry.clone(), listener, opts)
        .await
        .unwrap();

    let instancer = registry
        .instancer(&ServiceQuery::new("sigterm").passing_only(true))
        .await
        .unwrap();
    let seen = DefaultEndpointer::new(&*instancer, |_: &Instance| -> Result<(), BoxError> {
        Ok(())
    });
    let mut changes = seen.changes();
    let count = |ep: &DefaultEndpointer<()>| ep.endpoints().get().map(|l| l.len()).unwrap_or(0);
    tokio::time::timeout(Duration::from_secs(10), async {
        while count(&seen) != 1 {
            changes.changed().await;
        }
    })
    .await
    .expect("registered");
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).send();
    assert_eq!(get("/").await.unwrap().text().await.unwrap(), "only");
    // A long request, in flight when the signal comes.
    let slow = tokio::spawn(get("/slow"));
    service.wait_slow(1, Duration::from_secs(10)).await.unwrap();

    let task = tokio::spawn(async move {
        term.await;
        service.shutdown().await
    });
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let stopped = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("shut down after SIGTERM")
        .unwrap()
        .unwrap();
    assert!(
        stopped.propagated,
        "its own view saw it gone before the drain"
    );
    assert_eq!(stopped.in_flight_at_drain, 1, "{stopped:?}");
    assert_eq!((stopped.started, stopped.completed), (2, 2), "{stopped:?}");
    let answer = slow.await.unwrap().unwrap().text().await.unwrap();
    assert_eq!(answer, "only", "the request in flight was answered");
    assert_eq!(count(&seen), 0, "deregistered");
    assert!(get("/").await.is_err(), "no longer listening");
    seen.close().await;
    instancer.stop().await;
}
