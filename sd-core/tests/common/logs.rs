//! Log capture for tests: a `tracing` layer that records every event's level and fields.
//! Shared by sd-core's test binaries and sdkit's (`#[path = ...] mod logs;`).
#![allow(dead_code)] // each test binary uses part of it

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// The events logged while installed, as `field=value` lines.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<(Level, String)>>>);

impl Logs {
    /// Installs the capture as this thread's default subscriber until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    /// The events at `level` or more severe, one per line.
    pub fn at_least(&self, level: Level) -> String {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l <= level)
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl<S: Subscriber> Layer<S> for Logs {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut line = String::new();
        event.record(&mut Fields(&mut line));
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), line));
    }
}
