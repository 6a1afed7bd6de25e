//! Fuzz findings whose fix lies outside this crate's owners' files, kept as reproducers. Each
//! is `#[ignore]`d with the finding's name until its fix lands; then drop the `ignore` (and
//! put its input in `regressions/<target>/`). Run them: `cargo test -p ferry-fuzz -- --ignored`.

use ferry_backend_tcp::wire::{check_hello, hello_frame, HEADER_LEN};

/// F1 (tcp_frames, found by `fuzz/run.sh` in its first 20 s): `check_hello` accepts a
/// `HELLO` whose trailing reserved `u16` is not zero, although the crate docs give that field as
/// `0u16` and `Header::decode` refuses set reserved bits. A reserved field nobody checks cannot
/// later carry a flag an old peer must not ignore.
/// Fixed: `check_hello` refuses it as malformed.
#[test]
fn hello_with_reserved_bits_set_is_refused() {
    let mut body = hello_frame()[HEADER_LEN..].to_vec();
    assert!(check_hello(&body).is_ok());
    body[11] = 4; // as the fuzzer's input had it
    assert!(
        check_hello(&body).is_err(),
        "reserved u16 = {:#x} accepted",
        4 << 8
    );
}
