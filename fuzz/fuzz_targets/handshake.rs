//! The handshake decoders, `decode_hello`, `decode_reply` and `decode_confirm`, and the checks of a decoded
//! `Hello` (`check_hello`, `check_welcome`) with a fixed `Local`.
//!
//! Checked: no panic; a decoded message used at most the input and at most one envelope plus
//! `MAX_MESSAGE`, decodes the same from exactly those bytes and is incomplete one byte short;
//! `Ok(None)` only for a real prefix; a decoded message encodes again (no longer) and decodes
//! equal; `check_hello` and `check_welcome` agree on a `Hello`.
#![no_main]

use cluster_proto::handshake::{
    check_hello, check_welcome, decode_confirm, decode_hello, decode_reply, encode_confirm, encode_hello, encode_reply,
    Hello, Reply, ENVELOPE_LEN, MAGIC, MAX_MESSAGE,
};
use libfuzzer_sys::fuzz_target;
use soma_fuzz::LOCAL;

/// Checks an `Ok(None)` answer: the input is a prefix of a message (magic prefix, short
/// envelope, or short body).
fn check_incomplete(data: &[u8]) {
    assert!(data.len() < ENVELOPE_LEN + MAX_MESSAGE, "{} bytes still incomplete", data.len());
    if let Some(env) = data.first_chunk::<ENVELOPE_LEN>() {
        assert_eq!(env[..4], MAGIC);
        let len = u16::from_le_bytes([env[6], env[7]]) as usize;
        assert!(data.len() < ENVELOPE_LEN + len);
    } else {
        let m = data.len().min(MAGIC.len());
        assert_eq!(data[..m], MAGIC[..m]);
    }
}

fn check_used(data: &[u8], used: usize) {
    assert!((ENVELOPE_LEN..=ENVELOPE_LEN + MAX_MESSAGE).contains(&used), "used {used} bytes");
    assert!(used <= data.len(), "used {used} of {} bytes", data.len());
}

fn check_a_hello(h: &Hello) {
    let accepted = check_hello(&LOCAL, h);
    if let Err(r) = &accepted {
        let _ = r.to_string();
    }
    let welcomed = check_welcome(&LOCAL, &h.node, Reply::Welcome(h.clone()));
    assert_eq!(accepted.is_ok(), welcomed.is_ok(), "check_hello {accepted:?} vs check_welcome {welcomed:?}");
    if let Ok(w) = welcomed {
        assert_eq!(&w, h);
    }
}

fuzz_target!(|data: &[u8]| {
    match decode_hello(data) {
        Ok(Some((h, used))) => {
            check_used(data, used);
            assert_eq!(decode_hello(&data[..used]), Ok(Some((h.clone(), used))));
            assert_eq!(decode_hello(&data[..used - 1]), Ok(None));
            let wire = encode_hello(&h);
            assert!(wire.len() <= used, "re-encoding grew a hello from {used} to {} bytes", wire.len());
            assert_eq!(decode_hello(&wire), Ok(Some((h.clone(), wire.len()))));
            check_a_hello(&h);
        }
        Ok(None) => check_incomplete(data),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match decode_reply(data) {
        Ok(Some((r, used))) => {
            check_used(data, used);
            assert_eq!(decode_reply(&data[..used]), Ok(Some((r.clone(), used))));
            assert_eq!(decode_reply(&data[..used - 1]), Ok(None));
            let wire = encode_reply(&r);
            assert!(wire.len() <= used, "re-encoding grew a reply from {used} to {} bytes", wire.len());
            assert_eq!(decode_reply(&wire), Ok(Some((r.clone(), wire.len()))));
            match r {
                Reply::Welcome(h) => check_a_hello(&h),
                Reply::Reject(why) => {
                    let _ = why.to_string();
                }
                Reply::Alive => assert!(check_welcome(&LOCAL, "b", Reply::Alive).is_err()),
            }
        }
        Ok(None) => check_incomplete(data),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match decode_confirm(data) {
        Ok(Some((c, used))) => {
            check_used(data, used);
            assert_eq!(decode_confirm(&data[..used - 1]), Ok(None));
            let wire = encode_confirm(&c);
            assert_eq!(wire.len(), used, "a confirm has one encoding");
            assert_eq!(decode_confirm(&wire), Ok(Some((c, used))));
        }
        Ok(None) => check_incomplete(data),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
