//! Registry URLs: parsing, typed options, secrets. Shared by every backend so the grammar is
//! the same everywhere (see `docs/URLS.md`).
//!
//! ```text
//! scheme://host[:port][,host[:port]...][/path]?option=value&...
//! ```
//!
//! Options are query parameters. Every backend reads the options it knows and then calls
//! [`RegistryUrl::finish`], which rejects any option nobody read, naming it and listing the
//! known ones. Secrets are given either inline (`token=...`) or, better, by naming an
//! environment variable (`token_env=CONSUL_TOKEN`); either way they are held in a
//! [`Secret`], which never prints its value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// A secret (token, password): `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that sends it (a header, an auth call).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A parsed registry URL with typed access to its options.
#[derive(Clone)]
pub struct RegistryUrl {
    /// `scheme://authority/path`, as written.
    head: String,
    query: Vec<QueryPart>,
    scheme: String,
    hosts: Vec<String>,
    path: String,
    params: BTreeMap<String, String>,
    read: BTreeSet<String>,
}

/// Words that make an option a secret when its (decoded, lower-cased) name contains one.
const SECRET_WORDS: [&str; 7] = [
    "token",
    "passw",
    "secret",
    "credential",
    "auth",
    "apikey",
    "digest",
];

/// Whether option `key` holds a secret: its decoded, lower-cased name contains one of
/// [`SECRET_WORDS`] and it is not a `*_env` option (which names a variable, not a value).
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    !k.ends_with("_env") && SECRET_WORDS.iter().any(|w| k.contains(w))
}

/// One `key=value` of the query: the decoded key and the segment as written.
#[derive(Clone)]
struct QueryPart {
    key: String,
    raw: String,
}

/// Renders `head?query`, with `***` for the value of every part `hide` selects.
fn render(head: &str, parts: &[QueryPart], hide: impl Fn(&QueryPart) -> bool) -> String {
    if parts.is_empty() {
        return head.to_string();
    }
    let query: Vec<String> = parts
        .iter()
        .map(|p| match p.raw.split_once('=') {
            Some((k, _)) if hide(p) => format!("{k}=***"),
            _ => p.raw.clone(),
        })
        .collect();
    format!("{head}?{}", query.join("&"))
}

fn split_query(s: &str) -> (&str, Vec<QueryPart>) {
    let s = s.split('#').next().unwrap_or_default();
    let Some((head, query)) = s.split_once('?') else {
        return (s, Vec::new());
    };
    let parts = query
        .split('&')
        .filter(|seg| !seg.is_empty())
        .map(|seg| QueryPart {
            key: url::form_urlencoded::parse(seg.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default(),
            raw: seg.to_string(),
        })
        .collect();
    (head, parts)
}

impl RegistryUrl {
    /// Parses `s`. Fails with a message that names the bad part.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            Error::config(format!(
                "registry URL {:?}: missing scheme, expected e.g. consul://127.0.0.1:8500",
                redact_all_values(s)
            ))
        })?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        {
            return Err(Error::config(format!(
                "registry URL {:?}: bad scheme {:?} (letters, digits, '+', '-' and '.' only)",
                redact_all_values(s),
                redact(&scheme)
            )));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, q),
            None => (rest, ""),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        if authority.contains('@') {
            return Err(Error::config(format!(
                "registry URL {:?}: credentials in the authority are not accepted; \
                 use options such as username=...&password_env=VAR",
                redact_all_values(s)
            )));
        }
        let hosts: Vec<String> = authority
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        let mut params = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if params.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Error::config(format!(
                    "registry URL {:?}: option {k:?} given twice",
                    redact_all_values(s)
                )));
            }
        }
        let (head, query) = split_query(s);
        Ok(RegistryUrl {
            head: hide_userinfo(head).into_owned(),
            query,

            scheme,
            hosts,
            path: path.to_string(),
            params,
            read: BTreeSet::new(),
        })
    }

    /// The scheme, lower-cased (`consul`, `dns+srv`, ...).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The comma-separated hosts of the authority, as written (`host`, `host:port`, `[::1]:port`).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The hosts as `(host, port)` pairs, `default_port` where none is given.
    pub fn host_ports(&self, default_port: u16) -> Result<Vec<(String, u16)>> {
        self.hosts
            .iter()
            .map(|h| split_host_port(h, default_port).map_err(|m| self.error(m)))
            .collect()
    }

    /// The path, with its leading `/` (empty when absent).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// An error about this URL, naming it (secrets redacted).
    pub fn error(&self, message: impl fmt::Display) -> Error {
        Error::config(format!("registry URL {:?}: {message}", self.shown()))
    }

    /// The URL as quoted in errors, logs and `Debug`: credentials in the authority, the values
    /// of secret options, and the values of options not read (yet) are hidden, so that a
    /// mistyped secret option (`toekn=...`) never prints its value, whichever error is met
    /// first.
    fn shown(&self) -> String {
        render(&self.head, &self.query, |p| {
            is_secret_key(&p.key) || !self.read.contains(&p.key)
        })
    }

    /// What identifies the registry's data, for the file names and files of the
    /// last-known-good cache ([`crate::lkg`]): the hosts, the path, and every option that may
    /// select data (`dc`, `ns`, `zone`, `prefix`, `passing`, ...), sorted, as
    /// `hosts/path?k=v&...`. Left out: secret options (a secret never reaches a file or a
    /// file name), `*_env` options, and options that only tune the transport or timing
    /// ([`TRANSPORT_OPTIONS`]), so that retuning a timeout keeps the same file.
    ///
    /// ```
    /// use sd_core::RegistryUrl;
    /// let u = RegistryUrl::parse("consul://10.0.0.1:8500?token=s3cret&dc=eu1&wait=30s").unwrap();
    /// assert_eq!(u.identity(), "10.0.0.1:8500?dc=eu1");
    /// ```
    pub fn identity(&self) -> String {
        let options: Vec<String> = self
            .params
            .iter()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                !is_secret_key(&k) && !k.ends_with("_env") && !TRANSPORT_OPTIONS.contains(&&*k)
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut id = format!("{}{}", self.hosts.join(","), self.path);
        if !options.is_empty() {
            id.push('?');
            id.push_str(&options.join("&"));
        }
        id
    }

    /// The raw value of option `key`, marking it as known.
    pub fn param(&mut self, key: &str) -> Option<String> {
        self.read.insert(key.to_string());
        self.params.get(key).cloned()
    }

    /// A non-empty string option.
    pub fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.param(key) {
            Some(v) if v.is_empty() => Err(self.error(format!("option {key} is empty"))),
            v => Ok(v),
        }
    }

    /// A comma-separated list option; absent gives an empty list.
    pub fn list(&mut self, key: &str) -> Vec<String> {
        self.param(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A boolean option: `true/false/1/0/yes/no`; a bare `?key` means true.
    pub fn bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.param(key).as_deref() {
            None => Ok(None),
            Some("" | "true" | "1" | "yes") => Ok(Some(true)),
            Some("false" | "0" | "no") => Ok(Some(false)),
            Some(v) => Err(self.error(format!(
                "option {key}={v:?} is not a boolean (use true or false)"
            ))),
        }
    }

    /// A duration option such as `500ms`, `10s`, `5m`, `1h`.
    pub fn duration(&mut self, key: &str) -> Result<Option<Duration>> {
        match self.param(key) {
            None => Ok(None),
            Some(v) => parse_duration(&v)
                .map(Some)
                .map_err(|m| self.error(format!("option {key}={v:?}: {m}"))),
        }
    }

    /// An integer option.
    pub fn number<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        match self.param(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.error(format!("option {key}={v:?} is not a valid number"))),
        }
    }

    /// A secret: `key=value` inline, or `key_env=VAR` to read it from the environment.
    ///
    /// Fails if both are given, or if the named variable is not set.
    pub fn secret(&mut self, key: &str) -> Result<Option<Secret>> {
        let env_key = format!("{key}_env");
        let inline = self.param(key);
        let var = self.param(&env_key);
        match (inline, var) {
            (Some(_), Some(_)) => {
                Err(self.error(format!("give either {key} or {env_key}, not both")))
            }
            (Some(v), None) => Ok(Some(Secret(v))),
            (None, Some(var)) => match std::env::var(&var) {
                Ok(v) if !v.is_empty() => Ok(Some(Secret(v))),
                _ => Err(self.error(format!(
                    "option {env_key}: environment variable {var} is not set"
                ))),
            },
            (None, None) => Ok(None),
        }
    }

    /// Fails if the URL has an option no one read, naming it and listing the known ones.
    ///
    /// The URL in this error also hides the values of the unknown options: a mistyped
    /// secret option (`toekn=...`) must not print its value.
    pub fn finish(&self) -> Result<()> {
        let unknown: Vec<&String> = self
            .params
            .keys()
            .filter(|k| !self.read.contains(*k))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let known: Vec<&str> = self.read.iter().map(String::as_str).collect();
        let shown = self.shown();
        let hint = if unknown.iter().any(|k| k.as_str() == "cache") {
            " (the cache option is read by sdkit::connect; with a backend's own constructor, \
             wrap the registry in sd_core::lkg::DiskCachedRegistry)"
        } else if unknown.iter().any(|k| k.as_str() == "protect") {
            " (the protect option is read by sdkit::connect; with a backend's own constructor, \
             wrap the registry in sd_core::protect::ProtectedRegistry)"
        } else {
            ""
        };
        Err(Error::config(format!(
            "registry URL {shown:?}: unknown option{} {}{hint}; known options for {}:// are: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.scheme,
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        )))
    }
}

/// Options that only tune the transport or timing of a backend, not which instances it
/// sees: left out of [`RegistryUrl::identity`].
pub const TRANSPORT_OPTIONS: &[&str] = &[
    "cache",
    "protect",
    "wait",
    "timeout",
    "connect_timeout",
    "session_timeout",
    "max_body",
    "tls",
    "ca",
    "cert",
    "key",
    "public_roots",
    "ttl",
    "lease",
    "renew",
    "reassert",
    "record_ttl",
    "poll",
    "min_refresh",
    "max_refresh",
    "attempts",
    "create_parents",
];

/// Schemes of registries held in the process, where empty-set protection is off unless
/// asked for (`protect=true`): an empty answer from them is always the truth.
pub const LOCAL_SCHEMES: &[&str] = &["memory", "static"];

/// The options every registry URL accepts, whatever the backend: read once, here, and taken
/// out of the URL before the backend parses it (`sdkit::connect` does this).
///
/// | option | meaning |
/// |---|---|
/// | `cache=/dir` | keep a last-known-good snapshot per instancer in `/dir` ([`crate::lkg`]) |
/// | `protect=true` / `protect=<hold>` / `protect=false` | empty-set protection with the default hold (30 s), another hold, or none ([`crate::protect`]); on by default except for [`LOCAL_SCHEMES`] |
///
/// ```
/// use sd_core::config::CommonOptions;
/// let (url, common) = CommonOptions::split("consul://127.0.0.1:8500?dc=eu1&cache=%2Fvar%2Flib%2Fsd").unwrap();
/// assert_eq!(url, "consul://127.0.0.1:8500?dc=eu1");
/// assert_eq!(common.cache.as_deref(), Some(std::path::Path::new("/var/lib/sd")));
/// assert!(CommonOptions::split("consul://h?cache=").is_err());
/// let (_, common) = CommonOptions::split("etcd://h?protect=10s").unwrap();
/// assert_eq!(common.protect.unwrap().hold_time(), std::time::Duration::from_secs(10));
/// // On by default for a registry over the network, off for the in-process one:
/// assert!(CommonOptions::split("etcd://h").unwrap().1.protect.is_some());
/// assert!(CommonOptions::split("etcd://h?protect=false").unwrap().1.protect.is_none());
/// assert!(CommonOptions::split("memory://m").unwrap().1.protect.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CommonOptions {
    /// The directory of the last-known-good snapshots (`cache=`), if any.
    pub cache: Option<PathBuf>,
    /// Empty-set protection (`protect=`), if on (on by default, see [`CommonOptions::split`]).
    pub protect: Option<crate::protect::EmptySetProtection>,
}

impl CommonOptions {
    /// Takes the common options out of `url`: returns the URL without them (the rest as
    /// written) and their values. Fails on an empty or repeated common option.
    ///
    /// Empty-set protection is **on by default** (30 s hold) for every registry reached over
    /// the network, off for [`LOCAL_SCHEMES`] (the in-process `memory://` and the fixed
    /// `static://` cannot glitch); `protect=` overrides either way.
    pub fn split(url: &str) -> Result<(String, CommonOptions)> {
        let url = url.trim();
        let (head, parts) = split_query(url);
        let mut common = CommonOptions::default();
        let scheme = head.split_once("://").map_or("", |(scheme, _)| scheme);
        if !LOCAL_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
            common.protect = Some(crate::protect::EmptySetProtection::default());
        }
        let mut rest = Vec::new();
        let mut seen = BTreeSet::new();
        for part in parts {
            if part.key != "cache" && part.key != "protect" {
                rest.push(part.raw);
                continue;
            }
            let value = url::form_urlencoded::parse(part.raw.as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let err = |m: &str| Error::config(format!("registry URL {:?}: {m}", redact(url)));
            if !seen.insert(part.key.clone()) {
                return Err(err(&format!("option {:?} given twice", part.key)));
            }
            if part.key == "protect" {
                common.protect = match value.as_str() {
                    "" | "true" | "1" | "yes" | "on" => {
                        Some(crate::protect::EmptySetProtection::default())
                    }
                    "false" | "0" | "no" | "off" => None,
                    v => match parse_duration(v) {
                        Ok(hold) if !hold.is_zero() => {
                            Some(crate::protect::EmptySetProtection::default().hold(hold))
                        }
                        Ok(_) => return Err(err("option protect=0s: a hold must be positive; use protect=false to turn protection off")),
                        Err(m) => {
                            return Err(err(&format!(
                                "option protect={v:?}: {m} (use true, false or a hold such as 30s)"
                            )))
                        }
                    },
                };
                continue;
            }
            if value.is_empty() {
                return Err(err(
                    "option cache is empty; give the directory of the snapshots, e.g. cache=/var/lib/app/sd",
                ));
            }
            common.cache = Some(PathBuf::from(value));
        }
        let stripped = if rest.is_empty() {
            head.to_string()
        } else {
            format!("{head}?{}", rest.join("&"))
        };
        Ok((stripped, common))
    }
}

impl fmt::Debug for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistryUrl({})", self.shown())
    }
}

impl fmt::Display for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// `s` with credentials in the authority and the values of secret options replaced by `***`.
///
/// Credentials in the authority (`scheme://user:pass@host`, or `user:pass@host` with no
/// scheme) become `***@host`: everything up to the last `@` before the path, query or
/// fragment is hidden, so a password that itself contains `@` or `:` is hidden whole.
///
/// An option is secret when its name, percent-decoded and lower-cased, contains `token`,
/// `passw`, `secret`, `credential`, `auth`, `apikey` or `digest` (ZooKeeper's
/// `user:password`), so `Token=`, `tok%65n=` and `acl_token=` are all hidden; `*_env` options
/// name a variable and are shown.
///
/// ```
/// use sd_core::config::redact;
/// assert_eq!(redact("etcd://root:hunter2@10.0.0.1:2379?token=x"), "etcd://***@10.0.0.1:2379?token=***");
/// assert_eq!(redact("admin:hunter2@consul.internal:8500"), "***@consul.internal:8500");
/// // A composed URL, member by member:
/// assert_eq!(
///     redact("failover:consul://a:8500?token=x,etcd://u:p@b:2379"),
///     "failover:consul://a:8500?token=***,etcd://***@b:2379"
/// );
/// ```
pub fn redact(s: &str) -> String {
    if let Some(redacted) = per_member(s, redact) {
        return redacted;
    }
    let (head, parts) = split_query(s);
    render(&hide_userinfo(head), &parts, |p| is_secret_key(&p.key))
}

/// `s` with credentials in the authority and the value of every option hidden: for errors
/// met before the options are read, when a mistyped secret option cannot be told apart.
fn redact_all_values(s: &str) -> String {
    if let Some(redacted) = per_member(s, redact_all_values) {
        return redacted;
    }
    let (head, parts) = split_query(s);
    render(&hide_userinfo(head), &parts, |_| true)
}

/// A composed URL (`failover:a,b`, `merge:a,b`) with `f` applied to each member; `None`
/// when `s` is not one.
fn per_member(s: &str, f: fn(&str) -> String) -> Option<String> {
    let (composition, members) = crate::compose::split_lenient(s)?;
    let members: Vec<String> = members.into_iter().map(f).collect();
    Some(format!("{composition}:{}", members.join(",")))
}

/// `head` (a URL without its query) with any userinfo in its authority replaced by `***`.
///
/// The authority ends at the first `/`, `?` or `#` after `://` (or, without `://`, in the
/// whole string). Everything up to the last `@` before that end is hidden; a well-formed
/// scheme is kept. So `user:pass@host` with no scheme, and a "scheme" that is itself
/// `user:pass@host` or holds an `@`, are hidden too.
fn hide_userinfo(head: &str) -> std::borrow::Cow<'_, str> {
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let end = head[authority_start..]
        .find(['/', '?', '#'])
        .map_or(head.len(), |j| authority_start + j);
    let Some(at) = head[..end].rfind('@') else {
        return head.into();
    };
    let scheme_ok = authority_start > 3 && is_scheme(&head[..authority_start - 3]);
    let kept = if scheme_ok {
        &head[..authority_start]
    } else {
        ""
    };
    format!("{kept}***{}", &head[at..]).into()
}

/// Whether `s` may be a URL scheme as [`redact`] keeps one: ASCII letters, digits, `+`, `-`
/// and `.` (an empty string is not).
///
/// ```
/// use sd_core::config::is_scheme;
/// assert!(is_scheme("dns+srv"));
/// assert!(!is_scheme("user:pw@host") && !is_scheme(""));
/// ```
pub fn is_scheme(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Splits `host:port` / `[v6]:port` / `host`, using `default_port` when there is none.
///
/// A port must be 1 to 65535: an explicit port 0 is an error that says so.
pub fn split_host_port(s: &str, default_port: u16) -> std::result::Result<(String, u16), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("host {s:?}: missing ']'"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(s, p)?,
            None if after.is_empty() => default_port,
            None => return Err(format!("host {s:?}: unexpected {after:?} after ']'")),
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Err(format!(
            "host {s:?}: IPv6 addresses must be bracketed, e.g. [::1]:8500"
        )),
        Some((h, p)) => {
            if h.is_empty() {
                return Err(format!("host {s:?}: empty host"));
            }
            Ok((h.to_string(), parse_port(s, p)?))
        }
        None => Ok((s.to_string(), default_port)),
    }
}

/// The port `p` of host `s`: 1 to 65535. Port 0 ("any port" to the OS) is refused: nothing
/// can be reached there.
fn parse_port(s: &str, p: &str) -> std::result::Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) => Err(format!(
            "host {s:?}: port 0 is not a port a registry listens on (use 1 to 65535)"
        )),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("host {s:?}: bad port {p:?} (use 1 to 65535)")),
    }
}

/// Parses `250ms`, `10s`, `1.5s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| "missing unit (use e.g. 500ms, 10s, 5m, 1h)".to_string())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a number followed by ms, s, m or h".to_string())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| "duration out of range".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_path_and_options() {
        let mut u = RegistryUrl::parse(
            "etcd://h1:2379,[::1]:2380,h3/services/web?dial_timeout=2s&tls=true",
        )
        .unwrap();
        assert_eq!(u.scheme(), "etcd");
        assert_eq!(
            u.host_ports(2379).unwrap(),
            vec![
                ("h1".into(), 2379),
                ("::1".into(), 2380),
                ("h3".into(), 2379)
            ]
        );
        assert_eq!(u.path(), "/services/web");
        assert_eq!(
            u.duration("dial_timeout").unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(u.bool("tls").unwrap(), Some(true));
        u.finish().unwrap();
    }

    #[test]
    fn unknown_options_are_named_with_the_known_ones() {
        let mut u = RegistryUrl::parse("consul://127.0.0.1:8500?dc=a&colour=blue").unwrap();
        let _ = u.param("dc");
        let _ = u.param("token");
        let err = u.finish().unwrap_err().to_string();
        assert!(err.contains("unknown option colour"), "{err}");
        assert!(err.contains("dc, token"), "{err}");
    }

    #[test]
    fn bad_parts_are_named() {
        for (url, needle) in [
            ("127.0.0.1:8500", "missing scheme"),
            ("consul://user:pw@h:1", "credentials"),
            ("consul://h:1?a=1&a=2", "given twice"),
        ] {
            let err = RegistryUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
        let u = RegistryUrl::parse("consul://h:99999").unwrap();
        assert!(u
            .host_ports(1)
            .unwrap_err()
            .to_string()
            .contains("bad port"));
        let u = RegistryUrl::parse("consul://::1:80").unwrap();
        assert!(u
            .host_ports(1)
            .unwrap_err()
            .to_string()
            .contains("bracketed"));
        let mut u = RegistryUrl::parse("consul://h?wait=10").unwrap();
        assert!(u
            .duration("wait")
            .unwrap_err()
            .to_string()
            .contains("missing unit"));
        let mut u = RegistryUrl::parse("consul://h?passing=maybe").unwrap();
        assert!(u
            .bool("passing")
            .unwrap_err()
            .to_string()
            .contains("not a boolean"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn secrets_come_from_env_and_never_print() {
        std::env::set_var("SD_CORE_TEST_TOKEN", "hunter2");
        let mut u = RegistryUrl::parse("consul://h?token_env=SD_CORE_TEST_TOKEN").unwrap();
        let s = u.secret("token").unwrap().unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));

        let mut u = RegistryUrl::parse("consul://h?token=hunter3").unwrap();
        let s = u.secret("token").unwrap().unwrap();
        assert_eq!(s.expose(), "hunter3");
        assert!(!format!("{u:?} {u}").contains("hunter3"), "{u:?}");
        assert!(!u.error("x").to_string().contains("hunter3"));

        let mut u = RegistryUrl::parse("consul://h?token_env=SD_CORE_TEST_UNSET_VAR").unwrap();
        let err = u.secret("token").unwrap_err().to_string();
        assert!(err.contains("SD_CORE_TEST_UNSET_VAR is not set"), "{err}");

        // Variants of a secret's name are redacted too, and so is the value of a mistyped
        // option in the unknown-option error.
        for url in [
            "consul://h?Token=hunter4",
            "consul://h?tok%65n=hunter4",
            "consul://h?acl_token=hunter4",
            "consul://h?password=hunter4",
            "zk://h?digest=user:hunter4",
        ] {
            let u = RegistryUrl::parse(url).unwrap();
            assert!(!format!("{u:?} {u}").contains("hunter4"), "{url}: {u:?}");
            assert!(!u.finish().unwrap_err().to_string().contains("hunter4"));
        }
        let mut u = RegistryUrl::parse("consul://h?dc=eu1&toekn=hunter5").unwrap();
        let _ = u.param("dc");
        let err = u.finish().unwrap_err().to_string();
        assert!(err.contains("unknown option toekn"), "{err}");
        assert!(err.contains("dc=eu1") && !err.contains("hunter5"), "{err}");
        assert_eq!(
            redact("consul://h?token_env=VAR&token=x#frag"),
            "consul://h?token_env=VAR&token=***"
        );

        let mut u = RegistryUrl::parse("consul://h?token=a&token_env=B").unwrap();
        assert!(u
            .secret("token")
            .unwrap_err()
            .to_string()
            .contains("not both"));
    }

    /// Userinfo in the authority is hidden in `redact` and in every parse error, with or
    /// without a scheme, whatever characters the password holds.
    #[test]
    fn authority_credentials_never_print() {
        for (url, shown) in [
            (
                "etcd://root:hunter2@127.0.0.1:2379",
                "etcd://***@127.0.0.1:2379",
            ),
            ("zk://u:hunter2@h:2181/x", "zk://***@h:2181/x"),
            (
                "consul://admin:hun@ter2@h:8500?token=t",
                "consul://***@h:8500?token=***",
            ),
            (
                "admin:hunter2@consul.internal:8500",
                "***@consul.internal:8500",
            ),
            ("admin:hunter2@h/p", "***@h/p"),
            ("CONSUL://hunter2@h", "CONSUL://***@h"),
            ("consul://h:8500/path", "consul://h:8500/path"),
            (
                "consul://h:8500?username=a@b",
                "consul://h:8500?username=a@b",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        for url in [
            "etcd://root:hunter2@127.0.0.1:2379",
            "zk://u:hunter2@h:2181/x",
            "admin:hunter2@consul.internal:8500",
            "admin:hunter2@h://x",
            "consul://a:hunter2@b@h:1",
        ] {
            let err = RegistryUrl::parse(url).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    /// An explicit port 0 is refused with a message saying so, bracketed or not; no port at
    /// all still takes the default.
    #[test]
    fn port_zero_is_refused() {
        for host in ["h:0", "[::1]:0", "10.0.0.1:00"] {
            let err = split_host_port(host, 2379).unwrap_err();
            assert!(err.contains("port 0"), "{host}: {err}");
        }
        let u = RegistryUrl::parse("etcd://h1:2379,h2:0").unwrap();
        let err = u.host_ports(2379).unwrap_err().to_string();
        assert!(err.contains("port 0") && err.contains("h2:0"), "{err}");
        assert_eq!(split_host_port("h", 2379).unwrap(), ("h".into(), 2379));
        assert_eq!(split_host_port("h:1", 2379).unwrap(), ("h".into(), 1));
        assert_eq!(
            split_host_port("[::1]:65535", 1).unwrap(),
            ("::1".into(), 65535)
        );
    }
}
