//! CPU time of this process, user and system, from `/proc/self/stat` (every thread, live or
//! exited, counted by the kernel), without unsafe code.

use std::time::Duration;

/// Linux's `USER_HZ`: the unit of `/proc/<pid>/stat`'s `utime` and `stime`. The kernel fixes
/// it at 100 for userspace on every architecture (what `sysconf(_SC_CLK_TCK)` returns), so a
/// reading has 10 ms resolution: divide a row's CPU time over many operations.
pub const TICKS_PER_SECOND: u64 = 100;

/// The CPU this process had used at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTime {
    /// Time in user mode.
    pub user: Duration,
    /// Time in the kernel on this process's behalf.
    pub system: Duration,
}

impl CpuTime {
    /// This process's CPU time now; `None` where `/proc/self/stat` cannot be read or parsed.
    pub fn now() -> Option<CpuTime> {
        parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// The CPU used since `before` (a [`CpuTime::now`] taken earlier); `None` where either
    /// reading failed.
    pub fn used_since(before: Option<CpuTime>) -> Option<CpuTime> {
        Some(CpuTime::now()?.since(before?))
    }

    /// User plus system.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The CPU used since `earlier` (zero where a clock went backwards).
    pub fn since(&self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// Parses `utime` and `stime` (fields 14 and 15) out of a `/proc/<pid>/stat` line. The second
/// field, the command name, is in parentheses and may hold spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<CpuTime> {
    let after_name = &line[line.rfind(')')? + 1..];
    // After the name: state (field 3) … utime is field 14, the 12th here (index 11).
    let mut fields = after_name.split_whitespace().skip(11);
    let ticks = |text: Option<&str>| -> Option<Duration> {
        let ticks: u64 = text?.parse().ok()?;
        Some(Duration::from_nanos(
            ticks.checked_mul(1_000_000_000 / TICKS_PER_SECOND)?,
        ))
    };
    let user = ticks(fields.next())?;
    let system = ticks(fields.next())?;
    Some(CpuTime { user, system })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_name() {
        let line = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 37 0 0 20 0 3 0 100 0 0";
        let cpu = parse_stat(line).unwrap();
        assert_eq!(cpu.user, Duration::from_millis(2500));
        assert_eq!(cpu.system, Duration::from_millis(370));
        assert!(parse_stat("no name here").is_none());
        assert!(parse_stat("1 (x) S 1 2").is_none());
    }

    #[test]
    fn this_process_uses_cpu() {
        let before = CpuTime::now().unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let used = CpuTime::now().unwrap().since(before);
        assert!(used.total() >= Duration::from_millis(20), "{used:?}");
    }
}
