//! A token bucket for upload and download caps, driven by the caller's
//! monotonic `now` (time since any fixed start).
//!
//! Senders *reserve* bytes: the bucket may go into debt, and the answer is
//! how long to wait before the reserved bytes may go out. Reserving before
//! queueing work is what keeps a capped node from accepting unbounded work.

use std::time::Duration;

/// Bytes per second, with a burst allowance; a rate of 0 means no cap.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens available at `last`; negative while in debt.
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A bucket refilling at `rate` bytes/s up to `burst` bytes, full at start.
    /// A burst below 64 KiB is raised to 64 KiB so one chunk always fits.
    pub fn new(rate: u64, burst: u64) -> Self {
        let burst = burst.max(64 << 10);
        TokenBucket {
            rate,
            burst,
            tokens: burst as f64,
            last: Duration::ZERO,
        }
    }

    /// Changes the rate (a bandwidth schedule started or ended); tokens
    /// earned so far are kept, up to the new burst.
    pub fn set_rate(&mut self, now: Duration, rate: u64, burst: u64) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst.max(64 << 10);
        self.tokens = self.tokens.min(self.burst as f64);
    }

    /// The rate in bytes/s (0: none).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// True if the bucket never limits.
    pub fn unlimited(&self) -> bool {
        self.rate == 0
    }

    fn refill(&mut self, now: Duration) {
        if now > self.last {
            let gained = (now - self.last).as_secs_f64() * self.rate as f64;
            self.tokens = (self.tokens + gained).min(self.burst as f64);
            self.last = now;
        }
    }

    /// Bytes that may be reserved now without waiting.
    pub fn available(&mut self, now: Duration) -> u64 {
        if self.unlimited() {
            return u64::MAX;
        }
        self.refill(now);
        self.tokens.max(0.0) as u64
    }

    /// Reserves `bytes` and returns how long to wait before sending them.
    pub fn reserve(&mut self, now: Duration, bytes: u64) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }

    /// How long until `bytes` could be reserved without waiting.
    pub fn wait_for(&mut self, now: Duration, bytes: u64) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        let short = bytes.min(self.burst) as f64 - self.tokens;
        if short <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(short / self.rate as f64)
        }
    }
}

/// A per-peer request rate limit: at most `limit` requests in any
/// one-second window (fixed windows, by the caller's monotonic `now`), and
/// a count of those refused since the window the last one was admitted in.
#[derive(Clone, Debug, Default)]
pub struct RequestRate {
    window: Duration,
    count: u32,
    refused: u32,
}

impl RequestRate {
    /// True if one more request is within `limit` per second; a refused
    /// request is counted in [`RequestRate::refused`].
    pub fn admit(&mut self, now: Duration, limit: u32) -> bool {
        if now.saturating_sub(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        if self.count < limit {
            self.count += 1;
            self.refused = 0;
            true
        } else {
            self.refused = self.refused.saturating_add(1);
            false
        }
    }

    /// Requests refused in a row.
    pub fn refused(&self) -> u32 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_over_the_rate_are_refused_until_the_next_window() {
        let mut r = RequestRate::default();
        let t = |ms| Duration::from_millis(ms);
        assert!((0..10).all(|i| r.admit(t(i), 10)));
        assert!(!r.admit(t(500), 10));
        assert!(!r.admit(t(999), 10));
        assert_eq!(r.refused(), 2);
        // A new second: admitted again, and the refusals start over.
        assert!(r.admit(t(1000), 10));
        assert_eq!(r.refused(), 0);
        assert!((1..10).all(|_| r.admit(t(1500), 10)));
        assert!(!r.admit(t(1999), 10));
    }

    #[test]
    fn unlimited_never_waits() {
        let mut b = TokenBucket::new(0, 0);
        assert_eq!(b.reserve(Duration::ZERO, u64::MAX / 2), Duration::ZERO);
        assert_eq!(b.available(Duration::ZERO), u64::MAX);
    }

    #[test]
    fn long_run_rate_is_the_cap() {
        let mut b = TokenBucket::new(1_000_000, 100_000);
        let mut now = Duration::ZERO;
        let mut sent = 0u64;
        // A sender that always waits as told sends ~rate × time + burst.
        while now < Duration::from_secs(10) {
            now += b.reserve(now, 50_000);
            sent += 50_000;
        }
        let expected = 10 * 1_000_000 + 100_000;
        assert!(sent.abs_diff(expected) <= 50_000, "sent {sent}");
    }

    #[test]
    fn a_new_rate_applies_from_now() {
        let mut b = TokenBucket::new(0, 0);
        b.set_rate(Duration::ZERO, 1000, 65_536);
        assert_eq!(b.available(Duration::ZERO), 65_536);
        assert_eq!(b.reserve(Duration::ZERO, 66_536), Duration::from_secs(1));
        b.set_rate(Duration::ZERO, 0, 0);
        assert_eq!(b.reserve(Duration::ZERO, 1 << 30), Duration::ZERO);
    }

    #[test]
    fn debt_delays_and_refills() {
        let mut b = TokenBucket::new(1000, 65_536);
        assert_eq!(b.reserve(Duration::ZERO, 65_536), Duration::ZERO);
        assert_eq!(b.available(Duration::ZERO), 0);
        assert_eq!(b.reserve(Duration::ZERO, 1000), Duration::from_secs(1));
        assert_eq!(b.wait_for(Duration::ZERO, 1000), Duration::from_secs(2));
        assert_eq!(b.available(Duration::from_secs(3)), 2000);
    }
}
