//! `sdkit register`: register, keep alive until Ctrl-C / SIGTERM, deregister.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use sdkit::{HealthCheck, Instance, Registration};
use serde_json::json;

use crate::ctx::Ctx;
use crate::failure::Failure;
use crate::output::{self, styled};
use crate::shutdown;

/// What to register.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The service.
    pub service: String,
    /// `host:port`.
    pub addr: String,
    /// `--id`.
    pub id: Option<String>,
    /// `--tag`s.
    pub tags: Vec<String>,
    /// `--meta`s.
    pub meta: Vec<(String, String)>,
    /// `--weight`.
    pub weight: Option<u32>,
    /// `--ttl`.
    pub ttl: Duration,
}

impl Spec {
    /// What `caps` says the registry will not do with this registration, one note each.
    pub fn notes(&self, scheme: &str, caps: sdkit::Capabilities) -> Vec<String> {
        let mut notes = Vec::new();
        let mut dropped = |asked: bool, carried: bool, what: &str| {
            if asked && !carried {
                notes.push(format!(
                    "{scheme}:// does not store {what}: it is not registered"
                ));
            }
        };
        dropped(!self.tags.is_empty(), caps.tags, "tags (--tag)");
        dropped(!self.meta.is_empty(), caps.metadata, "metadata (--meta)");
        dropped(self.weight.is_some(), caps.weight, "weights (--weight)");
        if self.id.is_some() && !caps.ids {
            notes.push(format!(
                "{scheme}:// does not publish the registered id: watchers see another id"
            ));
        }
        if caps.registration && !caps.expiry {
            notes.push(format!(
                "{scheme}:// has no expiry: if this process is killed without deregistering, \
                 the registration stays until someone removes it"
            ));
        }
        notes
    }

    /// The registration, validated as every backend validates it.
    pub fn registration(&self) -> Result<Registration, Failure> {
        let parsed = Instance::parse(&self.addr).map_err(|e| {
            Failure::usage(format!(
                "bad instance address {:?} (expected HOST:PORT): {e}",
                self.addr
            ))
        })?;
        let mut b = Instance::builder(parsed.host(), parsed.port()).tags(self.tags.iter());
        if let Some(id) = &self.id {
            b = b.id(id);
        }
        for (k, v) in &self.meta {
            b = b.meta(k, v);
        }
        if let Some(w) = self.weight {
            b = b.weight(w);
        }
        let r = Registration::new(&self.service, b.build()).check(HealthCheck::Ttl(self.ttl));
        r.validate()
            .map_err(|e| Failure::from_sd("cannot register", &e))?;
        Ok(r)
    }
}

fn say(
    as_json: bool,
    event: &str,
    r: &Registration,
    url: &str,
    text: String,
) -> std::io::Result<()> {
    if as_json {
        output::print_json(&json!({
            "time": output::timestamp(),
            "event": event,
            "service": r.service,
            "id": r.instance_id(),
            "registry": sdkit::config::redact(url),
            "ttl_seconds": r.ttl().map(|t| t.as_secs_f64()),
            "instance": output::instance_json(&r.instance),
        }))
    } else {
        let mut out = anstream::stdout().lock();
        writeln!(out, "{} {text}", styled(output::DIM, output::timestamp()))?;
        out.flush()
    }
}

/// Runs `register`: exit 0 after a clean deregistration, 1 if registering or deregistering
/// failed.
pub async fn run(ctx: &Ctx, spec: Spec) -> Result<ExitCode, Failure> {
    let (registry, url, as_json, timeout) =
        (&ctx.registry, ctx.url.as_str(), ctx.json, ctx.timeout);
    let registration = spec.registration()?;
    let mut stop = shutdown::Shutdown::install()?;
    for note in spec.notes(registry.scheme(), registry.capabilities()) {
        crate::note(&note);
    }
    let id = registration.instance_id();
    let service = registration.service.clone();
    let registrar = registry
        .registrar(registration.clone())
        .await
        .map_err(|e| Failure::from_sd(format!("cannot register {service:?} at {url}"), &e))?;
    let registered = stop
        .unless_stopped(tokio::time::timeout(timeout, registrar.register()))
        .await;
    match registered {
        None => {
            let _ = tokio::time::timeout(timeout, registrar.deregister()).await;
            return Err(Failure::runtime(format!(
                "stopped by a signal while registering {service:?} ({id}); deregistered"
            )));
        }
        Some(Err(_)) => {
            // Whatever half-happened must not stay behind.
            let _ = tokio::time::timeout(timeout, registrar.deregister()).await;
            return Err(ctx.no_answer());
        }
        Some(Ok(Err(e))) => {
            let _ = tokio::time::timeout(timeout, registrar.deregister()).await;
            return Err(Failure::from_sd(
                format!("registration of {service:?} ({id}) at {url} failed"),
                &e,
            ));
        }
        Some(Ok(Ok(()))) => {}
    }
    // The registration stands whatever happens to our output: a closed stdout (`| head`)
    // must not end the command without deregistering, so an output error is only logged.
    if let Err(e) = say(
        as_json,
        "registered",
        &registration,
        url,
        format!(
            "{} {service} {} (ttl {}); Ctrl-C or SIGTERM deregisters",
            styled(output::GREEN, "registered"),
            output::instance_text(&registration.instance.to_builder().id(&id).build()),
            humantime::format_duration(spec.ttl),
        ),
    ) {
        tracing::debug!(error = %e, "cannot write the registered line; staying registered");
    }
    stop.wait().await;
    let outcome = tokio::time::timeout(timeout, registrar.deregister()).await;
    match outcome {
        Ok(Ok(())) => {
            // Deregistered: that is the outcome, whether or not the line can be written.
            let _ = say(
                as_json,
                "deregistered",
                &registration,
                url,
                format!("{} {service} {id}", styled(output::YELLOW, "deregistered")),
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => Err(Failure::from_sd(
            format!(
                "deregistration of {service:?} ({id}) failed; the registry drops it when its TTL lapses"
            ),
            &e,
        )),
        Err(_) => Err(Failure::runtime(format!(
            "deregistration of {service:?} ({id}) got no answer within {}; the registry drops it when its TTL lapses",
            humantime::format_duration(timeout)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str) -> Spec {
        Spec {
            service: "web".into(),
            addr: addr.into(),
            id: Some("web-1".into()),
            tags: vec!["a".into(), "b".into()],
            meta: vec![("zone".into(), "eu".into())],
            weight: Some(3),
            ttl: Duration::from_secs(5),
        }
    }

    #[test]
    fn every_option_reaches_the_registration() {
        let r = spec("127.0.0.1:8080").registration().unwrap();
        assert_eq!(r.service, "web");
        assert_eq!(r.instance.addr(), "127.0.0.1:8080");
        assert_eq!(r.instance.id(), "web-1");
        assert_eq!(r.instance.tags(), ["a", "b"]);
        assert_eq!(r.instance.meta().get("zone").unwrap(), "eu");
        assert_eq!(r.instance.weight(), 3);
        assert_eq!(r.ttl(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn notes_follow_the_capabilities() {
        let s = spec("h:1");
        assert!(s.notes("consul", sdkit::Capabilities::all()).is_empty());
        let dns = sdkit::Capabilities::none()
            .with_registration()
            .with_weight();
        let notes = s.notes("dns+srv", dns).join("\n");
        for what in [
            "tags (--tag)",
            "metadata (--meta)",
            "registered id",
            "no expiry",
        ] {
            assert!(notes.contains(what), "{what}: {notes}");
        }
        assert!(!notes.contains("weights"), "{notes}");
    }

    #[test]
    fn bad_addresses_and_ttls_are_usage_errors() {
        for bad in ["127.0.0.1", "host:port", "h:0", ":80", "h:70000"] {
            let e = spec(bad).registration().unwrap_err();
            assert_eq!(e.code(), crate::failure::USAGE, "{bad}: {e}");
        }
        let mut s = spec("h:1");
        s.ttl = Duration::from_millis(500);
        let e = s.registration().unwrap_err();
        assert!(e.to_string().contains("below the 1 s minimum"), "{e}");
    }
}
