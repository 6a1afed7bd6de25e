//! A progress line on stderr for long runs: `[12/40 31 s] tcp read 16 MiB × 256`, rewritten
//! in place on a terminal and printed once per step otherwise (a CI log keeps every line).

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Steps of a run and how far it got.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    terminal: bool,
}

impl Progress {
    /// A run of `total` steps, starting now.
    pub fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Says that the next step, `what`, starts.
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        let line = self.line(what);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            // Clear the rest of the line: the last one may have been longer.
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Prints `message` on its own line, leaving the progress line to be redrawn by the next
    /// step.
    pub fn note(&self, message: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(err, "{message}");
    }

    /// Ends the line.
    pub fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }

    /// The line for step `what`.
    fn line(&self, what: &str) -> String {
        format!(
            "[{}/{} {:.0} s] {what}",
            self.done.min(self.total.max(self.done)),
            self.total.max(self.done),
            self.started.elapsed().as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_steps() {
        let mut p = Progress::new(3);
        p.terminal = false;
        p.step("a");
        assert!(p.line("b").starts_with("[1/3 0 s] b"), "{}", p.line("b"));
        p.step("b");
        p.step("c");
        p.step("extra");
        assert!(p.line("x").starts_with("[4/4 "));
    }
}
