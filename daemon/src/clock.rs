//! Wall-clock time as the daemon stores it: milliseconds since the Unix
//! epoch. Expiry times are wall-clock because they outlive the process.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// How long from now until `at_ms`; zero when it has passed.
pub fn until(at_ms: i64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(now_ms()).max(0) as u64)
}
