//! ferry's fuzz checks, one function per target, shared by the libFuzzer binaries
//! (`fuzz_targets/`, built instrumented by `scripts/fuzz.sh`) and by the corpus replay test
//! (`tests/corpus.rs`, part of `cargo test --workspace`), so that every seed and every finding
//! kept in `corpus/` and `regressions/` is checked on every run of the suite.
//!
//! Each check does more than "does not panic": a decoder that accepts input must hand back a
//! value that re-encodes to an equal value, and one that refuses it must do so with its typed
//! error. Any broken expectation panics, which libFuzzer reports as a crash with its input.

use ferry_backend_tcp::wire::{
    check_hello, decode_error, error_frame, hello_frame, request_frame, ErrorCode, FrameType,
    Header, Request, WireError, HEADER_LEN, MAX_CONTROL_BODY, MAX_RANGES,
};
use ferry_core::{
    EndpointBlob, Error, Notification, RdmaMetadata, MAX_DESCRIPTORS, MAX_METADATA_JSON,
};

/// `RdmaMetadata::from_json` and `EndpointBlob::parse` on arbitrary text (SPEC §6: bounded,
/// panic-free, typed errors):
/// - accepted metadata has at most [`MAX_DESCRIPTORS`] descriptors, none null or wrapping, a
///   decodable endpoint blob, and survives `to_json` → `from_json` unchanged;
/// - refused metadata is `Error::InvalidMetadata`;
/// - an accepted endpoint blob survives `encode` → `parse` unchanged.
pub fn metadata_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match RdmaMetadata::from_json(&text) {
        Ok(metadata) => {
            assert!(text.len() <= MAX_METADATA_JSON, "accepted oversized JSON");
            assert!(metadata.descriptors.len() <= MAX_DESCRIPTORS);
            for d in &metadata.descriptors {
                assert!(d.ptr != 0, "accepted a null ptr");
                assert!(
                    d.ptr.checked_add(d.size).is_some(),
                    "accepted a wrapping region"
                );
            }
            assert!(metadata.endpoint().is_ok(), "accepted an undecodable blob");
            let again = RdmaMetadata::from_json(&metadata.to_json());
            assert_eq!(
                again.as_ref(),
                Ok(&metadata),
                "to_json/from_json round trip"
            );
        }
        Err(error) => assert!(
            matches!(error, Error::InvalidMetadata { .. }),
            "untyped refusal: {error:?}"
        ),
    }
    if let Ok(blob) = EndpointBlob::parse(&text) {
        assert_eq!(
            EndpointBlob::parse(&blob.encode()).as_ref(),
            Ok(&blob),
            "encode/parse round trip"
        );
    }
}

/// The TCP frame decoders on an arbitrary byte stream, frame after frame as a connection reads
/// them (SPEC §9: no input from a peer panics or allocates from a claimed length):
/// - an accepted header is canonical (re-encodes to the same 8 bytes) and within its type's
///   bound;
/// - an accepted `READ`/`WRITE` body has at most [`MAX_RANGES`] ranges and re-encodes to the
///   same bytes; a refused one is `WireError::Malformed`;
/// - an accepted `HELLO` carries this build's magic and version; a `NOTIFY` that parses re-parses equal from
///   its canonical form; an `ERROR` re-encodes to its code and message.
pub fn tcp_frames(data: &[u8]) {
    let mut rest = data;
    while let Some((head, after)) = rest.split_first_chunk::<HEADER_LEN>() {
        let Ok(header) = Header::decode(head) else {
            return; // a connection closes on a bad header
        };
        assert!(header.len <= header.frame.max_body());
        assert_eq!(
            &header.encode(),
            head,
            "a non-canonical header was accepted"
        );
        if after.len() < header.len {
            return; // the peer went away mid-frame
        }
        let (body, next) = after.split_at(header.len);
        check_frame(header, head, body);
        rest = next;
    }
}

fn check_frame(header: Header, head: &[u8; HEADER_LEN], body: &[u8]) {
    match header.frame {
        FrameType::Hello => {
            if check_hello(body).is_ok() {
                // Exactly the HELLO this build sends, reserved bits included (finding F1,
                // fixed: `tests/findings.rs`).
                assert_eq!(body, &hello_frame()[HEADER_LEN..]);
            }
        }
        FrameType::Read | FrameType::Write => match Request::decode(body) {
            Ok(request) => {
                assert!(request.ranges.len() <= MAX_RANGES);
                let frame = request_frame(header.frame, &request);
                assert_eq!(&frame[..HEADER_LEN], head, "request header round trip");
                assert_eq!(&frame[HEADER_LEN..], body, "request body round trip");
            }
            Err(error) => assert!(
                matches!(error, WireError::Malformed(_)),
                "untyped refusal: {error:?}"
            ),
        },
        FrameType::Notify => {
            if let Some(notification) = Notification::parse(body) {
                let canonical = match notification {
                    Notification::Complete(key) => key.completion_message(),
                    Notification::Cancel(key) => key.cancel_message(),
                };
                assert_eq!(Notification::parse(&canonical), Some(notification));
            }
        }
        FrameType::Error => {
            let (code, message) = decode_error(body);
            if let Some(known) = ErrorCode::from_u16(code) {
                if body.len() >= 2 && message.len() <= MAX_CONTROL_BODY - 2 {
                    let frame = error_frame(known, &message);
                    assert_eq!(decode_error(&frame[HEADER_LEN..]), (code, message));
                }
            }
        }
        FrameType::Data | FrameType::Done | FrameType::Ack => {}
    }
}
