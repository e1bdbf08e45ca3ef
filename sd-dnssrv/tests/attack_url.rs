//! Attacks on `dns+srv://` URL parsing: values that cannot work must be refused at parse time.
//!
//! Run: `cargo test -p sd-dnssrv --test attack_url`

use sd_dnssrv::DnsRegistry;

#[test]
fn impossible_values_are_refused_at_parse_time() {
    let mut accepted = Vec::new();
    for url in [
        "dns+srv://127.0.0.1:0/?zone=sd.test", // port 0: no nameserver there
        "dns+srv://127.0.0.1/?zone=",
        "dns+srv://127.0.0.1/?zone=a..b",
        "dns+srv://127.0.0.1/?zone=sd.test&proto=sctp",
        "dns+srv://127.0.0.1/?zone=sd.test&min_refresh=5ms",
        "dns+srv://127.0.0.1/?zone=sd.test&min_refresh=2s&max_refresh=1s",
        "dns+srv://127.0.0.1/?zone=sd.test&timeout=0s",
        "dns+srv://127.0.0.1/?zone=sd.test&attempts=0",
        "dns+srv://127.0.0.1/?zone=sd.test&attempts=-1",
        "dns+srv://127.0.0.1/?zone=sd.test&reassert=500ms",
        "dns+srv://127.0.0.1/?zone=sd.test&tsig_name=k",
        "dns+srv://127.0.0.1/?zone=sd.test&tsig_algorithm=hmac-sha256",
        "dns+srv://127.0.0.1/?zone=sd.test&tsig_name=k&tsig_secret=!!!",
        "dns+srv://127.0.0.1/?zone=sd.test&tsig_name=k&tsig_secret=c2VjcmV0&tsig_algorithm=hmac-md5",
        "dns+srv://ns.example.com/?zone=sd.test",
        "dns+srv://127.0.0.1,127.0.0.2/?zone=sd.test",
        "dns+srv://127.0.0.1/zone?zone=sd.test",
        "dns+srv://127.0.0.1/?zone=sd.test&resolve_targets=2",
    ] {
        if let Ok(r) = DnsRegistry::from_url(url) {
            accepted.push(format!("{url} -> {:?}", r.client().config().nameserver));
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
}

#[test]
fn tsig_secrets_never_show_in_url_errors_or_debug() {
    for url in [
        "dns+srv://127.0.0.1/?zone=sd.test&tsig_name=k&tsig_secret=c2VjcmV0c2VjcmV0&colour=1",
        "dns+srv://127.0.0.1/?zone=sd.test&tsig_name=k&tsig_secret=c2VjcmV0c2VjcmV0&tsig_algorithm=md5",
        "dns+srv://127.0.0.1/?zone=sd.test&tsig_name=a..b&tsig_secret=c2VjcmV0c2VjcmV0",
        "dns+srv://127.0.0.1/?zone=sd.test&tsig_secret=c2VjcmV0c2VjcmV0",
    ] {
        let e = DnsRegistry::from_url(url).unwrap_err();
        let s = format!("{e} {e:?}");
        assert!(!s.contains("c2VjcmV0c2VjcmV0"), "{url}: {s}");
    }
    let r = DnsRegistry::from_url(
        "dns+srv://127.0.0.1/?zone=sd.test&tsig_name=k&tsig_secret=c2VjcmV0c2VjcmV0",
    )
    .unwrap();
    let reg = r
        .dns_registrar(sd_core::Registration::new(
            "web",
            sd_core::Instance::new("127.0.0.1", 80),
        ))
        .unwrap();
    let d = format!("{r:?} {reg:?}");
    assert!(!d.contains("c2VjcmV0c2VjcmV0"), "{d}");
}
