//! Hostile peers against a real node over real QUIC + mTLS on loopback (G8, G9): garbage,
//! truncated and oversized frames, floods, undecodable messages, silent or lying handshakes, and
//! certificates the cluster CA did not issue or that expired. Each ends with the node still up
//! and serving a legitimate peer, and with nothing from the hostile peer delivered.

use std::time::{Duration, SystemTime};

use cluster_proto::codec::{decode_payload, encode_frame, encode_frame_with, FrameReader, MAX_CHUNK};
use cluster_proto::frame::{tag, Head, Limits};
use cluster_proto::handshake::{RejectReason, Reply as HsReply};
use soma::dist::close;
use soma::tls::{generate_ca, issue_node_cert, PemPair, Validity};
use soma::{Addr, ExitReason, Node, PidRef};
use soma_tests::cluster::{mesh, TestCa};
use soma_tests::hostile::{client_config, hello, Identity, RawNode, RawPeer};
use soma_tests::*;

const L: Limits = Limits::DEFAULT;

/// A raw peer named `name` (with a valid certificate of `ca`) that has been welcomed by `node`.
async fn welcomed(ca: &TestCa, node: &Node, name: &str) -> RawPeer {
    let pair = ca.issue(name, Validity::days_from_now(1));
    let addr = node.local_addr().expect("distributed");
    let peer = RawPeer::connect(client_config(ca.ca_pem(), Identity::Cert(&pair)), addr, &node.id().name())
        .await
        .expect("connect");
    match peer.hello(&hello("test", name, 1)).await.expect("hello") {
        HsReply::Welcome(h) => assert_eq!(h.node, &*node.id().name()),
        HsReply::Reject(r) => panic!("a valid peer was rejected: {r}"),
        HsReply::Alive => panic!("asked to confirm a first connection"),
    }
    peer
}

fn send_frame(to: u64, cmd: &Cmd) -> Vec<u8> {
    let mut b = Vec::new();
    encode_frame_with(&mut b, &Head::Send { to, from: None, corr: None }, cmd, &L).expect("encodes");
    b
}

/// The node serves a legitimate peer: a call from another node to a process on it succeeds.
async fn still_serves(node: &Node, ca: &TestCa, peer_name: &str) {
    let other = ca.node(peer_name, 1);
    mesh(&[node, &other]);
    let target = probe(node, ProbeArgs::default());
    let r: PidRef<Probe> = other.pid_ref(target.pid());
    assert_eq!(within("a legitimate call", r.call(Req::Echo(7), CALL)).await, Ok(Reply::Num(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_garbage_truncated_oversized_and_unknown_frames_close_the_connection_with_a_reason() {
    let ca = TestCa::new();
    let a = ca.node("a", 1);
    let mut truncated = send_frame(1, &Cmd::Push(1));
    truncated.truncate(truncated.len() - 2);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("unknown tag", vec![1, 0, 0, 0, 0xEE], "protocol error: unknown_tag"),
        ("malformed head", vec![2, 0, 0, 0, tag::LINK, 0xFD], "protocol error: malformed"),
        ("4 GiB length prefix", vec![0xFF, 0xFF, 0xFF, 0xFF, tag::SEND], "protocol error: oversized"),
        ("frame cut short at end of stream", truncated, "protocol error: truncated"),
        ("trailing bytes after a link", vec![4, 0, 0, 0, tag::LINK, 1, 2, 3], "protocol error: malformed"),
    ];
    for (i, (what, bytes, reason)) in cases.into_iter().enumerate() {
        let peer = within("handshake", welcomed(&ca, &a, &format!("evil{i}"))).await;
        peer.write_lane(&bytes, true).await.expect("write");
        let (code, why) = within("the node closing the connection", peer.closed()).await;
        assert_eq!((code, why.as_str()), (Some(u64::from(close::PROTOCOL)), reason), "{what}");
        assert_eq!(a.dist_stats().expect("stats").protocol_errors, i as u64 + 1, "{what}");
    }
    still_serves(&a, &ca, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_a_flood_of_refused_frames_closes_the_connection() {
    let ca = TestCa::new();
    let a = ca.node("a", 1);
    let target = probe(&a, ProbeArgs::default());
    let peer = within("handshake", welcomed(&ca, &a, "flooder")).await;
    // Messages that do not decode into the target's type: each is refused (dropped, counted).
    let mut one = Vec::new();
    let head = Head::Send { to: target.pid().serial(), from: None, corr: None };
    cluster_proto::codec::encode_frame_raw(&mut one, &head, &[200], &L).expect("encodes");
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 5_000).collect();
    let mut lane = peer.write_lane(&[], false).await.expect("lane");
    let mut sent = 0u64;
    // Keep flooding until the node closes the connection (bounded: 200 batches = 1 M frames).
    for _ in 0..200 {
        if lane.write_all(&batch).await.is_err() {
            break;
        }
        sent += 5_000;
    }
    let (code, why) = within("the node closing a flooding connection", peer.closed()).await;
    assert_eq!((code, why.as_str()), (Some(u64::from(close::FLOOD)), "flood"));
    let stats = a.dist_stats().expect("stats");
    assert_eq!(stats.floods, 1);
    assert!(stats.undecodable > u64::from(soma::dist::FLOOD_REFUSALS), "{stats:?}");
    assert!(stats.undecodable <= sent + 5_000, "{stats:?}");
    assert!(a.is_alive(target.pid()));
    still_serves(&a, &ca, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_undecodable_messages_are_dropped_and_counted_and_the_connection_stays() {
    let ca = TestCa::new();
    let a = ca.node("a", 1);
    let (tx, mut events) = Events::new();
    let target = probe(&a, ProbeArgs::with_events(&tx));
    let to = target.pid().serial();
    let peer = within("handshake", welcomed(&ca, &a, "sloppy")).await;
    let mut wire = Vec::new();
    let head = Head::Send { to, from: None, corr: None };
    // Not a `Cmd` at all: a variant index far past the enum's end.
    cluster_proto::codec::encode_frame_raw(&mut wire, &head, &[200], &L).expect("encodes");
    // `Cmd::Panic(String)` whose string claims 60 MiB inside a 14-byte frame.
    let mut huge = vec![1u8, 253];
    huge.extend_from_slice(&(60u64 << 20).to_le_bytes());
    cluster_proto::codec::encode_frame_raw(&mut wire, &head, &huge, &L).expect("encodes");
    // A frame kind with no handler yet (control traffic): ignored and counted.
    encode_frame_with(&mut wire, &Head::Control { tag: 0x7F }, &(), &L).expect("encodes");
    // And then a real message, on the same stream: it arrives.
    wire.extend(send_frame(to, &Cmd::Push(5)));
    peer.write_lane(&wire, false).await.expect("write");
    assert_eq!(events.next().await, Event::Handled { pid: target.pid(), n: 5, from: None, corr: None });
    let stats = a.dist_stats().expect("stats");
    assert_eq!((stats.undecodable, stats.control_ignored, stats.protocol_errors), (2, 1, 0), "{stats:?}");
    assert!(a.is_alive(target.pid()), "an undecodable message does not hurt its target");
    // The connection is still open: a link through it works.
    let mut link = Vec::new();
    encode_frame(&mut link, &Head::Link { from: 1, to }, &L).expect("encodes");
    peer.write_lane(&link, true).await.expect("the connection is still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_a_peer_that_never_says_hello_is_dropped_after_the_connect_timeout() {
    let ca = TestCa::new();
    let mut cfg = ca.config("a");
    cfg.connect_timeout = Duration::from_millis(300);
    let a = ca.node_with("a", 1, cfg);
    let pair = ca.issue("mute", Validity::days_from_now(1));
    let addr = a.local_addr().expect("distributed");
    let peer = RawPeer::connect(client_config(ca.ca_pem(), Identity::Cert(&pair)), addr, "a").await.expect("connect");
    let (code, why) = within("the node dropping a silent peer", peer.closed()).await;
    assert_eq!((code, why.as_str()), (Some(u64::from(close::PROTOCOL)), "no hello in time"));
    assert_eq!(a.dist_stats().expect("stats").handshake_failures, 1);
    // Garbage instead of a hello: closed at once.
    let peer = RawPeer::connect(client_config(ca.ca_pem(), Identity::Cert(&pair)), addr, "a").await.expect("connect");
    let (mut s, _r) = peer.conn.open_bi().await.expect("bi");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let (code, why) = within("the node dropping a bad hello", peer.closed()).await;
    assert_eq!((code, why.as_str()), (Some(u64::from(close::PROTOCOL)), "bad hello"));
    assert_eq!(a.dist_stats().expect("stats").handshake_failures, 2);
    still_serves(&a, &ca, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g9_a_name_not_in_the_certificate_or_another_cluster_is_rejected() {
    let ca = TestCa::new();
    let a = ca.node("a", 1);
    let (tx, mut events) = Events::new();
    let target = probe(&a, ProbeArgs::with_events(&tx));
    let addr = a.local_addr().expect("distributed");
    let pair = ca.issue("mallory", Validity::days_from_now(1));
    let cases = [
        (hello("test", "b", 1), RejectReason::NotInCertificate("b".into())),
        (hello("other", "mallory", 1), RejectReason::WrongCluster { ours: "test".into(), theirs: "other".into() }),
        (hello("test", "a", 1), RejectReason::SelfConnection),
    ];
    for (h, expected) in cases {
        let peer = RawPeer::connect(client_config(ca.ca_pem(), Identity::Cert(&pair)), addr, "a").await.unwrap();
        assert_eq!(within("reply", peer.hello(&h)).await, Ok(HsReply::Reject(expected.clone())));
        // Whatever it writes now goes nowhere.
        let _ = peer.write_lane(&send_frame(target.pid().serial(), &Cmd::Push(666)), true).await;
        let (code, why) = within("close", peer.closed()).await;
        assert_eq!((code, why), (Some(u64::from(close::REJECTED)), expected.to_string()));
    }
    let stats = a.dist_stats().expect("stats");
    assert_eq!((stats.connects, stats.frames_in, stats.handshake_failures), (0, 0, 3), "{stats:?}");
    nothing_but_a_legitimate_message_arrives(&a, &ca, target.pid(), &mut events).await;
}

/// A legitimate node's message is the first (and only) thing the probe ever handles.
async fn nothing_but_a_legitimate_message_arrives(a: &Node, ca: &TestCa, target: soma::Pid, events: &mut Events) {
    let b = ca.node("b", 1);
    mesh(&[a, &b]);
    b.pid_ref::<Probe>(target).send(Cmd::Push(1)).expect("send");
    assert_eq!(events.next().await, Event::Handled { pid: target, n: 1, from: None, corr: None });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g9_no_certificate_another_ca_or_an_expired_one_gets_no_message_through() {
    let ca = TestCa::new();
    let a = ca.node("a", 1);
    let (tx, mut events) = Events::new();
    let target = probe(&a, ProbeArgs::with_events(&tx));
    let addr = a.local_addr().expect("distributed");
    let other_ca = generate_ca("test").expect("CA");
    let foreign: PemPair = issue_node_cert(&other_ca, "b", &[], Validity::days_from_now(1)).expect("cert");
    let now = SystemTime::now();
    let expired = ca.issue(
        "b",
        Validity { not_before: now - Duration::from_secs(1800), not_after: now - Duration::from_secs(600) },
    );
    let cases = [
        ("no certificate", Identity::None),
        ("another CA", Identity::Cert(&foreign)),
        ("expired", Identity::Cert(&expired)),
    ];
    for (what, id) in cases {
        // TLS 1.3: the client may finish its side of the handshake before the node refuses.
        let attempt = async {
            let peer = RawPeer::connect(client_config(ca.ca_pem(), id), addr, "a").await?;
            let reply = peer.hello(&hello("test", "b", 1)).await?;
            peer.write_lane(&send_frame(target.pid().serial(), &Cmd::Push(666)), true).await?;
            Ok::<_, String>(reply)
        };
        match within(what, attempt).await {
            Err(e) => assert!(!e.is_empty(), "{what}"),
            Ok(reply) => panic!("{what}: the node answered the hello: {reply:?}"),
        }
    }
    // The node counts a TLS failure when its side of the handshake ends, which may be just
    // after the client has seen its error.
    eventually("three failed handshakes counted", || a.dist_stats().is_some_and(|s| s.handshake_failures == 3)).await;
    let stats = a.dist_stats().expect("stats");
    assert_eq!((stats.connects, stats.frames_in, stats.handshake_failures), (0, 0, 3), "{stats:?}");
    nothing_but_a_legitimate_message_arrives(&a, &ca, target.pid(), &mut events).await;
}

/// Nodes a and c connected (a dialed), a watcher on a monitoring a process on c, and a raw
/// peer presenting c's own certificate, connected to a.
struct SecondC {
    a: Node,
    c: Node,
    watcher: Addr<Probe>,
    target: soma::Pid,
    events: Events,
    mref: soma::MonitorRef,
    raw: RawPeer,
    _ca: TestCa,
}

async fn connected_pair_and_a_second_c() -> SecondC {
    let ca = TestCa::new();
    let (a, c) = (ca.node("a", 1), ca.node("c", 1));
    mesh(&[&a, &c]);
    let (tx, events) = Events::new();
    let watcher = probe(&a, ProbeArgs::with_events(&tx));
    let target = probe(&c, ProbeArgs::default()).pid();
    let Reply::Ref(mref) = ask(&watcher, Req::Monitor(target)).await else { panic!("monitor") };
    within("ping", a.pid_ref::<Probe>(target).call(Req::Ping, CALL)).await.expect("a → c");
    let pair = ca.issue("c", Validity::days_from_now(1));
    let addr = a.local_addr().expect("distributed");
    let raw = RawPeer::connect(client_config(ca.ca_pem(), Identity::Cert(&pair)), addr, "a").await.expect("connect");
    SecondC { a, c, watcher, target, events, mref, raw, _ca: ca }
}

/// G2/G3: a second `Hello` from the incarnation a node is connected to is a crossed dial or a
/// redial, and only the dialer knows: the node asks (`Alive`). Told "keep", it drops the new
/// connection and the one in use carries on — nothing on it is lost, no monitor fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_a_crossed_dial_the_dialer_abandoned_leaves_the_connection_in_use_alone() {
    let SecondC { a, c, watcher, target, mut events, mref, raw, .. } = connected_pair_and_a_second_c().await;
    let replies = within("handshake", raw.hello_confirming(&hello("test", "c", 1), false)).await;
    assert_eq!(replies, Ok(vec![HsReply::Alive]));
    let (code, why) = within("close", raw.closed()).await;
    assert_eq!((code, why.as_str()), (Some(u64::from(close::SUPERSEDED)), "crossed dial"));
    let s = a.dist_stats().expect("stats");
    assert_eq!((s.connects, s.disconnects, s.handshake_failures), (1, 0, 0), "{s:?}");
    assert_eq!(c.dist_stats().expect("stats").disconnects, 0);
    // The connection in use still works, and the monitor through it still reports the truth.
    within("call", a.pid_ref::<Probe>(target).call(Req::Echo(1), CALL)).await.expect("a → c after the crossed dial");
    c.pid_ref::<Probe>(target).send(Cmd::Stop(ExitReason::Shutdown)).expect("stop");
    assert_eq!(
        events.next().await,
        Event::Down {
            pid: watcher.pid(),
            down: soma::Down { monitor: mref, pid: target, reason: ExitReason::Shutdown }
        }
    );
}

/// G3: told "replace" (the dialer lost the old connection), the node welcomes the new one and
/// the old one ends: its monitors fire `noconnection`, and once the new one goes too, the next
/// use dials the real node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_a_redial_confirmed_by_the_dialer_replaces_the_connection() {
    let SecondC { a, c, watcher, mut events, mref, raw, .. } = connected_pair_and_a_second_c().await;
    let replies = within("handshake", raw.hello_confirming(&hello("test", "c", 1), true)).await.expect("replies");
    assert!(matches!(&replies[..], [HsReply::Alive, HsReply::Welcome(h)] if h.node == "a"), "{replies:?}");
    let Event::Down { pid, down } = events.next().await else { panic!("down") };
    assert_eq!((pid, down.monitor, down.reason), (watcher.pid(), mref, ExitReason::NoConnection));
    eventually("c sees its connection closed", || c.dist_stats().is_some_and(|s| s.disconnects == 1)).await;
    raw.conn.close(0u32.into(), b"bye");
    eventually("a sees the raw connection go", || a.dist_stats().is_some_and(|s| s.disconnects == 2)).await;
    let target = probe(&c, ProbeArgs::default());
    within("call", a.pid_ref::<Probe>(target.pid()).call(Req::Echo(2), CALL)).await.expect("a redials c");
    assert_eq!(a.dist_stats().expect("stats").connects, 3);
}

/// G2/G3: both nodes dial at once and the peer's dial wins (its name is smaller). The losing
/// dial is refused as a duplicate before the winner's `Hello` arrives, yet what was queued on
/// it is not lost: it carries over to the winner's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_a_dial_refused_as_a_duplicate_hands_what_it_queued_to_the_peers_connection() {
    let ca = TestCa::new();
    let c = ca.node("c", 1);
    let b = RawNode::new(ca.ca_pem(), &ca.issue("b", Validity::days_from_now(1)));
    c.add_peer("b", b.addr());
    c.send_named("b", "svc", Cmd::Push(9)).expect("queued while dialing");
    // c dials b; b is dialing c as well, and b < c: b refuses c's connection ...
    let mut theirs = within("c's dial", b.accept_hello()).await.expect("hello");
    assert_eq!(theirs.hello.node, "c");
    theirs.reply(&HsReply::Reject(RejectReason::Duplicate)).await.expect("reply");
    within("c drops its refused dial", theirs.conn.closed()).await;
    // ... and b's own dial reaches c only now; c welcomes it.
    let ours = within("b's dial", b.dial(c.local_addr().expect("distributed"), "c")).await.expect("dial");
    let replies = within("handshake", ours.hello_confirming(&hello("test", "b", 1), false)).await.expect("replies");
    assert!(matches!(&replies[..], [HsReply::Welcome(h)] if h.node == "c"), "{replies:?}");
    // The message queued on c's refused dial comes over b's connection (among the control
    // traffic of a new connection, on whichever lane).
    let (name, msg) = within("the message", async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = ours.conn.clone();
        tokio::spawn(async move {
            while let Ok(mut lane) = conn.accept_uni().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut reader = FrameReader::new(L);
                    while let Ok(Some(chunk)) = lane.read_chunk(MAX_CHUNK, true).await {
                        reader.extend(&chunk.bytes).expect("extend");
                        while let Some(f) = reader.next_frame().expect("a frame") {
                            if let Head::SendNamed { name, .. } = f.head {
                                let _ = tx.send((name.to_string(), decode_payload::<Cmd>(f.payload).expect("a Cmd")));
                            }
                        }
                    }
                });
            }
        });
        rx.recv().await.expect("a send")
    })
    .await;
    assert_eq!((name.as_str(), msg), ("svc", Cmd::Push(9)));
    let s = c.dist_stats().expect("stats");
    assert_eq!((s.connects, s.handshake_failures), (1, 0), "{s:?}");
}
