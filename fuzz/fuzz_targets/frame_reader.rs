//! `FrameReader` on a stream cut into fuzzed chunks.
//!
//! Input: `[n-1: low 3 bits of byte 0][chunk-size table: n bytes][stream]` (see
//! `soma_fuzz::split_input`). The stream is fed in chunks of the table's sizes, cycling; after
//! each chunk every complete frame is taken out; the first error stops the stream; then
//! `finish()`. Checked: no panic; `extend` never refuses a chunk given by the rules; `buffered()`
//! never exceeds `PREFIX_LEN + max_frame + MAX_CHUNK` and always equals the bytes fed minus the
//! frames taken; every frame and every error is exactly what one-shot `decode_frame` of the same
//! bytes gives (reassembly is invisible); every frame survives a re-encode round trip;
//! `finish()` is `Ok` exactly when nothing is left and otherwise reports the right `Truncated`.
#![no_main]

use cluster_proto::codec::{decode_frame, DecodeError, FrameReader, MAX_CHUNK, PREFIX_LEN};
use libfuzzer_sys::fuzz_target;
use soma_fuzz::{check_round_trip, chunk_len, prefix_at, split_input, LIMITS};

fuzz_target!(|data: &[u8]| {
    let (sizes, stream) = split_input(data);
    let max_frame = LIMITS.max_frame as usize;
    let bound = PREFIX_LEN + max_frame + MAX_CHUNK;
    let mut reader = FrameReader::new(LIMITS);
    let mut fed = 0; // stream bytes given to the reader
    let mut off = 0; // stream offset of the next frame (bytes taken out as frames)
    let mut k = 0;
    let mut failed = false;
    'feed: while fed < stream.len() {
        let n = chunk_len(sizes[k % sizes.len()]).min(stream.len() - fed);
        k += 1;
        if let Err(e) = reader.extend(&stream[fed..fed + n]) {
            panic!("extend refused a {n}-byte chunk with {} bytes buffered: {e}", reader.buffered());
        }
        fed += n;
        assert!(reader.buffered() <= bound, "{} bytes buffered, bound {bound}", reader.buffered());
        assert_eq!(reader.buffered(), fed - off);
        loop {
            let avail = &stream[off..fed];
            match reader.next_frame() {
                Ok(None) => {
                    // Incomplete: no prefix yet, or a prefix within the limit and not all of its frame.
                    if let Some(len) = prefix_at(avail) {
                        assert!(len <= max_frame, "prefix {len} above the limit not refused");
                        assert!(avail.len() < PREFIX_LEN + len, "complete frame of {len} bytes not returned");
                    }
                    break;
                }
                Ok(Some(frame)) => {
                    let len = prefix_at(avail).expect("a frame without a prefix");
                    assert!(len <= max_frame);
                    let raw = &avail[PREFIX_LEN..PREFIX_LEN + len];
                    assert_eq!(decode_frame(raw).as_ref(), Ok(&frame), "reader and decode_frame disagree");
                    check_round_trip(&frame, len, &LIMITS);
                    off += PREFIX_LEN + len;
                }
                Err(e) => {
                    let _ = (e.to_string(), e.kind());
                    let len = prefix_at(avail).expect("an error without a prefix");
                    if len > max_frame {
                        assert_eq!(e, DecodeError::Oversized { len: len as u64, max: LIMITS.max_frame });
                    } else {
                        let raw = avail.get(PREFIX_LEN..PREFIX_LEN + len).expect("an error on an incomplete frame");
                        assert_eq!(decode_frame(raw), Err(e), "reader and decode_frame disagree");
                    }
                    failed = true;
                    break 'feed;
                }
            }
            assert!(reader.buffered() <= bound);
            assert_eq!(reader.buffered(), fed - off);
        }
    }
    if failed {
        return;
    }
    assert_eq!(fed, stream.len());
    let left = reader.buffered();
    assert_eq!(left, stream.len() - off);
    match reader.finish() {
        Ok(()) => assert_eq!(left, 0, "finish() accepted {left} bytes left over"),
        Err(DecodeError::Truncated { have, need }) => {
            assert_eq!(have, left);
            assert!(need > have, "truncated with {have} of {need} bytes");
            assert_eq!(need, prefix_at(&stream[off..]).map_or(PREFIX_LEN, |len| PREFIX_LEN + len));
        }
        Err(e) => panic!("finish() failed with {e:?}, not Truncated"),
    }
});
