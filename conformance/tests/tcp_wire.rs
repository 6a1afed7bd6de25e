//! The tcp backend against peers that speak its raw protocol: hostile requests (SPEC §9) get an
//! error and a counter, never a byte; a stalled peer blocks nobody; a connection that closes
//! mid-transfer ends the operation `Errored(PeerLost)` on the side that stays.

use std::net::SocketAddr;
use std::time::Duration;

use ferry::tcp::wire::{
    self, ErrorCode, FrameType, Header, Request, WireRange, HEADER_LEN, MAX_DATA_BODY,
    MAX_REQUEST_BODY,
};
use ferry::tcp::TcpConfig;
use ferry::{Descriptor, EndpointBlob, Error, NotificationKey, OperationStatus, RdmaMetadata};
use ferry_conformance::rules::{pattern, while_serving};
use ferry_conformance::tcp::connector_with_stats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(5);

fn strict() -> TcpConfig {
    TcpConfig {
        frame_timeout: Duration::from_millis(300),
        ..TcpConfig::default()
    }
}

fn address(metadata: &RdmaMetadata) -> SocketAddr {
    let EndpointBlob::Tagged { payload, .. } = metadata.endpoint().expect("blob") else {
        panic!("not a tagged blob");
    };
    let text = String::from_utf8(payload).expect("utf-8");
    let (_, addr) = text.split_once('@').expect("identity@address");
    addr.parse().expect("an address")
}

/// A raw client that has said hello.
async fn raw(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream.write_all(&wire::hello_frame()).await.expect("hello");
    let (frame, _) = next_frame(&mut stream).await.expect("hello back");
    assert_eq!(frame, FrameType::Hello);
    stream
}

/// The next frame, or `None` if the server closed.
async fn next_frame(stream: &mut TcpStream) -> Option<(FrameType, Vec<u8>)> {
    let mut header = [0u8; HEADER_LEN];
    tokio::time::timeout(WAIT, stream.read_exact(&mut header))
        .await
        .expect("the server answers in time")
        .ok()?;
    let header = Header::decode(&header).expect("the server sends valid frames");
    let mut body = vec![0u8; header.len];
    tokio::time::timeout(WAIT, stream.read_exact(&mut body))
        .await
        .expect("the body follows")
        .ok()?;
    Some((header.frame, body))
}

async fn expect_error(stream: &mut TcpStream, code: ErrorCode) {
    let (frame, body) = next_frame(stream).await.expect("a reply");
    assert_eq!(frame, FrameType::Error, "a refusal, never DATA");
    let (got, message) = wire::decode_error(&body);
    assert_eq!(got, code as u16, "{message}");
}

async fn expect_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection stays open");
}

fn request(frame: FrameType, key: NotificationKey, ranges: &[(u32, u64, u64)]) -> Vec<u8> {
    let request = Request {
        key,
        ranges: ranges
            .iter()
            .map(|&(index, offset, len)| WireRange { index, offset, len })
            .collect(),
    };
    wire::request_frame(frame, &request)
}

/// A request (frame, key, ranges) and the refusal it must get.
type Denial = (
    FrameType,
    NotificationKey,
    &'static [(u32, u64, u64)],
    ErrorCode,
);

#[tokio::test]
async fn hostile_requests_get_an_error_and_no_byte() {
    let (a, stats) = connector_with_stats(strict()).await;
    let source = pattern(4096, 1);
    let mut target = vec![0xeeu8; 4096];
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let writable = a
        .create_writable([Descriptor::from_mut_slice(&mut target)])
        .await
        .expect("writable");
    let addr = address(readable.metadata());
    let r = readable.notification_key();
    let w = writable.notification_key();
    let mut s = raw(addr).await;
    let denials: &[Denial] = &[
        (FrameType::Read, r, &[(0, 4096, 1)], ErrorCode::OutOfBounds),
        (FrameType::Read, r, &[(0, 0, 4097)], ErrorCode::OutOfBounds),
        (
            FrameType::Read,
            r,
            &[(0, u64::MAX, 2)],
            ErrorCode::OutOfBounds,
        ),
        (
            FrameType::Read,
            r,
            &[(0, 1, u64::MAX)],
            ErrorCode::OutOfBounds,
        ),
        (FrameType::Read, r, &[(1, 0, 1)], ErrorCode::OutOfBounds),
        (
            FrameType::Read,
            r,
            &[(0, 0, 16), (0, 4090, 7)],
            ErrorCode::OutOfBounds,
        ),
        (FrameType::Read, w, &[(0, 0, 16)], ErrorCode::WrongKind),
        (
            FrameType::Read,
            NotificationKey::from_random_bytes([9; 16]),
            &[(0, 0, 16)],
            ErrorCode::UnknownKey,
        ),
    ];
    for (i, (frame, key, ranges, code)) in denials.iter().enumerate() {
        s.write_all(&request(*frame, *key, ranges))
            .await
            .expect("send");
        expect_error(&mut s, *code).await;
        assert_eq!(stats.denied(), i as u64 + 1);
    }
    // A WRITE that is refused: its DATA is dropped, and nothing lands anywhere.
    for (key, ranges, code) in [
        (r, &[(0u32, 0u64, 64u64)][..], ErrorCode::WrongKind),
        (w, &[(0, 4032, 65)][..], ErrorCode::OutOfBounds),
        (w, &[(0, u64::MAX - 10, 64)][..], ErrorCode::OutOfBounds),
    ] {
        let mut frames = request(FrameType::Write, key, ranges);
        frames.extend_from_slice(&Header::new(FrameType::Data, 64).encode());
        frames.extend_from_slice(&[0x55; 64]);
        s.write_all(&frames).await.expect("send");
        expect_error(&mut s, code).await;
    }
    // The connection is still in frame after all that: a valid read on it is served.
    s.write_all(&request(FrameType::Read, r, &[(0, 100, 50)]))
        .await
        .expect("send");
    let served = while_serving(&mut readable, async {
        let (frame, body) = next_frame(&mut s).await.expect("data");
        assert_eq!(frame, FrameType::Data);
        let (done, _) = next_frame(&mut s).await.expect("done");
        assert_eq!(done, FrameType::Done);
        body
    })
    .await;
    assert_eq!(served, source[100..150]);
    assert_eq!(readable.status(), OperationStatus::InProgress);
    drop(s);
    drop(writable);
    assert!(
        target.iter().all(|&b| b == 0xee),
        "a refused write landed bytes"
    );
    // A finished key is refused like an unknown one.
    drop(readable);
    let mut s = raw(addr).await;
    s.write_all(&request(FrameType::Read, r, &[(0, 0, 16)]))
        .await
        .expect("send");
    expect_error(&mut s, ErrorCode::UnknownKey).await;
}

#[tokio::test]
async fn malformed_frames_close_the_connection_without_harm() {
    let (a, stats) = connector_with_stats(strict()).await;
    let source = pattern(4096, 2);
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let addr = address(readable.metadata());
    let key = readable.notification_key();

    // Oversized DATA and oversized requests are refused from the header alone.
    let mut s = raw(addr).await;
    s.write_all(&Header::new(FrameType::Data, 0).encode()[..4])
        .await
        .expect("send");
    let mut oversized = [0u8; HEADER_LEN];
    oversized[0] = FrameType::Data as u8;
    oversized[4..].copy_from_slice(&(MAX_DATA_BODY as u32 + 1).to_le_bytes());
    s.write_all(&oversized[4..]).await.expect("send");
    // (the first four bytes above were the start of a DATA header of length 0; its last four
    // bytes now claim more than a DATA frame may carry)
    expect_error(&mut s, ErrorCode::Oversized).await;
    expect_closed(&mut s).await;

    let mut s = raw(addr).await;
    let mut header = [0u8; HEADER_LEN];
    header[0] = FrameType::Read as u8;
    header[4..].copy_from_slice(&(MAX_REQUEST_BODY as u32 + 1).to_le_bytes());
    s.write_all(&header).await.expect("send");
    expect_error(&mut s, ErrorCode::Oversized).await;
    expect_closed(&mut s).await;

    // A request whose count disagrees with its length, and a key that is not a UUIDv4.
    let mut s = raw(addr).await;
    let mut frame = request(FrameType::Read, key, &[(0, 0, 16)]);
    frame[HEADER_LEN + 16] = 2;
    s.write_all(&frame).await.expect("send");
    expect_error(&mut s, ErrorCode::Malformed).await;
    expect_closed(&mut s).await;
    let mut s = raw(addr).await;
    let mut frame = request(FrameType::Read, key, &[(0, 0, 16)]);
    frame[HEADER_LEN + 6] = 0xff;
    s.write_all(&frame).await.expect("send");
    expect_error(&mut s, ErrorCode::Malformed).await;

    // Garbage, reserved bits, frames only a server sends, and a bad hello.
    for bytes in [
        vec![0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5],
        {
            let mut h = Header::new(FrameType::Notify, 4).encode().to_vec();
            h[2] = 1;
            h
        },
        Header::new(FrameType::Ack, 0).encode().to_vec(),
        wire::hello_frame(),
    ] {
        let mut s = raw(addr).await;
        s.write_all(&bytes).await.expect("send");
        let (frame, _) = next_frame(&mut s).await.expect("an error");
        assert_eq!(frame, FrameType::Error);
        expect_closed(&mut s).await;
    }
    let mut s = TcpStream::connect(addr).await.expect("connects");
    let mut hello = wire::hello_frame();
    hello[HEADER_LEN + 8] = 7;
    s.write_all(&hello).await.expect("send");
    expect_error(&mut s, ErrorCode::Version).await;
    expect_closed(&mut s).await;

    // A truncated frame: the peer leaves inside it.
    let mut s = raw(addr).await;
    let frame = request(FrameType::Read, key, &[(0, 0, 16)]);
    s.write_all(&frame[..frame.len() - 5]).await.expect("send");
    drop(s);

    assert!(stats.malformed() >= 9, "{}", stats.malformed());
    assert_eq!(stats.denied(), 0, "nothing reached admission");
    // The readable was never touched, and still pairs normally.
    let b = connector_with_stats(TcpConfig::default()).await.0;
    let mut readable = readable;
    let mut landing = vec![0u8; 4096];
    let mut read = b
        .begin_read(
            readable.metadata(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await
        .expect("begin");
    let (x, y) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
    x.expect("read");
    y.expect("readable");
    drop(read);
    assert_eq!(landing, source);
}

#[tokio::test]
async fn a_stalled_peer_blocks_nobody_and_is_cut_off() {
    let (a, stats) = connector_with_stats(strict()).await;
    let b = connector_with_stats(TcpConfig::default()).await.0;
    let source = pattern(1 << 20, 3);
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let addr = address(readable.metadata());
    // Stops inside a frame header, and another inside a request body.
    let mut stalled_header = raw(addr).await;
    stalled_header
        .write_all(&Header::new(FrameType::Read, 40).encode()[..3])
        .await
        .expect("send");
    let mut stalled_body = raw(addr).await;
    let frame = request(FrameType::Read, readable.notification_key(), &[(0, 0, 1)]);
    stalled_body
        .write_all(&frame[..HEADER_LEN + 4])
        .await
        .expect("send");
    // Others pair as usual meanwhile.
    let mut readable = readable;
    for _ in 0..3 {
        let mut landing = vec![0u8; 1 << 20];
        let other = a
            .create_readable([Descriptor::from_slice(&source)])
            .await
            .expect("readable");
        let mut other = other;
        let mut read = b
            .begin_read(other.metadata(), [Descriptor::from_mut_slice(&mut landing)])
            .await
            .expect("begin");
        let (x, y) = tokio::join!(read.wait_for_completion(), other.wait_for_completion());
        x.expect("read while a peer stalls");
        y.expect("readable while a peer stalls");
        drop(read);
        assert_eq!(landing, source);
    }
    // Both stalled connections are closed once the frame timeout passes.
    expect_closed(&mut stalled_header).await;
    expect_closed(&mut stalled_body).await;
    assert_eq!(readable.status(), OperationStatus::Initialized);
    assert_eq!(stats.timeouts(), 2);
}

#[tokio::test]
async fn passive_sees_the_connection_close_mid_transfer() {
    let (a, _) = connector_with_stats(TcpConfig::default()).await;
    // A readable whose reader leaves after the first bytes.
    let source = pattern(32 << 20, 4);
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let addr = address(readable.metadata());
    let mut s = raw(addr).await;
    s.write_all(&request(
        FrameType::Read,
        readable.notification_key(),
        &[(0, 0, 32 << 20)],
    ))
    .await
    .expect("send");
    let outcome = while_serving(&mut readable, async {
        let mut some = vec![0u8; 1 << 16];
        s.read_exact(&mut some).await.expect("the first bytes");
        drop(s);
        std::future::pending::<()>().await
    });
    let outcome = tokio::time::timeout(Duration::from_millis(200), outcome).await;
    assert!(outcome.is_err(), "the reader never finishes");
    let ended = tokio::time::timeout(WAIT, readable.wait_for_completion())
        .await
        .expect("ends in time");
    assert!(matches!(ended, Err(Error::PeerLost { .. })), "{ended:?}");

    // A writable whose writer leaves halfway through its data.
    let mut target = vec![0u8; 1 << 20];
    let mut writable = a
        .create_writable([Descriptor::from_mut_slice(&mut target)])
        .await
        .expect("writable");
    let mut s = raw(addr).await;
    let mut frames = request(
        FrameType::Write,
        writable.notification_key(),
        &[(0, 0, 1 << 20)],
    );
    frames.extend_from_slice(&Header::new(FrameType::Data, 1 << 20).encode());
    frames.extend_from_slice(&vec![0x42; 1 << 19]);
    s.write_all(&frames).await.expect("send");
    drop(s);
    let ended = tokio::time::timeout(WAIT, writable.wait_for_completion())
        .await
        .expect("ends in time");
    assert!(matches!(ended, Err(Error::PeerLost { .. })), "{ended:?}");
    assert_eq!(writable.status(), OperationStatus::Errored);
}

#[tokio::test]
async fn active_sees_the_connection_close_mid_transfer() {
    // A fake passive side: says hello, takes the READ, sends part of the data, leaves.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    let fake = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accepts");
        let mut hello = [0u8; HEADER_LEN + 12];
        s.read_exact(&mut hello).await.expect("hello");
        s.write_all(&wire::hello_frame()).await.expect("hello back");
        let mut header = [0u8; HEADER_LEN];
        s.read_exact(&mut header).await.expect("request header");
        let header = Header::decode(&header).expect("valid");
        let mut body = vec![0u8; header.len];
        s.read_exact(&mut body).await.expect("request");
        s.write_all(&Header::new(FrameType::Data, 1 << 20).encode())
            .await
            .expect("data header");
        s.write_all(&vec![1u8; 1000]).await.expect("some data");
    });
    let (b, _) = connector_with_stats(TcpConfig::default()).await;
    let key = NotificationKey::from_random_bytes([3; 16]);
    let blob = EndpointBlob::Tagged {
        backend: "tcp".into(),
        version: 1,
        payload: format!("{:032x}@{addr}", 7u128).into_bytes(),
    };
    let json = format!(
        r#"{{"descriptors":[{{"device":"cpu","ptr":4096,"size":1048576}}],"nixl_metadata":"{}","notification_key":"{key}","operation_kind":1}}"#,
        blob.encode()
    );
    let metadata = RdmaMetadata::from_json(&json).expect("metadata");
    let mut landing = vec![0u8; 1 << 20];
    let mut read = b
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
        .await
        .expect("begin");
    let ended = tokio::time::timeout(WAIT, read.wait_for_completion())
        .await
        .expect("ends in time");
    assert!(matches!(ended, Err(Error::PeerLost { .. })), "{ended:?}");
    fake.await.expect("fake peer");
}
