//! The DNS client: SRV and address lookups through `hickory-resolver`, and RFC 2136 dynamic
//! updates (optionally TSIG-signed) through `hickory-client`.
//!
//! Lookups go to the configured nameserver, or to the system's (`/etc/resolv.conf`) when
//! none is given. The resolver's cache is turned off: every round of the instancer asks the
//! server, and the instancer itself paces the rounds by the records' TTLs. Answers are
//! classified once, here, so the instancer only sees three outcomes:
//!
//! | answer | [`Client::lookup_srv`] |
//! |---|---|
//! | records | `Ok` with the records and the smallest TTL |
//! | NXDOMAIN, or NOERROR without records (NODATA) | `Ok` with **no** records: an empty set |
//! | SERVFAIL, REFUSED, any other failure code, a timeout, a socket error | `Err`: an error event, the last good set stays |
//!
//! SRV queries go through the resolver's nameserver pool (failover between nameservers,
//! UDP with a retry over TCP when truncated) but not through its lookup logic, which in
//! hickory-resolver 0.25 mistakes an SRV answer's target for a CNAME to follow and drops
//! SRV records found behind a CNAME. [`Client::lookup_srv`] follows CNAME chains itself
//! (RFC 2782 allows the service name to be an alias; only targets must not be).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hickory_client::client::{Client as UpdateClient, ClientHandle};
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, MessageFinalizer, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::tcp::TcpClientStream;
use hickory_proto::udp::UdpClientStream;
use hickory_proto::xfer::{DnsHandle, DnsRequestOptions};
use hickory_proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::{NameServerPool, TokioConnectionProvider};
use hickory_resolver::{ResolveError, TokioResolver};
use sd_core::{Error, Result, Secret};

/// Backend name used in errors and logs.
pub const BACKEND: &str = "dnssrv";

/// The DNS port used when the URL gives a nameserver without one.
pub const DEFAULT_PORT: u16 = 53;

/// How long one query or update waits for an answer before it is a timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a query is sent before it fails.
pub const DEFAULT_ATTEMPTS: usize = 2;

/// How many CNAMEs [`Client::lookup_srv`] follows from the service name before it gives up
/// (a loop, or a chain longer than any sane zone has).
pub const MAX_CNAME_HOPS: usize = 8;

/// A TSIG key for signing dynamic updates (RFC 8945), as BIND's `key` statement gives it.
#[derive(Clone, Debug)]
pub struct TsigKey {
    /// The key name, as the server knows it (`sdkit-key.`).
    pub name: String,
    /// The HMAC algorithm: `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub algorithm: String,
    /// The base64 secret. Never printed.
    pub secret: Secret,
}

impl TsigKey {
    /// The hickory signer for this key, or a configuration error saying what is wrong.
    fn signer(&self) -> Result<TSigner> {
        let algorithm = match self.algorithm.to_ascii_lowercase().as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(Error::config(format!(
                    "TSIG algorithm {other:?} is not supported; use hmac-sha256, hmac-sha384 or hmac-sha512"
                )))
            }
        };
        let name = Name::from_ascii(&self.name)
            .map_err(|e| Error::config(format!("TSIG key name {:?}: {e}", self.name)))?;
        let key = decode_base64(self.secret.expose()).ok_or_else(|| {
            Error::config(format!(
                "TSIG key {:?}: the secret is not valid base64 (give it as BIND's `secret`)",
                self.name
            ))
        })?;
        // 300 s is the fudge RFC 8945 recommends.
        TSigner::new(key, algorithm, name, 300)
            .map_err(|e| Error::config(format!("TSIG key {:?}: {e}", self.name)))
    }
}

/// Decodes standard base64 (with or without padding); `None` on anything else.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.trim().trim_end_matches('=').as_bytes();
    if bytes.is_empty() || bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i as u32);
        }
        let n = chunk.len() - 1;
        out.extend_from_slice(&acc.to_be_bytes()[1..=n]);
    }
    Some(out)
}

/// How the [`Client`] reaches DNS.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The nameserver to ask; `None` uses the system resolver configuration.
    pub nameserver: Option<SocketAddr>,
    /// The wait for one answer.
    pub timeout: Duration,
    /// How many times a query is sent before it fails.
    pub attempts: usize,
    /// The key that signs dynamic updates, if the server requires one.
    pub tsig: Option<TsigKey>,
}

impl ClientConfig {
    /// Asks `nameserver` (or the system's resolvers when `None`), 2 s timeout, 2 attempts, no TSIG.
    pub fn new(nameserver: Option<SocketAddr>) -> Self {
        ClientConfig {
            nameserver,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            tsig: None,
        }
    }
}

/// One SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative weight within a priority.
    pub weight: u16,
    /// The port; 0 is not usable.
    pub port: u16,
    /// The target host name, fully qualified, without the trailing dot; `.` (the root) means
    /// "decidedly not available here" (RFC 2782) and is returned as the empty string.
    pub target: String,
    /// The record's TTL.
    pub ttl: Duration,
}

/// What an SRV query found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SrvAnswer {
    /// The records; empty for NXDOMAIN or NODATA.
    pub records: Vec<SrvRecord>,
    /// How long the answer may be cached: the smallest record TTL, or the negative TTL
    /// (SOA minimum) of an empty answer; `None` when the server said nothing.
    pub ttl: Option<Duration>,
}

/// What an address lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// The addresses, with the smallest TTL.
    Found(Vec<IpAddr>, Duration),
    /// The name does not exist or has no A/AAAA records: the reason, for the log.
    None(String),
}

/// The DNS client shared by the instancers and registrars of one registry. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    resolver: TokioResolver,
    /// The resolver's nameservers, asked directly for SRV records.
    pool: NameServerPool<TokioConnectionProvider>,
    signer: Option<Arc<dyn MessageFinalizer>>,
    srv_queries: AtomicU64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config`. Reads the system resolver configuration when no nameserver is
    /// given; sends nothing.
    pub fn new(config: ClientConfig) -> Result<Self> {
        if config.timeout.is_zero() {
            return Err(Error::config("dnssrv: timeout must be greater than 0"));
        }
        if config.attempts == 0 {
            return Err(Error::config("dnssrv: attempts must be at least 1"));
        }
        let provider = TokioConnectionProvider::default();
        let provider_for_pool = provider.clone();
        let mut builder = match config.nameserver {
            Some(ns) => {
                let group = NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    provider,
                )
            }
            None => TokioResolver::builder(provider).map_err(|e| {
                Error::config(format!(
                    "dnssrv: no nameserver in the URL and the system resolver configuration \
                     cannot be read ({e}); give one, e.g. dns+srv://127.0.0.1:53/?zone=..."
                ))
            })?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        // Every round asks the server; the instancer paces rounds by TTL itself.
        opts.cache_size = 0;
        opts.timeout = config.timeout;
        opts.attempts = config.attempts;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.ndots = 0;
        if config.nameserver.is_some() {
            opts.use_hosts_file = ResolveHosts::Never;
        }
        let resolver = builder.build();
        let pool = NameServerPool::from_config(
            NameServerConfigGroup::from(resolver.config().name_servers().to_vec()),
            resolver.options().clone(),
            provider_for_pool,
        );
        let signer = match &config.tsig {
            Some(key) => Some(Arc::new(key.signer()?) as Arc<dyn MessageFinalizer>),
            None => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                resolver,
                pool,
                signer,
                srv_queries: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// How many SRV queries this client has sent (for tests and diagnostics: it shows the
    /// refresh cadence without timing anything).
    pub fn srv_queries(&self) -> u64 {
        self.inner.srv_queries.load(Ordering::Relaxed)
    }

    /// Looks up the SRV records of `name` (a fully qualified name), following a CNAME chain
    /// at the name (at most [`MAX_CNAME_HOPS`] aliases; more is an error).
    pub async fn lookup_srv(&self, name: &Name) -> Result<SrvAnswer> {
        self.inner.srv_queries.fetch_add(1, Ordering::Relaxed);
        let opts = self.inner.resolver.options();
        let mut request = DnsRequestOptions::default();
        request.use_edns = opts.edns0;
        request.recursion_desired = opts.recursion_desired;
        let mut current = name.clone();
        // The smallest TTL of the aliases followed.
        let mut alias_ttl: Option<Duration> = None;
        let mut hops = 0;
        loop {
            let first = self
                .inner
                .pool
                .lookup(Query::query(current.clone(), RecordType::SRV), request)
                .next()
                .await;
            let response = match first {
                Some(Ok(response)) => response,
                Some(Err(e)) => {
                    return match negative_proto(&e) {
                        Some(ttl) => Ok(SrvAnswer {
                            records: Vec::new(),
                            ttl: min_ttl(ttl, alias_ttl),
                        }),
                        None => Err(proto_lookup_error(&format!("SRV {name}"), &e)),
                    }
                }
                None => {
                    return Err(Error::Timeout {
                        backend: BACKEND,
                        message: format!("SRV {name}: no answer from the nameserver"),
                    })
                }
            };
            match response.response_code() {
                ResponseCode::NoError => {}
                ResponseCode::NXDomain => {
                    let ttl = response.negative_ttl().map(secs);
                    return Ok(SrvAnswer {
                        records: Vec::new(),
                        ttl: min_ttl(ttl, alias_ttl),
                    });
                }
                code => {
                    return Err(Error::unavailable(
                        BACKEND,
                        format!("SRV {name}: the nameserver answered {code}"),
                    ))
                }
            }
            // Walk the chain inside this answer: SRV records at `current`, else its CNAME.
            let moved = match walk_answer(
                response.answers(),
                name,
                &mut current,
                &mut hops,
                &mut alias_ttl,
            )? {
                Walk::Found(answer) => return Ok(answer),
                Walk::Moved => true,
                Walk::Nothing => false,
            };
            if !moved {
                // No SRV record and no alias at the name asked: NODATA, an empty set.
                return Ok(SrvAnswer {
                    records: Vec::new(),
                    ttl: min_ttl(response.negative_ttl().map(secs), alias_ttl),
                });
            }
            // The chain leaves this answer at `current`: ask for that name.
        }
    }

    /// Resolves `host` (fully qualified) to its IPv4 and IPv6 addresses.
    pub async fn lookup_ips(&self, host: &str) -> Result<Addresses> {
        let name = fqdn(host).map_err(|e| Error::malformed(BACKEND, e))?;
        match self.inner.resolver.lookup_ip(name).await {
            Ok(lookup) => {
                let ttl = lookup
                    .as_lookup()
                    .record_iter()
                    .map(|r| Duration::from_secs(u64::from(r.ttl())))
                    .min()
                    .unwrap_or_default();
                let ips: Vec<IpAddr> = lookup.iter().collect();
                if ips.is_empty() {
                    Ok(Addresses::None(format!("{host} has no A/AAAA records")))
                } else {
                    Ok(Addresses::Found(ips, ttl))
                }
            }
            Err(e) => match negative(&e) {
                Some(_) => Ok(Addresses::None(if e.is_nx_domain() {
                    format!("{host} does not exist (NXDOMAIN)")
                } else {
                    format!("{host} has no A/AAAA records")
                })),
                None => Err(lookup_error(&format!("A/AAAA {host}"), &e)),
            },
        }
    }

    /// The nameserver dynamic updates go to: the configured one, else the first of the
    /// system's.
    fn update_server(&self) -> Result<SocketAddr> {
        if let Some(ns) = self.inner.config.nameserver {
            return Ok(ns);
        }
        self.inner
            .resolver
            .config()
            .name_servers()
            .first()
            .map(|ns| ns.socket_addr)
            .ok_or_else(|| {
                Error::config(
                    "dnssrv: dynamic updates need a nameserver; give the zone's primary in the URL",
                )
            })
    }

    /// A client to the primary: over TCP for reads (a large SRV set is never truncated),
    /// over UDP for updates (small messages; one socket, not a connection, per update, so
    /// many registrars do not use up the server's TCP client quota).
    async fn primary_client(&self, tcp: bool) -> Result<UpdateClient> {
        let server = self.update_server()?;
        let timeout = self.inner.config.timeout;
        let signer = self.inner.signer.clone();
        let connected = if tcp {
            let (stream, handle) =
                TcpClientStream::new(server, None, Some(timeout), TokioRuntimeProvider::new());
            UpdateClient::with_timeout(stream, handle, timeout, signer)
                .await
                .map(|(client, background)| {
                    tokio::spawn(background);
                    client
                })
        } else {
            let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
                .with_timeout(Some(timeout))
                .with_signer(signer)
                .build();
            UpdateClient::connect(stream)
                .await
                .map(|(client, background)| {
                    tokio::spawn(background);
                    client
                })
        };
        connected.map_err(|e| {
            Error::unavailable(
                BACKEND,
                format!(
                    "connecting to {server} over {}: {e}",
                    if tcp { "TCP" } else { "UDP" }
                ),
            )
        })
    }

    /// Reads the SRV records at `name` straight from the zone's primary (for the registrar,
    /// which must see the zone as it is, not as a cache saw it).
    pub async fn primary_srv(&self, name: &Name) -> Result<Vec<SrvRecord>> {
        let mut client = self.primary_client(true).await?;
        let response = client
            .query(name.clone(), DNSClass::IN, RecordType::SRV)
            .await
            .map_err(|e| Error::unavailable(BACKEND, format!("SRV {name}: {e}")))?;
        match response.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code @ (ResponseCode::Refused | ResponseCode::NotAuth) => {
                return Err(Error::Rejected {
                    backend: BACKEND,
                    message: format!("reading SRV {name} from the primary: it answered {code}"),
                })
            }
            code => {
                return Err(Error::unavailable(
                    BACKEND,
                    format!("SRV {name}: the server answered {code}"),
                ))
            }
        }
        Ok(response
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::SRV(srv) => Some(SrvRecord {
                    priority: srv.priority(),
                    weight: srv.weight(),
                    port: srv.port(),
                    target: name_text(srv.target()),
                    ttl: Duration::from_secs(u64::from(r.ttl())),
                }),
                _ => None,
            })
            .collect())
    }

    /// Sends one RFC 2136 update message (built with hickory's `update_message`) to the
    /// zone's primary, signed with the TSIG key when one is configured. A refusal is an
    /// [`Error::Rejected`] that says what to configure.
    pub async fn update(&self, message: Message) -> Result<()> {
        let zone = message
            .queries()
            .first()
            .map(|q| q.name().to_string())
            .unwrap_or_default();
        let client = self.primary_client(false).await?;
        let first = client.send(message).next().await;
        let response = match first {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Err(update_error(&zone, self.inner.signer.is_some(), e)),
            None => {
                return Err(update_error(
                    &zone,
                    self.inner.signer.is_some(),
                    ProtoErrorKind::Timeout.into(),
                ))
            }
        };
        match response.response_code() {
            ResponseCode::NoError => Ok(()),
            code => Err(refused(&zone, self.inner.signer.is_some(), code)),
        }
    }
}

fn refused(zone: &str, signed: bool, code: ResponseCode) -> Error {
    let hint = match code {
        ResponseCode::Refused | ResponseCode::NotAuth if !signed => {
            "; the server does not accept unsigned updates from here: allow them \
             (BIND: allow-update) or give a TSIG key (tsig_name, tsig_secret_env)"
        }
        ResponseCode::Refused | ResponseCode::NotAuth => {
            "; check that the server allows updates with this TSIG key (BIND: allow-update { key ...; })"
        }
        ResponseCode::NotZone => "; the name is not inside the zone option",
        ResponseCode::ServFail => {
            "; the server could not apply it, its log says why (in BIND a record set must \
             fit 64 KiB, and 9.18.28+ caps it at 100 records unless max-records-per-type is raised)"
        }
        _ => "",
    };
    Error::Rejected {
        backend: BACKEND,
        message: format!("dynamic update of zone {zone} answered {code}{hint}"),
    }
}

fn update_error(zone: &str, signed: bool, e: ProtoError) -> Error {
    if let ProtoErrorKind::NoRecordsFound { response_code, .. } = e.kind() {
        return refused(zone, signed, *response_code);
    }
    if matches!(e.kind(), ProtoErrorKind::Timeout) {
        return Error::Timeout {
            backend: BACKEND,
            message: format!("dynamic update of zone {zone}"),
        };
    }
    Error::unavailable(BACKEND, format!("dynamic update of zone {zone}: {e}"))
}

fn secs(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl))
}

/// Where walking one response's answer section from `current` ended.
pub(crate) enum Walk {
    /// SRV records (their TTL already bounded by the aliases followed).
    Found(SrvAnswer),
    /// No SRV record, but CNAMEs led to a name this answer says nothing more about:
    /// `current` is that name, to be asked next.
    Moved,
    /// Neither SRV records nor a CNAME at `current`.
    Nothing,
}

/// Walks the answer records of one response: the SRV records at `current`, else its CNAME
/// (followed, at most [`MAX_CNAME_HOPS`] in all, counted in `hops`; `alias_ttl` keeps the
/// smallest alias TTL). `name` is the name first asked, for the error. The decoder of
/// [`Client::lookup_srv`]; the fuzz target `dnssrv_srv` calls it through
/// [`crate::fuzzing`].
pub(crate) fn walk_answer(
    answers: &[Record],
    name: &Name,
    current: &mut Name,
    hops: &mut usize,
    alias_ttl: &mut Option<Duration>,
) -> Result<Walk> {
    let mut moved = false;
    loop {
        let mut answer = SrvAnswer::default();
        let mut alias = None;
        for record in answers {
            if record.name() != &*current {
                continue;
            }
            match record.data() {
                RData::SRV(srv) => {
                    let ttl = secs(record.ttl());
                    answer.ttl = Some(answer.ttl.map_or(ttl, |t| t.min(ttl)));
                    answer.records.push(SrvRecord {
                        priority: srv.priority(),
                        weight: srv.weight(),
                        port: srv.port(),
                        target: name_text(srv.target()),
                        ttl,
                    });
                }
                RData::CNAME(target) => alias = Some((target.0.clone(), record.ttl())),
                _ => {}
            }
        }
        if !answer.records.is_empty() {
            answer.ttl = min_ttl(answer.ttl, *alias_ttl);
            return Ok(Walk::Found(answer));
        }
        let Some((target, ttl)) = alias else {
            return Ok(if moved { Walk::Moved } else { Walk::Nothing });
        };
        *hops += 1;
        if *hops > MAX_CNAME_HOPS {
            return Err(Error::malformed(
                BACKEND,
                format!("SRV {name}: more than {MAX_CNAME_HOPS} CNAMEs (a loop?)"),
            ));
        }
        *alias_ttl = min_ttl(Some(secs(ttl)), *alias_ttl);
        *current = target;
        moved = true;
    }
}

/// The smaller of two optional TTLs.
fn min_ttl(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `Some(negative TTL)` when the error is an authoritative "no such records" (NXDOMAIN or
/// NODATA); `None` when it is a failure.
fn negative(e: &ResolveError) -> Option<Option<Duration>> {
    e.proto().and_then(negative_proto)
}

fn negative_proto(e: &ProtoError) -> Option<Option<Duration>> {
    match e.kind() {
        ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            negative_ttl,
            ..
        } => Some(negative_ttl.map(secs)),
        _ => None,
    }
}

fn lookup_error(what: &str, e: &ResolveError) -> Error {
    match e.proto() {
        Some(p) => proto_lookup_error(what, p),
        None => Error::unavailable(BACKEND, format!("{what}: {e}")),
    }
}

fn proto_lookup_error(what: &str, e: &ProtoError) -> Error {
    match e.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => Error::unavailable(
            BACKEND,
            format!("{what}: the nameserver answered {response_code}"),
        ),
        ProtoErrorKind::Timeout => Error::Timeout {
            backend: BACKEND,
            message: format!("{what}: no answer from the nameserver"),
        },
        _ => Error::unavailable(BACKEND, format!("{what}: {e}")),
    }
}

/// `name` as text without the trailing dot; the root (`.`) becomes the empty string.
pub fn name_text(name: &Name) -> String {
    let s = name.to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_string()
}

/// Parses `s` as a fully qualified name (a trailing dot is implied).
pub fn fqdn(s: &str) -> std::result::Result<Name, String> {
    let mut name = Name::from_ascii(s).map_err(|e| format!("bad DNS name {s:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_bind_secrets() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("").is_none());
        assert!(decode_base64("a*bc").is_none());
    }

    #[test]
    fn tsig_keys_are_checked_at_construction() {
        let key = |alg: &str, secret: &str| TsigKey {
            name: "k.".into(),
            algorithm: alg.into(),
            secret: Secret::new(secret),
        };
        assert!(key("hmac-sha256", "c2VjcmV0c2VjcmV0").signer().is_ok());
        let err = |k: TsigKey| k.signer().err().expect("an error").to_string();
        let e = err(key("hmac-md5", "c2VjcmV0"));
        assert!(e.contains("not supported"), "{e}");
        let err = err(key("hmac-sha256", "not base64!"));
        assert!(
            err.contains("not valid base64") && !err.contains("not base64!"),
            "{err}"
        );
        assert!(!format!("{:?}", key("hmac-sha256", "c2VjcmV0")).contains("c2VjcmV0"));
    }

    #[test]
    fn names() {
        assert_eq!(name_text(&fqdn("web1.sd.test").unwrap()), "web1.sd.test");
        assert_eq!(name_text(&fqdn("web1.sd.test.").unwrap()), "web1.sd.test");
        assert_eq!(name_text(&Name::root()), "");
        assert!(fqdn("a..b").is_err());
    }
}
