//! Wall-clock time as the daemon stores it: milliseconds since the Unix
//! epoch. Expiry times are wall-clock because they outlive the process.
//!
//! The token machinery reads the time through a [`Clock`] it is given, so
//! that its schedule can be driven by a clock other than the system's
//! (one that follows tokio's timer, which can be paused and advanced). It
//! sleeps with tokio's timer for the span until a wall-clock instant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// Where the token machinery reads the wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// How long from now until `at_ms`; zero when it has passed.
    fn until(&self, at_ms: i64) -> Duration {
        Duration::from_millis(at_ms.saturating_sub(self.now_ms()).max(0) as u64)
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}
