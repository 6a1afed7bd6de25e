//! The rules, one function each, grouped by SPEC §11's families.

use std::future::Future as _;

use ferry::{
    Connector, Descriptor, Error, Operation, RdmaMetadata, ReadOperation, ReadableOperation,
    WritableOperation, WriteOperation,
};

pub use crate::{Harness, LiveState, NotifyFault, Options, Outcome, Skip};
pub use ferry::demo::pattern;

pub mod cancel;
pub mod completion;
pub mod concurrency;
pub mod deadlines;
pub mod metadata;
pub mod pairing;
pub mod peer_loss;
pub mod registration;
pub mod states;
pub mod validation;

/// For rules that need the passive side to refuse a peer holding stale or forged metadata
/// (SPEC §9): a skip, with the reason, where the backend cannot (NIXL's peers reach registered
/// memory by address; a key only names the notification).
pub fn revocation_enforced(passive: &Connector) -> Result<(), Skip> {
    match passive.capabilities().enforces_revocation {
        true => Ok(()),
        false => Err(Skip(format!(
            "the {} backend cannot refuse a peer holding stale or forged metadata \
             (Capabilities::enforces_revocation is false)",
            passive.backend_name()
        ))),
    }
}

/// Two Connectors of one harness.
pub async fn pair<H: Harness>(h: &H) -> (Connector, Connector) {
    (
        h.connector(Options::named("a")).await,
        h.connector(Options::named("b")).await,
    )
}

/// `a` exposes a readable over descriptors of `sizes`, `b` reads it; both wait; the bytes are
/// verified.
pub async fn read_cycle(
    a: &Connector,
    b: &Connector,
    sizes: &[usize],
    seed: u64,
) -> Result<(), Error> {
    let sources: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, seed * 131 + i as u64))
        .collect();
    let mut landings: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
    {
        let mut readable = a
            .create_readable(sources.iter().map(|s| Descriptor::from_slice(s)))
            .await?;
        let metadata = RdmaMetadata::from_json(&readable.metadata().to_json())?;
        let mut read = b
            .begin_read(
                &metadata,
                landings.iter_mut().map(|l| Descriptor::from_mut_slice(l)),
            )
            .await?;
        let (done_read, done_readable) = both(&mut read, &mut readable).await;
        done_read?;
        done_readable?;
    }
    assert!(
        landings == sources,
        "read of {sizes:?} landed the wrong bytes"
    );
    Ok(())
}

/// `b` exposes a writable over descriptors of `sizes`, `a` writes into it; both wait; the
/// bytes are verified.
pub async fn write_cycle(
    a: &Connector,
    b: &Connector,
    sizes: &[usize],
    seed: u64,
) -> Result<(), Error> {
    let sources: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, seed * 137 + i as u64))
        .collect();
    let mut landings: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
    {
        let mut writable = b
            .create_writable(landings.iter_mut().map(|l| Descriptor::from_mut_slice(l)))
            .await?;
        let metadata = RdmaMetadata::from_json(&writable.metadata().to_json())?;
        let mut write = a
            .begin_write(sources.iter().map(|s| Descriptor::from_slice(s)), &metadata)
            .await?;
        let (done_write, done_writable) = both(&mut write, &mut writable).await;
        done_write?;
        done_writable?;
    }
    assert!(
        landings == sources,
        "write of {sizes:?} landed the wrong bytes"
    );
    Ok(())
}

/// `a` exposes `source` as a readable and `b` begins reading it into `landing`.
pub async fn read_pair<'s, 'l>(
    a: &Connector,
    b: &Connector,
    source: &'s [u8],
    landing: &'l mut [u8],
) -> (ReadableOperation<'s>, ReadOperation<'l>) {
    let readable = a
        .create_readable([Descriptor::from_slice(source)])
        .await
        .expect("readable");
    let read = b
        .begin_read(readable.metadata(), [Descriptor::from_mut_slice(landing)])
        .await
        .expect("begin read");
    (readable, read)
}

/// `b` exposes `landing` as a writable and `a` begins writing `source` into it.
pub async fn write_pair<'s, 'l>(
    a: &Connector,
    b: &Connector,
    source: &'s [u8],
    landing: &'l mut [u8],
) -> (WritableOperation<'l>, WriteOperation<'s>) {
    let writable = b
        .create_writable([Descriptor::from_mut_slice(landing)])
        .await
        .expect("writable");
    let write = a
        .begin_write([Descriptor::from_slice(source)], writable.metadata())
        .await
        .expect("begin write");
    (writable, write)
}

/// Waits for two operations at once (an active one and its passive peer), as two workers
/// would: on backends whose passive side moves bytes inside its owner's polls (tcp), awaiting
/// one before the other would wait forever.
pub async fn both<K1, K2>(
    first: &mut Operation<'_, K1>,
    second: &mut Operation<'_, K2>,
) -> (Result<(), Error>, Result<(), Error>) {
    tokio::join!(first.wait_for_completion(), second.wait_for_completion())
}

/// Runs `work` (typically an active operation's wait) while also polling `passive`'s wait, and
/// stops polling `passive` once `work` is done: the passive side is served as a worker awaiting
/// it would serve it, and is not looked at afterwards.
pub async fn while_serving<K, F: std::future::Future>(
    passive: &mut Operation<'_, K>,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    let mut serve = std::pin::pin!(passive.wait_for_completion());
    let mut served = false;
    std::future::poll_fn(|cx| {
        if !served && serve.as_mut().poll(cx).is_ready() {
            served = true;
        }
        work.as_mut().poll(cx)
    })
    .await
}

/// Waits for every operation of a list at once.
pub async fn wait_all<K>(ops: &mut [Operation<'_, K>]) -> Vec<Result<(), Error>> {
    let mut waits: Vec<_> = ops
        .iter_mut()
        .map(|op| Box::pin(op.wait_for_completion()))
        .collect();
    let mut outcomes: Vec<Option<Result<(), Error>>> = vec![None; waits.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (wait, outcome) in waits.iter_mut().zip(outcomes.iter_mut()) {
            if outcome.is_none() {
                match wait.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => *outcome = Some(r),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outcomes.into_iter().flatten().collect()
}

/// The outcome of an active operation whether the backend refuses at `begin_*` or on wait
/// ("as soon as the peer answers").
pub async fn active_outcome<K>(begun: Result<Operation<'_, K>, Error>) -> Result<(), Error> {
    match begun {
        Ok(mut op) => op.wait_for_completion().await,
        Err(e) => Err(e),
    }
}

/// Expands to one test per rule: the one list of rules.
#[doc(hidden)]
#[macro_export]
macro_rules! __each_rule {
    ($harness:expr) => {
        $crate::__rule_test!($harness; pairing::pairing_read_pulls_readable_bytes);
        $crate::__rule_test!($harness; pairing::pairing_write_pushes_into_writable);
        $crate::__rule_test!($harness; pairing::pairing_one_byte);
        $crate::__rule_test!($harness; pairing::pairing_64_mib);
        $crate::__rule_test!($harness; pairing::pairing_size_ladder);
        $crate::__rule_test!($harness; pairing::pairing_64_descriptors);
        $crate::__rule_test!($harness; pairing::pairing_descriptor_counts);
        $crate::__rule_test!($harness; pairing::pairing_zero_size_descriptors);
        $crate::__rule_test!($harness; pairing::pairing_owned_buffers_in_tasks);
        $crate::__rule_test!($harness; pairing::pairing_shared_memory_sources);
        $crate::__rule_test!($harness; pairing::pairing_through_json);
        $crate::__rule_test!($harness; validation::validation_read_on_writable_metadata);
        $crate::__rule_test!($harness; validation::validation_write_on_readable_metadata);
        $crate::__rule_test!($harness; validation::validation_empty_descriptor_lists);
        $crate::__rule_test!($harness; validation::validation_count_mismatch);
        $crate::__rule_test!($harness; validation::validation_size_mismatch);
        $crate::__rule_test!($harness; validation::validation_size_mismatch_write_moves_nothing);
        $crate::__rule_test!($harness; validation::validation_mixed_devices);
        $crate::__rule_test!($harness; validation::validation_backend_mismatch);
        $crate::__rule_test!($harness; validation::validation_stale_after_complete);
        $crate::__rule_test!($harness; validation::validation_stale_after_cancel);
        $crate::__rule_test!($harness; validation::validation_stale_unknown_key);
        $crate::__rule_test!($harness; validation::validation_metadata_reaches_only_its_regions);
        $crate::__rule_test!($harness; validation::validation_unsupported_device);
        $crate::__rule_test!($harness; validation::validation_read_only_memory);
        $crate::__rule_test!($harness; validation::validation_refusal_loses_nothing);
        $crate::__rule_test!($harness; states::states_passive_starts_initialized);
        $crate::__rule_test!($harness; states::states_active_posted_eagerly);
        $crate::__rule_test!($harness; states::states_passive_in_progress_when_peer_starts);
        $crate::__rule_test!($harness; states::states_both_sides_complete);
        $crate::__rule_test!($harness; states::states_cancel_after_complete_is_a_no_op);
        $crate::__rule_test!($harness; states::states_cancelled_is_sticky);
        $crate::__rule_test!($harness; states::states_errored_is_sticky);
        $crate::__rule_test!($harness; states::states_dynamo_numbering);
        $crate::__rule_test!($harness; completion::completion_keys_are_uuid_v4);
        $crate::__rule_test!($harness; completion::completion_notification_follows_data);
        $crate::__rule_test!($harness; completion::completion_first_notification_wins);
        $crate::__rule_test!($harness; completion::completion_key_consumed_on_arrival);
        $crate::__rule_test!($harness; completion::completion_no_accumulation);
        $crate::__rule_test!($harness; completion::completion_wakes_without_polling);
        $crate::__rule_test!($harness; cancel::cancel_active_read_in_progress);
        $crate::__rule_test!($harness; cancel::cancel_active_write_in_progress);
        $crate::__rule_test!($harness; cancel::cancel_drop_active_tells_peer);
        $crate::__rule_test!($harness; cancel::cancel_passive_initialized_revokes);
        $crate::__rule_test!($harness; cancel::cancel_drop_passive_revokes);
        $crate::__rule_test!($harness; cancel::cancel_drop_passive_in_progress);
        $crate::__rule_test!($harness; cancel::cancel_races_completion);
        $crate::__rule_test!($harness; cancel::cancel_never_looks_successful);
        $crate::__rule_test!($harness; deadlines::deadlines_wait_timeout_leaves_operation_live);
        $crate::__rule_test!($harness; deadlines::deadlines_cancel_after_timeout_is_clean);
        $crate::__rule_test!($harness; deadlines::deadlines_passive_deadline_errors);
        $crate::__rule_test!($harness; deadlines::deadlines_per_operation_overrides_default);
        $crate::__rule_test!($harness; deadlines::deadlines_active_deadline_errors);
        $crate::__rule_test!($harness; deadlines::deadlines_late_notification_within_deadline);
        $crate::__rule_test!($harness; peer_loss::peer_loss_active_sees_passive_crash);
        $crate::__rule_test!($harness; peer_loss::peer_loss_passive_sees_active_crash);
        $crate::__rule_test!($harness; peer_loss::peer_loss_passive_sees_peer_close);
        $crate::__rule_test!($harness; peer_loss::peer_loss_begin_against_dead_peer);
        $crate::__rule_test!($harness; peer_loss::peer_loss_is_contained);
        $crate::__rule_test!($harness; metadata::metadata_dynamo_golden_b64);
        $crate::__rule_test!($harness; metadata::metadata_dynamo_golden_bare_hex);
        $crate::__rule_test!($harness; metadata::metadata_dynamo_golden_extra_key_rejected);
        $crate::__rule_test!($harness; metadata::metadata_dynamo_golden_operation_kinds);
        $crate::__rule_test!($harness; metadata::metadata_device_spellings);
        $crate::__rule_test!($harness; metadata::metadata_hostile_inputs);
        $crate::__rule_test!($harness; metadata::metadata_real_operations_are_dynamo_shaped);
        $crate::__rule_test!($harness; concurrency::concurrency_64_in_flight);
        $crate::__rule_test!($harness; concurrency::concurrency_tasks);
        $crate::__rule_test!($harness; concurrency::concurrency_mesh);
        $crate::__rule_test!($harness; concurrency::concurrency_connector_talks_to_itself);
        $crate::__rule_test!($harness; concurrency::concurrency_types_are_send_and_sync);
        $crate::__rule_test!($harness; registration::registration_released_with_operations);
        $crate::__rule_test!($harness; registration::registration_pinned_pool_is_reused);
        $crate::__rule_test!($harness; registration::registration_cache_hits_and_bounds);
    };
}
