//! What the benchmark programs' `main` functions share: the command line as typed (for the
//! report), running the benchmark as a task on a tokio worker, the sizes and iteration plan a
//! command line asks for, which sizes fit in memory, and writing the report files.

use std::path::PathBuf;
use std::time::Duration;

use crate::report::meminfo;
use crate::stats::IterationPlan;
use crate::units::parse_size;
use crate::Result;

/// The command line as typed, quoted where a shell would need it.
pub fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `work` as a spawned task rather than on the thread that calls `block_on`, so that on
/// the multi-thread runtime it runs on a worker, where tasks woken by the I/O driver or by
/// each other run without a hop between threads, as a server's tasks do.
pub async fn on_worker<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| format!("the benchmark task panicked or was cancelled: {e}"))?
}

/// Runs `work` on a worker ([`on_worker`]) of a new multi-thread runtime, blocking until it
/// ends; an error also where the runtime cannot start.
pub fn block_on_worker<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no tokio runtime: {e}"))?
        .block_on(on_worker(work))
}

/// The sizes of a full run: a page to a GiB.
pub const FULL_SIZES: [usize; 6] = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30];

/// The sizes of a `--quick` run.
pub const QUICK_SIZES: [usize; 3] = [4 << 10, 1 << 20, 16 << 20];

/// The options every benchmark program takes (flatten them into its own): what to measure,
/// for how long, and where to write the report.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct RunArgs {
    /// Sizes to measure, comma-separated (4K, 64K, 1M, 16M, 256M, 1G or bytes)
    /// [default: 4K,64K,1M,16M,256M,1G; with --quick 4K,1M,16M].
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// A short run (a few seconds): 4K, 1M, 16M, few iterations, lighter baselines.
    #[arg(long)]
    pub quick: bool,
    /// Write every figure as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the tables, with the command line and the date, as markdown to this file.
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,
    /// Operation time to spend per row of the table, in seconds [default: 2; --quick 0.25].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Fewest timed operations (or batches) per row.
    #[arg(long, default_value_t = 3)]
    pub min_iterations: usize,
    /// Most timed operations (or batches) per row [default: 2000; --quick 200].
    #[arg(long)]
    pub max_iterations: Option<usize>,
}

impl RunArgs {
    /// The sizes to measure: those given, else [`QUICK_SIZES`] or [`FULL_SIZES`].
    pub fn sizes(&self) -> Vec<usize> {
        if !self.sizes.is_empty() {
            self.sizes.clone()
        } else if self.quick {
            QUICK_SIZES.to_vec()
        } else {
            FULL_SIZES.to_vec()
        }
    }

    /// The iteration plan of a row.
    pub fn plan(&self) -> IterationPlan {
        let quick = self.quick;
        IterationPlan {
            target: Duration::from_secs_f64(self.seconds.unwrap_or(if quick { 0.25 } else { 2.0 })),
            min: self.min_iterations.max(1),
            max: self
                .max_iterations
                .unwrap_or(if quick { 200 } else { 2000 }),
        }
    }

    /// Writes the JSON figures and the markdown document where asked.
    pub fn write_outputs(
        &self,
        figures: impl FnOnce() -> serde_json::Value,
        document: impl FnOnce() -> String,
    ) -> Result<()> {
        if let Some(path) = &self.json {
            let text = serde_json::to_string_pretty(&figures())?;
            std::fs::write(path, text + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        if let Some(path) = &self.markdown {
            std::fs::write(path, document())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Splits `sizes` into those whose run fits in the memory available now and those that do
/// not, with why. `need` says how many bytes a size's run holds at once; a GiB of room is
/// kept besides.
pub fn fitting(
    sizes: Vec<usize>,
    need: impl Fn(usize) -> u64,
) -> (Vec<usize>, Vec<(usize, String)>) {
    let available = meminfo("MemAvailable:");
    let mut skipped = Vec::new();
    let sizes = sizes
        .into_iter()
        .filter(|&size| {
            let need = need(size).saturating_add(1 << 30);
            match available {
                Some(have) if have < need => {
                    skipped.push((
                        size,
                        format!(
                            "needs about {} MiB free, {} MiB available",
                            need >> 20,
                            have >> 20
                        ),
                    ));
                    false
                }
                _ => true,
            }
        })
        .collect();
    (sizes, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_and_full_defaults() {
        let quick = RunArgs {
            quick: true,
            ..RunArgs::default()
        };
        assert_eq!(quick.sizes(), QUICK_SIZES);
        assert_eq!(RunArgs::default().sizes(), FULL_SIZES);
        let given = RunArgs {
            sizes: vec![7],
            ..quick.clone()
        };
        assert_eq!(given.sizes(), [7]);
        let quick = quick.plan();
        assert_eq!(
            (quick.target, quick.min, quick.max),
            (Duration::from_millis(250), 1, 200)
        );
        let full = RunArgs {
            seconds: Some(1.0),
            min_iterations: 3,
            max_iterations: Some(9),
            ..RunArgs::default()
        }
        .plan();
        assert_eq!(
            (full.target, full.min, full.max),
            (Duration::from_secs(1), 3, 9)
        );
    }

    #[test]
    fn sizes_that_do_not_fit_are_skipped_with_why() {
        let (kept, skipped) = fitting(vec![4096, usize::MAX / 2], |size| size as u64);
        assert_eq!(kept, [4096]);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].1.starts_with("needs about"), "{:?}", skipped);
    }
}
