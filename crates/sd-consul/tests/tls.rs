//! TLS options (`ca`, `cert`, `key`, `tls`) against a TLS endpoint on 127.0.0.1.
//!
//! The test agent of `scripts/registries` speaks plain HTTP, so this is the one place where
//! a stand-in answers over TLS (rustls, requiring a client certificate, answering an empty
//! health list). Certificates are made per run with the `openssl` command line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sd_consul::ConsulRegistry;
use sd_core::{Event, Instancer, ServiceQuery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in a fresh directory.
fn make_certs() -> Option<PathBuf> {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipping TLS test: the openssl command is not installed");
        return None;
    }
    let dir = std::env::temp_dir().join(sd_testkit::unique_name("sd-consul-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let key = |name: &str| {
        openssl(
            &dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        )
    };
    key("ca.key");
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=sd-consul test CA",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca.pem",
        ],
    );
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        key(&format!("{name}.key"));
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
    Some(dir)
}

#[derive(Default)]
struct Seen {
    /// Requests answered, with the number of client certificates presented.
    answered: Vec<usize>,
    /// Failed handshakes, with rustls's reason.
    failed: Vec<String>,
}

/// A TLS server requiring a client certificate signed by the CA; answers `[]` with index 1.
async fn tls_agent(dir: &Path) -> (String, Arc<Mutex<Seen>>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let s = s.clone();
            tokio::spawn(async move {
                let mut conn = match acceptor.accept(tcp).await {
                    Ok(c) => c,
                    Err(e) => {
                        s.lock().unwrap().failed.push(e.to_string());
                        return;
                    }
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            s.lock()
                                .unwrap()
                                .failed
                                .push("closed before a request".into());
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let client_certs = conn.get_ref().1.peer_certificates().map_or(0, |c| c.len());
                s.lock().unwrap().answered.push(client_certs);
                let resp = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]";
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, seen)
}

async fn first_state(url: &str) -> Event {
    let reg = ConsulRegistry::from_url(url).unwrap();
    let instancer = reg.consul_instancer(&ServiceQuery::new("web")).await;
    let state = instancer.state().expect("the first query ran");
    instancer.stop().await;
    state
}

#[tokio::test]
async fn custom_ca_and_client_certificate() {
    let Some(dir) = make_certs() else { return };
    let (addr, seen) = tls_agent(&dir).await;
    let d = dir.display();

    // CA + client certificate: trusted both ways.
    let url =
        format!("consul://{addr}?ca={d}/ca.pem&cert={d}/client.pem&key={d}/client.key&timeout=5s");
    assert_eq!(
        first_state(&url).await,
        Event::Instances(Default::default())
    );
    assert_eq!(
        seen.lock().unwrap().answered,
        [1],
        "one request, with the client certificate"
    );

    // Without the CA, the server's certificate is not trusted.
    let url = format!("consul://{addr}?tls=true&cert={d}/client.pem&key={d}/client.key&timeout=5s");
    match first_state(&url).await {
        Event::Error(e) => {
            eprintln!("untrusted server: {e}");
            assert!(e.to_string().to_lowercase().contains("certificate"), "{e}")
        }
        other => panic!("expected an untrusted-certificate error, got {other:?}"),
    }

    // Without a client certificate, the server refuses the handshake.
    let url = format!("consul://{addr}?ca={d}/ca.pem&timeout=5s");
    match first_state(&url).await {
        Event::Error(e) => {
            eprintln!("no client certificate: {e}");
            assert!(e.is_transient(), "{e}");
            assert!(e.to_string().to_lowercase().contains("certificate"), "{e}")
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.answered, [1], "nothing answered without mutual TLS");
    assert!(
        seen.failed
            .iter()
            .any(|f| f.to_lowercase().contains("certificate")),
        "{:?}",
        seen.failed
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
