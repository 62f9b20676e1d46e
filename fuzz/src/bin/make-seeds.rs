//! Writes the seed corpora: a few valid (and a few deliberately broken) encoded frames and
//! handshake messages, into `fuzz/corpus/<target>/seed-*`. Deterministic; rerun after a wire
//! change: `cargo run --manifest-path fuzz/Cargo.toml --bin make-seeds`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use cluster_proto::codec::{encode_frame, encode_frame_raw, encode_frame_with, encode_payload, PREFIX_LEN};
use cluster_proto::frame::{Head, RemoteCallError, PROTOCOL_VERSION};
use cluster_proto::handshake::{encode_confirm, encode_hello, encode_reply, Confirm, Hello, RejectReason, Reply, MAGIC};
use cluster_proto::{CorrelationId, ExitReason, MonitorRef};
use soma_fuzz::{Arg, Msg, Role, LIMITS};

fn messages() -> Vec<(&'static str, Msg)> {
    vec![
        ("ping", Msg::Ping),
        ("text", Msg::Text("hello, world".into())),
        (
            "chat",
            Msg::Chat {
                role: Role::User,
                content: "Summarise: ünïcode ✓".into(),
                tokens: vec![1, 300, 70_000],
                temperature: Some(0.7),
                stop: Some(Some("\n\n".into())),
            },
        ),
        (
            "tool",
            Msg::Tool {
                name: "search".into(),
                args: vec![
                    ("q".into(), Arg::Str("rust".into())),
                    ("n".into(), Arg::Int(-3)),
                    ("w".into(), Arg::Float(f64::NAN)),
                    ("tags".into(), Arg::List(vec![Some("a".into()), None])),
                    ("x".into(), Arg::Nothing),
                ],
                timeout_ms: Some(5_000),
            },
        ),
        ("embedding", Msg::Embedding { id: u128::MAX - 1, vector: vec![0.0, -1.5, 1e300], norm: 1.0 }),
        ("blob", Msg::Blob { mime: None, bytes: vec![0, 0xFF, 7] }),
        ("stats", Msg::Stats(BTreeMap::from([("k".into(), Some(vec![i64::MIN, 0])), ("z".into(), None)]))),
        ("tuple", Msg::Tuple(255, -2, 'ß', true, ())),
    ]
}

/// One frame of every kind: (name, head, payload message).
fn heads() -> Vec<(&'static str, Head<'static>, Option<Msg>)> {
    let corr = Some(CorrelationId(0xDEAD_BEEF));
    let crashed = ExitReason::Crashed(Arc::from("panicked at 'boom'"));
    vec![
        ("send", Head::Send { to: 1, from: Some(2), corr }, Some(Msg::Text("hi".into()))),
        ("send_named", Head::SendNamed { name: "logger", from: None, corr: None }, Some(Msg::Ping)),
        ("call", Head::Call { call_id: 300, to: 1, from: Some(70_000), corr }, Some(Msg::Tuple(1, 2, 'c', false, ()))),
        (
            "call_named",
            Head::CallNamed { call_id: 1, name: "llm", from: Some(9), corr: None },
            Some(messages()[2].1.clone()),
        ),
        (
            "reply_ok",
            Head::Reply { call_id: 300, result: Ok(()) },
            Some(Msg::Blob { mime: Some("a/b".into()), bytes: vec![1] }),
        ),
        ("reply_err", Head::Reply { call_id: 301, result: Err(RemoteCallError::BadRequest("bad".into())) }, None),
        ("reply_busy", Head::Reply { call_id: u64::MAX, result: Err(RemoteCallError::Busy) }, None),
        ("link", Head::Link { from: 1, to: 2 }, None),
        ("unlink", Head::Unlink { from: 1, to: 2 }, None),
        ("monitor", Head::Monitor { watcher: 3, target: 4, mref: MonitorRef(5) }, None),
        ("demonitor", Head::Demonitor { watcher: 3, target: 4, mref: MonitorRef(5) }, None),
        ("exit_crashed", Head::Exit { from: 1, to: 2, reason: crashed.clone(), kill: false }, None),
        ("exit_kill", Head::Exit { from: 1, to: 2, reason: ExitReason::Killed, kill: true }, None),
        ("down", Head::Down { watcher: 3, mref: MonitorRef(5), pid: 1, reason: ExitReason::NoConnection }, None),
        ("down_crashed", Head::Down { watcher: 3, mref: MonitorRef(6), pid: 1, reason: crashed }, None),
        ("control", Head::Control { tag: 0x20 }, None),
    ]
}

/// A frame with its length prefix.
fn frame(head: &Head<'_>, msg: Option<&Msg>) -> Vec<u8> {
    let mut wire = Vec::new();
    match (head.has_payload(), msg) {
        (true, Some(m)) => encode_frame_with(&mut wire, head, m, &LIMITS),
        (true, None) => encode_frame_raw(&mut wire, head, b"raw control body", &LIMITS),
        (false, _) => encode_frame(&mut wire, head, &LIMITS),
    }
    .expect("seed frame encodes");
    wire
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let dirs = ["frame_reader", "decode_frame", "handshake", "gossip"].map(|t| {
        let d = root.join(t);
        fs::create_dir_all(&d).expect("create corpus dir");
        // Only our own seeds are replaced; what the fuzzer found stays.
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("seed-") {
                fs::remove_file(e.path()).unwrap();
            }
        }
        d
    });
    let [reader_dir, frame_dir, hs_dir, gossip_dir] = &dirs;

    // decode_frame: one frame of each kind (without its length prefix), plus payload variety.
    let mut stream = Vec::new();
    for (name, head, msg) in heads() {
        let wire = frame(&head, msg.as_ref());
        write(frame_dir, name, &wire[PREFIX_LEN..]);
        stream.extend_from_slice(&wire);
    }
    for (name, msg) in messages() {
        let wire = frame(&Head::Send { to: 7, from: None, corr: None }, Some(&msg));
        write(frame_dir, &format!("send_{name}"), &wire[PREFIX_LEN..]);
    }

    // frame_reader: [table length - 1][chunk sizes][stream]; 0 = largest chunk.
    write(reader_dir, "all_whole", &[&[0u8, 0][..], &stream].concat());
    write(reader_dir, "all_bytewise", &[&[0u8, 1][..], &stream].concat());
    write(reader_dir, "all_mixed", &[&[3u8, 3, 7, 1, 200][..], &stream].concat());
    let one = frame(&Head::Link { from: 1, to: 2 }, None);
    let mut truncated = [&[0u8, 2][..], &one, &one].concat();
    truncated.pop();
    write(reader_dir, "truncated", &truncated);
    write(reader_dir, "oversized", &[&[0u8, 0][..], &one, &u32::MAX.to_le_bytes(), &[0x06]].concat());
    let mut unknown = one.clone();
    unknown[PREFIX_LEN] = 0x0C;
    write(reader_dir, "unknown_tag", &[&[0u8, 0][..], &one, &unknown].concat());

    // handshake: hellos and replies (the checks run as cluster "c1", node "a").
    let hello = Hello { cluster: "c1".into(), node: "b".into(), creation: 1_700_000_000_000, max_frame: 8 << 20 };
    write(hs_dir, "hello", &encode_hello(&hello));
    write(hs_dir, "hello_self", &encode_hello(&Hello { node: "a".into(), ..hello.clone() }));
    write(hs_dir, "hello_small_frames", &encode_hello(&Hello { max_frame: 1024, ..hello.clone() }));
    write(hs_dir, "hello_trailing", &[encode_hello(&hello), b"next".to_vec()].concat());
    write(hs_dir, "welcome", &encode_reply(&Reply::Welcome(hello.clone())));
    write(hs_dir, "alive", &encode_reply(&Reply::Alive));
    write(hs_dir, "confirm_replace", &encode_confirm(&Confirm { replace: true }));
    write(hs_dir, "confirm_keep", &encode_confirm(&Confirm { replace: false }));
    let rejects = [
        RejectReason::Version { ours: PROTOCOL_VERSION, theirs: PROTOCOL_VERSION + 1 },
        RejectReason::WrongCluster { ours: "c1".into(), theirs: "c2".into() },
        RejectReason::BadName("bad name".into()),
        RejectReason::NotInCertificate("b".into()),
        RejectReason::SelfConnection,
        RejectReason::Duplicate,
        RejectReason::Stale { theirs: 1, current: 2 },
        RejectReason::ShuttingDown,
        RejectReason::FrameLimit(10),
    ];
    for (i, r) in rejects.into_iter().enumerate() {
        write(hs_dir, &format!("reject_{i}"), &encode_reply(&Reply::Reject(r)));
    }
    let mut other_version = encode_hello(&hello);
    other_version[4] = 2;
    write(hs_dir, "other_version", &other_version);
    write(hs_dir, "magic_only", &MAGIC);

    // A payload seed that is not a frame, for decode_frame's direct decode_payload of the input.
    let mut p = Vec::new();
    encode_payload(&mut p, &messages()[3].1).unwrap();
    write(frame_dir, "bare_payload_tool", &p);

    // gossip: every message kind chitchat has (digests and deltas empty: their contents are
    // private to chitchat; the fuzzer grows them).
    use chitchat::{ChitchatMessage, Serializable};
    let gossip = [
        ("syn", ChitchatMessage::Syn { cluster_id: "soma".into(), digest: Default::default() }),
        ("synack", ChitchatMessage::SynAck { digest: Default::default(), delta: Default::default() }),
        ("ack", ChitchatMessage::Ack { delta: Default::default() }),
        ("bad_cluster", ChitchatMessage::BadCluster),
    ];
    for (name, m) in gossip {
        let mut b = Vec::new();
        m.serialize(&mut b);
        write(gossip_dir, name, &b);
    }

    for d in &dirs {
        let (n, bytes) = fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
            .fold((0, 0), |(n, b), e| (n + 1, b + e.metadata().unwrap().len()));
        println!("{}: {n} seeds, {bytes} bytes", d.display());
    }
}
