//! `RegistryUrl` under arbitrary input: it never panics, and secrets (option values and
//! authority credentials) never show in `Debug`, `Display` or any error.

use proptest::prelude::*;
use sd_core::config::{parse_duration, redact, split_host_port};
use sd_core::RegistryUrl;

fn exercise(s: &str) {
    let _ = redact(s);
    let _ = parse_duration(s);
    let _ = split_host_port(s, 80);
    if let Ok(mut u) = RegistryUrl::parse(s) {
        let _ = format!("{u:?} {u}");
        let _ = u.host_ports(8500);
        for k in ["wait", "token", "passing", "n", "list", "dc"] {
            let _ = u.duration(k);
            let _ = u.bool(k);
            let _ = u.number::<u32>(k);
            let _ = u.string(k);
            let _ = u.list(k);
            let _ = u.secret(k);
        }
        let _ = u.finish();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Held up: no panic on arbitrary text.
    #[test]
    fn parsing_never_panics(s in "\\PC{0,60}") {
        exercise(&s);
    }

    /// Held up: no panic on URL-shaped text with odd characters in every part.
    #[test]
    fn url_shaped_input_never_panics(
        scheme in "[a-zA-Z+.\\-]{0,8}",
        auth in "[a-z0-9\\[\\]:,.@é%]{0,20}",
        path in "[/a-z%é]{0,10}",
        query in "[a-z0-9=&%+#é;._\\-]{0,30}",
    ) {
        exercise(&format!("{scheme}://{auth}{path}?{query}"));
    }

    /// A secret option's value never appears in Debug/Display or in `finish`'s error, with
    /// any other options around it and any case or percent-encoding of its name.
    #[test]
    fn secret_option_values_never_print(
        name in prop::sample::select(vec!["token", "Token", "TOKEN", "tok%65n", "acl_token",
            "password", "PassWord", "tsig_secret", "digest", "x_auth", "apiKey", "credentials"]),
        other in "[a-z]{1,6}",
        value in "[A-Za-z0-9]{12,20}",
    ) {
        let url = format!("consul://h:1?{other}=1&{name}={value}&z{other}=2");
        if let Ok(u) = RegistryUrl::parse(&url) {
            let shown = format!("{u:?} {u} {}", redact(&url));
            prop_assert!(!shown.contains(&value), "{shown}");
            if let Err(e) = u.finish() {
                prop_assert!(!e.to_string().contains(&value), "{e}");
            }
        }
    }

    /// Credentials in the authority (or before the `@` of a URL without a scheme) never
    /// appear in `redact` or in any parse error, whatever the scheme, the password's
    /// characters or what follows the host.
    #[test]
    fn authority_credentials_never_print(
        scheme in prop::sample::select(vec!["consul://", "etcd://", "zk://", "memory://",
            "static://", "bogus://", "", "CONSUL://", "1nv@lid://"]),
        user in "[a-z]{0,6}",
        password in "[A-Za-z0-9:@!$]{0,6}Zq9[A-Za-z0-9:@!$]{0,6}",
        host in "[a-z0-9.]{1,10}(:[0-9]{1,5})?",
        tail in "(/[a-z]{0,5})?(\\?[a-z]{1,5}=[a-z0-9]{0,5})?",
    ) {
        let url = format!("{scheme}{user}:{password}@{host}{tail}");
        let shown = redact(&url);
        prop_assert!(!shown.contains(&password), "{url} -> {shown}");
        if let Err(e) = RegistryUrl::parse(&url) {
            let e = e.to_string();
            prop_assert!(!e.contains(&password), "{url} -> {e}");
        }
    }
}
