//! SPEC §6: RdmaMetadata on the wire, Dynamo 1.6.1 compatible, and hostile-input safe.
//!
//! The golden vectors are built from SPEC §6's example; the NIXL blob is a real zlib stream
//! (of the text "nixl agent metadata: worker-1 UCX DRAM"), given both as Dynamo ≥ 0.7's `b64:`
//! form and Dynamo ≤ 0.6's bare hex.

use ferry::{Descriptor, Device, EndpointBlob, Error, OperationKind, RdmaMetadata};

use super::*;

const GOLDEN_B64: &str = r#"{"descriptors":[{"device":"cpu","ptr":140230983663616,"size":4096}],"nixl_metadata":"b64:eJzLy6zIUUhMT80rUchNLUlMSSxJtFIozy/KTi3SNVQIdY5QcAly9AUADrYM8g==","notification_key":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","operation_kind":1}"#;
const GOLDEN_HEX_BLOB: &str =
    "789ccbcbacc851484c4fcd2b51c84d2d494c492c49b45228cf2fca4e2dd2355408758e50700972f405000eb60cf2";

fn golden_with(blob: &str, kind: u8) -> String {
    GOLDEN_B64
        .replace(
            "b64:eJzLy6zIUUhMT80rUchNLUlMSSxJtFIozy/KTi3SNVQIdY5QcAly9AUADrYM8g==",
            blob,
        )
        .replace(
            "\"operation_kind\":1",
            &format!("\"operation_kind\":{kind}"),
        )
}

/// Dynamo's JSON with a `b64:` NIXL blob decodes field by field and re-encodes byte for byte.
pub async fn metadata_dynamo_golden_b64<H: Harness>(_h: H) -> Outcome {
    let metadata = RdmaMetadata::from_json(GOLDEN_B64).expect("decodes");
    assert_eq!(metadata.descriptors.len(), 1);
    assert_eq!(metadata.descriptors[0].device, Device::cpu());
    assert_eq!(metadata.descriptors[0].ptr, 140_230_983_663_616);
    assert_eq!(metadata.descriptors[0].size, 4096);
    assert_eq!(
        metadata.notification_key.to_string(),
        "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
    );
    assert_eq!(metadata.operation_kind, OperationKind::Read);
    let EndpointBlob::Nixl { compressed } = metadata.endpoint().expect("blob") else {
        panic!("a b64: blob is NIXL's")
    };
    assert_eq!(&compressed[..2], &[0x78, 0x9c], "a zlib stream");
    assert_eq!(metadata.to_json(), GOLDEN_B64);
    Ok(())
}

/// Dynamo ≤ 0.6's bare lowercase hex decodes to the same bytes as the `b64:` form.
pub async fn metadata_dynamo_golden_bare_hex<H: Harness>(_h: H) -> Outcome {
    let hex = RdmaMetadata::from_json(&golden_with(GOLDEN_HEX_BLOB, 1)).expect("decodes");
    let b64 = RdmaMetadata::from_json(GOLDEN_B64).expect("decodes");
    assert_eq!(hex.endpoint(), b64.endpoint());
    assert_eq!(
        RdmaMetadata::from_json(&golden_with(&GOLDEN_HEX_BLOB.to_uppercase(), 1)).map(|_| ()),
        Err(Error::InvalidMetadata {
            reason: "nixl_metadata is neither b64:, bare hex nor a ferry tag".into()
        })
    );
    Ok(())
}

/// An extra key, anywhere, is rejected; so is a missing one.
pub async fn metadata_dynamo_golden_extra_key_rejected<H: Harness>(_h: H) -> Outcome {
    let top = GOLDEN_B64.replace(
        "\"operation_kind\":1}",
        "\"operation_kind\":1,\"agent\":\"x\"}",
    );
    let inner = GOLDEN_B64.replace("\"size\":4096}", "\"size\":4096,\"stride\":0}");
    let missing = GOLDEN_B64.replace(",\"operation_kind\":1", "");
    for text in [top, inner, missing] {
        assert!(
            matches!(
                RdmaMetadata::from_json(&text),
                Err(Error::InvalidMetadata { .. })
            ),
            "accepted {text}"
        );
    }
    Ok(())
}

/// `operation_kind` 1 is a readable, 2 a writable; anything else is rejected.
pub async fn metadata_dynamo_golden_operation_kinds<H: Harness>(_h: H) -> Outcome {
    let blob = "b64:eJzLy6zIUUhMT80rUchNLUlMSSxJtFIozy/KTi3SNVQIdY5QcAly9AUADrYM8g==";
    let read = RdmaMetadata::from_json(&golden_with(blob, 1)).expect("1");
    let write = RdmaMetadata::from_json(&golden_with(blob, 2)).expect("2");
    assert_eq!(
        (read.operation_kind, write.operation_kind),
        (OperationKind::Read, OperationKind::Write)
    );
    for bad in [0u8, 3, 255] {
        assert!(
            RdmaMetadata::from_json(&golden_with(blob, bad)).is_err(),
            "kind {bad}"
        );
    }
    Ok(())
}

/// Device strings parse as Dynamo parses them.
pub async fn metadata_device_spellings<H: Harness>(_h: H) -> Outcome {
    for (text, device) in [
        ("cpu", Device::cpu()),
        ("host", Device::cpu()),
        ("CPU", Device::cpu()),
        ("cuda", Device::cuda(0)),
        ("cuda:3", Device::cuda(3)),
        ("GPU:1", Device::cuda(1)),
    ] {
        let json = GOLDEN_B64.replace("\"device\":\"cpu\"", &format!("\"device\":\"{text}\""));
        let metadata = RdmaMetadata::from_json(&json).expect(text);
        assert_eq!(metadata.descriptors[0].device, device, "{text}");
    }
    let json = GOLDEN_B64.replace("\"device\":\"cpu\"", "\"device\":\"tpu:0\"");
    assert!(RdmaMetadata::from_json(&json).is_err());
    Ok(())
}

/// Hostile input gets a typed error, never a panic: oversized documents, too many descriptors,
/// null, negative and fractional pointers, wrapping ranges, wrong types, deep nesting, bad
/// keys, bad base64, truncation.
pub async fn metadata_hostile_inputs<H: Harness>(_h: H) -> Outcome {
    let many = format!(
        r#"{{"descriptors":[{}],"nixl_metadata":"ferry-sim/1:b64:","notification_key":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","operation_kind":1}}"#,
        vec![r#"{"device":"cpu","ptr":1,"size":1}"#; 65_537].join(",")
    );
    let mut cases = vec![
        " ".repeat(ferry::core::MAX_METADATA_JSON + 1),
        many,
        "[".repeat(100_000),
        String::new(),
        "null".into(),
        "{}".into(),
        GOLDEN_B64.replace("140230983663616", "0"),
        GOLDEN_B64.replace("140230983663616", "-1"),
        GOLDEN_B64.replace("140230983663616", "1.5"),
        GOLDEN_B64.replace("140230983663616", "18446744073709551615"),
        GOLDEN_B64.replace("140230983663616", "99999999999999999999999"),
        GOLDEN_B64.replace("\"size\":4096", "\"size\":\"4096\""),
        GOLDEN_B64.replace("1b4e28ba-2fa1-41d2-883f-0016d3cca427", "not-a-key"),
        GOLDEN_B64.replace("b64:eJz", "b64:!!!"),
        GOLDEN_B64.replace("\"operation_kind\":1", "\"operation_kind\":\"1\""),
    ];
    cases.push(GOLDEN_B64[..GOLDEN_B64.len() / 2].to_owned());
    cases.push(String::from_utf8_lossy(&[0xff, 0xfe, 0x7b]).into_owned());
    for text in cases {
        let result = std::panic::catch_unwind(|| RdmaMetadata::from_json(&text));
        match result {
            Ok(Err(Error::InvalidMetadata { .. })) => {}
            other => panic!(
                "{:?}…: {other:?}",
                text.chars().take(60).collect::<String>()
            ),
        }
    }
    Ok(())
}

/// A real operation's metadata is Dynamo-shaped: exactly the four keys, in Dynamo's order,
/// with a tagged (or NIXL) blob, and it survives the round trip.
pub async fn metadata_real_operations_are_dynamo_shaped<H: Harness>(h: H) -> Outcome {
    let a = h.connector(Options::named("a")).await;
    let source = [1u8; 100];
    let readable = a
        .create_readable(source.chunks(40).map(Descriptor::from_slice))
        .await
        .expect("readable");
    let json = readable.metadata().to_json();
    assert!(
        json.starts_with("{\"descriptors\":[{\"device\":\"cpu\",\"ptr\":"),
        "{json}"
    );
    let order = [
        "\"descriptors\"",
        "\"nixl_metadata\"",
        "\"notification_key\"",
        "\"operation_kind\":1}",
    ];
    let positions: Vec<usize> = order.iter().map(|k| json.find(k).expect(k)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{json}");
    let value: serde_like::Value = serde_like::parse(&json);
    assert_eq!(value.top_level_keys, 4);
    let decoded = RdmaMetadata::from_json(&json).expect("round trip");
    assert_eq!(&decoded, readable.metadata());
    assert_eq!(decoded.descriptors.len(), 3);
    assert_eq!(
        decoded.endpoint().expect("blob").backend(),
        a.backend_name()
    );
    Ok(())
}

/// Just enough of a JSON reader to count top-level keys without trusting ferry's decoder.
mod serde_like {
    pub struct Value {
        pub top_level_keys: usize,
    }

    pub fn parse(json: &str) -> Value {
        let (mut depth, mut in_string, mut escaped, mut keys) = (0i32, false, false, 0usize);
        let mut expecting_key = false;
        for c in json.chars() {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => {
                    if depth == 1 && expecting_key {
                        keys += 1;
                        expecting_key = false;
                    }
                    in_string = true;
                }
                '{' | '[' => {
                    depth += 1;
                    if depth == 1 {
                        expecting_key = true;
                    }
                }
                '}' | ']' => depth -= 1,
                ',' if depth == 1 => expecting_key = true,
                _ => {}
            }
        }
        Value {
            top_level_keys: keys,
        }
    }
}
