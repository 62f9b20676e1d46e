use proptest::prelude::*;

use super::*;
use crate::frame::{Frame, Head, Limits, RemoteCallError};

const L: Limits = Limits::DEFAULT;

fn small() -> Limits {
    Limits { max_frame: 1024, ..Limits::DEFAULT }
}

/// Every kind of head, with a payload where the kind has one.
fn samples() -> Vec<(Head<'static>, Option<Vec<u8>>)> {
    let corr = Some(CorrelationId(42));
    let reason = ExitReason::crashed("boom");
    vec![
        (Head::Send { to: 1, from: Some(2), corr }, Some(b"hello".to_vec())),
        (Head::Send { to: u64::MAX, from: None, corr: None }, Some(vec![])),
        (Head::SendNamed { name: "registry", from: None, corr }, Some(vec![1, 2, 3])),
        (Head::Call { call_id: 9, to: 1, from: Some(3), corr }, Some(vec![7; 300])),
        (Head::CallNamed { call_id: 10, name: "n", from: None, corr: None }, Some(vec![0])),
        (Head::Reply { call_id: 9, result: Ok(()) }, Some(vec![5, 5])),
        (Head::Reply { call_id: 9, result: Err(RemoteCallError::BadRequest("x".into())) }, None),
        (Head::Reply { call_id: 11, result: Err(RemoteCallError::NoProc) }, None),
        (Head::Link { from: 1, to: 2 }, None),
        (Head::Unlink { from: 1, to: 2 }, None),
        (Head::Monitor { watcher: 1, target: 2, mref: MonitorRef(3) }, None),
        (Head::Demonitor { watcher: 1, target: 2, mref: MonitorRef(3) }, None),
        (Head::Exit { from: 1, to: 2, reason: reason.clone(), kill: false }, None),
        (Head::Exit { from: 1, to: 2, reason: ExitReason::Killed, kill: true }, None),
        (Head::Down { watcher: 4, mref: MonitorRef(5), pid: 6, reason: ExitReason::NoConnection }, None),
        (Head::Control { tag: 0x20 }, Some(b"gossip".to_vec())),
        (Head::Control { tag: 0x7F }, Some(vec![])),
    ]
}

fn encode_all(heads: &[(Head<'static>, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut wire = Vec::new();
    for (h, p) in heads {
        match p {
            Some(p) => encode_frame_raw(&mut wire, h, p, &L).unwrap(),
            None => encode_frame(&mut wire, h, &L).unwrap(),
        }
    }
    wire
}

fn read_all(reader: &mut FrameReader, out: &mut Vec<(Head<'static>, Vec<u8>)>) -> Result<(), DecodeError> {
    while let Some(Frame { head, payload }) = reader.next_frame()? {
        out.push((own(head), payload.to_vec()));
    }
    Ok(())
}

/// Heads borrow the reader's buffer; tests keep them past the next `extend`.
fn own(h: Head<'_>) -> Head<'static> {
    match h {
        Head::SendNamed { name, from, corr } => Head::SendNamed { name: leak(name), from, corr },
        Head::CallNamed { call_id, name, from, corr } => Head::CallNamed { call_id, name: leak(name), from, corr },
        Head::Send { to, from, corr } => Head::Send { to, from, corr },
        Head::Call { call_id, to, from, corr } => Head::Call { call_id, to, from, corr },
        Head::Reply { call_id, result } => Head::Reply { call_id, result },
        Head::Link { from, to } => Head::Link { from, to },
        Head::Unlink { from, to } => Head::Unlink { from, to },
        Head::Monitor { watcher, target, mref } => Head::Monitor { watcher, target, mref },
        Head::Demonitor { watcher, target, mref } => Head::Demonitor { watcher, target, mref },
        Head::Exit { from, to, reason, kill } => Head::Exit { from, to, reason, kill },
        Head::Down { watcher, mref, pid, reason } => Head::Down { watcher, mref, pid, reason },
        Head::Control { tag } => Head::Control { tag },
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn expected(heads: &[(Head<'static>, Option<Vec<u8>>)]) -> Vec<(Head<'static>, Vec<u8>)> {
    heads.iter().map(|(h, p)| (h.clone(), p.clone().unwrap_or_default())).collect()
}

#[test]
fn every_kind_round_trips_in_one_chunk() {
    let heads = samples();
    let wire = encode_all(&heads);
    let mut r = FrameReader::new(L);
    let mut got = Vec::new();
    for chunk in wire.chunks(MAX_CHUNK) {
        r.extend(chunk).unwrap();
        read_all(&mut r, &mut got).unwrap();
    }
    r.finish().unwrap();
    assert_eq!(got, expected(&heads));
}

#[test]
fn every_kind_round_trips_byte_by_byte() {
    let heads = samples();
    let wire = encode_all(&heads);
    let mut r = FrameReader::new(L);
    let mut got = Vec::new();
    for b in &wire {
        r.extend(std::slice::from_ref(b)).unwrap();
        read_all(&mut r, &mut got).unwrap();
    }
    r.finish().unwrap();
    assert_eq!(got, expected(&heads));
}

#[test]
fn typed_payloads_round_trip_without_a_copy_in_between() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    enum Msg {
        Prompt { text: String, temperature: f32 },
        Tokens(Vec<u32>),
    }
    let m = Msg::Prompt { text: "hi".into(), temperature: 0.5 };
    let mut wire = Vec::new();
    encode_frame_with(&mut wire, &Head::Send { to: 3, from: None, corr: None }, &m, &L).unwrap();
    let f = decode_frame(&wire[PREFIX_LEN..]).unwrap();
    assert_eq!(f.head, Head::Send { to: 3, from: None, corr: None });
    assert_eq!(decode_payload::<Msg>(f.payload).unwrap(), m);
    // The wrong type is an error, not a panic or a silent misread.
    assert!(matches!(decode_payload::<u8>(f.payload), Err(DecodeError::Payload(_))));
    let t = Msg::Tokens(vec![1, 2, 3]);
    let mut buf = Vec::new();
    encode_payload(&mut buf, &t).unwrap();
    assert_eq!(decode_payload::<Msg>(&buf).unwrap(), t);
}

#[test]
fn a_4gib_length_prefix_is_refused_from_its_four_bytes() {
    let mut r = FrameReader::new(L);
    r.extend(&u32::MAX.to_le_bytes()).unwrap();
    assert_eq!(r.next_frame().unwrap_err(), DecodeError::Oversized { len: u32::MAX as u64, max: L.max_frame });
    // Nothing was allocated for it.
    assert!(r.buf.capacity() < 1024);
}

#[test]
fn a_frame_just_over_the_limit_is_refused_both_ways() {
    let lim = small();
    let mut buf = vec![9u8; 3];
    let big = vec![0u8; lim.max_frame as usize];
    let err = encode_frame_raw(&mut buf, &Head::Send { to: 1, from: None, corr: None }, &big, &lim).unwrap_err();
    assert!(matches!(err, EncodeError::TooLarge { .. }), "{err:?}");
    assert_eq!(buf, vec![9u8; 3], "a failed encode leaves the buffer as it was");
    let mut r = FrameReader::new(lim);
    r.extend(&(lim.max_frame + 1).to_le_bytes()).unwrap();
    assert!(matches!(r.next_frame(), Err(DecodeError::Oversized { .. })));
    // Exactly at the limit is fine.
    // tag + three one-byte varints (to, from = None, corr = None).
    let fits = vec![0u8; lim.max_frame as usize - 4];
    let mut wire = Vec::new();
    encode_frame_raw(&mut wire, &Head::Send { to: 1, from: None, corr: None }, &fits, &lim).unwrap();
    assert_eq!(wire.len(), PREFIX_LEN + lim.max_frame as usize);
    let mut r = FrameReader::new(lim);
    r.extend(&wire).unwrap();
    assert_eq!(r.next_frame().unwrap().unwrap().payload.len(), fits.len());
}

#[test]
fn truncated_streams_are_reported_at_the_end() {
    let wire = encode_all(&samples()[..2]);
    let mut r = FrameReader::new(L);
    r.extend(&wire[..wire.len() - 1]).unwrap();
    let mut got = Vec::new();
    read_all(&mut r, &mut got).unwrap();
    assert_eq!(got.len(), 1);
    assert!(matches!(r.finish(), Err(DecodeError::Truncated { .. })));
    let mut r = FrameReader::new(L);
    r.extend(&[1, 0]).unwrap();
    assert_eq!(r.finish(), Err(DecodeError::Truncated { have: 2, need: 4 }));
}

#[test]
fn unknown_tags_and_empty_frames_are_errors() {
    for t in [0x00u8, 0x0C, 0x1F, 0x80, 0xFF] {
        let mut wire = 1u32.to_le_bytes().to_vec();
        wire.push(t);
        let mut r = FrameReader::new(L);
        r.extend(&wire).unwrap();
        assert_eq!(r.next_frame().unwrap_err(), DecodeError::UnknownTag(t));
    }
    let mut r = FrameReader::new(L);
    r.extend(&0u32.to_le_bytes()).unwrap();
    assert!(matches!(r.next_frame(), Err(DecodeError::Malformed { .. })));
}

#[test]
fn trailing_bytes_after_a_payloadless_head_are_malformed() {
    let mut wire = Vec::new();
    encode_frame(&mut wire, &Head::Link { from: 1, to: 2 }, &L).unwrap();
    wire.push(0);
    let len = (wire.len() - PREFIX_LEN) as u32;
    wire[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(decode_frame(&wire[PREFIX_LEN..]), Err(DecodeError::Malformed { kind: "link", .. })));
}

#[test]
fn truncated_heads_are_malformed() {
    let mut wire = Vec::new();
    encode_frame(&mut wire, &Head::Exit { from: 1, to: 2, reason: ExitReason::crashed("x"), kill: false }, &L).unwrap();
    for cut in PREFIX_LEN + 1..wire.len() {
        assert!(matches!(decode_frame(&wire[PREFIX_LEN..cut]), Err(DecodeError::Malformed { .. })), "cut {cut}");
    }
}

#[test]
fn bad_names_are_refused_both_ways() {
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let mut buf = Vec::new();
    let h = Head::SendNamed { name: &long, from: None, corr: None };
    assert_eq!(encode_frame_raw(&mut buf, &h, &[], &L), Err(EncodeError::BadName(long.len())));
    let h = Head::SendNamed { name: "", from: None, corr: None };
    assert_eq!(encode_frame_raw(&mut buf, &h, &[], &L), Err(EncodeError::BadName(0)));
    assert!(buf.is_empty());
    // A hand-made frame with an over-long name.
    let mut body = vec![tag::SEND_NAMED];
    encode_payload(&mut body, &(long.as_str(), None::<u64>, None::<CorrelationId>)).unwrap();
    assert!(matches!(decode_frame(&body), Err(DecodeError::Malformed { kind: "send_named", .. })));
}

#[test]
fn payload_presence_must_match_the_kind() {
    let mut buf = Vec::new();
    assert_eq!(
        encode_frame(&mut buf, &Head::Send { to: 1, from: None, corr: None }, &L),
        Err(EncodeError::PayloadMismatch("send"))
    );
    assert_eq!(
        encode_frame_raw(&mut buf, &Head::Link { from: 1, to: 2 }, &[1], &L),
        Err(EncodeError::PayloadMismatch("link"))
    );
    assert_eq!(encode_frame_raw(&mut buf, &Head::Control { tag: 0x05 }, &[1], &L), Err(EncodeError::NotControl(5)));
    assert!(buf.is_empty());
}

#[test]
fn the_reader_refuses_chunks_beyond_its_bound() {
    let mut r = FrameReader::new(small());
    assert!(matches!(r.extend(&vec![0u8; MAX_CHUNK + 1]), Err(DecodeError::Overflow(_))));
    // A partial frame at the limit plus a full chunk fits; one more byte does not.
    let mut r = FrameReader::new(small());
    let mut partial = 1024u32.to_le_bytes().to_vec();
    partial.resize(PREFIX_LEN + 1023, tag::CONTROL_FIRST);
    r.extend(&partial).unwrap();
    assert!(r.next_frame().unwrap().is_none());
    r.extend(&vec![0u8; MAX_CHUNK - 1023 + 1023]).unwrap_or_else(|e| panic!("{e}"));
}

fn arb_head() -> impl Strategy<Value = (Head<'static>, Option<Vec<u8>>)> {
    let payload = proptest::collection::vec(any::<u8>(), 0..200);
    let corr = proptest::option::of(any::<u64>().prop_map(CorrelationId));
    let reason = prop_oneof![
        Just(ExitReason::Normal),
        Just(ExitReason::Shutdown),
        Just(ExitReason::Killed),
        Just(ExitReason::NoProc),
        Just(ExitReason::NoConnection),
        "[a-z ]{0,40}".prop_map(ExitReason::crashed),
    ];
    prop_oneof![
        (any::<u64>(), proptest::option::of(any::<u64>()), corr.clone(), payload.clone())
            .prop_map(|(to, from, corr, p)| (Head::Send { to, from, corr }, Some(p))),
        ("[a-z]{1,20}", proptest::option::of(any::<u64>()), corr.clone(), payload.clone())
            .prop_map(|(n, from, corr, p)| (Head::SendNamed { name: leak(&n), from, corr }, Some(p))),
        (any::<u64>(), any::<u64>(), proptest::option::of(any::<u64>()), corr, payload.clone())
            .prop_map(|(call_id, to, from, corr, p)| (Head::Call { call_id, to, from, corr }, Some(p))),
        (any::<u64>(), payload.clone()).prop_map(|(call_id, p)| (Head::Reply { call_id, result: Ok(()) }, Some(p))),
        (any::<u64>(), any::<u64>()).prop_map(|(from, to)| (Head::Link { from, to }, None)),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(w, t, m)| (Head::Monitor { watcher: w, target: t, mref: MonitorRef(m) }, None)),
        (any::<u64>(), any::<u64>(), reason.clone(), any::<bool>())
            .prop_map(|(from, to, reason, kill)| (Head::Exit { from, to, reason, kill }, None)),
        (any::<u64>(), any::<u64>(), any::<u64>(), reason)
            .prop_map(|(w, m, pid, reason)| (Head::Down { watcher: w, mref: MonitorRef(m), pid, reason }, None)),
        (0x20u8..=0x7F, payload).prop_map(|(tag, p)| (Head::Control { tag }, Some(p))),
    ]
}

proptest! {
    /// Any sequence of frames, cut into any chunks, comes out as it went in.
    #[test]
    fn frames_survive_any_chunking(heads in proptest::collection::vec(arb_head(), 0..20), cuts in proptest::collection::vec(1usize..64, 1..50)) {
        let wire = encode_all(&heads);
        let mut r = FrameReader::new(L);
        let mut got = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - at);
            r.extend(&wire[at..at + n]).unwrap();
            read_all(&mut r, &mut got).unwrap();
            at += n;
            i += 1;
        }
        r.finish().unwrap();
        prop_assert_eq!(got, expected(&heads));
    }

    /// Arbitrary bytes never panic the reader and never make it hold more than its bound.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096), cut in 1usize..512) {
        let lim = small();
        let mut r = FrameReader::new(lim);
        'outer: for chunk in bytes.chunks(cut) {
            if r.extend(chunk).is_err() { break; }
            loop {
                match r.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
            prop_assert!(r.buffered() <= PREFIX_LEN + lim.max_frame as usize + MAX_CHUNK);
        }
        let _ = r.finish();
    }

    /// Single-bit flips of a valid frame are decoded or refused, never a panic.
    #[test]
    fn bit_flips_never_panic(h in arb_head(), bit in any::<prop::sample::Index>()) {
        let mut wire = encode_all(std::slice::from_ref(&h));
        let i = bit.index(wire.len() * 8);
        wire[i / 8] ^= 1 << (i % 8);
        let mut r = FrameReader::new(L);
        r.extend(&wire).unwrap();
        while let Ok(Some(_)) = r.next_frame() {}
    }
}
