//! The typed service instance every backend produces.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use compact_str::CompactString;

use crate::error::Error;
use crate::meta::Meta;

/// The health a registry reports for an instance.
///
/// Backends map their own vocabulary onto this: Consul's aggregated check status,
/// Eureka's `UP`/`DOWN`/`OUT_OF_SERVICE`/`STARTING`. Backends without health (DNS,
/// etcd, ZooKeeper) report [`Health::Passing`] for every instance they publish.
///
/// `#[non_exhaustive]`: a `match` on it needs a wildcard arm. The order (`Passing` first) is
/// "healthiest first".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum Health {
    /// Healthy and serving.
    #[default]
    Passing,
    /// Serving, but with a warning (Consul `warning`).
    Warning,
    /// Failing or out of service (Consul `critical`, Eureka `DOWN`/`OUT_OF_SERVICE`).
    Critical,
    /// The registry does not know (Eureka `STARTING`/`UNKNOWN`).
    Unknown,
}

impl Health {
    /// The lower-case name used in logs and metadata: `passing`, `warning`, `critical`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
            Health::Unknown => "unknown",
        }
    }
}

/// An instance's fields, compact: the address and the id share one string, stored inline
/// when they are short (up to 24 bytes together, e.g. `10.0.0.1:8080` and a short id), so
/// a typical instance is one allocation of 56 bytes (a 64-byte chunk with glibc's malloc);
/// the host is a slice of the address; tags and metadata, often empty, sit behind one
/// optional pointer, and so does the length of an address longer than [`LONG_ADDR`] bytes.
#[derive(PartialEq, Eq, Hash)]
struct Data {
    /// The address (`host:port`, IPv6 bracketed) followed by the id.
    text: CompactString,
    /// Tags, metadata and the length of a long address; `None` when there are none (never
    /// `Some` of empty ones, so the derived equality is the fields' equality).
    extra: Option<Box<Extra>>,
    weight: u32,
    port: u16,
    health: Health,
    /// `text[..addr_len]` is the address, `text[addr_len..]` the id; [`LONG_ADDR`] means
    /// the address is at least that long and its length is `extra.addr_len`.
    addr_len: u8,
}

/// The `addr_len` of an address of `LONG_ADDR` bytes or more (longer than any DNS name with
/// a port): its length is kept in the [`Extra`] record.
const LONG_ADDR: u8 = u8::MAX;

/// The fields most instances do not have.
#[derive(PartialEq, Eq, Hash)]
struct Extra {
    tags: Vec<String>,
    meta: Meta,
    /// The address length when it is [`LONG_ADDR`] bytes or more, else 0.
    addr_len: u32,
}

/// What [`Instance::meta`] returns for an instance without metadata.
static NO_META: std::sync::LazyLock<Meta> = std::sync::LazyLock::new(Meta::new);

impl Data {
    fn addr_len(&self) -> usize {
        match (self.addr_len, &self.extra) {
            (LONG_ADDR, Some(e)) => e.addr_len as usize,
            (n, _) => usize::from(n),
        }
    }

    fn addr(&self) -> &str {
        &self.text[..self.addr_len()]
    }

    fn id(&self) -> &str {
        &self.text[self.addr_len()..]
    }

    fn host(&self) -> &str {
        let addr = self.addr();
        // `host:port` or `[host]:port`: the port has no ':', a plain host has none either
        // (a host with one is bracketed).
        let host = &addr[..addr.rfind(':').unwrap_or(addr.len())];
        if host.contains(':') {
            &host[1..host.len() - 1]
        } else {
            host
        }
    }

    fn tags(&self) -> &[String] {
        self.extra.as_ref().map_or(&[], |e| &e.tags)
    }

    fn meta(&self) -> &Meta {
        self.extra.as_ref().map_or(&NO_META, |e| &e.meta)
    }
}

/// One instance of a service: where it is and what the registry says about it.
///
/// An `Instance` is an immutable value behind an `Arc`: cloning it is a reference-count
/// increment, and two clones compare equal in one pointer comparison. Build one with
/// [`Instance::new`] or [`Instance::builder`], or parse a go-kit style `host:port` string
/// with [`Instance::parse`].
///
/// Compact: a typical instance (an IPv4 address and a short id, no tags or metadata) is
/// one allocation of 56 bytes (`size_of` of its record: 40 bytes, plus the two reference
/// counts), the address and id stored inline up to 24 bytes together.
///
/// Its [`addr`](Instance::addr) is the go-kit instance string: `host:port`, with IPv6 hosts
/// bracketed (`[::1]:80`). Instances order by `addr`, then `id`, then the rest, so every
/// published set is sorted deterministically.
///
/// ```
/// use sd_core::{Instance, Health};
/// let i = Instance::builder("::1", 8080).id("web-1").tag("v2").meta("zone", "a").weight(5).build();
/// assert_eq!(i.addr(), "[::1]:8080");
/// assert_eq!(i.weight(), 5);
/// assert_eq!(i.health(), Health::Passing);
/// assert_eq!(Instance::parse("10.0.0.1:80").unwrap().port(), 80);
/// ```
#[derive(Clone)]
pub struct Instance(Arc<Data>);

/// The default weight of an instance when the registry gives none.
pub const DEFAULT_WEIGHT: u32 = 1;

impl Instance {
    /// An instance at `host:port` with no id, tags or metadata, weight 1, passing.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self::builder(host, port).build()
    }

    /// Starts building an instance at `host:port`.
    pub fn builder(host: impl Into<String>, port: u16) -> InstanceBuilder {
        let mut host = host.into();
        // Accept a bracketed IPv6 literal as well as a bare one.
        if host.starts_with('[') && host.ends_with(']') && host.len() >= 2 {
            host = host[1..host.len() - 1].to_string();
        }
        InstanceBuilder {
            host,
            port,
            id: String::new(),
            tags: Vec::new(),
            meta: Vec::new(),
            weight: DEFAULT_WEIGHT,
            health: Health::Passing,
        }
    }

    /// Parses a go-kit instance string `host:port` (`[v6]:port` for IPv6).
    ///
    /// A scheme prefix such as `http://` is accepted and dropped (go-kit's etcd examples store
    /// `http://1.2.3.4:8080`); a path after the port is rejected.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let rest = match s.find("://") {
            Some(i) => &s[i + 3..],
            None => s,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Ok(sa) = rest.parse::<SocketAddr>() {
            return Ok(Self::new(sa.ip().to_string(), sa.port()));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
            Error::config(format!("instance {s:?}: expected host:port, found no port"))
        })?;
        if host.is_empty() {
            return Err(Error::config(format!("instance {s:?}: empty host")));
        }
        if host.contains(':') || host.contains('/') || host.contains('[') {
            return Err(Error::config(format!(
                "instance {s:?}: bad host {host:?} (IPv6 hosts must be bracketed, e.g. [::1]:80)"
            )));
        }
        usable_host(host).map_err(|e| Error::config(format!("instance {s:?}: {e}")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| Error::config(format!("instance {s:?}: bad port {port:?}")))?;
        Ok(Self::new(host, port))
    }

    /// Parses a list of go-kit instance strings; fails on the first bad one.
    pub fn parse_all<I, S>(addrs: I) -> Result<Vec<Self>, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        addrs.into_iter().map(|s| Self::parse(s.as_ref())).collect()
    }

    /// The go-kit instance string: `host:port`, IPv6 bracketed.
    pub fn addr(&self) -> &str {
        self.0.addr()
    }

    /// The registry's id for this instance (Consul service ID, Eureka instanceId, the
    /// etcd key or znode name); empty when the registry has none (DNS, static).
    pub fn id(&self) -> &str {
        self.0.id()
    }

    /// The host, without brackets.
    pub fn host(&self) -> &str {
        self.0.host()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// The tags, as the registry gave them.
    pub fn tags(&self) -> &[String] {
        self.0.tags()
    }

    /// Whether the instance has `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.0.tags().iter().any(|t| t == tag)
    }

    /// String metadata (Consul `Meta`, Eureka `metadata`, node and datacenter, ...).
    pub fn meta(&self) -> &Meta {
        self.0.meta()
    }

    /// The relative weight for weighted balancers; 0 means "only if nothing else".
    pub fn weight(&self) -> u32 {
        self.0.weight
    }

    /// The health the registry reports.
    pub fn health(&self) -> Health {
        self.0.health
    }

    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0
            .host()
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.0.port))
    }

    /// The identity used to keep an endpoint across updates: `(addr, id)`.
    ///
    /// Two entries with the same address but different ids (two registrations of the same
    /// `host:port`) are two instances; a change of tags, metadata, weight or health keeps the
    /// identity, so the endpoint built for it survives.
    pub fn key(&self) -> (&str, &str) {
        (self.0.addr(), self.0.id())
    }

    /// Whether two handles share the same allocation (a fast path for equality).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// A builder pre-filled with this instance's fields.
    pub fn to_builder(&self) -> InstanceBuilder {
        InstanceBuilder {
            host: self.0.host().to_string(),
            port: self.0.port,
            id: self.0.id().to_string(),
            tags: self.0.tags().to_vec(),
            meta: self.0.meta().to_pairs(),
            weight: self.0.weight,
            health: self.0.health,
        }
    }
}

/// Checks that `host`, as a registry or a value gave it, can be an instance's host, and
/// returns it as the instance should carry it: a DNS name or IPv4 address as given, an
/// IPv6 address (bare or bracketed: `::1`, `[::1]`) in its canonical form without brackets.
/// Fails, saying why, on an empty host, whitespace or control characters, any of
/// `/ \ @ ? #` (a URL, not a host) or `{ }` (a plain value starting with `{` is read as
/// sdkit's JSON), brackets around anything but an IPv6 address, and a `:` outside an IPv6
/// address.
///
/// An instance built on the host it returns keeps its address through go-kit's plain
/// `host:port` form: [`Instance::parse`] of its [`addr`](Instance::addr) gives the same
/// host and port. Every decoder of registry data checks hosts with it (fuzzing found JSON
/// payloads with hosts such as `w/b.internal` or `{xot` whose plain form did not parse or
/// was read as JSON, and control characters in plain values).
///
/// ```
/// use sd_core::instance::usable_host;
/// assert_eq!(usable_host("web-1.sd.test").unwrap(), "web-1.sd.test");
/// assert_eq!(usable_host("10.0.0.1").unwrap(), "10.0.0.1");
/// assert_eq!(usable_host("[0:0::1]").unwrap(), "::1");
/// for bad in ["", " ", "[]", "a b", "w/b", "a:b", "[web]", "h\n", "user@h", "h?x"] {
///     assert!(usable_host(bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn usable_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("empty host".into());
    }
    if let Some(c) = host
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "/\\@?#{}".contains(*c))
    {
        return Err(format!("host {host:?} contains {c:?}"));
    }
    if let Some(rest) = host.strip_prefix('[') {
        let v6 = rest
            .strip_suffix(']')
            .and_then(|inner| inner.parse::<std::net::Ipv6Addr>().ok())
            .ok_or_else(|| format!("host {host:?}: only an IPv6 address may be bracketed"))?;
        return Ok(v6.to_string());
    }
    if host.contains('[') || host.contains(']') {
        return Err(format!("host {host:?} contains a bracket"));
    }
    if host.contains(':') {
        return host
            .parse::<std::net::Ipv6Addr>()
            .map(|v6| v6.to_string())
            .map_err(|_| format!("host {host:?} contains ':' but is not an IPv6 address"));
    }
    Ok(host.to_string())
}

/// Formats `host:port`, bracketing IPv6 hosts.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A port as decimal text, without allocating.
fn itoa_port(port: u16) -> PortText {
    let mut buf = [0u8; 5];
    let mut n = port;
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    PortText { buf, start }
}

/// The text of [`itoa_port`].
struct PortText {
    buf: [u8; 5],
    start: usize,
}

impl PortText {
    fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

/// `n` as a `u32`: string lengths past 4 GiB cannot be held, so saturating never matters.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Builds an [`Instance`]; see [`Instance::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct InstanceBuilder {
    host: String,
    port: u16,
    id: String,
    tags: Vec<String>,
    /// The pairs as given; sorted, and a repeated key's last value kept, by `build`.
    meta: Vec<(String, String)>,
    weight: u32,
    health: Health,
}

impl InstanceBuilder {
    /// Sets the registry id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
    /// Replaces the tags.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }
    /// Adds one metadata pair (a key given again replaces its value).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.push((key.into(), value.into()));
        self
    }
    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
    /// Sets the health.
    pub fn health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }
    /// Finishes the instance.
    pub fn build(self) -> Instance {
        let bracketed = self.host.contains(':');
        let port = itoa_port(self.port);
        // The exact length: a capacity over 24 bytes would put even a short text on the heap.
        let len =
            self.host.len() + 2 * usize::from(bracketed) + 1 + port.as_str().len() + self.id.len();
        let mut text = CompactString::with_capacity(len);
        if bracketed {
            text.push('[');
        }
        text.push_str(&self.host);
        if bracketed {
            text.push(']');
        }
        text.push(':');
        text.push_str(port.as_str());
        let addr_len = text.len();
        text.push_str(&self.id);
        let (short_len, long_len) = match u8::try_from(addr_len) {
            Ok(n) if n < LONG_ADDR => (n, 0),
            _ => (LONG_ADDR, to_u32(addr_len)),
        };
        let extra = if self.tags.is_empty() && self.meta.is_empty() && long_len == 0 {
            None
        } else {
            Some(Box::new(Extra {
                tags: self.tags,
                meta: Meta::from_pairs(self.meta),
                addr_len: long_len,
            }))
        };
        Instance(Arc::new(Data {
            text,
            extra,
            weight: self.weight,
            port: self.port,
            health: self.health,
            addr_len: short_len,
        }))
    }
}

impl PartialEq for Instance {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for Instance {}

impl std::hash::Hash for Instance {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl Ord for Instance {
    fn cmp(&self, other: &Self) -> Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return Ordering::Equal;
        }
        let (a, b) = (&*self.0, &*other.0);
        a.addr()
            .cmp(b.addr())
            .then_with(|| a.id().cmp(b.id()))
            .then_with(|| a.tags().cmp(b.tags()))
            .then_with(|| a.meta().cmp(b.meta()))
            .then_with(|| a.weight.cmp(&b.weight))
            .then_with(|| a.health.cmp(&b.health))
    }
}

impl PartialOrd for Instance {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.addr())
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &*self.0;
        let mut s = f.debug_struct("Instance");
        s.field("addr", &d.addr());
        if !d.id().is_empty() {
            s.field("id", &d.id());
        }
        if !d.tags().is_empty() {
            s.field("tags", &d.tags());
        }
        if !d.meta().is_empty() {
            s.field("meta", d.meta());
        }
        s.field("weight", &d.weight)
            .field("health", &d.health)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_compact() {
        // 40 bytes plus the two reference counts: a 56-byte request, which glibc's malloc
        // serves from a 64-byte chunk (a 64-byte request would take 80).
        assert_eq!(std::mem::size_of::<Data>(), 40);
        let i = Instance::builder("10.0.0.1", 8080)
            .id("web-1234567") // 13 + 11 = 24 bytes
            .build();
        assert_eq!(i.addr(), "10.0.0.1:8080");
        assert_eq!(i.id(), "web-1234567");
        assert!(!i.0.text.is_heap_allocated(), "address and id inline");
        assert!(i.0.extra.is_none());
        let long = Instance::builder("::1", 80)
            .id("0123456789-0123456789-0123456789")
            .build();
        assert_eq!((long.addr(), long.host()), ("[::1]:80", "::1"));
        assert_eq!(long.id(), "0123456789-0123456789-0123456789");
        // Tags or metadata given and then emptied: no extra record (equality stays exact).
        let plain = Instance::builder("h", 1).tags(Vec::<String>::new()).build();
        assert!(plain.0.extra.is_none());
        assert_eq!(plain, Instance::new("h", 1));
    }

    /// An address of 255 bytes or more keeps its length in the extra record; every field
    /// still reads back, equality and order still hold, at every length around the limit.
    #[test]
    fn long_addresses_read_back() {
        for len in [250, 252, 253, 254, 255, 256, 300, 70_000] {
            let host = "h".repeat(len);
            let i = Instance::builder(host.clone(), 8080).id("id").build();
            assert_eq!(i.host(), host);
            assert_eq!(i.addr(), format!("{host}:8080"));
            assert_eq!(i.id(), "id");
            assert_eq!(i.port(), 8080);
            assert!(i.tags().is_empty() && i.meta().is_empty());
            let long = i.addr().len() >= usize::from(LONG_ADDR);
            assert_eq!(i.0.extra.is_some(), long, "{len}");
            assert_eq!(Instance::parse(i.addr()).unwrap().addr(), i.addr());
            assert_eq!(i, i.to_builder().build());
            // The same text split elsewhere is another instance.
            let other = Instance::builder(host.clone(), 808).id("0id").build();
            assert_eq!(i.0.text, other.0.text);
            assert_ne!(i, other);
            assert_ne!(i.cmp(&other), Ordering::Equal);
            let v6 = Instance::builder(format!("{}::1", "a:".repeat(len / 2)), 1).build();
            assert!(v6.addr().starts_with('[') && v6.host().ends_with("::1"));
        }
    }

    /// The host is read back from the address in every shape the builder can make.
    #[test]
    fn host_reads_back() {
        for (host, addr, back) in [
            ("", ":1", ""),
            ("[x", "[x:1", "[x"),
            ("x]", "x]:1", "x]"),
            ("[[x]]", "[x]:1", "[x]"),
            (":", "[:]:1", ":"),
            ("fe80::1%eth0", "[fe80::1%eth0]:1", "fe80::1%eth0"),
            ("[::1]", "[::1]:1", "::1"),
        ] {
            let i = Instance::builder(host, 1).id("i:d]").build();
            assert_eq!((i.addr(), i.host(), i.id()), (addr, back, "i:d]"), "{host}");
        }
    }

    #[test]
    fn addr_formats_match_gokit() {
        assert_eq!(Instance::new("10.0.0.1", 80).addr(), "10.0.0.1:80");
        assert_eq!(Instance::new("::1", 80).addr(), "[::1]:80");
        assert_eq!(Instance::new("[::1]", 80).addr(), "[::1]:80");
        assert_eq!(Instance::new("[::1]", 80).host(), "::1");
        assert_eq!(
            Instance::new("host.example.", 8080).addr(),
            "host.example.:8080"
        );
    }

    #[test]
    fn parse_accepts_gokit_strings_and_rejects_bad_ones() {
        assert_eq!(
            Instance::parse("1.2.3.4:8080").unwrap().addr(),
            "1.2.3.4:8080"
        );
        assert_eq!(
            Instance::parse("http://1.2.3.4:8080").unwrap().addr(),
            "1.2.3.4:8080"
        );
        assert_eq!(Instance::parse("[fe80::1]:9").unwrap().host(), "fe80::1");
        assert_eq!(Instance::parse("svc.local:1").unwrap().host(), "svc.local");
        for bad in ["", "nohost", ":80", "h:99999", "h:x", "::1:80", "h:80/path"] {
            let err = Instance::parse(bad).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
            assert!(err.to_string().contains("instance"), "{err}");
        }
    }

    /// Found by the `etcd_value` fuzz target (scripts/fuzz): hosts with control
    /// characters, whitespace or URL characters were accepted.
    #[test]
    fn fuzz_found_parse_rejects_hosts_that_are_not_hosts() {
        for bad in [
            "10.0\x01\0\0\n:8080",
            "a b:80",
            "user@h:80",
            "h#x:80",
            "[web]:80",
            // Read as JSON by the etcd and ZooKeeper decoders (found by `etcd_value`).
            "{xot:80",
        ] {
            assert!(Instance::parse(bad).is_err(), "{bad:?}");
        }
        for (host, usable) in [
            ("h", "h"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("10.0.0.1", "10.0.0.1"),
        ] {
            assert_eq!(usable_host(host).unwrap(), usable);
            let i = Instance::new(usable, 80);
            assert_eq!(Instance::parse(i.addr()).unwrap().host(), usable);
        }
    }

    #[test]
    fn order_is_addr_then_id() {
        let mut v = [
            Instance::builder("b", 1).id("1").build(),
            Instance::builder("a", 2).id("2").build(),
            Instance::builder("a", 2).id("1").build(),
        ];
        v.sort();
        let got: Vec<_> = v
            .iter()
            .map(|i| format!("{}/{}", i.addr(), i.id()))
            .collect();
        assert_eq!(got, ["a:2/1", "a:2/2", "b:1/1"]);
    }

    #[test]
    fn equality_covers_metadata_but_key_does_not() {
        let a = Instance::builder("h", 1).id("x").weight(1).build();
        let b = Instance::builder("h", 1).id("x").weight(2).build();
        assert_ne!(a, b);
        assert_eq!(a.key(), b.key());
        assert_eq!(a, a.clone());
        assert!(Instance::ptr_eq(&a, &a.clone()));
        assert_eq!(a.to_builder().weight(2).build(), b);
    }

    #[test]
    fn socket_addr_only_for_ip_hosts() {
        assert_eq!(
            Instance::new("::1", 5).socket_addr(),
            Some("[::1]:5".parse().unwrap())
        );
        assert_eq!(Instance::new("name", 5).socket_addr(), None);
    }
}
