//! Latency percentiles and throughput over timed operations.

use std::time::Duration;

/// What a set of timed operations of one size came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Timed operations (warm-up excluded).
    pub iterations: usize,
    /// Median operation time (nearest rank).
    pub p50: Duration,
    /// 99th-percentile operation time (nearest rank; the maximum below 100 samples).
    pub p99: Duration,
    /// Fastest operation.
    pub min: Duration,
    /// Slowest operation.
    pub max: Duration,
    /// Sum of the operation times.
    pub total: Duration,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn from_samples(mut samples: Vec<Duration>) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Summary {
            iterations: samples.len(),
            p50: percentile(&samples, 0.50),
            p99: percentile(&samples, 0.99),
            min: samples[0],
            max: samples[samples.len() - 1],
            total: samples.iter().sum(),
        })
    }

    /// Mean throughput in bytes per second: `bytes` per operation times the operations,
    /// divided by the total operation time.
    pub fn throughput(&self, bytes: usize) -> f64 {
        (bytes as f64 * self.iterations as f64) / self.total.as_secs_f64().max(1e-12)
    }
}

/// The nearest-rank `q` quantile of sorted, non-empty `sorted`.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds, as a float, for tables.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Bytes per second as GB/s (10⁹ bytes), for tables.
pub fn gigabytes(bytes_per_second: f64) -> f64 {
    bytes_per_second / 1e9
}

/// When to stop timing one size: at least `min` operations, then until `target` of operation
/// time has been spent or `max` operations have run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterationPlan {
    /// Operation time to spend per size and direction.
    pub target: Duration,
    /// Fewest timed operations.
    pub min: usize,
    /// Most timed operations.
    pub max: usize,
}

impl IterationPlan {
    /// Whether another operation should run after `done` of them took `spent`.
    pub fn wants_more(&self, done: usize, spent: Duration) -> bool {
        done < self.min || (done < self.max.max(self.min) && spent < self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let s = Summary::from_samples((1..=100).rev().map(us).collect()).unwrap();
        assert_eq!(s.p50, us(50));
        assert_eq!(s.p99, us(99));
        assert_eq!(s.min, us(1));
        assert_eq!(s.max, us(100));
        let one = Summary::from_samples(vec![us(7)]).unwrap();
        assert_eq!((one.p50, one.p99), (us(7), us(7)));
        assert!(Summary::from_samples(Vec::new()).is_none());
    }

    #[test]
    fn throughput_is_total_bytes_over_total_time() {
        let s = Summary::from_samples(vec![Duration::from_millis(500); 4]).unwrap();
        assert!((s.throughput(1000) - 2000.0).abs() < 1e-9);
    }

    #[test]
    fn plans_stop_at_target_or_max() {
        let plan = IterationPlan {
            target: Duration::from_secs(2),
            min: 3,
            max: 10,
        };
        assert!(plan.wants_more(2, Duration::from_secs(60)));
        assert!(!plan.wants_more(3, Duration::from_secs(2)));
        assert!(plan.wants_more(9, Duration::from_millis(10)));
        assert!(!plan.wants_more(10, Duration::from_millis(10)));
    }
}
