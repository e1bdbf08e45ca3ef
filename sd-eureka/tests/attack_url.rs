//! Attacks on `eureka://` URL parsing: values that cannot work must be refused at parse time.
//!
//! Run: `cargo test -p sd-eureka --test attack_url`

use sd_eureka::EurekaRegistry;

/// Each of these URLs names something that can never work; `from_url` must refuse it with a
/// configuration error instead of accepting it and failing at every request.
#[test]
fn impossible_values_are_refused_at_parse_time() {
    let mut accepted = Vec::new();
    for url in [
        "eureka://127.0.0.1:0/eureka", // port 0: nothing listens there
        "eureka://127.0.0.1:8761,127.0.0.1:0/eureka",
        "eureka://h?timeout=0ms",
        "eureka://h?renew=0s",
        "eureka://h?lease=0s",
        "eureka://h?poll=99ms",
        "eureka://h?tls=2",
        "eureka://h?vip=maybe",
        "eureka://h?user=",
        "eureka://[::1/eureka",
        "eureka://h?poll=10s&poll=20s",
    ] {
        if let Ok(r) = EurekaRegistry::from_url(url) {
            accepted.push(format!("{url} -> {:?}", r.client().servers()));
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
}

/// Holds up: many servers, IPv6, duplicate options and secrets in errors.
#[test]
fn passwords_never_show_in_url_errors() {
    std::env::set_var("ATTACK_EUREKA_PW", "s3cr3t-pw");
    for url in [
        "eureka://h?user=u&password=s3cr3t-pw&poll=1",
        "eureka://h?user=u&password=s3cr3t-pw&password_env=ATTACK_EUREKA_PW",
        "eureka://h?user=u&password=s3cr3t-pw&colour=x",
        "eureka://h:99999?user=u&password=s3cr3t-pw",
        "eureka://h?user=u:x&password=s3cr3t-pw",
        "eureka://h?user=u&passwd=s3cr3t-pw",
    ] {
        let e = EurekaRegistry::from_url(url).unwrap_err();
        let s = format!("{e} {e:?}");
        assert!(!s.contains("s3cr3t-pw"), "{url}: {s}");
    }
    let r = EurekaRegistry::from_url("eureka://h?user=u&password_env=ATTACK_EUREKA_PW").unwrap();
    assert!(!format!("{r:?}").contains("s3cr3t-pw"));
}
