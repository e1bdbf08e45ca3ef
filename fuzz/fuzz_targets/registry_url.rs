//! Registry URLs: `sd_core::RegistryUrl` (the shared parser) with every accessor, then
//! `sdkit::connect` with every backend on, which runs each backend's own `from_url` (hosts,
//! options, TLS files, credentials) and builds its client without connecting.
//!
//! Properties: no panic; bounded allocation; the `Debug` of a parsed URL and any error
//! never show the value of a `token`, `password` or `digest` option.
//!
//! `memory://` is parsed but not opened: `MemoryRegistry::named` keeps every name for the
//! life of the process by design, which a fuzzer would turn into a leak.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::RegistryUrl;

const SECRET: &str = "fuzz-s3cr3t-value";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // The secret must only ride along as the option's value: an input that has the text
    // elsewhere (in a host, say) shows it legitimately in an error (found by the fuzzer:
    // `zookeeper://[::0<NUL>...fuzz-s3cr3t-value...]:218*g?...`, a bad host quoted whole).
    if s.contains(SECRET) {
        return;
    }
    // The secret the checks look for rides along as a known option value.
    let with_secret = if s.contains('?') {
        format!("{s}&token={SECRET}")
    } else {
        format!("{s}?token={SECRET}")
    };
    for url in [s, with_secret.as_str()] {
        let Ok(mut u) = RegistryUrl::parse(url) else {
            continue;
        };
        let shown = format!("{u:?}");
        if url == with_secret {
            assert!(!shown.contains(SECRET), "secret in Debug: {shown}");
        }
        let _ = (u.scheme().len(), u.hosts().len(), u.path().len());
        let _ = u.host_ports(80);
        let _ = u.string("dc");
        let _ = u.list("tags");
        let _ = u.bool("tls");
        let _ = u.duration("wait");
        let _ = u.number::<usize>("max_body");
        let _ = u.number::<u16>("port");
        let secret = u.secret("token");
        if let Err(e) = &secret {
            assert!(!e.to_string().contains(SECRET), "secret in error: {e}");
        }
        let _ = u.finish();
        if u.scheme() == "memory" {
            continue;
        }
        if let Err(e) = sdkit::connect(url) {
            assert!(!e.to_string().contains(SECRET), "secret in error: {e}");
        }
    }
});
