//! Two workers in one process: put, get, flush and an active message after the data.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ferry_backend_ucx::safe::{Context, ContextOptions, ErrorMode, Request, Worker};
use ferry_backend_ucx::Error;

const MIB: usize = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(10);

/// A context, or `None` (with the skip line printed) where this build has no UCX.
fn context() -> Option<Context> {
    match Context::new(&ContextOptions::default()) {
        Ok(context) => Some(context),
        Err(Error::NotInstalled { reason }) => {
            println!("skipped: UCX not installed ({reason})");
            None
        }
        Err(other) => panic!("ucp_init: {other}"),
    }
}

/// Progresses both workers until `request` finishes (bounded by DEADLINE).
fn finish(request: &mut Request, workers: &[&Worker]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(outcome) = request.poll() {
            outcome.expect("request failed");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "request not done within {DEADLINE:?}"
        );
        for worker in workers {
            worker.progress().expect("progress");
        }
    }
}

/// An active message's header and data, as received.
type Message = (Vec<u8>, Vec<u8>);

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn put_get_flush_then_active_message() {
    let Some(context) = context() else { return };
    let target = context.create_worker().expect("target worker");
    let initiator = context.create_worker().expect("initiator worker");

    // The target exposes 2 MiB: the first half is written by the initiator's put, the second
    // half is read by its get.
    let mut exposed = vec![0u8; 2 * MIB];
    let readable = pattern(MIB, 7);
    exposed[MIB..].copy_from_slice(&readable);
    // SAFETY: `exposed` outlives `region` (dropped at the end of the test, after it), and the
    // test reads it only after the transfers are flushed.
    let region = unsafe { context.map(exposed.as_mut_ptr(), exposed.len()) }.expect("mem_map");
    let packed = region.pack_rkey().expect("rkey_pack");

    let address = target.address().expect("target address");
    // SAFETY: the bytes are exactly what the target's Worker::address returned.
    let address =
        unsafe { ferry_backend_ucx::safe::WorkerAddress::from_bytes(address.as_bytes().to_vec()) };
    let endpoint = initiator
        .connect(&address, ErrorMode::Peer)
        .expect("ep_create");
    let rkey = endpoint.unpack_rkey(&packed).expect("rkey unpack");

    let received: Rc<RefCell<Vec<Message>>> = Rc::default();
    let sink = Rc::clone(&received);
    target
        .set_am_handler(7, move |message| {
            assert!(!message.rendezvous);
            sink.borrow_mut()
                .push((message.header.to_vec(), message.data.to_vec()));
        })
        .expect("am handler");

    let written = pattern(MIB, 3);
    let mut put = endpoint
        .put(written.clone(), region.address(), &rkey)
        .expect("put_nbx");
    let mut get = endpoint
        .get(vec![0u8; MIB], region.address() + MIB as u64, &rkey)
        .expect("get_nbx");
    let mut flush = endpoint.flush().expect("ep_flush_nbx");
    finish(&mut put, &[&initiator, &target]);
    finish(&mut get, &[&initiator, &target]);
    finish(&mut flush, &[&initiator, &target]);

    let got = get.into_buffers().ok().expect("get finished").remove(0);
    assert!(got == readable, "get returned different bytes");
    let sent = put.into_buffers().ok().expect("put finished").remove(0);
    assert!(sent == written);

    // The notification, after the flushed data.
    let mut note = endpoint
        .am_send(7, b"key".to_vec(), b"done".to_vec())
        .expect("am_send_nbx");
    finish(&mut note, &[&initiator, &target]);
    let deadline = Instant::now() + DEADLINE;
    while received.borrow().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no active message within {DEADLINE:?}"
        );
        target.progress().expect("progress");
        initiator.progress().expect("progress");
    }
    assert_eq!(
        received.borrow().as_slice(),
        &[(b"key".to_vec(), b"done".to_vec())]
    );
    assert!(endpoint.failure().is_none());

    // Flushed: the put has landed. (`region` is dropped before `exposed`, declared first.)
    assert!(
        exposed[..MIB] == written[..],
        "put did not land in the target's memory"
    );
}

#[test]
fn malformed_rkeys_are_typed_errors() {
    let Some(context) = context() else { return };
    let target = context.create_worker().expect("target worker");
    let initiator = context.create_worker().expect("initiator worker");
    let mut exposed = vec![0u8; 4096];
    // SAFETY: `exposed` outlives the region; no peer writes it.
    let region = unsafe { context.map(exposed.as_mut_ptr(), exposed.len()) }.expect("mem_map");
    let packed = region.pack_rkey().expect("rkey_pack");
    // SAFETY: the target's own address bytes.
    let address = unsafe {
        ferry_backend_ucx::safe::WorkerAddress::from_bytes(
            target.address().expect("address").as_bytes().to_vec(),
        )
    };
    let endpoint = initiator
        .connect(&address, ErrorMode::Peer)
        .expect("ep_create");

    let mut bad: Vec<Vec<u8>> = vec![Vec::new(), vec![0xff; 8]];
    // Truncated copies of a real key: every one of them claims more than it has.
    bad.extend((9..packed.len()).map(|len| packed[..len].to_vec()));
    // All 64 memory domains claimed, one byte given.
    let mut greedy = u64::MAX.to_ne_bytes().to_vec();
    greedy.extend([0, 200]);
    bad.push(greedy);
    // An unknown memory type.
    let mut typed = packed.clone();
    typed[8] = 0xee;
    bad.push(typed);

    let mut refused = 0;
    for buffer in &bad {
        match endpoint.unpack_rkey(buffer) {
            Err(Error::InvalidRemoteKey { .. }) | Err(Error::Status { .. }) => refused += 1,
            Err(other) => panic!("unexpected error for {buffer:?}: {other}"),
            // A prefix that happens to end on a domain boundary is structurally whole.
            Ok(_) => {}
        }
    }
    assert!(refused >= 4, "only {refused} of {} refused", bad.len());
    assert!(matches!(
        endpoint.unpack_rkey(&[]),
        Err(Error::InvalidRemoteKey { .. })
    ));
    // The real key still unpacks.
    endpoint.unpack_rkey(&packed).expect("the real key");
    println!(
        "packed rkey: {} bytes; {refused} of {} malformed keys refused",
        packed.len(),
        bad.len()
    );
}

#[test]
fn version_matches_the_headers() {
    if !ferry_backend_ucx::UCX_BUILT {
        println!("skipped: UCX not installed");
        return;
    }
    let (major, minor, release) = ferry_backend_ucx::safe::version();
    println!("UCX {major}.{minor}.{release}");
    assert!(major >= 1);
}
