//! chitchat's message decoder, as the node runs it on every gossip frame from a peer
//! (`node/src/membership/transport.rs`): `ChitchatMessage::deserialize` on at most
//! `MAX_GOSSIP` bytes.
//!
//! Checked: no panic (the node also wraps it in `catch_unwind`, but a panic here is a bug to
//! report upstream). Run with `-malloc_limit_mb` to find inputs that inflate (zstd blocks)
//! beyond what we accept.
//!
//! Not checked: re-encoding. A `Delta` decoded from a non-canonical encoding keeps the input's
//! length, and chitchat's encoder asserts it re-encodes to that length, so re-encoding such a
//! decoded message panics inside chitchat (found by this target: `53b0 0001 0000 0100 0000
//! 0000`). soma never re-encodes a received gossip message (chitchat applies deltas and builds
//! its own), so that assert is not reachable from the network.
#![no_main]

use chitchat::{ChitchatMessage, Deserializable};
use libfuzzer_sys::fuzz_target;

/// `node/src/membership/transport.rs::MAX_GOSSIP`.
const MAX_GOSSIP: usize = 65_507;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_GOSSIP {
        return;
    }
    let mut rest = data;
    let _ = ChitchatMessage::deserialize(&mut rest);
});
