//! `decode_frame` on one frame's bytes (tag, head, payload; no length prefix), and
//! `decode_payload` of a realistic application message type.
//!
//! Checked: no panic (errors are displayed too); a decoded frame survives a re-encode round trip;
//! a frame kind without payload has none; a payload (of a frame that carries one, and the whole
//! input as well) either fails to decode as `Msg`, `String` or a tuple, or round-trips.
#![no_main]

use cluster_proto::codec::decode_frame;
use libfuzzer_sys::fuzz_target;
use soma_fuzz::{check_payload, check_round_trip, Msg, WIDE};

fuzz_target!(|data: &[u8]| {
    match decode_frame(data) {
        Ok(frame) => {
            let _ = format!("{frame:?}");
            check_round_trip(&frame, data.len(), &WIDE);
            if frame.head.has_payload() {
                check_payload::<Msg>(frame.payload);
                check_payload::<String>(frame.payload);
                check_payload::<(u64, Option<Option<f64>>, Vec<u8>)>(frame.payload);
            } else {
                assert!(frame.payload.is_empty());
            }
        }
        Err(e) => {
            let _ = (e.to_string(), e.kind());
        }
    }
    check_payload::<Msg>(data);
});
