//! Composing registries: `failover:` and `merge:` URLs.
//!
//! A migration from one registry to another, or a standby registry for the day the primary
//! is down, should be a configuration change. A composed registry is built from member
//! registries and is itself a [`Registry`], so everything above it (endpointers, balancers,
//! registration guards) is unchanged:
//!
//! - **`failover:consul://a:8500,consul://b:8500`**: an instancer serves the set of the
//!   first member (in the order written) whose set is fresh; when it fails (an error, a stale
//!   set) the next one's, and it switches back as soon as an earlier member answers again.
//!   Every member is watched all the time, so a switch needs no new connection and no first
//!   query: it is as fast as the failure is seen.
//! - **`merge:consul://127.0.0.1:8500,dns+srv://_web._tcp.example`**: an instancer serves the
//!   union of the members' sets (an instance listed by two members, same address and id,
//!   once). A member that fails keeps its last set in the union, and the union is marked
//!   stale while any member is.
//!
//! Every instance carries the member it came from in its metadata under [`SOURCE_META`]
//! (`sd.source` = the member URL without options or credentials, e.g.
//! `consul://127.0.0.1:8500`). Registration goes to every member by default
//! ([`RegisterIn::All`]: members that cannot be reached are retried in the background), or to
//! the first that accepts ([`RegisterIn::First`]). Members are any registry URLs, each with
//! its own options (`?token=`, `?cache=`, `?protect=`); composed URLs do not nest.
//!
//! `sdkit::connect` reads these URLs; in code, build a [`ComposedRegistry`] from
//! [`Member`]s.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use sd_core::compose::{ComposedRegistry, Composition, Member, SOURCE_META};
//! use sd_core::*;
//!
//! let old = Arc::new(MemoryRegistry::new());
//! let new = Arc::new(MemoryRegistry::new());
//! let merged = ComposedRegistry::new(
//!     Composition::Merge,
//!     vec![Member::new("memory://old", old.clone()), Member::new("memory://new", new.clone())],
//! )?;
//! old.registrar(Registration::new("web", Instance::new("10.0.0.1", 80))).await?.register().await?;
//! new.registrar(Registration::new("web", Instance::new("10.0.0.2", 80))).await?.register().await?;
//!
//! let instancer = merged.instancer(&ServiceQuery::new("web")).await?;
//! let mut sub = instancer.subscribe();
//! let mut event = sub.next().await.unwrap();
//! while event.addrs().len() < 2 {
//!     event = sub.next().await.unwrap();
//! }
//! assert_eq!(event.addrs(), ["10.0.0.1:80", "10.0.0.2:80"]);
//! let set = event.as_instances().unwrap();
//! assert_eq!(set[0].meta().get(SOURCE_META), Some("memory://old"));
//! instancer.stop().await;
//! # Ok::<(), sd_core::Error>(())
//! # }).unwrap();
//! ```

mod deferred;
mod instancer;
mod registrar;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::config::{is_scheme, redact};
use crate::error::{Error, Result};
use crate::instancer::Instancer;
use crate::registrar::{Registrar, Registration};
use crate::registry::{Registry, ServiceQuery};
use crate::task::survive;

pub use instancer::ComposedInstancer;
pub use registrar::{ComposedRegistrar, RegisterIn};

/// The metadata key under which a composed registry's instances name their member.
pub const SOURCE_META: &str = "sd.source";

/// How a [`ComposedRegistry`] combines its members; see the [module](self) docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Composition {
    /// The first member whose set is fresh (`failover:`).
    Failover,
    /// The union of all members' sets (`merge:`).
    Merge,
}

impl Composition {
    /// The URL prefix (and the registry's scheme): `failover` or `merge`.
    pub fn prefix(self) -> &'static str {
        match self {
            Composition::Failover => "failover",
            Composition::Merge => "merge",
        }
    }

    fn from_prefix(s: &str) -> Option<Self> {
        match s {
            "failover" => Some(Composition::Failover),
            "merge" => Some(Composition::Merge),
            _ => None,
        }
    }
}

impl fmt::Display for Composition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// Splits a composed URL into its composition and member URLs, without checking them; `None`
/// when `url` is not a composed URL. Members are separated by a comma followed by
/// `<scheme>://`, so commas inside a member (a host list `etcd://a:2379,b:2379`) stay in it.
pub fn split_lenient(url: &str) -> Option<(Composition, Vec<&str>)> {
    let url = url.trim();
    let (prefix, rest) = url.split_once(':')?;
    let composition = Composition::from_prefix(&prefix.to_ascii_lowercase())?;
    if rest.starts_with("//") {
        return None;
    }
    let mut members = Vec::new();
    let mut start = 0;
    // The `://` after each comma, found by one forward walk (not a search per comma, which
    // is quadratic in a long host list); `is_scheme` stops at the first non-scheme byte,
    // at the latest the next comma.
    let mut schemes = rest.match_indices("://").map(|(k, _)| k).peekable();
    for (i, _) in rest.match_indices(',') {
        while schemes.next_if(|k| *k <= i).is_some() {}
        let boundary = schemes
            .peek()
            .is_some_and(|k| is_scheme(rest[i + 1..*k].trim_start()));
        if boundary {
            members.push(rest[start..i].trim());
            start = i + 1;
        }
    }
    members.push(rest[start..].trim());
    Some((composition, members))
}

/// Parses a composed URL (`failover:URL,URL,...` or `merge:URL,URL,...`): `Ok(None)` when
/// `url` is not one, an error saying what to fix when it is one but malformed (fewer than two
/// members, an empty member, a member that is not `scheme://...`, a nested composition).
///
/// ```
/// use sd_core::compose::{parse, Composition};
/// let (c, members) = parse("failover:etcd://a:2379,b:2379?prefix=/sd,consul://c:8500").unwrap().unwrap();
/// assert_eq!(c, Composition::Failover);
/// assert_eq!(members, ["etcd://a:2379,b:2379?prefix=/sd", "consul://c:8500"]);
/// assert!(parse("consul://c:8500").unwrap().is_none());
/// assert!(parse("merge:consul://c:8500").is_err());
/// ```
pub fn parse(url: &str) -> Result<Option<(Composition, Vec<String>)>> {
    let Some((composition, members)) = split_lenient(url) else {
        return Ok(None);
    };
    let example = format!("{composition}:consul://10.0.0.1:8500,consul://10.0.0.2:8500");
    let err = |m: String| Error::config(format!("registry URL {:?}: {m}", redact(url)));
    if members.len() < 2 {
        return Err(err(format!(
            "{composition}: needs at least two registry URLs separated by commas, e.g. {example}"
        )));
    }
    let nests = |text: &str| {
        text.split(',').any(|part| {
            part.trim_start().split_once(':').is_some_and(|(p, after)| {
                Composition::from_prefix(&p.to_ascii_lowercase()).is_some()
                    && after
                        .split_once("://")
                        .is_some_and(|(scheme, _)| is_scheme(scheme))
            })
        })
    };
    for (n, member) in members.iter().enumerate() {
        let n = n + 1;
        if nests(member) {
            return Err(err(format!(
                "member {n}: composed URLs (failover:, merge:) do not nest; list the registries in one"
            )));
        }
        if member.is_empty() || member.ends_with(',') {
            return Err(err(format!(
                "member {n} is empty or ends with a comma (two commas in a row, or a comma at the end?)"
            )));
        }
        let scheme_ok = member
            .split_once("://")
            .is_some_and(|(scheme, _)| is_scheme(scheme));
        if !scheme_ok {
            return Err(err(format!(
                "member {n} ({:?}) is not a registry URL: each member is scheme://..., e.g. {example}",
                redact(member)
            )));
        }
    }
    Ok(Some((
        composition,
        members.into_iter().map(str::to_string).collect(),
    )))
}

/// How a member is named in logs, errors and [`SOURCE_META`]: its URL without options,
/// fragment or credentials (`consul://127.0.0.1:8500`).
pub fn member_label(url: &str) -> String {
    let redacted = redact(url.trim());
    let end = redacted.find(['?', '#']).unwrap_or(redacted.len());
    redacted[..end].to_string()
}

/// One member of a [`ComposedRegistry`]: a registry and its label.
#[derive(Debug, Clone)]
pub struct Member {
    label: String,
    registry: Arc<dyn Registry>,
}

impl Member {
    /// `registry`, named `label` in logs, errors and [`SOURCE_META`] (use [`member_label`]
    /// for a URL: no credential may be in a label).
    pub fn new(label: impl Into<String>, registry: Arc<dyn Registry>) -> Self {
        Member {
            label: label.into(),
            registry,
        }
    }

    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// A registry made of members; see the [module](self) docs.
#[derive(Debug)]
pub struct ComposedRegistry {
    composition: Composition,
    members: Vec<Member>,
    register_in: RegisterIn,
    start_timeout: Duration,
}

/// How long a composed instancer waits for a member's first answer, and a composed
/// `register` for the members still working once one has accepted, before going on
/// without them (they join, or are retried, in the background): 1 s.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(1);

impl ComposedRegistry {
    /// Composes `members` (at least one) in the order given: for [`Composition::Failover`]
    /// the first is the primary.
    pub fn new(composition: Composition, members: Vec<Member>) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::config(format!(
                "{composition}: a composed registry needs at least one member"
            )));
        }
        Ok(ComposedRegistry {
            composition,
            members,
            register_in: RegisterIn::All,
            start_timeout: DEFAULT_START_TIMEOUT,
        })
    }

    /// How long to wait for a slow member at start ([`DEFAULT_START_TIMEOUT`]): an
    /// instancer waits this long for a member's first answer before serving without it (a
    /// failover does not pass over a primary that may still answer within it), and
    /// `register` this long for the other members once one has accepted.
    #[must_use]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Where registrars register (default [`RegisterIn::All`]).
    #[must_use]
    pub fn register_in(mut self, register_in: RegisterIn) -> Self {
        self.register_in = register_in;
        self
    }

    /// The members, in order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }
}

/// The members' values, labelled, and the first failure (naming its member), if any.
fn split_results<T>(
    composition: Composition,
    members: &[Member],
    results: Vec<Result<T>>,
) -> (Vec<(String, T)>, Option<Error>) {
    let mut out = Vec::with_capacity(results.len());
    let mut failure = None;
    for (member, result) in members.iter().zip(results) {
        match result {
            Ok(v) => out.push((member.label.clone(), v)),
            Err(e) if failure.is_none() => {
                let e = match e {
                    Error::Config(m) => m,
                    other => other.to_string(),
                };
                failure = Some(Error::config(format!(
                    "{composition}: member {}: {e}",
                    member.label
                )))
            }
            Err(_) => {}
        }
    }
    (out, failure)
}

/// One error for the failures of several members: not transient (the caller should not
/// retry) only when no member's failure is.
pub(crate) fn combine_errors(
    composition: Composition,
    what: &str,
    failures: Vec<(String, Error)>,
) -> Error {
    let transient = failures.iter().any(|(_, e)| e.is_transient());
    let message = failures
        .iter()
        .map(|(label, e)| format!("{label}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    let message = format!("{what}: {message}");
    if transient {
        Error::unavailable(composition.prefix(), message)
    } else {
        Error::Rejected {
            backend: composition.prefix(),
            message,
        }
    }
}

#[async_trait]
impl Registry for ComposedRegistry {
    fn scheme(&self) -> &'static str {
        self.composition.prefix()
    }

    /// What every member can do: the intersection of the members' capabilities. (Every
    /// instance carries [`SOURCE_META`] whatever the members declare; `metadata` still
    /// says whether registered metadata round-trips through every member.)
    fn capabilities(&self) -> Capabilities {
        self.members
            .iter()
            .map(|m| m.registry.capabilities())
            .reduce(Capabilities::intersection)
            .unwrap_or_default()
    }

    /// Starts an instancer on every member at once, in the background, and returns within
    /// the [start timeout](Self::start_timeout): a slow or unreachable member (its first
    /// round can last its whole request timeout) does not delay the others, and joins when
    /// it answers. Fails when a member rejects the query itself (a service name it cannot
    /// carry) within that time, naming the member.
    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        let deferred: Vec<Arc<deferred::Deferred>> = self
            .members
            .iter()
            .map(|m| Arc::new(deferred::Deferred::spawn(m.registry.clone(), query.clone())))
            .collect();
        let created = tokio::time::timeout(
            self.start_timeout,
            futures::future::join_all(deferred.iter().map(|d| d.created())),
        )
        .await;
        if let Ok(results) = created {
            let (_, failure) = split_results(self.composition, &self.members, results);
            if let Some(e) = failure {
                // Nothing is left running for a failed call.
                for d in &deferred {
                    d.stop().await;
                }
                return Err(e);
            }
        }
        let members = self
            .members
            .iter()
            .zip(deferred)
            .map(|(m, d)| (m.label.clone(), d as Arc<dyn Instancer>))
            .collect();
        Ok(Arc::new(ComposedInstancer::start_within(
            self.composition,
            &query.service,
            members,
            self.start_timeout,
        )))
    }

    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>> {
        let made = futures::future::join_all(
            self.members
                .iter()
                .map(|m| m.registry.registrar(registration.clone())),
        )
        .await;
        // A member that cannot register at all (`static://`, DNS without a zone) is left
        // out, said once; the call fails only when no member can.
        let mut members = Vec::new();
        let mut failures = Vec::new();
        for (member, made) in self.members.iter().zip(made) {
            match made {
                Ok(r) => members.push((member.label.clone(), r)),
                Err(e) => failures.push((member.label.clone(), e)),
            }
        }
        if members.is_empty() {
            return Err(combine_errors(
                self.composition,
                "no member can register",
                failures,
            ));
        }
        for (label, e) in &failures {
            survive(|| {
                tracing::info!(composition = %self.composition, service = %registration.service,
                    member = %label, reason = %e,
                    "this member cannot register; registering in the others")
            });
        }
        Ok(Arc::new(
            ComposedRegistrar::new(self.composition, registration, members, self.register_in)
                .start_timeout(self.start_timeout),
        ))
    }

    /// Failover: the first member's list that can be read. Merge: the union of all
    /// members' lists that can be read. Fails when no member's can.
    async fn services(&self) -> Result<Vec<String>> {
        let mut failures = Vec::new();
        let mut names = Vec::new();
        for member in &self.members {
            match member.registry.services().await {
                Ok(list) if self.composition == Composition::Failover => return Ok(list),
                Ok(list) => names.extend(list),
                Err(e) => failures.push((member.label.clone(), e)),
            }
        }
        if names.is_empty() && failures.len() == self.members.len() {
            return Err(combine_errors(
                self.composition,
                "no member could list its services",
                failures,
            ));
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}
