//! Unique, DNS-safe names for isolating tests that share one server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest prefix kept (in characters) so the whole name stays a valid DNS label (≤ 63).
const MAX_PREFIX: usize = 24;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Returns a name unique to this call, for service names, key prefixes and DNS labels.
///
/// The result is `<prefix>-<pid>-<counter>-<nanos>` (the numbers in hex): the process id
/// and an in-process counter make it unique among concurrently running tests, the
/// wall-clock nanoseconds make it unique across runs against a long-lived server.
/// It contains only lowercase `[a-z0-9-]`, never starts or ends with `-`, and is at most
/// 63 characters long. The prefix is lowercased, every other character becomes `-`,
/// runs of `-` are collapsed and it is cut to 24 characters; an empty prefix becomes `t`.
///
/// ```
/// let name = sd_testkit::unique_name("Consul Smoke");
/// assert!(name.starts_with("consul-smoke-"));
/// assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
/// ```
pub fn unique_name(prefix: &str) -> String {
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // 48 low bits of the clock: ~3 days before wrapping, plenty against reuse.
    let nanos = (nanos & 0xffff_ffff_ffff) as u64;
    format!(
        "{}-{:x}-{:x}-{:x}",
        sanitize(prefix),
        std::process::id(),
        count,
        nanos
    )
}

/// Lowercase `[a-z0-9-]`, no leading/trailing/double `-`, at most [`MAX_PREFIX`] chars.
fn sanitize(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len().min(MAX_PREFIX));
    for c in prefix.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
        if out.len() >= MAX_PREFIX {
            break;
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push('t');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn is_dns_safe(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && !s.starts_with('-')
            && !s.ends_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    #[test]
    fn names_are_unique() {
        let names: HashSet<String> = (0..10_000).map(|_| unique_name("svc")).collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn names_are_unique_across_threads() {
        let handles: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| (0..500).map(|_| unique_name("t")).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for n in h.join().unwrap() {
                assert!(all.insert(n));
            }
        }
        assert_eq!(all.len(), 4000);
    }

    #[test]
    fn names_are_lowercase_dns_labels() {
        for prefix in [
            "svc",
            "My_Service.Name",
            "",
            "---",
            "UPPER",
            "ünïcödé-service",
            "a very long prefix that goes on and on and on and on and on",
            "trailing-",
            "-leading",
            "9starts-with-digit",
        ] {
            let name = unique_name(prefix);
            assert!(is_dns_safe(&name), "{prefix:?} -> {name:?}");
        }
    }

    #[test]
    fn prefix_is_kept_readable() {
        assert!(unique_name("etcd-watch").starts_with("etcd-watch-"));
        assert!(unique_name("My_Service.Name").starts_with("my-service-name-"));
        assert!(unique_name("").starts_with("t-"));
        assert_eq!(sanitize("a--b__c"), "a-b-c");
        assert_eq!(sanitize("-x-"), "x");
        assert_eq!(sanitize(&"x".repeat(100)).len(), MAX_PREFIX);
    }

    #[test]
    fn name_contains_pid() {
        let name = unique_name("p");
        let pid = format!("-{:x}-", std::process::id());
        assert!(name.contains(&pid), "{name} lacks {pid}");
    }
}
