//! Attacks on sd-dnssrv with a tiny fake DNS server on 127.0.0.1 (UDP and TCP on one port),
//! so the answers BIND never gives (SERVFAIL, REFUSED, truncation, garbage, CNAME chains,
//! unresolvable targets) are under the test's control.
//!
//! Run: `cargo test -p sd-dnssrv --test attack_fake_dns`

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use sd_core::{Event, Instancer, ServiceQuery};
use sd_dnssrv::DnsRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// What the fake answers to one query.
#[derive(Default)]
struct Reply {
    code: Option<ResponseCode>,
    answers: Vec<Record>,
    /// Negative TTL: an SOA in the authority section.
    soa: Option<u32>,
    truncated: bool,
    /// Send these bytes instead of a message.
    raw: Option<Vec<u8>>,
    /// Answer nothing.
    drop: bool,
}

type Handler = Arc<dyn Fn(&Name, RecordType, bool) -> Reply + Send + Sync>;

fn n(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn srv(owner: &str, ttl: u32, prio: u16, weight: u16, port: u16, target: &str) -> Record {
    Record::from_rdata(
        n(owner),
        ttl,
        RData::SRV(SRV::new(prio, weight, port, n(target))),
    )
}

fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(n(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

fn soa_record(ttl: u32) -> Record {
    Record::from_rdata(
        n("fake.test."),
        ttl,
        RData::SOA(SOA::new(
            n("ns.fake.test."),
            n("root.fake.test."),
            1,
            60,
            60,
            600,
            ttl,
        )),
    )
}

fn answer(query: &Message, reply: Reply) -> Option<Vec<u8>> {
    if reply.drop {
        return None;
    }
    if let Some(raw) = reply.raw {
        return Some(raw);
    }
    let mut m = Message::new();
    m.set_id(query.id());
    m.set_message_type(MessageType::Response);
    m.set_op_code(query.op_code());
    m.set_recursion_desired(query.recursion_desired());
    m.set_recursion_available(true);
    m.set_authoritative(true);
    m.set_truncated(reply.truncated);
    for q in query.queries() {
        m.add_query(q.clone());
    }
    m.set_response_code(reply.code.unwrap_or(ResponseCode::NoError));
    m.add_answers(reply.answers);
    if let Some(ttl) = reply.soa {
        m.add_name_server(soa_record(ttl));
    }
    m.to_vec().ok()
}

/// A DNS server on 127.0.0.1, UDP and TCP on the same port; counts queries.
struct FakeDns {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeDns {
    async fn start(
        handler: impl Fn(&Name, RecordType, bool) -> Reply + Send + Sync + 'static,
    ) -> FakeDns {
        let handler: Handler = Arc::new(handler);
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let (h, q) = (handler.clone(), queries.clone());
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((len, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(msg) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let Some(query) = msg.queries().first() else {
                    continue;
                };
                let reply = h(query.name(), query.query_type(), false);
                if let Some(bytes) = answer(&msg, reply) {
                    let _ = udp.send_to(&bytes, from).await;
                }
            }
        });
        let (h, q) = (handler, queries.clone());
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = tcp.accept().await else {
                    return;
                };
                let (h, q) = (h.clone(), q.clone());
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if sock.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                        if sock.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        let Ok(msg) = Message::from_vec(&buf) else {
                            return;
                        };
                        q.fetch_add(1, Ordering::SeqCst);
                        let Some(query) = msg.queries().first() else {
                            return;
                        };
                        let reply = h(query.name(), query.query_type(), true);
                        if let Some(bytes) = answer(&msg, reply) {
                            let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
                            out.extend_from_slice(&bytes);
                            if sock.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        FakeDns {
            addr,
            queries,
            tasks: vec![udp_task, tcp_task],
        }
    }

    fn registry(&self, extra: &str) -> DnsRegistry {
        DnsRegistry::from_url(&format!(
            "dns+srv://{}/?zone=fake.test&min_refresh=50ms&max_refresh=300ms&timeout=500ms&attempts=1{extra}",
            self.addr
        ))
        .unwrap()
    }
}

const SVC: &str = "_web._tcp.fake.test.";

/// Waits (bounded) for an event satisfying `pred`; returns the last event seen.
async fn wait(
    inst: &dyn Instancer,
    bound: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Option<Event> {
    let mut sub = inst.subscribe();
    let deadline = tokio::time::Instant::now() + bound;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(e)) => {
                let ok = pred(&e);
                last = Some(e);
                if ok {
                    return last;
                }
            }
            Ok(None) | Err(_) => return last,
        }
    }
}

fn addrs(e: &Option<Event>) -> Vec<String> {
    let mut v: Vec<String> = match e {
        Some(Event::Instances(set)) => set.iter().map(|i| i.addr().to_string()).collect(),
        _ => vec![],
    };
    v.sort();
    v
}

fn is_set(e: &Event, want: &[&str]) -> bool {
    match e {
        Event::Instances(set) => {
            let mut got: Vec<String> = set.iter().map(|i| i.addr().to_string()).collect();
            got.sort();
            got == want
        }
        _ => false,
    }
}

/// The classification table of docs/DNS.md, answer by answer: SERVFAIL, REFUSED, garbage and
/// silence are error events (the endpointer keeps the last good set); NXDOMAIN and NODATA are
/// the empty set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_kind_is_classified_as_documented() {
    let mode = Arc::new(AtomicUsize::new(0));
    let m = mode.clone();
    let fake = FakeDns::start(move |name, qt, _| {
        if name.to_ascii() != SVC || qt != RecordType::SRV {
            return Reply {
                code: Some(ResponseCode::NXDomain),
                soa: Some(5),
                ..Default::default()
            };
        }
        match m.load(Ordering::SeqCst) {
            0 => Reply {
                answers: vec![srv(SVC, 5, 0, 1, 8080, "a.fake.test.")],
                ..Default::default()
            },
            1 => Reply {
                code: Some(ResponseCode::ServFail),
                ..Default::default()
            },
            2 => Reply {
                code: Some(ResponseCode::Refused),
                ..Default::default()
            },
            3 => Reply {
                code: Some(ResponseCode::NXDomain),
                soa: Some(5),
                ..Default::default()
            },
            4 => Reply {
                raw: Some(b"\x00\x01garbage that is not DNS".to_vec()),
                ..Default::default()
            },
            5 => Reply {
                soa: Some(5),
                ..Default::default()
            },
            6 => Reply {
                drop: true,
                ..Default::default()
            },
            7 => Reply {
                code: Some(ResponseCode::NotImp),
                ..Default::default()
            },
            _ => Reply {
                code: Some(ResponseCode::FormErr),
                ..Default::default()
            },
        }
    })
    .await;
    let reg = fake.registry("");
    let inst = reg.dns_instancer(&ServiceQuery::new("web")).await.unwrap();
    let good = ["a.fake.test:8080"];
    let bound = Duration::from_secs(15);
    let e = wait(&inst, bound, |e| is_set(e, &good)).await;
    assert!(e.as_ref().is_some_and(|e| is_set(e, &good)), "{e:?}");
    let mut report = Vec::new();
    for (m, want_error) in [
        (1, true),
        (0, false),
        (2, true),
        (0, false),
        (4, true),
        (0, false),
        (6, true),
        (0, false),
        (7, true),
        (0, false),
        (8, true),
        (3, false),
        (0, false),
        (5, false),
    ] {
        mode.store(m, Ordering::SeqCst);
        let e = if want_error {
            wait(&inst, bound, |e| matches!(e, Event::Error(_))).await
        } else if m == 0 {
            wait(&inst, bound, |e| is_set(e, &good)).await
        } else {
            wait(&inst, bound, |e| is_set(e, &[])).await
        };
        report.push(format!("mode {m}: {e:?}"));
        let ok = match &e {
            Some(Event::Error(_)) => want_error,
            Some(ev) if m == 0 => is_set(ev, &good),
            Some(ev) => !want_error && is_set(ev, &[]),
            None => false,
        };
        assert!(ok, "mode {m} (error expected: {want_error}): {report:#?}");
    }
    inst.stop().await;
}

/// "A truncated UDP answer is retried over TCP": UDP says TC with no records, TCP has 600
/// records (about 20 KiB, more than any UDP answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_answer_is_read_over_tcp_even_when_large() {
    let fake = FakeDns::start(move |name, qt, tcp| {
        if name.to_ascii() != SVC || qt != RecordType::SRV {
            return Reply {
                code: Some(ResponseCode::NXDomain),
                soa: Some(5),
                ..Default::default()
            };
        }
        if !tcp {
            return Reply {
                truncated: true,
                ..Default::default()
            };
        }
        Reply {
            answers: (0..600)
                .map(|i| {
                    srv(
                        SVC,
                        5,
                        0,
                        1,
                        8000 + i as u16,
                        &format!("host-{i}.fake.test."),
                    )
                })
                .collect(),
            ..Default::default()
        }
    })
    .await;
    let reg = fake.registry("");
    let inst = reg.dns_instancer(&ServiceQuery::new("web")).await.unwrap();
    let e = wait(
        &inst,
        Duration::from_secs(15),
        |e| matches!(e, Event::Instances(s) if s.len() == 600),
    )
    .await;
    inst.stop().await;
    assert_eq!(addrs(&e).len(), 600, "{:?}", e.map(|e| e.addrs().len()));
}

/// A CNAME from the service name to another SRV owner is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_chain_to_the_srv_records_is_followed() {
    let fake = FakeDns::start(move |name, qt, _| {
        let name = name.to_ascii();
        if qt == RecordType::SRV && name == "_real._tcp.fake.test." {
            return Reply {
                answers: vec![srv("_real._tcp.fake.test.", 5, 0, 1, 8080, "a.fake.test.")],
                ..Default::default()
            };
        }
        if qt == RecordType::SRV && name == "_mid._tcp.fake.test." {
            return Reply {
                answers: vec![
                    Record::from_rdata(
                        n("_mid._tcp.fake.test."),
                        5,
                        RData::CNAME(CNAME(n("_real._tcp.fake.test."))),
                    ),
                    srv("_real._tcp.fake.test.", 5, 0, 1, 8080, "a.fake.test."),
                ],
                ..Default::default()
            };
        }
        if name == SVC && qt == RecordType::SRV {
            return Reply {
                answers: vec![
                    Record::from_rdata(n(SVC), 5, RData::CNAME(CNAME(n("_mid._tcp.fake.test.")))),
                    Record::from_rdata(
                        n("_mid._tcp.fake.test."),
                        5,
                        RData::CNAME(CNAME(n("_real._tcp.fake.test."))),
                    ),
                    srv("_real._tcp.fake.test.", 5, 0, 1, 8080, "a.fake.test."),
                ],
                ..Default::default()
            };
        }
        Reply {
            code: Some(ResponseCode::NXDomain),
            soa: Some(5),
            ..Default::default()
        }
    })
    .await;
    let inst = fake
        .registry("")
        .dns_instancer(&ServiceQuery::new("web"))
        .await
        .unwrap();
    let e = wait(&inst, Duration::from_secs(15), |e| {
        is_set(e, &["a.fake.test:8080"])
    })
    .await;
    inst.stop().await;
    assert_eq!(addrs(&e), ["a.fake.test:8080"], "{e:?}");
}

/// A CNAME loop at the service name (each answer holds one alias, so every hop is a new
/// query) is an error event after at most `MAX_CNAME_HOPS` aliases, not a hang and not the
/// empty set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_loop_is_an_error_event() {
    let fake = FakeDns::start(move |name, qt, _| {
        let name = name.to_ascii();
        let alias = |from: &str, to: &str| Reply {
            answers: vec![Record::from_rdata(n(from), 5, RData::CNAME(CNAME(n(to))))],
            ..Default::default()
        };
        match (name.as_str(), qt) {
            (SVC, RecordType::SRV) => alias(SVC, "_loop._tcp.fake.test."),
            ("_loop._tcp.fake.test.", RecordType::SRV) => alias("_loop._tcp.fake.test.", SVC),
            _ => Reply {
                code: Some(ResponseCode::NXDomain),
                soa: Some(5),
                ..Default::default()
            },
        }
    })
    .await;
    let reg = fake.registry("");
    let inst = reg.dns_instancer(&ServiceQuery::new("web")).await.unwrap();
    let e = wait(&inst, Duration::from_secs(15), |e| {
        matches!(e, Event::Error(_))
    })
    .await;
    inst.stop().await;
    match e {
        Some(Event::Error(err)) => assert!(err.to_string().contains("CNAME"), "{err}"),
        other => panic!("a CNAME loop gave {other:?}"),
    }
}

/// docs/DNS.md: "Bad records are skipped alone ...: port 0, the target `.`, and with
/// `resolve_targets` a target that does not exist or has no address ... A bad record never
/// hides a good group: the lowest priority is chosen among usable records."
///
/// With `resolve_targets`, the priority group used to be chosen *before* the targets were
/// resolved
/// (instancer.rs `select()` then the resolution loop), so a lowest-priority group whose targets
/// do not resolve hides the good higher-priority group: the set published is empty although
/// a usable backup exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_lowest_priority_group_does_not_hide_the_good_backup_group() {
    let fake = FakeDns::start(move |name, qt, _| {
        let name = name.to_ascii();
        match (name.as_str(), qt) {
            (SVC, RecordType::SRV) => Reply {
                answers: vec![
                    srv(SVC, 5, 0, 1, 8000, "gone.fake.test."),
                    srv(SVC, 5, 10, 1, 9000, "good.fake.test."),
                ],
                ..Default::default()
            },
            ("good.fake.test.", RecordType::A) => Reply {
                answers: vec![a("good.fake.test.", 5, [127, 0, 0, 9])],
                ..Default::default()
            },
            ("good.fake.test.", _) => Reply {
                soa: Some(5),
                ..Default::default()
            },
            _ => Reply {
                code: Some(ResponseCode::NXDomain),
                soa: Some(5),
                ..Default::default()
            },
        }
    })
    .await;
    let inst = fake
        .registry("&resolve_targets=1")
        .dns_instancer(&ServiceQuery::new("web"))
        .await
        .unwrap();
    let e = wait(&inst, Duration::from_secs(10), |e| {
        is_set(e, &["127.0.0.9:9000"])
    })
    .await;
    inst.stop().await;
    assert_eq!(
        addrs(&e),
        ["127.0.0.9:9000"],
        "the backup group (priority 10, resolvable) was hidden by the unresolvable priority-0 group; last event: {e:?}"
    );
}

/// TTL pacing: records with TTL 1 s are re-read about every second (min 50 ms, max 10 s), not
/// at min_refresh and not at max_refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_ttl_is_re_read_about_every_second() {
    let fake = FakeDns::start(move |name, qt, _| {
        if name.to_ascii() == SVC && qt == RecordType::SRV {
            return Reply {
                answers: vec![srv(SVC, 1, 0, 1, 8080, "a.fake.test.")],
                ..Default::default()
            };
        }
        Reply {
            code: Some(ResponseCode::NXDomain),
            soa: Some(5),
            ..Default::default()
        }
    })
    .await;
    let reg = DnsRegistry::from_url(&format!(
        "dns+srv://{}/?zone=fake.test&min_refresh=50ms&max_refresh=10s&timeout=2s",
        fake.addr
    ))
    .unwrap();
    let inst = reg.dns_instancer(&ServiceQuery::new("web")).await.unwrap();
    let before = reg.client().srv_queries();
    let t0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rounds = reg.client().srv_queries() - before;
    let secs = t0.elapsed().as_secs_f64();
    inst.stop().await;
    assert!(
        (rounds as f64) >= secs * 0.6 && (rounds as f64) <= secs * 1.3,
        "{rounds} rounds in {secs:.1}s for TTL 1s"
    );
}

/// stop() cancels a lookup that is hanging (the server went silent) instead of waiting for
/// its timeout × attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cancels_a_hanging_lookup() {
    let silent = Arc::new(AtomicUsize::new(0));
    let s = silent.clone();
    let fake = FakeDns::start(move |name, qt, _| {
        if s.load(Ordering::SeqCst) == 1 {
            return Reply {
                drop: true,
                ..Default::default()
            };
        }
        if name.to_ascii() == SVC && qt == RecordType::SRV {
            return Reply {
                answers: vec![srv(SVC, 0, 0, 1, 8080, "a.fake.test.")],
                ..Default::default()
            };
        }
        Reply {
            code: Some(ResponseCode::NXDomain),
            soa: Some(5),
            ..Default::default()
        }
    })
    .await;
    let reg = DnsRegistry::from_url(&format!(
        "dns+srv://{}/?zone=fake.test&min_refresh=50ms&max_refresh=100ms&timeout=20s&attempts=3",
        fake.addr
    ))
    .unwrap();
    let inst = reg.dns_instancer(&ServiceQuery::new("web")).await.unwrap();
    silent.store(1, Ordering::SeqCst);
    let q0 = fake.queries.load(Ordering::SeqCst);
    // Wait until a round is in flight against the silent server.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.queries.load(Ordering::SeqCst) == q0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), inst.stop())
        .await
        .expect("stop() returned while a lookup hung");
}
