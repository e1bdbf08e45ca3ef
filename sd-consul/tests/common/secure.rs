//! The consul-secure agent's credentials (`sd_testkit::consul_secure_dir()`) and ACL setup.

use std::path::PathBuf;
use std::time::Duration;

use sd_consul::ClientConfig;
use serde_json::json;

/// A file of the consul-secure credentials directory (panics, naming the fix, if missing).
pub fn file(name: &str) -> PathBuf {
    let p = sd_testkit::consul_secure_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `eval \"$(scripts/registries up)\"`",
        p.display()
    );
    p
}

/// The test-only management token of the consul-secure agent.
pub fn management_token() -> String {
    std::fs::read_to_string(file("token"))
        .expect("read the token file")
        .trim()
        .to_string()
}

/// Trusts the test CA and presents the test client certificate; no token.
pub fn tls_config(addr: &str) -> ClientConfig {
    ClientConfig::new(addr)
        .ca_file(file("ca.pem"))
        .client_cert(file("client.pem"), file("client.key"))
        .wait(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
}

/// A plain reqwest client for the ACL API (test setup only).
pub fn admin_http() -> reqwest::Client {
    let mut pem = std::fs::read(file("client.pem")).unwrap();
    pem.extend(std::fs::read(file("client.key")).unwrap());
    reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(file("ca.pem")).unwrap()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// A token created through the ACL API, holding one policy made for it.
pub struct TestToken {
    /// The secret (what goes in `X-Consul-Token`).
    pub secret: String,
    accessor: String,
    policy: String,
    addr: String,
}

impl TestToken {
    /// Creates a policy with `rules` (HCL) and a token holding only it.
    pub async fn create(addr: &str, rules: &str) -> TestToken {
        let http = admin_http();
        let base = format!("https://{addr}/v1/acl");
        let token = management_token();
        let policy: serde_json::Value = http
            .put(format!("{base}/policy"))
            .header("X-Consul-Token", &token)
            .json(&json!({ "Name": sd_testkit::unique_name("sd-policy"), "Rules": rules }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let policy = policy["ID"].as_str().unwrap().to_string();
        let created: serde_json::Value = http
            .put(format!("{base}/token"))
            .header("X-Consul-Token", &token)
            .json(&json!({ "Description": "sd-consul test token", "Policies": [{ "ID": policy }] }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        TestToken {
            secret: created["SecretID"].as_str().unwrap().to_string(),
            accessor: created["AccessorID"].as_str().unwrap().to_string(),
            policy,
            addr: addr.to_string(),
        }
    }

    /// Deletes the token and its policy.
    pub async fn delete(self) {
        let http = admin_http();
        let token = management_token();
        for path in [
            format!("token/{}", self.accessor),
            format!("policy/{}", self.policy),
        ] {
            http.delete(format!("https://{}/v1/acl/{path}", self.addr))
                .header("X-Consul-Token", &token)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap();
        }
    }
}
