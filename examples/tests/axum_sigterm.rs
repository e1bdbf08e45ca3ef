//! A real SIGTERM takes an instance of the axum example out of rotation: it deregisters,
//! then drains, then `serve` returns. Alone in its test binary: it installs a process-wide
//! SIGTERM handler and sends the signal to its own process.
#![cfg(unix)]

use std::time::Duration;

use examples::axum_service::{serve, sigterm, ServeOptions};
use sdkit::{BoxError, DefaultEndpointer, Endpointer, Instance, ServiceQuery};

#[tokio::test]
async fn sigterm_deregisters_then_drains_then_exits() {
    let registry = sdkit::connect("memory://axum-sigterm").unwrap();
    let term = sigterm().unwrap(); // the handler is in from here on
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let opts = ServeOptions {
        service: "sigterm".into(),
        name: "only".into(),
        ..ServeOptions::default()
    };
    let (up, is_up) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(registry.clone(), listener, opts, term, Some(up)));
    is_up.await.unwrap();

    let instancer = registry
        .instancer(&ServiceQuery::new("sigterm").passing_only(true))
        .await
        .unwrap();
    let seen = DefaultEndpointer::new(&*instancer, |_: &Instance| -> Result<(), BoxError> { Ok(()) });
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
    assert_eq!(http.get(&url).send().await.unwrap().text().await.unwrap(), "only");

    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let stopped = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("serve returned after SIGTERM")
        .unwrap()
        .unwrap();
    assert!(stopped.propagated, "its own view saw it gone before the drain");
    assert_eq!(stopped.started, stopped.completed);
    assert_eq!(stopped.completed, 1);
    assert_eq!(count(&seen), 0, "deregistered");
    assert!(http.get(&url).send().await.is_err(), "no longer listening");
    seen.close().await;
    instancer.stop().await;
}
