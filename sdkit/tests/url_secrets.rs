//! The facade's URL handling with secrets outside the query: credentials in the authority (or
//! before the `@` of a URL missing its scheme) never show in an error.

fn connect_err(url: &str) -> String {
    sdkit::connect(url).unwrap_err().to_string()
}

/// docs/URLS.md: "Credentials in the authority (`user:pass@host`) are rejected", and secrets
/// are "redacted ... in every error". The rejection itself must not print the password it
/// rejects: applications log or print `connect`/`from_env` errors (`main` returning `Err`).
#[test]
fn rejected_authority_credentials_are_not_echoed() {
    for url in [
        "consul://admin:hunter2@127.0.0.1:8500",
        "memory://admin:hunter2@tests",
        "static://admin:hunter2@10.0.0.1:80",
        "etcd://root:hunter2@127.0.0.1:2379?prefix=/s",
        "bogus://admin:hunter2@h",
    ] {
        let e = connect_err(url);
        assert!(e.contains("credentials"), "{url}: {e}");
        assert!(!e.contains("hunter2"), "password echoed in the error: {e}");
    }
}

/// The same through `SD_REGISTRY`, where the URL comes from deployment configuration.
#[test]
fn from_env_does_not_echo_authority_credentials() {
    std::env::set_var(
        sdkit::ENV_VAR,
        "consul://admin:hunter2@consul.internal:8500",
    );
    let e = sdkit::from_env().unwrap_err().to_string();
    std::env::remove_var(sdkit::ENV_VAR);
    assert!(!e.contains("hunter2"), "password echoed in the error: {e}");
}

/// A URL missing its scheme (`user:pass@host:port`, a common copy-paste of a connection
/// string) is quoted whole in the "missing scheme" error.
#[test]
fn missing_scheme_error_does_not_echo_credentials() {
    let e = connect_err("admin:hunter2@consul.internal:8500");
    assert!(e.contains("missing scheme"), "{e}");
    assert!(!e.contains("hunter2"), "password echoed in the error: {e}");
}

/// `redact` (used for every URL in logs) hides option values but not authority credentials.
#[test]
fn redact_hides_authority_credentials() {
    let shown = sdkit::config::redact("consul://admin:hunter2@h:8500?token=x");
    assert!(!shown.contains("hunter2"), "{shown}");
}

/// Held up check: option secrets are hidden in the "given twice" error and in Debug.
#[test]
fn duplicate_secret_option_is_redacted() {
    let e = connect_err("consul://h:1?token=hunter2&token=hunter3");
    assert!(!e.contains("hunter2") && !e.contains("hunter3"), "{e}");
    let u =
        sdkit::RegistryUrl::parse("consul://h:1?Auth_Token=hunter2&tsig_secret=hunter3").unwrap();
    let shown = format!("{u:?} {u}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("hunter3"),
        "{shown}"
    );
}
