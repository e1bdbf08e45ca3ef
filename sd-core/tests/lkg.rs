//! Last-known-good on disk (issue 19): the file format and its checks, atomic concurrent
//! writes, and the instancer that serves the file when the registry is unreachable at start.

#[path = "common/logs.rs"]
mod logs;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use logs::Logs;
use sd_core::lkg::{CacheKey, DiskCache, DiskCachedInstancer, DiskCachedRegistry, LoadError};
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Event, Freshness, Health, Instance,
    InstanceCache, InstanceSet, Instancer, MemoryRegistry, Registrar, Registration, Registry,
    RegistryUrl, ServiceQuery, StaleReason,
};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "sdkit-lkg-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rich_set() -> InstanceSet {
    InstanceSet::new(vec![
        Instance::builder("10.0.0.1", 8080)
            .id("web-1")
            .tags(["v2", "eu"])
            .meta("zone", "a")
            .meta("quote\"d", "line\nbreak")
            .weight(7)
            .health(Health::Warning)
            .build(),
        Instance::builder("::1", 81).id("web-2").build(),
        Instance::new("10.0.0.2", 1),
    ])
}

fn key(service: &str) -> CacheKey {
    CacheKey::new(
        "consul",
        "127.0.0.1:8500?dc=eu1",
        &ServiceQuery::new(service).tag("v2"),
    )
}

#[test]
fn store_then_load_round_trips_every_field() {
    let dir = TempDir::new("roundtrip");
    let cache = DiskCache::new(&dir.0);
    let k = key("web");
    let path = cache.store(&k, &rich_set()).unwrap();
    assert_eq!(path, cache.path(&k));
    let loaded = cache.load(&k).unwrap();
    assert_eq!(loaded.instances, rich_set());
    for (a, b) in loaded.instances.iter().zip(rich_set().iter()) {
        assert_eq!(
            (a.id(), a.tags(), a.meta(), a.weight(), a.health()),
            (b.id(), b.tags(), b.meta(), b.weight(), b.health())
        );
    }
    let age = std::time::SystemTime::now()
        .duration_since(loaded.written)
        .unwrap();
    assert!(age < Duration::from_secs(60), "{age:?}");
    assert_eq!(cache.load(&key("other")), Err(LoadError::Missing));
    // An empty set is a set: "no instances" is remembered too.
    cache.store(&k, &InstanceSet::empty()).unwrap();
    assert!(cache.load(&k).unwrap().instances.is_empty());
}

/// Damaged, truncated, foreign, other-version and oversized files are rejected, each with
/// its own reason.
#[test]
fn bad_files_are_never_trusted() {
    let dir = TempDir::new("bad");
    let cache = DiskCache::new(&dir.0);
    let k = key("web");
    let path = cache.store(&k, &rich_set()).unwrap();
    let good = std::fs::read(&path).unwrap();
    let write = |bytes: &[u8]| std::fs::write(&path, bytes).unwrap();

    // One flipped byte in the body (a port digit): the checksum catches it.
    let mut bad = good.clone();
    let at = bad.windows(4).position(|w| w == b"8080").unwrap();
    bad[at] = b'9';
    write(&bad);
    assert!(
        matches!(cache.load(&k), Err(LoadError::Corrupt(m)) if m.contains("checksum")),
        "{:?}",
        cache.load(&k)
    );

    // Truncated anywhere: never accepted.
    for cut in [0, 5, 12, 30, good.len() / 2, good.len() - 1] {
        write(&good[..cut]);
        let r = cache.load(&k);
        assert!(
            matches!(r, Err(LoadError::Corrupt(_) | LoadError::Foreign(_))),
            "cut at {cut}: {r:?}"
        );
    }

    // Another format version.
    let mut v2 = b"sdkit-lkg 2".to_vec();
    v2.extend_from_slice(&good[b"sdkit-lkg 1".len()..]);
    write(&v2);
    assert_eq!(cache.load(&k), Err(LoadError::Version("2".into())));

    // Not ours at all.
    write(b"{\"instances\": []}\n");
    assert!(matches!(cache.load(&k), Err(LoadError::Foreign(_))));
    write(&[0xff, 0xfe, 0, 1, 2, b'\n', 3]);
    assert!(matches!(cache.load(&k), Err(LoadError::Foreign(_))));

    // A valid file for another key (a copy, or a hash collision of long names).
    let other = key("api");
    let other_path = cache.store(&other, &rich_set()).unwrap();
    std::fs::copy(&other_path, &path).unwrap();
    assert!(
        matches!(cache.load(&k), Err(LoadError::Foreign(m)) if m.contains("key")),
        "{:?}",
        cache.load(&k)
    );
    // A valid file for the same service on another backend.
    let etcd = CacheKey::new(
        "etcd",
        "127.0.0.1:8500?dc=eu1",
        &ServiceQuery::new("web").tag("v2"),
    );
    let etcd_path = cache.store(&etcd, &rich_set()).unwrap();
    std::fs::copy(&etcd_path, &path).unwrap();
    assert!(
        matches!(cache.load(&k), Err(LoadError::Foreign(m)) if m.contains("backend")),
        "{:?}",
        cache.load(&k)
    );

    // A checksummed body with a bad entry (port out of range) is rejected whole.
    let body = String::from_utf8(good.clone()).unwrap();
    let body = body
        .splitn(3, '\n')
        .nth(2)
        .unwrap()
        .replace("8080", "80800");
    let forged = format!("sdkit-lkg 1\nfnv1a64 {:016x}\n{body}", fnv(body.as_bytes()));
    write(forged.as_bytes());
    assert!(
        matches!(cache.load(&k), Err(LoadError::Corrupt(m)) if m.contains("bad instance")),
        "{:?}",
        cache.load(&k)
    );

    // Too large: read at most max+1 bytes, then refuse; and never write one.
    write(&good);
    let small = DiskCache::new(&dir.0).max_bytes(64);
    assert!(matches!(
        small.load(&k),
        Err(LoadError::TooLarge { max: 64, .. })
    ));
    assert!(small.store(&k, &rich_set()).is_err());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "a refused write leaves the file"
    );
    assert_eq!(cache.load(&k).unwrap().instances, rich_set());
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Writers racing on one file (threads here; processes behave the same: a unique temporary
/// file each, then an atomic rename) leave a complete file from one of them, and no
/// temporary file.
#[test]
fn concurrent_writers_leave_one_complete_file() {
    let dir = TempDir::new("race");
    let k = key("web");
    let sets: Vec<InstanceSet> = (0..8u16)
        .map(|t| {
            (0..50)
                .map(|p| Instance::new(format!("10.0.{t}.1"), 1000 + p))
                .collect()
        })
        .collect();
    let all = &sets;
    std::thread::scope(|s| {
        for set in all {
            let cache = DiskCache::new(&dir.0);
            let k = k.clone();
            s.spawn(move || {
                for _ in 0..25 {
                    cache.store(&k, set).unwrap();
                    // A reader meanwhile sees a complete file of one writer, never a torn one.
                    let loaded = cache.load(&k).unwrap();
                    assert!(all.contains(&loaded.instances));
                }
            });
        }
    });
    let loaded = DiskCache::new(&dir.0).load(&k).unwrap();
    assert!(sets.contains(&loaded.instances));
    let names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [k.file_name()], "no temporary file left");
}

/// Different backends, registries, services, tags or filters never share a file.
#[test]
fn file_names_tell_keys_apart() {
    let q = |s: &str, tags: &[&str], passing: bool| {
        let mut q = ServiceQuery::new(s).passing_only(passing);
        for t in tags {
            q = q.tag(*t);
        }
        q
    };
    let keys = [
        CacheKey::new("consul", "h:1", &q("web", &[], false)),
        CacheKey::new("consul", "h:1", &q("web", &[], true)),
        CacheKey::new("consul", "h:1", &q("web", &[""], false)),
        CacheKey::new("consul", "h:1", &q("web", &["a,b"], false)),
        CacheKey::new("consul", "h:1", &q("web", &["a", "b"], false)),
        CacheKey::new("consul", "h:1+web", &q("", &[], false)),
        CacheKey::new("consul", "h:1", &q("web+", &[], false)),
        CacheKey::new("consul", "h:2", &q("web", &[], false)),
        CacheKey::new("consul", "h:1?dc=eu1", &q("web", &[], false)),
        CacheKey::new("etcd", "h:1", &q("web", &[], false)),
        CacheKey::new("dns+srv", "h:1", &q("web", &[], false)),
        CacheKey::new("dns", "srv+h:1", &q("web", &[], false)),
        CacheKey::new("consul", "h:1", &q(&"x".repeat(300), &[], false)),
        CacheKey::new("consul", "h:1", &q(&"y".repeat(300), &[], false)),
    ];
    let names: std::collections::BTreeSet<String> = keys.iter().map(|k| k.file_name()).collect();
    assert_eq!(names.len(), keys.len(), "{names:#?}");
    for n in &names {
        assert!(
            n.len() <= 200 && !n.contains('/') && !n.starts_with('.'),
            "{n}"
        );
    }
    // Tag order does not matter.
    assert_eq!(
        CacheKey::new("consul", "h:1", &q("web", &["b", "a"], false)),
        CacheKey::new("consul", "h:1", &q("web", &["a", "b"], false))
    );
}

/// No secret ever reaches a file name or a file: the registry identity leaves secret options
/// out, whatever their spelling.
#[tokio::test]
async fn secrets_never_reach_the_cache() {
    std::env::set_var("SD_LKG_TEST_TOKEN", "env-secret-value");
    let url = RegistryUrl::parse(
        "consul://10.9.8.7:8500?Token=tok-secret-1&password=pw-secret-2&tok%65n_x=tok-secret-3&digest=u:dg-secret-4&token_env=SD_LKG_TEST_TOKEN&dc=eu1&wait=5s",
    )
    .unwrap();
    let identity = url.identity();
    assert_eq!(identity, "10.9.8.7:8500?dc=eu1");
    let dir = TempDir::new("secrets");
    let memory = MemoryRegistry::new();
    memory
        .registrar_for(Registration::new("web", Instance::new("10.0.0.1", 80)))
        .register()
        .await
        .unwrap();
    let reg = DiskCachedRegistry::new(Arc::new(memory), DiskCache::new(&dir.0), identity);
    let inst = reg.instancer(&ServiceQuery::new("web")).await.unwrap();
    inst.stop().await;
    let mut files = 0;
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let body = std::fs::read_to_string(entry.path()).unwrap();
        for secret in ["secret", "SD_LKG_TEST_TOKEN", "env-secret-value"] {
            assert!(
                !name.contains(secret) && !body.contains(secret),
                "{name}: {body}"
            );
        }
        files += 1;
    }
    assert_eq!(files, 1);
}

fn factory(i: &Instance) -> Result<String, BoxError> {
    Ok(i.addr().to_string())
}

/// The whole story on an instancer driven by hand: a first run writes the snapshot; a
/// restart while the registry is down serves it, stale with the file's age, and absorbs
/// further failures; the registry's answer makes it fresh and rewrites the file.
#[tokio::test]
async fn restart_during_an_outage_serves_the_disk_set_until_the_registry_answers() {
    let dir = TempDir::new("flow");
    let k = key("web");

    // First process: the registry answers; every good update is written.
    let up = Arc::new(InstanceCache::new());
    up.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    let first = DiskCachedInstancer::start(up.clone(), DiskCache::new(&dir.0), k.clone()).await;
    assert_eq!(first.path(), DiskCache::new(&dir.0).path(&k));
    let loaded = DiskCache::new(&dir.0).load(&k).unwrap();
    assert_eq!(Event::Instances(loaded.instances).addrs(), ["10.0.0.1:80"]);
    up.update(Event::instances(vec![
        Instance::new("10.0.0.1", 80),
        Instance::new("10.0.0.2", 80),
    ]));
    wait_file(&dir.0, &k, 2).await;
    // An error is passed on (live last-known-good is the endpointer's business).
    up.update(Event::Error(Error::unavailable("test", "blip")));
    let sub = first.subscribe();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while sub.current().unwrap().as_error().is_none() {
        assert!(tokio::time::Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.stop().await;
    assert_eq!(
        DiskCache::new(&dir.0).load(&k).unwrap().instances.len(),
        2,
        "errors never erase the file"
    );

    // Second process: the registry is down at start.
    let logs = Logs::default();
    let _guard = logs.install();
    let down = Arc::new(InstanceCache::new());
    down.update(Event::Error(Error::unavailable(
        "test",
        "connection refused",
    )));
    let second = DiskCachedInstancer::start(down.clone(), DiskCache::new(&dir.0), k.clone()).await;
    let ep = DefaultEndpointer::new(&second, factory);
    let snap = ep.endpoints();
    assert_eq!(snap.get().unwrap().len(), 2, "served from disk");
    assert_eq!(snap.freshness().reason(), Some(StaleReason::Disk));
    assert!(snap.age() < Duration::from_secs(60));
    assert!(
        logs.at_least(tracing::Level::WARN).contains("from disk"),
        "{}",
        logs.at_least(tracing::Level::TRACE)
    );

    // More failures: still the disk set, still stale from disk.
    let v = ep.endpoints().version();
    down.update(Event::Error(Error::unavailable("test", "still refused")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let snap = ep.endpoints();
    assert_eq!(
        snap.version(),
        v,
        "a failure while serving the disk set publishes nothing"
    );
    assert_eq!(snap.get().unwrap().len(), 2);

    // The registry answers: fresh, and the file follows.
    down.update(Event::instances(vec![Instance::new("10.0.0.3", 80)]));
    let mut changes = ep.changes();
    tokio::time::timeout(Duration::from_secs(10), async {
        while ep.endpoints().is_stale() {
            changes.changed().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(ep.endpoints().freshness(), &Freshness::Fresh);
    assert_eq!(ep.endpoints().get().unwrap()[0].as_str(), "10.0.0.3:80");
    wait_file(&dir.0, &k, 1).await;
    ep.close().await;
    second.stop().await;
    assert!(down.is_closed(), "stop stops the inner instancer");
}

/// At start with the registry down and a bad file: the error is served (nothing is
/// trusted), and the reason is logged.
#[tokio::test]
async fn a_bad_file_at_start_is_ignored_with_its_reason() {
    let dir = TempDir::new("badstart");
    let k = key("web");
    std::fs::write(
        DiskCache::new(&dir.0).path(&k),
        b"sdkit-lkg 1\nfnv1a64 0000000000000000\n{}",
    )
    .unwrap();
    let logs = Logs::default();
    let _guard = logs.install();
    let down = Arc::new(InstanceCache::new());
    down.update(Event::Error(Error::unavailable(
        "test",
        "connection refused",
    )));
    let inst = DiskCachedInstancer::start(down, DiskCache::new(&dir.0), k).await;
    assert!(inst.state().unwrap().as_error().is_some());
    let warn = logs.at_least(tracing::Level::WARN);
    assert!(
        warn.contains("checksum mismatch") && warn.contains("ignored"),
        "{warn}"
    );
    inst.stop().await;
}

async fn wait_file(dir: &std::path::Path, k: &CacheKey, n: usize) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(l) = DiskCache::new(dir).load(k) {
            if l.instances.len() == n {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "file never had {n} instances"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The file's time is the last time the registry confirmed the set, give or take the
/// refresh period: an unchanged fresh set is written again every `refresh_every`, and the
/// set is written when the instancer enters an error state (confirmed until then). A set
/// read back later is then never reported younger than it is, nor much older.
#[tokio::test]
async fn the_file_time_follows_the_last_confirmation() {
    let dir = TempDir::new("refresh");
    let read = |k: &CacheKey| DiskCache::new(&dir.0).load(k).unwrap().written;
    let until = |what: &str| {
        let what = what.to_string();
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        move || assert!(tokio::time::Instant::now() < end, "{what}")
    };

    // Refreshed while fresh and unchanged.
    let k = key("refresh");
    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    let cache = DiskCache::new(&dir.0).refresh_every(Duration::from_millis(50));
    let inst = DiskCachedInstancer::start(inner.clone(), cache, k.clone()).await;
    let first = read(&k);
    let check = until("the file is never written again");
    while read(&k) <= first {
        check();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    inst.stop().await;

    // Written when the error state starts.
    let k = key("error");
    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    let cache = DiskCache::new(&dir.0).refresh_every(Duration::from_secs(3600));
    let inst = DiskCachedInstancer::start(inner.clone(), cache, k.clone()).await;
    let first = read(&k);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The file keeps milliseconds.
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let before = std::time::UNIX_EPOCH + Duration::from_millis(since_epoch.as_millis() as u64);
    inner.update(Event::Error(Error::unavailable("test", "down")));
    let check = until("the file is not written at the error");
    while read(&k) < before {
        check();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(read(&k) > first);
    assert_eq!(DiskCache::new(&dir.0).load(&k).unwrap().instances.len(), 1);
    inst.stop().await;
}

/// A directory that cannot be written (here: a file stands where it should be) costs the
/// snapshot, logged, never the instancer: the set is published as usual.
#[tokio::test]
async fn an_unwritable_directory_only_costs_the_snapshot() {
    let dir = TempDir::new("unwritable");
    let not_a_dir = dir.0.join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let logs = Logs::default();
    let _guard = logs.install();
    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    let inst = DiskCachedInstancer::start(inner, DiskCache::new(&not_a_dir), key("web")).await;
    assert_eq!(inst.state().unwrap().addrs(), ["10.0.0.1:80"]);
    let warn = logs.at_least(tracing::Level::WARN);
    assert!(warn.contains("snapshot not written"), "{warn}");
    inst.stop().await;
}
