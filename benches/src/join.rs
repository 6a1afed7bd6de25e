//! Awaiting several futures at once in one task, without a futures crate: what both sides of
//! a batch of operations in flight need.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// A boxed future that may move between threads, so that a task awaiting several can be
/// spawned.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Awaits every future in `futures` concurrently, in the calling task, and returns their
/// outputs in the order of `futures`. Each future gets a waker of its own, so a wake-up polls
/// only the futures that were woken, as `FuturesUnordered` does: with N operations in flight a
/// socket's readiness costs one operation's poll, not N. A finished future is dropped at once
/// and never polled again. Bound it with a timeout: it waits for the slowest.
pub async fn join_all<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let count = futures.len();
    let mut pending: Vec<Option<BoxFuture<'_, T>>> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    let shared = Arc::new(Woken {
        // Every future is polled once to begin with.
        ready: Mutex::new((0..count).collect()),
        parent: Mutex::new(None),
    });
    let wakers: Vec<Waker> = (0..count)
        .map(|index| {
            Waker::from(Arc::new(Slot {
                index,
                shared: shared.clone(),
            }))
        })
        .collect();
    let mut left = count;
    std::future::poll_fn(|cx| {
        *lock(&shared.parent) = Some(cx.waker().clone());
        // Each woken future once per wake-up of this task: one that wakes itself while polled
        // (a yield, a spent budget) is polled again on this task's next turn, after the
        // runtime has run whatever it waits for, never in a loop here.
        let ready = std::mem::take(&mut *lock(&shared.ready));
        for index in ready {
            let Some(future) = pending[index].as_mut() else {
                continue; // finished, or woken twice
            };
            let mut own = Context::from_waker(&wakers[index]);
            if let Poll::Ready(value) = future.as_mut().poll(&mut own) {
                outputs[index] = Some(value);
                pending[index] = None;
                left -= 1;
            }
        }
        if left == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    // Every slot is `Some` here: a future's slot empties only when its output is stored.
    outputs.into_iter().flatten().collect()
}

/// Which futures of a [`join_all`] were woken, and the task awaiting them.
struct Woken {
    ready: Mutex<Vec<usize>>,
    parent: Mutex<Option<Waker>>,
}

/// One future's waker: marks it ready and wakes the awaiting task.
struct Slot {
    index: usize,
    shared: Arc<Woken>,
}

impl Wake for Slot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.shared.ready).push(self.index);
        if let Some(parent) = lock(&self.shared.parent).as_ref() {
            parent.wake_by_ref();
        }
    }
}

/// The plain bookkeeping behind a mutex stays valid if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A future that counts its polls.
    struct Counted<F> {
        inner: Pin<Box<F>>,
        polls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<F: Future> Future for Counted<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn a_wake_polls_only_the_future_it_woke() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let polls = Arc::new(AtomicUsize::new(0));
        let waiting = Counted {
            inner: Box::pin(async { rx.await.unwrap_or(0) }),
            polls: polls.clone(),
        };
        let busy = async move {
            // Each yield wakes this future alone.
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            let _ = tx.send(7);
            1
        };
        let futures: Vec<BoxFuture<'_, u32>> = vec![Box::pin(waiting), Box::pin(busy)];
        let joined = tokio::time::timeout(Duration::from_secs(5), join_all(futures))
            .await
            .unwrap();
        assert_eq!(joined, vec![7, 1]);
        // Once to begin with, once when its channel fired: not once per yield of the other.
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    /// Regression: a future that wakes itself while polled (a spent budget) was polled again at once,
    /// in a loop inside one poll, so on a current-thread runtime the task it waited for never
    /// ran and the join spun forever. The runtime runs on a thread of its own here, so that a
    /// spin fails the test instead of hanging it.
    #[test]
    fn a_future_that_wakes_itself_lets_the_runtime_run_what_it_waits_for() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let joined = runtime.block_on(async {
                let flag = Arc::new(AtomicBool::new(false));
                let setter = flag.clone();
                tokio::spawn(async move { setter.store(true, Ordering::Release) });
                // Wakes itself at once while it waits, as an I/O resource does when the
                // task's cooperative budget is spent.
                let waits: BoxFuture<'_, u32> = Box::pin(std::future::poll_fn(move |cx| {
                    if flag.load(Ordering::Acquire) {
                        Poll::Ready(5)
                    } else {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }));
                join_all(vec![waits]).await
            });
            let _ = done.send(joined);
        });
        let joined = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("join_all returned: it did not spin");
        assert_eq!(joined, vec![5]);
    }

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
