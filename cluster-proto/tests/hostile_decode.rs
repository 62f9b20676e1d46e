//! Hostile frames against the decoder's memory and stack (G8), with a counting allocator: a
//! frame may only make the decoder allocate about as much as the frame's own size, whatever
//! lengths it claims, and no nesting overflows the stack.
//!
//! One test function on purpose: the allocator's high-water mark is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cluster_proto::codec::{decode_frame, decode_payload, encode_payload, DecodeError, MAX_DEPTH};
use cluster_proto::frame::tag;
use cluster_proto::handshake::decode_hello;
use serde::{Deserialize, Serialize};

/// Largest single allocation since the last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// bincode's varint for a u64 above 2^32: marker 253 then 8 little-endian bytes.
fn varint_u64(n: u64) -> Vec<u8> {
    let mut v = vec![253];
    v.extend_from_slice(&n.to_le_bytes());
    v
}

/// Runs `f` and returns the largest single allocation it made.
fn largest_alloc_in(f: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    f();
    LARGEST.load(Ordering::Relaxed)
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Tree {
    Leaf,
    Node(Box<Tree>),
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Msg {
    text: String,
    tags: Vec<String>,
}

const SIXTY_MIB: u64 = 60 << 20;
/// Generous bound on what decoding a frame of a few dozen bytes may allocate.
const SMALL: usize = 64 << 10;

#[test]
fn hostile_lengths_and_nesting_are_refused_without_big_allocations_or_deep_recursion() {
    // A reply frame whose error string claims 60 MiB: call_id 1, Err (1), BadRequest (3), len.
    let mut reply = vec![tag::REPLY, 1, 1, 3];
    reply.extend(varint_u64(SIXTY_MIB));
    reply.extend_from_slice(b"short");
    let big = largest_alloc_in(|| {
        assert!(matches!(decode_frame(&reply), Err(DecodeError::Malformed { kind: "reply", .. })));
    });
    assert!(big < SMALL, "a 20-byte reply frame allocated {big} bytes");

    // An exit frame whose crash text claims 60 MiB: from 1, to 2, Crashed (3), len.
    let mut exit = vec![tag::EXIT, 1, 2, 3];
    exit.extend(varint_u64(SIXTY_MIB));
    exit.push(0);
    let big = largest_alloc_in(|| {
        assert!(matches!(decode_frame(&exit), Err(DecodeError::Malformed { kind: "exit", .. })));
    });
    assert!(big < SMALL, "a small exit frame allocated {big} bytes");

    // A payload of a user type whose string claims 60 MiB.
    let mut payload = varint_u64(SIXTY_MIB);
    payload.extend_from_slice(b"abc");
    let big = largest_alloc_in(|| assert!(decode_payload::<Msg>(&payload).is_err()));
    assert!(big < SMALL, "a small payload allocated {big} bytes");

    // A vector claiming 2^40 strings: serde preallocates cautiously, then the input runs out.
    let mut vec_claim = vec![0]; // empty text
    vec_claim.extend(varint_u64(1 << 40));
    let big = largest_alloc_in(|| assert!(decode_payload::<Msg>(&vec_claim).is_err()));
    assert!(big <= (1 << 20) + SMALL, "a vector claim allocated {big} bytes");

    // A handshake whose cluster name claims 60 MiB (the envelope itself is well-formed).
    let mut body = varint_u64(SIXTY_MIB);
    body.extend_from_slice(b"x");
    let mut hello = b"SOMA".to_vec();
    hello.extend_from_slice(&cluster_proto::frame::PROTOCOL_VERSION.to_le_bytes());
    hello.extend_from_slice(&(body.len() as u16).to_le_bytes());
    hello.extend_from_slice(&body);
    let big = largest_alloc_in(|| assert!(decode_hello(&hello).is_err()));
    assert!(big < SMALL, "a small hello allocated {big} bytes");

    // A recursive type fed a chain of a million levels: refused, no stack overflow.
    let mut chain = vec![1u8; 1_000_000];
    chain.push(0);
    match decode_payload::<Tree>(&chain) {
        Err(DecodeError::Payload(e)) => assert!(e.contains("nested deeper"), "{e}"),
        other => panic!("expected a depth error, got {other:?}"),
    }

    // Legitimate values still decode: nesting just inside the limit, and real strings.
    let mut t = Tree::Leaf;
    for _ in 0..MAX_DEPTH - 1 {
        t = Tree::Node(Box::new(t));
    }
    let mut wire = Vec::new();
    encode_payload(&mut wire, &t).expect("encodes");
    assert_eq!(decode_payload::<Tree>(&wire).expect("decodes at the limit"), t);
    let deeper = Tree::Node(Box::new(t));
    wire.clear();
    encode_payload(&mut wire, &deeper).expect("encodes");
    assert!(decode_payload::<Tree>(&wire).is_err(), "one level past the limit is refused");

    let m = Msg { text: "é".repeat(100_000), tags: vec!["a".into(), String::new(), "ccc".into()] };
    wire.clear();
    encode_payload(&mut wire, &m).expect("encodes");
    assert_eq!(decode_payload::<Msg>(&wire).expect("decodes"), m);
}
