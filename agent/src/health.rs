//! What `/healthz` answers: whether rounds still finish, and succeed.
//!
//! The agent is unhealthy once no round has succeeded for [`STALE_ROUNDS`]
//! intervals, and at least [`STALE_FLOOR`] (a single slow round on a large
//! node should not flap a probe). "Stopped" (no round finished at all in
//! that time: the round thread hangs or died) and "failing" (rounds finish
//! with an error) are told apart in the answer.

use std::time::{Duration, Instant};

/// Intervals without a successful round before `/healthz` answers 503.
pub const STALE_ROUNDS: u32 = 10;
/// ... and never sooner than this.
pub const STALE_FLOOR: Duration = Duration::from_secs(5);

/// The outcome of the rounds so far, as the round thread reports it.
#[derive(Debug, Clone)]
pub struct Health {
    interval: Duration,
    last_ok: Instant,
    last_round: Instant,
    /// Rounds failed since the last success.
    failures: u64,
    last_error: String,
}

impl Health {
    /// Healthy as of `now`: the agent starts serving after a first good round.
    pub fn new(interval: Duration, now: Instant) -> Health {
        Health { interval, last_ok: now, last_round: now, failures: 0, last_error: String::new() }
    }

    pub fn succeeded(&mut self, now: Instant) {
        self.last_ok = now;
        self.last_round = now;
        self.failures = 0;
        self.last_error.clear();
    }

    pub fn failed(&mut self, now: Instant, error: String) {
        self.last_round = now;
        self.failures += 1;
        self.last_error = error;
    }

    /// How long rounds may go without success.
    pub fn allowed(&self) -> Duration {
        (self.interval * STALE_ROUNDS).max(STALE_FLOOR)
    }

    /// Whether the agent is healthy at `now`, and the one line that says why.
    pub fn verdict(&self, now: Instant) -> (bool, String) {
        let since_ok = now.saturating_duration_since(self.last_ok);
        let allowed = self.allowed();
        let rule = format!(
            "unhealthy after {} s without a successful round: {STALE_ROUNDS} intervals of {} ms, at least {} s",
            secs(allowed),
            self.interval.as_millis(),
            STALE_FLOOR.as_secs()
        );
        if since_ok <= allowed {
            return (true, format!("ok: last successful round {} ms ago\n", since_ok.as_millis()));
        }
        let since_round = now.saturating_duration_since(self.last_round);
        let line = if since_round > allowed {
            format!("rounds stopped: none finished for {} s ({rule})\n", secs(since_round))
        } else {
            format!(
                "rounds failing: {} in a row, none succeeded for {} s ({rule}); last error: {}\n",
                self.failures,
                secs(since_ok),
                self.last_error
            )
        };
        (false, line)
    }
}

/// Seconds with one decimal.
fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn healthy_until_ten_intervals_and_five_seconds_pass_without_success() {
        let t0 = Instant::now();
        let mut h = Health::new(100 * MS, t0);
        assert_eq!(h.allowed(), Duration::from_secs(5), "10 × 100 ms is below the 5 s floor");
        h.succeeded(t0 + 40 * MS);
        assert_eq!(h.verdict(t0 + 127 * MS), (true, "ok: last successful round 87 ms ago\n".into()));
        h.failed(t0 + 1000 * MS, "reading the cgroup tree at /sys/fs/cgroup: EMFILE".into());
        assert!(h.verdict(t0 + 5040 * MS).0, "exactly 5 s since the last success is still healthy");
        let (ok, line) = h.verdict(t0 + 5041 * MS);
        assert!(!ok);
        assert_eq!(
            line,
            "rounds failing: 1 in a row, none succeeded for 5.0 s (unhealthy after 5.0 s without a successful \
             round: 10 intervals of 100 ms, at least 5 s); last error: reading the cgroup tree at /sys/fs/cgroup: EMFILE\n"
        );
        h.succeeded(t0 + 5100 * MS);
        assert!(h.verdict(t0 + 5100 * MS).0, "one success makes it healthy again");
    }

    #[test]
    fn rounds_that_stop_finishing_are_told_apart_from_failing_ones() {
        let t0 = Instant::now();
        let h = Health::new(Duration::from_secs(1), t0);
        assert_eq!(h.allowed(), Duration::from_secs(10), "10 intervals of 1 s is above the floor");
        let (ok, line) = h.verdict(t0 + 12 * Duration::from_secs(1));
        assert!(!ok);
        assert_eq!(
            line,
            "rounds stopped: none finished for 12.0 s (unhealthy after 10.0 s without a successful round: \
             10 intervals of 1000 ms, at least 5 s)\n"
        );
    }
}
