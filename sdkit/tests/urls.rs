//! The facade's URL selection: schemes, features, error messages, secrets.

#[path = "../../sd-core/tests/common/logs.rs"]
mod logs;

use sdkit::{Instance, Registration, ServiceQuery};

fn err(url: &str) -> String {
    sdkit::connect(url).unwrap_err().to_string()
}

#[tokio::test]
async fn memory_urls_share_named_registries() {
    let a = sdkit::connect("memory://facade-test").unwrap();
    let b = sdkit::connect("memory://facade-test").unwrap();
    assert_eq!(a.scheme(), "memory");
    let r = a
        .registrar(Registration::new("svc", Instance::new("127.0.0.1", 1)))
        .await
        .unwrap();
    r.register().await.unwrap();
    let inst = b.instancer(&ServiceQuery::new("svc")).await.unwrap();
    assert_eq!(
        inst.subscribe().next().await.unwrap().addrs(),
        ["127.0.0.1:1"]
    );
    assert_eq!(sdkit::connect("memory://").unwrap().scheme(), "memory");
}

#[tokio::test]
async fn static_urls_list_instances_and_are_read_only() {
    let reg = sdkit::connect("static://10.0.0.2:80,[::1]:81,10.0.0.1:80").unwrap();
    let inst = reg.instancer(&ServiceQuery::new("anything")).await.unwrap();
    assert_eq!(
        inst.subscribe().next().await.unwrap().addrs(),
        ["10.0.0.1:80", "10.0.0.2:80", "[::1]:81"]
    );
    // Filters are not applied to a static list: a tagged, passing-only query sees it all.
    let query = ServiceQuery::new("x").tag("v2").passing_only(true);
    let inst = reg.instancer(&query).await.unwrap();
    assert_eq!(inst.subscribe().next().await.unwrap().addrs().len(), 3);
    let e = reg
        .registrar(Registration::new("s", Instance::new("h", 1)))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("read-only"), "{e}");
}

/// Issue 9 item 7: a `static://` path names the one service the list is for; it used to be
/// dropped silently, serving the list to every service.
#[tokio::test]
async fn static_url_path_names_the_one_service_it_serves() {
    let reg = sdkit::connect("static://10.0.0.1:80,10.0.0.2:80/web").unwrap();
    let inst = reg.instancer(&ServiceQuery::new("web")).await.unwrap();
    assert_eq!(inst.subscribe().next().await.unwrap().addrs().len(), 2);
    let e = reg
        .instancer(&ServiceQuery::new("db"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"web\" only") && e.contains("\"db\""), "{e}");
    let e = err("static://10.0.0.1:80/a/b");
    assert!(e.contains("one service name"), "{e}");
}

#[test]
fn errors_say_what_to_fix() {
    let e = err("nonsense");
    assert!(e.contains("missing scheme"), "{e}");
    let e = err("redis://h:1");
    assert!(e.contains("unknown registry scheme redis://"), "{e}");
    assert!(
        e.contains("memory, static, consul, etcd, zk, eureka, dns+srv"),
        "{e}"
    );
    let e = err("static://");
    assert!(e.contains("needs at least one host:port"), "{e}");
    let e = err("static://h:notaport");
    assert!(e.contains("bad port"), "{e}");
    let e = err("memory://x?colour=blue");
    assert!(e.contains("unknown option colour"), "{e}");
}

#[cfg(not(feature = "consul"))]
#[test]
fn disabled_backend_names_the_feature() {
    let e = err("consul://127.0.0.1:8500");
    assert!(e.contains("`consul` feature"), "{e}");
}

#[cfg(not(feature = "etcd"))]
#[test]
fn disabled_etcd_names_the_feature() {
    for url in ["etcd://127.0.0.1:2379", "etcdv3://127.0.0.1:2379"] {
        let e = err(url);
        assert!(e.contains("`etcd` feature"), "{url}: {e}");
    }
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_urls_select_the_etcd_backend_without_network() {
    // Construction does no I/O: nothing listens on port 1.
    for url in [
        "etcd://127.0.0.1:1,127.0.0.1:2?prefix=/sd",
        "etcdv3://127.0.0.1:1",
    ] {
        let reg = sdkit::connect(url).unwrap();
        assert_eq!(reg.scheme(), "etcd", "{url}");
        assert!(reg.capabilities().registration && reg.capabilities().expiry);
    }
    let e = err("etcd://127.0.0.1:2379?colour=blue");
    assert!(e.contains("unknown option colour"), "{e}");
    let e = err("etcd://127.0.0.1:2379?user=u&password_env=SDKIT_TEST_UNSET_PASSWORD");
    assert!(e.contains("SDKIT_TEST_UNSET_PASSWORD is not set"), "{e}");
    let e = err("etcd://127.0.0.1:2379?user=u&password=hunter2&colour=x");
    assert!(!e.contains("hunter2"), "{e}");
    let reg = sdkit::connect("etcd://127.0.0.1:2379?user=u&password=hunter2").unwrap();
    assert!(!format!("{reg:?}").contains("hunter2"), "{reg:?}");
}

#[cfg(feature = "consul")]
#[test]
fn consul_url_selects_the_consul_backend_without_network() {
    // Construction does no I/O: a URL alone picks the backend.
    let reg = sdkit::connect("consul://127.0.0.1:1?dc=dc1&wait=2s").unwrap();
    assert_eq!(reg.scheme(), "consul");
    let e = err("consul://127.0.0.1:8500?colour=blue");
    assert!(e.contains("unknown option colour"), "{e}");
    let e = err("consul://127.0.0.1:8500?token_env=SDKIT_TEST_UNSET_TOKEN");
    assert!(e.contains("SDKIT_TEST_UNSET_TOKEN is not set"), "{e}");
    let e = err("consul://127.0.0.1:8500?token=hunter2&colour=x");
    assert!(!e.contains("hunter2"), "{e}");
    let reg = sdkit::connect("consul://127.0.0.1:8500?token=hunter2").unwrap();
    assert!(!format!("{reg:?}").contains("hunter2"), "{reg:?}");
}

#[cfg(not(feature = "zk"))]
#[test]
fn disabled_zk_backend_names_the_feature() {
    for url in ["zk://127.0.0.1:2181", "zookeeper://127.0.0.1:2181/services"] {
        let e = err(url);
        assert!(e.contains("`zk` feature"), "{url}: {e}");
    }
}

#[cfg(feature = "zk")]
#[test]
fn zk_url_selects_the_zk_backend_without_network() {
    // Construction does no I/O: a URL alone picks the backend.
    for url in [
        "zk://127.0.0.1:1,127.0.0.1:2/services?session_timeout=3s",
        "zookeeper://127.0.0.1:1",
    ] {
        let reg = sdkit::connect(url).unwrap();
        assert_eq!(reg.scheme(), "zk", "{url}");
        assert!(reg.capabilities().expiry && reg.capabilities().tags);
    }
    let e = err("zk://127.0.0.1:2181?colour=blue");
    assert!(e.contains("unknown option colour"), "{e}");
    let e = err("zk://127.0.0.1:2181?session_timeout=10ms");
    assert!(e.contains("session_timeout"), "{e}");
    let e = err("zk://127.0.0.1:2181?digest=app:hunter2&colour=x");
    assert!(!e.contains("hunter2"), "{e}");
    let reg = sdkit::connect("zk://127.0.0.1:2181?digest=app:hunter2").unwrap();
    assert!(!format!("{reg:?}").contains("hunter2"), "{reg:?}");
}

#[cfg(not(feature = "eureka"))]
#[test]
fn disabled_eureka_names_the_feature() {
    let e = err("eureka://127.0.0.1:8761");
    assert!(e.contains("`eureka` feature"), "{e}");
}

#[cfg(feature = "eureka")]
#[test]
fn eureka_url_selects_the_eureka_backend_without_network() {
    let reg = sdkit::connect("eureka://127.0.0.1:1,127.0.0.1:2/eureka?poll=1s").unwrap();
    assert_eq!(reg.scheme(), "eureka");
    assert!(reg.capabilities().expiry && !reg.capabilities().weight);
    let e = err("eureka://127.0.0.1:8761?colour=blue");
    assert!(e.contains("unknown option colour"), "{e}");
    let e = err("eureka://127.0.0.1:8761?user=u&password=hunter2&colour=x");
    assert!(!e.contains("hunter2"), "{e}");
    let reg = sdkit::connect("eureka://127.0.0.1:8761?user=u&password=hunter2").unwrap();
    assert!(!format!("{reg:?}").contains("hunter2"), "{reg:?}");
}

#[cfg(not(feature = "dnssrv"))]
#[test]
fn disabled_dnssrv_names_the_feature() {
    for url in ["dns+srv://127.0.0.1:53/?zone=x", "dnssrv://127.0.0.1"] {
        let e = err(url);
        assert!(e.contains("`dnssrv` feature"), "{url}: {e}");
    }
}

#[cfg(feature = "dnssrv")]
#[test]
fn dnssrv_urls_select_the_dns_backend_without_network() {
    for url in [
        "dns+srv://127.0.0.1:15353/?zone=sd.test&max_refresh=5s",
        "dnssrv://127.0.0.1:15353?zone=sd.test",
    ] {
        let reg = sdkit::connect(url).unwrap();
        assert_eq!(reg.scheme(), "dns+srv", "{url}");
        assert!(reg.capabilities().registration && reg.capabilities().weight);
        assert!(!reg.capabilities().expiry && !reg.capabilities().tags);
    }
    let e = err("dns+srv://127.0.0.1/?zone=sd.test&colour=blue");
    assert!(e.contains("unknown option colour"), "{e}");
    let e = err("dns+srv://127.0.0.1/?tsig_name=k&tsig_secret=hunter2&colour=x");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let e = err("memory://x?token=hunter2");
    assert!(!e.contains("hunter2"), "{e}");
    assert!(e.contains("token=***"), "{e}");
}

/// Issue 9 item 7: `from_env()` says at info which registry it chose, including the silent
/// fallback to an empty in-process registry when `SD_REGISTRY` is unset.
#[test]
fn from_env_defaults_to_memory_and_reads_the_variable() {
    let logs = logs::Logs::default();
    let _log = logs.install();
    // One test touches the variable, so there is no race between tests.
    std::env::remove_var(sdkit::ENV_VAR);
    assert_eq!(sdkit::from_env().unwrap().scheme(), "memory");
    let logged = logs.at_least(tracing::Level::INFO);
    assert!(logged.contains("SD_REGISTRY is not set"), "{logged}");
    assert!(logged.contains("memory://default"), "{logged}");
    std::env::set_var(sdkit::ENV_VAR, "static://127.0.0.1:9?token=hunter2");
    assert!(sdkit::from_env().is_err(), "static:// has no token option");
    std::env::set_var(sdkit::ENV_VAR, "static://127.0.0.1:9");
    assert_eq!(sdkit::from_env().unwrap().scheme(), "static");
    let logged = logs.at_least(tracing::Level::INFO);
    assert!(logged.contains("static://127.0.0.1:9"), "{logged}");
    assert!(!logged.contains("hunter2"), "{logged}");
    std::env::set_var(sdkit::ENV_VAR, "bogus://x");
    let e = sdkit::from_env().unwrap_err().to_string();
    assert!(e.contains("SD_REGISTRY"), "{e}");
    std::env::remove_var(sdkit::ENV_VAR);
}

/// A port must be 1 to 65535: port 0 is refused at `connect`, saying so.
#[cfg(all(feature = "consul", feature = "etcd", feature = "zk"))]
#[test]
fn port_zero_is_refused() {
    for url in [
        "consul://127.0.0.1:0",
        "etcd://h1:2379,h2:0?prefix=/s",
        "zk://[::1]:0/services",
    ] {
        let e = err(url);
        assert!(e.contains("port 0"), "{url}: {e}");
    }
}

/// Issue 19: `cache=` is a common option, read by `connect` for every scheme; a bad one fails
/// at construction saying what to fix.
#[tokio::test]
async fn cache_option_is_common_to_every_scheme() {
    let dir = std::env::temp_dir().join(format!("sdkit-urls-cache-{}", std::process::id()));
    for url in [
        format!("memory://cache-opt?cache={}", dir.display()),
        format!("static://10.0.0.1:80?cache={}", dir.display()),
    ] {
        let reg = sdkit::connect(&url).unwrap();
        let inst = reg.instancer(&ServiceQuery::new("web")).await.unwrap();
        inst.stop().await;
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err("memory://x?cache=").contains("option cache is empty"));
    assert!(err("memory://x?cache=/a&cache=/b").contains("given twice"));
    // Other options still go to the backend, which still checks them.
    assert!(err("memory://x?cache=/a&colour=blue").contains("unknown option colour"));
    // Every backend takes it through `connect`; a backend's own constructor says where it is read.
    type OwnFromUrl = fn(&str) -> Result<(), sdkit::Error>;
    #[allow(unused_mut)]
    let mut backends: Vec<(&str, OwnFromUrl)> = Vec::new();
    #[cfg(feature = "consul")]
    backends.push(("consul://h?token=t", |u| {
        sdkit::consul::ConsulRegistry::from_url(u).map(drop)
    }));
    #[cfg(feature = "etcd")]
    backends.push(("etcd://h?password=p&user=u", |u| {
        sdkit::etcd::EtcdRegistry::from_url(u).map(drop)
    }));
    #[cfg(feature = "zk")]
    backends.push(("zk://h/services?", |u| {
        sdkit::zk::ZkRegistry::from_url(u).map(drop)
    }));
    #[cfg(feature = "eureka")]
    backends.push(("eureka://h/eureka?", |u| {
        sdkit::eureka::EurekaRegistry::from_url(u).map(drop)
    }));
    #[cfg(feature = "dnssrv")]
    backends.push(("dns+srv://127.0.0.1:53/?zone=example.org", |u| {
        sdkit::dnssrv::DnsRegistry::from_url(u).map(drop)
    }));
    for (base, own) in backends {
        let sep = if base.ends_with('?') { "" } else { "&" };
        let url = format!("{base}{sep}cache=/x");
        let url = url.replace("?&", "?");
        assert!(
            sdkit::connect(&url).is_ok(),
            "{url}: {:?}",
            sdkit::connect(&url).err()
        );
        let e = own(&url).unwrap_err().to_string();
        assert!(e.contains("DiskCachedRegistry"), "{url}: {e}");
        let url = format!("{base}{sep}protect=10s").replace("?&", "?");
        assert!(sdkit::connect(&url).is_ok(), "{url}");
        let e = own(&url).unwrap_err().to_string();
        assert!(e.contains("ProtectedRegistry"), "{url}: {e}");
    }
}

/// Issue 19: `protect=` is a common option too; with `cache=` the protection sits inside.
#[tokio::test]
async fn protect_option_is_common_to_every_scheme() {
    let reg = sdkit::connect("memory://protect-opt?protect=5s").unwrap();
    let r = reg
        .registrar(Registration::new("web", Instance::new("127.0.0.1", 1)))
        .await
        .unwrap();
    r.register().await.unwrap();
    let inst = reg.instancer(&ServiceQuery::new("web")).await.unwrap();
    let mut sub = inst.subscribe();
    assert_eq!(sub.next().await.unwrap().addrs(), ["127.0.0.1:1"]);
    r.deregister().await.unwrap();
    // The empty answer is held back: the previous set, stale.
    let (event, freshness) = sub.next_with_freshness().await.unwrap();
    assert_eq!(event.addrs(), ["127.0.0.1:1"]);
    assert_eq!(freshness.reason(), Some(sdkit::StaleReason::Protected));
    inst.stop().await;
    assert!(err("memory://x?protect=soon").contains("protect=\"soon\""));
    assert!(sdkit::connect("memory://x?protect=false").is_ok());
}
