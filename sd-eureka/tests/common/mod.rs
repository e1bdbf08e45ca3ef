//! Helpers shared by the tests against the real Eureka server.
#![allow(dead_code)]

use std::time::Duration;

use sd_core::{Instance, InstanceSet, Subscription};
use sd_eureka::EurekaRegistry;
use serde_json::json;

/// The longest any test waits for one expected state (a hang guard, not a timing claim).
pub const BOUND: Duration = Duration::from_secs(30);

/// `SD_TEST_EUREKA` (`http://127.0.0.1:18761/eureka`) as an `eureka://` URL with `options`.
pub fn url(addr: &str, options: &str) -> String {
    let rest = addr
        .strip_prefix("http://")
        .expect("SD_TEST_EUREKA is an http:// URL");
    if options.is_empty() {
        format!("eureka://{rest}")
    } else {
        format!("eureka://{rest}?{options}")
    }
}

/// A registry on the test server polling every 200 ms.
pub fn registry(addr: &str) -> EurekaRegistry {
    EurekaRegistry::from_url(&url(addr, "poll=200ms&timeout=2s")).unwrap()
}

/// Waits (bounded by [`BOUND`]) for an instances event satisfying `pred`; returns it.
/// Error events on the way are skipped (sd-testkit's conformance helper).
pub async fn wait_for_set(
    sub: &mut Subscription,
    what: &str,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    sd_testkit::conformance::wait_set(sub, BOUND, what, pred).await
}

/// The instance with `id` in `set`.
pub fn by_id<'a>(set: &'a InstanceSet, id: &str) -> Option<&'a Instance> {
    set.iter().find(|i| i.id() == id)
}

/// The ids in `set`, sorted.
pub fn ids(set: &InstanceSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|i| i.id().to_string()).collect();
    v.sort();
    v
}

/// Registers, straight through the REST API, an instance the server accepts but sdkit
/// cannot use (port 0), with a 90 s lease: the "undecodable entry" of the tests.
pub async fn register_unusable(addr: &str, service: &str, id: &str) {
    let body = json!({"instance": {
        "instanceId": id, "hostName": "127.0.0.1", "app": service.to_uppercase(),
        "ipAddr": "127.0.0.1", "status": "UP",
        "port": {"$": 0, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
    }});
    let resp = reqwest::Client::new()
        .post(format!("{addr}/apps/{}", service.to_uppercase()))
        .json(&body)
        .send()
        .await
        .expect("POST to the Eureka server");
    assert!(resp.status().is_success(), "{}", resp.status());
}
