//! libFuzzer target: the TCP backend's frame decoders on a hostile byte stream (see
//! `ferry_fuzz::tcp_frames` for what is checked). Run with `scripts/fuzz.sh`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::tcp_frames(data));
