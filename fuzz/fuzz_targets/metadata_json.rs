//! libFuzzer target: `RdmaMetadata::from_json` and `EndpointBlob::parse` on hostile input
//! (see `ferry_fuzz::metadata_json` for what is checked). Run with `scripts/fuzz.sh`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::metadata_json(data));
