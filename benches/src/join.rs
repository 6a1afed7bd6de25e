//! Awaiting several futures at once in one task, without a futures crate: what both sides of
//! a batch of operations in flight need.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// A boxed future that may move between threads, so that a task awaiting several can be
/// spawned.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Awaits every future in `futures` concurrently, in the calling task, and returns their
/// outputs in the order of `futures`. Each wake-up polls the futures not yet finished; a
/// finished one is dropped at once and never polled again. Bound it with a timeout: it waits
/// for the slowest.
pub async fn join_all<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut pending: Vec<Option<BoxFuture<'_, T>>> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut finished = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => finished = false,
                }
            }
        }
        if finished {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    // Every slot is `Some` here: a future's slot empties only when its output is stored.
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn outputs_keep_their_order_whatever_finishes_first() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let futures: Vec<BoxFuture<'_, u32>> = vec![
            Box::pin(async { rx.await.unwrap_or(0) + 1 }),
            Box::pin(async {
                // Finishes after the others have had their turns.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                2
            }),
            Box::pin(async move {
                let _ = tx.send(10);
                3
            }),
            Box::pin(async { 4 }),
        ];
        let joined = tokio::time::timeout(Duration::from_secs(5), join_all(futures))
            .await
            .unwrap();
        assert_eq!(joined, vec![11, 2, 3, 4]);
        assert!(join_all(Vec::<BoxFuture<'_, u32>>::new()).await.is_empty());
    }
}
