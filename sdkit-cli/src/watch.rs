//! `sdkit watch`: one line per change of what an instancer publishes.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use sdkit::{Event, Instance, InstanceSet, ServiceQuery};
use serde_json::{json, Value};

use crate::ctx::{Ctx, Opened};
use crate::failure::Failure;
use crate::output::{self, styled};
use crate::shutdown;

/// One line of `watch` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The first state: this many instances (each then follows as `Added`).
    Initial(usize),
    /// An instance appeared.
    Added(Instance),
    /// An instance went away.
    Removed(Instance),
    /// The same instance (address and id) with other tags, metadata, weight or health.
    Changed {
        /// As it was.
        before: Instance,
        /// As it is.
        after: Instance,
    },
    /// Discovery failed; the last good set is kept.
    Error(String),
    /// Discovery works again after an error; this many instances.
    Recovered(usize),
}

/// Turns the instancer's complete sets into changes.
#[derive(Debug, Default)]
pub struct Differ {
    last: Option<InstanceSet>,
    failing: bool,
}

impl Differ {
    /// The changes `event` makes to what was seen so far.
    pub fn apply(&mut self, event: Event) -> Vec<Change> {
        match event {
            Event::Error(e) => {
                self.failing = true;
                vec![Change::Error(e.to_string())]
            }
            Event::Instances(set) => {
                let mut out = Vec::new();
                match self.last.take() {
                    None => {
                        out.push(Change::Initial(set.len()));
                        out.extend(set.iter().cloned().map(Change::Added));
                    }
                    Some(old) => {
                        if self.failing {
                            out.push(Change::Recovered(set.len()));
                        }
                        out.extend(diff(&old, &set));
                    }
                }
                self.failing = false;
                self.last = Some(set);
                out
            }
        }
    }
}

/// Removed, changed and added instances between two sets, keyed by address and id.
pub fn diff(old: &[Instance], new: &[Instance]) -> Vec<Change> {
    let key = |i: &Instance| (i.addr().to_string(), i.id().to_string());
    let before: BTreeMap<_, &Instance> = old.iter().map(|i| (key(i), i)).collect();
    let after: BTreeMap<_, &Instance> = new.iter().map(|i| (key(i), i)).collect();
    let mut out = Vec::new();
    for (k, i) in &before {
        if !after.contains_key(k) {
            out.push(Change::Removed((*i).clone()));
        }
    }
    for (k, i) in &after {
        match before.get(k) {
            None => out.push(Change::Added((*i).clone())),
            Some(b) if *b != *i => out.push(Change::Changed {
                before: (*b).clone(),
                after: (*i).clone(),
            }),
            Some(_) => {}
        }
    }
    out
}

/// What differs between two versions of one instance, e.g. `health passing -> critical`.
fn what_changed(b: &Instance, a: &Instance) -> String {
    let mut parts = Vec::new();
    if b.health() != a.health() {
        parts.push(format!(
            "health {} -> {}",
            b.health().as_str(),
            a.health().as_str()
        ));
    }
    if b.weight() != a.weight() {
        parts.push(format!("weight {} -> {}", b.weight(), a.weight()));
    }
    if b.tags() != a.tags() {
        parts.push(format!(
            "tags [{}] -> [{}]",
            b.tags().join(","),
            a.tags().join(",")
        ));
    }
    if b.meta() != a.meta() {
        parts.push(format!(
            "meta [{}] -> [{}]",
            output::meta_text(b),
            output::meta_text(a)
        ));
    }
    parts.join(", ")
}

/// The text line for a change (without timestamp and service).
pub fn text(change: &Change) -> String {
    match change {
        Change::Initial(n) => format!("= {n} instance{}", plural(*n)),
        Change::Added(i) => styled(output::GREEN, format!("+ {}", output::instance_text(i))),
        Change::Removed(i) => styled(output::RED, format!("- {}", output::instance_text(i))),
        Change::Changed { before, after } => {
            let id = if after.id().is_empty() {
                String::new()
            } else {
                format!(" id={}", after.id())
            };
            styled(
                output::YELLOW,
                format!("~ {}{id}: {}", after.addr(), what_changed(before, after)),
            )
        }
        Change::Error(e) => styled(
            output::RED.bold(),
            format!("! error (keeping the last good set): {e}"),
        ),
        Change::Recovered(n) => styled(
            output::GREEN.bold(),
            format!("* recovered: {n} instance{}", plural(*n)),
        ),
    }
}

/// The JSON object for a change.
pub fn json(change: &Change, time: &str, service: &str) -> Value {
    let mut v = match change {
        Change::Initial(n) => json!({"event": "initial", "count": n}),
        Change::Added(i) => json!({"event": "added", "instance": output::instance_json(i)}),
        Change::Removed(i) => json!({"event": "removed", "instance": output::instance_json(i)}),
        Change::Changed { before, after } => json!({
            "event": "changed",
            "before": output::instance_json(before),
            "instance": output::instance_json(after),
        }),
        Change::Error(e) => json!({"event": "error", "error": e}),
        Change::Recovered(n) => json!({"event": "recovered", "count": n}),
    };
    v["time"] = json!(time);
    v["service"] = json!(service);
    v
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn print(changes: &[Change], service: &str, as_json: bool) -> std::io::Result<()> {
    let time = output::timestamp();
    let mut out = anstream::stdout().lock();
    for c in changes {
        if as_json {
            writeln!(out, "{}", json(c, &time, service))?;
        } else {
            writeln!(
                out,
                "{} {} {}",
                styled(output::DIM, &time),
                styled(output::BOLD, service),
                text(c)
            )?;
        }
    }
    out.flush()
}

/// Runs `watch` until Ctrl-C / SIGTERM (exit code 0). If the registry cannot be read when
/// the watch starts, that is a failure: a watch that never saw a good state shows nothing.
pub async fn run(ctx: &Ctx, query: ServiceQuery) -> Result<ExitCode, Failure> {
    let mut stop = shutdown::Shutdown::install()?;
    let service = query.service.clone();
    let Some(opened) = stop.unless_stopped(ctx.open(&query)).await else {
        return Ok(ExitCode::SUCCESS);
    };
    let Opened {
        instancer,
        mut events,
        first,
    } = opened?;
    let mut differ = Differ::default();
    print(&differ.apply(Event::Instances(first)), &service, ctx.json)?;
    let outcome = loop {
        tokio::select! {
            _ = stop.wait() => break Ok(ExitCode::SUCCESS),
            event = events.next() => match event {
                Some(event) => {
                    if let Err(e) = print(&differ.apply(event), &service, ctx.json) {
                        break Err(e.into());
                    }
                }
                None => break Err(Failure::runtime(format!("the instancer of {service:?} stopped"))),
            },
        }
    };
    instancer.stop().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdkit::Health;

    fn set(v: Vec<Instance>) -> Event {
        Event::instances(v)
    }

    #[test]
    fn initial_added_removed_changed_error_recovered() {
        let a = Instance::builder("10.0.0.1", 80).id("a").build();
        let b = Instance::builder("10.0.0.2", 80).id("b").build();
        let b2 = b.to_builder().health(Health::Critical).tag("x").build();
        let c = Instance::new("10.0.0.3", 80);
        let mut d = Differ::default();
        assert_eq!(
            d.apply(set(vec![a.clone(), b.clone()])),
            [
                Change::Initial(2),
                Change::Added(a.clone()),
                Change::Added(b.clone())
            ]
        );
        assert_eq!(
            d.apply(set(vec![b2.clone(), c.clone()])),
            [
                Change::Removed(a.clone()),
                Change::Changed {
                    before: b.clone(),
                    after: b2.clone()
                },
                Change::Added(c.clone()),
            ]
        );
        let err = sdkit::Error::unavailable("consul", "connection refused");
        assert_eq!(
            d.apply(Event::Error(err.clone())),
            [Change::Error(err.to_string())]
        );
        assert_eq!(
            d.apply(set(vec![c.clone()])),
            [Change::Recovered(1), Change::Removed(b2.clone())]
        );
        // Recovery to the same set is still reported, once.
        d.apply(Event::Error(err));
        assert_eq!(d.apply(set(vec![c.clone()])), [Change::Recovered(1)]);
        assert_eq!(d.apply(set(vec![c])), []);
    }

    #[test]
    fn lines_say_what_changed() {
        let b = Instance::builder("10.0.0.2", 80).id("b").weight(1).build();
        let b2 = b.to_builder().health(Health::Critical).weight(5).build();
        let line = text(&Change::Changed {
            before: b.clone(),
            after: b2.clone(),
        });
        assert!(
            line.contains("~ 10.0.0.2:80 id=b: health passing -> critical, weight 1 -> 5"),
            "{line}"
        );
        let j = json(
            &Change::Changed {
                before: b,
                after: b2,
            },
            "t",
            "web",
        );
        assert_eq!(j["event"], "changed");
        assert_eq!(j["before"]["health"], "passing");
        assert_eq!(j["instance"]["health"], "critical");
        assert_eq!(
            (j["time"].as_str(), j["service"].as_str()),
            (Some("t"), Some("web"))
        );
    }
}
