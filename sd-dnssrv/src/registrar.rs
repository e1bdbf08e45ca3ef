//! The registrar: RFC 2136 dynamic updates of the service's SRV record set.
//!
//! go-kit has no DNS registrar. This one adds the instance's SRV record to
//! `_<service>._<proto>.<zone>` on the zone's primary nameserver:
//!
//! | instance host | SRV target | extra record |
//! |---|---|---|
//! | a host name (`api1.example.com`) | that name | none |
//! | an IP address | `<id>.<service>.<zone>` (the instance id as a DNS label, see [`label`]) | its `A` or `AAAA` record |
//!
//! The SRV record carries the port, the weight ([`Instance::weight`](sd_core::Instance::weight),
//! at most 65 535) and the priority ([`META_PRIORITY`] in the instance
//! metadata, default 0). Tags and other metadata are not stored: DNS has nowhere to put them.
//!
//! [`register`](DnsRegistrar::register) reads the SRV set from the primary and sends one
//! update message that deletes any record with the same target but another port, weight or
//! priority, replaces the target's address record, and adds the SRV record. That replacement
//! is done only for an IP host, whose target is the instance's own name (distinct ids get
//! distinct names, see [`label`]): re-registering the same id with a new port or address
//! replaces its record. A host-name target is shared by every instance on that host, so
//! nothing there is replaced: two ids on one host name with two ports are two records, and
//! a process that comes back on another port leaves its old record until it is deleted. Adding a record that is already there changes nothing,
//! so registering twice is harmless. While registered, the addition is sent again every
//! `reassert` period (default [`DEFAULT_REASSERT`], at least 1 s) on sd-core's keep-alive
//! loop, so a zone that lost the record
//! (a restarted server, an operator's edit) gets it back. DNS has no expiry: a process that
//! dies without deregistering stays in the zone until someone deletes the record.
//!
//! With a TSIG key (`tsig_name`, `tsig_secret_env`) every update is signed; a server that
//! refuses the update gives an [`Error::Rejected`] that says
//! what to configure.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::update_message::{self, UpdateMessage};
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordSet};
use sd_core::{
    spawn_keepalive, Error, HealthCheck, KeepAlive, KeepAliveConfig, KeepAliveTask, Registrar,
    Registration, Result,
};
use tokio::sync::Mutex;

use crate::client::{fqdn, name_text, Client, BACKEND};
use crate::instancer::{srv_name, META_PRIORITY};

/// How often a registrar re-sends its records when the URL does not say (`reassert`). Every
/// registrar sends one small update per period, so the primary sees
/// `instances / reassert` updates a second (BIND queues at most 100 by default).
pub const DEFAULT_REASSERT: Duration = Duration::from_secs(30);

/// The TTL given to registered records when the URL does not say (`record_ttl`).
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(10);

/// The instance id as one DNS label, distinct for distinct ids.
///
/// An id that already is a clean label (lower-case letters, digits and single inner `-`, at
/// most 63 characters) is used as it is. Any other id is mapped (lower-cased, other
/// characters become `-`, cut to 51 characters) and gets `--` and 10 hex digits of a hash
/// (FNV-1a) of the whole id; a clean label never contains `--`, so `api_1`, `api.1` and
/// `API-1` get three different labels, as do two long ids that share their first 63
/// characters (two mapped ids collide only if their 40-bit hashes do).
///
/// ```
/// use sd_dnssrv::registrar::label;
/// assert_eq!(label("web-1"), "web-1");
/// assert_ne!(label("api_1"), label("api.1"));
/// assert!(label("api_1").starts_with("api-1--") && label("api_1").len() == 17);
/// ```
pub fn label(id: &str) -> String {
    const HASH_DIGITS: usize = 10;
    let mapped: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let clean = mapped == id
        && (1..=63).contains(&id.len())
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--");
    if clean {
        return mapped;
    }
    // FNV-1a, 64 bits: stable across processes, platforms and versions.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut prefix: String = mapped
        .trim_matches('-')
        .chars()
        .take(63 - 2 - HASH_DIGITS)
        .collect();
    prefix.truncate(prefix.trim_end_matches('-').len());
    if prefix.is_empty() {
        prefix.push_str("instance");
    }
    format!("{prefix}--{:010x}", hash & 0xff_ffff_ffff)
}

/// What one registration writes into the zone.
#[derive(Clone, Debug, PartialEq)]
struct Records {
    zone: Name,
    srv_name: Name,
    srv: SRV,
    /// The target's address record, when the instance host is an IP address.
    address: Option<Record>,
    ttl: u32,
}

impl Records {
    fn new(registration: &Registration, zone: &Name, proto: &str, ttl: Duration) -> Result<Self> {
        registration.validate()?;
        let r = registration;
        // A TTL check describes liveness the registrar proves itself; DNS has no expiry, so
        // it is accepted and not used. Checks the registry would have to run are refused.
        match &r.check {
            None | Some(HealthCheck::Ttl(_)) => {}
            Some(other) => {
                return Err(Error::config(format!(
                    "registration of {:?}: DNS cannot run health checks ({other:?}); \
                     register without a check or with HealthCheck::Ttl",
                    r.service
                )))
            }
        }
        if r.deregister_critical_after.is_some() {
            return Err(Error::config(format!(
                "registration of {:?}: deregister_critical_after needs registry-side health \
                 checks, which DNS does not have",
                r.service
            )));
        }
        let srv_name = srv_name(&r.service, proto, Some(zone))?;
        if !zone.zone_of(&srv_name) {
            return Err(Error::config(format!(
                "registration of {:?}: {srv_name} is not inside the zone {zone}",
                r.service
            )));
        }
        let weight = u16::try_from(r.instance.weight()).map_err(|_| {
            Error::config(format!(
                "registration of {:?}: weight {} does not fit an SRV record (at most 65535)",
                r.service,
                r.instance.weight()
            ))
        })?;
        let priority = match r.instance.meta().get(META_PRIORITY) {
            None => 0,
            Some(p) => p.parse::<u16>().map_err(|_| {
                Error::config(format!(
                    "registration of {:?}: metadata {META_PRIORITY}={p:?} is not a priority (0..65535)",
                    r.service
                ))
            })?,
        };
        let ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        let (target, address) = match r.instance.host().parse::<IpAddr>() {
            Ok(ip) => {
                let service_label = label(r.service.split('.').next().unwrap_or_default());
                let target = fqdn(&format!("{}.{}", label(&r.instance_id()), service_label))
                    .and_then(|n| n.append_domain(zone).map_err(|e| e.to_string()))
                    .map_err(|e| Error::config(format!("registration of {:?}: {e}", r.service)))?;
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                let record = Record::from_rdata(target.clone(), ttl, rdata);
                (target, Some(record))
            }
            Err(_) => (
                fqdn(r.instance.host()).map_err(|e| {
                    Error::config(format!("registration of {:?}: host: {e}", r.service))
                })?,
                None,
            ),
        };
        Ok(Records {
            zone: zone.clone(),
            srv_name,
            srv: SRV::new(priority, weight, r.instance.port(), target),
            address,
            ttl,
        })
    }

    fn srv_record(&self, srv: SRV, ttl: u32) -> Record {
        Record::from_rdata(self.srv_name.clone(), ttl, RData::SRV(srv))
    }

    /// Deletes `stale` SRV records (same target, other values), replaces the address
    /// record, and adds the SRV record, in one message.
    fn add(&self, stale: &[SRV]) -> Message {
        let mut message = update_message::append(
            RecordSet::from(self.srv_record(self.srv.clone(), self.ttl)),
            self.zone.clone(),
            false,
            true,
        );
        // `append` put the addition first; RFC 2136 applies updates in order, so rebuild
        // the section as: deletions, address, addition.
        let addition = message.take_name_servers();
        for srv in stale {
            let mut r = self.srv_record(srv.clone(), 0);
            r.set_dns_class(DNSClass::NONE);
            message.add_update(r);
        }
        if let Some(address) = &self.address {
            let mut wipe = Record::update0(address.name().clone(), 0, address.record_type());
            wipe.set_dns_class(DNSClass::ANY);
            message.add_update(wipe);
            message.add_update(address.clone());
        }
        message.add_updates(addition);
        message
    }

    /// Adds the address record and the SRV record again, deleting nothing.
    fn reassert(&self) -> Message {
        let mut message = update_message::append(
            RecordSet::from(self.srv_record(self.srv.clone(), self.ttl)),
            self.zone.clone(),
            false,
            true,
        );
        if let Some(address) = &self.address {
            message.add_update(address.clone());
        }
        message
    }

    /// Deletes the SRV record and the address record.
    fn delete(&self) -> Message {
        let mut message = update_message::delete_by_rdata(
            RecordSet::from(self.srv_record(self.srv.clone(), 0)),
            self.zone.clone(),
            true,
        );
        if let Some(address) = &self.address {
            let mut wipe = Record::update0(address.name().clone(), 0, address.record_type());
            wipe.set_dns_class(DNSClass::ANY);
            message.add_update(wipe);
        }
        message
    }
}

struct Shared {
    client: Client,
    records: Records,
}

impl Shared {
    async fn register(&self) -> Result<()> {
        let r = &self.records;
        // Only a target that is the instance's own name (an IP host: `<id>.<service>.<zone>`,
        // distinct per id, see [`label`]) identifies the instance, so only then is a record
        // with the same target and other values an earlier registration of the same id. A
        // host name is shared by every instance on that host: nothing at it is replaced.
        if r.address.is_none() {
            return self.client.update(r.add(&[])).await;
        }
        // The read only finds records to replace. A server that refuses it (no
        // allow-query for us) may still accept the update, and if it refuses that too, the
        // update's error says what to configure.
        let current = match self.client.primary_srv(&r.srv_name).await {
            Ok(current) => current,
            Err(e @ Error::Rejected { .. }) => {
                tracing::debug!(backend = BACKEND, error = %e, "cannot read the SRV set; adding without replacing");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let target = name_text(r.srv.target());
        let stale: Vec<SRV> = current
            .iter()
            .filter(|c| c.target == target)
            .map(|c| SRV::new(c.priority, c.weight, c.port, r.srv.target().clone()))
            .filter(|srv| *srv != r.srv)
            .collect();
        self.client.update(r.add(&stale)).await
    }
}

#[async_trait]
impl KeepAlive for Shared {
    /// Sends the additions again, without any deletion: RFC 2136 ignores a record that is
    /// already there, so this changes nothing unless the zone lost the records, and then it
    /// puts them back. (Reading the SRV set to check first would cost every registrar a read
    /// of the whole set each period: quadratic in the number of instances.)
    async fn keep_alive(&self) -> Result<()> {
        self.client.update(self.records.reassert()).await
    }
}

/// Registers one instance as an SRV record through RFC 2136 dynamic updates.
pub struct DnsRegistrar {
    shared: Arc<Shared>,
    registration: Registration,
    period: Duration,
    task: Mutex<Option<KeepAliveTask>>,
}

impl fmt::Debug for DnsRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsRegistrar")
            .field("registration", &self.registration)
            .field("srv_name", &self.shared.records.srv_name.to_ascii())
            .field("client", &self.shared.client)
            .finish_non_exhaustive()
    }
}

impl DnsRegistrar {
    /// A registrar for `registration` in `zone`, with records of TTL `record_ttl`, re-sent
    /// every `reassert` (at least 1 s). A `HealthCheck::Ttl` is accepted and not used: DNS
    /// has no expiry. Checks the
    /// registration now; sends nothing until [`Registrar::register`].
    pub fn new(
        client: Client,
        registration: Registration,
        zone: &Name,
        proto: &str,
        record_ttl: Duration,
        reassert: Duration,
    ) -> Result<Self> {
        let records = Records::new(&registration, zone, proto, record_ttl)?;
        let period = reassert.max(Duration::from_secs(1));
        Ok(DnsRegistrar {
            shared: Arc::new(Shared { client, records }),
            registration,
            period,
            task: Mutex::new(None),
        })
    }

    /// The SRV name the record goes to.
    pub fn srv_name(&self) -> &Name {
        &self.shared.records.srv_name
    }

    /// The SRV target the record points at.
    pub fn target(&self) -> &Name {
        self.shared.records.srv.target()
    }
}

#[async_trait]
impl Registrar for DnsRegistrar {
    async fn register(&self) -> Result<()> {
        let mut task = self.task.lock().await;
        self.shared.register().await?;
        if task.is_none() {
            let config = KeepAliveConfig::new(
                BACKEND,
                format!(
                    "{} {}",
                    self.registration.service,
                    self.registration.instance_id()
                ),
                self.period,
            )
            .service(self.registration.service.clone());
            *task = Some(spawn_keepalive(self.shared.clone(), config));
        }
        tracing::debug!(backend = BACKEND, name = %self.shared.records.srv_name,
            target = %self.shared.records.srv.target(), "registered");
        Ok(())
    }

    async fn deregister(&self) -> Result<()> {
        let mut task = self.task.lock().await;
        let Some(t) = task.take() else {
            return Ok(());
        };
        t.stop().await;
        if let Err(e) = self
            .shared
            .client
            .update(self.shared.records.delete())
            .await
        {
            // Keep the registration (and its keep-alive) so a retry can deregister.
            *task = Some(spawn_keepalive(
                self.shared.clone(),
                KeepAliveConfig::new(BACKEND, self.registration.service.clone(), self.period),
            ));
            return Err(e);
        }
        tracing::debug!(backend = BACKEND, name = %self.shared.records.srv_name, "deregistered");
        Ok(())
    }

    fn registration(&self) -> &Registration {
        &self.registration
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RecordType;
    use sd_core::Instance;

    fn zone() -> Name {
        fqdn("sd.test").unwrap()
    }

    #[test]
    fn ip_hosts_get_an_address_record_under_the_service() {
        let reg = Registration::new(
            "web",
            Instance::builder("10.0.0.7", 8080)
                .id("Web_1")
                .weight(7)
                .build(),
        );
        let r = Records::new(&reg, &zone(), "tcp", Duration::from_secs(5)).unwrap();
        assert_eq!(r.srv_name.to_ascii(), "_web._tcp.sd.test.");
        assert_eq!(
            r.srv.target().to_ascii(),
            format!("{}.web.sd.test.", label("Web_1"))
        );
        assert_eq!(
            (r.srv.port(), r.srv.weight(), r.srv.priority()),
            (8080, 7, 0)
        );
        let a = r.address.as_ref().unwrap();
        assert_eq!(a.data(), &RData::A(A("10.0.0.7".parse().unwrap())));
        let add = r.add(&[SRV::new(0, 7, 9090, r.srv.target().clone())]);
        let kinds: Vec<(DNSClass, RecordType)> = add
            .updates()
            .iter()
            .map(|u| (u.dns_class(), u.record_type()))
            .collect();
        assert_eq!(
            kinds,
            [
                (DNSClass::NONE, RecordType::SRV),
                (DNSClass::ANY, RecordType::A),
                (DNSClass::IN, RecordType::A),
                (DNSClass::IN, RecordType::SRV),
            ]
        );
    }

    #[test]
    fn host_names_are_targets_and_priority_comes_from_metadata() {
        let reg = Registration::new(
            "web",
            Instance::builder("api1.example.com", 443)
                .meta(META_PRIORITY, "20")
                .build(),
        );
        let r = Records::new(&reg, &zone(), "tcp", Duration::from_secs(5)).unwrap();
        assert_eq!(r.srv.target().to_ascii(), "api1.example.com.");
        assert_eq!(r.srv.priority(), 20);
        assert!(r.address.is_none());
        assert_eq!(r.delete().updates().len(), 1);
    }

    #[test]
    fn bad_registrations_fail_at_construction() {
        for (reg, needle) in [
            (
                Registration::new(
                    "web",
                    Instance::builder("h.example", 1).weight(70_000).build(),
                ),
                "at most 65535",
            ),
            (
                Registration::new(
                    "web",
                    Instance::builder("h.example", 1)
                        .meta(META_PRIORITY, "high")
                        .build(),
                ),
                "is not a priority",
            ),
            (
                Registration::new("web", Instance::new("h.example", 0)),
                "port 0",
            ),
            (
                Registration::new("web.x", Instance::new("h.example", 1)),
                "one DNS label",
            ),
            (
                Registration::new("_x._tcp.other.org", Instance::new("h", 1)),
                "not inside the zone",
            ),
        ] {
            let err = Records::new(&reg, &zone(), "tcp", Duration::from_secs(1))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn labels_are_distinct_for_distinct_ids() {
        assert_eq!(label("web-1"), "web-1");
        assert_eq!(label(&"x".repeat(63)), "x".repeat(63));
        let long = "x".repeat(100);
        let ids = [
            "Web_1",
            "web_1",
            "web.1",
            "WEB-1",
            "--",
            "",
            "-web-1",
            "web-1-",
            "web-1--0123456789",
            "web--1",
            &long,
            &format!("{long}-a"),
            &format!("{long}-b"),
        ];
        let labels: Vec<String> = ids.iter().map(|id| label(id)).collect();
        for (id, l) in ids.iter().zip(&labels) {
            assert!((1..=63).contains(&l.len()), "{id:?} -> {l:?}");
            assert!(l
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            assert!(!l.starts_with('-') && !l.ends_with('-'), "{id:?} -> {l:?}");
            assert_ne!(l, "web-1", "{id:?} must not take the clean id's label");
        }
        let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
        assert_eq!(distinct.len(), labels.len(), "{labels:?}");
        assert_eq!(label("Web_1"), label("Web_1"), "stable");
    }
}
