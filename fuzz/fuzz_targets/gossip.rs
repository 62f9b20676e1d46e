//! chitchat's message decoder, as the node runs it on every gossip frame from a peer
//! (`node/src/membership/transport.rs`): `ChitchatMessage::deserialize` on at most
//! `MAX_GOSSIP` bytes.
//!
//! Checked: no panic (the node also wraps it in `catch_unwind`, but a panic here is a bug to
//! report upstream); a decoded message re-encodes and decodes to an equal encoding. Run with
//! `-malloc_limit_mb` to find inputs that inflate (zstd blocks) beyond what we accept.
#![no_main]

use chitchat::{ChitchatMessage, Deserializable, Serializable};
use libfuzzer_sys::fuzz_target;

/// `node/src/membership/transport.rs::MAX_GOSSIP`.
const MAX_GOSSIP: usize = 65_507;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_GOSSIP {
        return;
    }
    let mut rest = data;
    if let Ok(msg) = ChitchatMessage::deserialize(&mut rest) {
        let mut again = Vec::new();
        msg.serialize(&mut again);
        let mut slice = &again[..];
        let back = ChitchatMessage::deserialize(&mut slice).expect("a re-encoded message decodes");
        let mut twice = Vec::new();
        back.serialize(&mut twice);
        assert_eq!(again, twice, "encoding is stable");
    }
});
