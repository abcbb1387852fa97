//! The clocks the daemon reads, and which deadline follows which.
//!
//! A host does three things to time that a daemon has to survive: it is
//! suspended (a laptop's lid, a paused VM), and comes back with every
//! token expired while the process's monotonic clock (CLOCK_MONOTONIC,
//! which tokio's timer follows) stood still; NTP steps its wall clock
//! forward or back; and it starts with a wrong wall clock (a container,
//! a board without a battery). So there are two clocks here:
//!
//! - **The boot clock** (CLOCK_BOOTTIME: counts on through a suspend,
//!   never steps) for everything the running daemon measures: how long a
//!   token has left, and its schedules (the refresh ahead of expiry,
//!   backoffs, the save retry, the 401 floor of the proxy). The instance
//!   decides expiry; what it tells is "expires in so many seconds" from
//!   when it answered, so a token is valid until the boot time at which
//!   it was asked for plus `expires_in`. A wall clock stepped back cannot
//!   make an expired token look valid; one stepped forward cannot make a
//!   valid one look expired.
//! - **The wall clock** (CLOCK_REALTIME) for what is stored and shown:
//!   the `expires_at` kept in the database (across a restart only wall
//!   time exists), the times `snctl show` prints and the `expires_at`
//!   handed out with a token (the remaining life by the boot clock, added
//!   to the wall clock as it is at that moment, so a caller comparing it
//!   with that same clock sees the truth), and the refresh token's
//!   lifespan of days, which is the instance's wall-clock deadline.
//!
//! Tokens read from the database carry the boot clock's time at which
//! they were asked for, and the boot ([`boot_id`]): a restart within the
//! same boot places them on the boot clock by that, whatever the wall
//! clock did meanwhile. Tokens of another boot (a reboot, a backup
//! restored on another host) or stored before schema 7 have only
//! wall-clock times: their place on the boot clock is reckoned from the
//! wall clock at start ([`Clock::boot_of_obtained`]). A token obtained,
//! by that clock, in the future says the wall clock went back (a host that
//! starts with a wrong clock, or was stepped while the daemon was down):
//! how much of its life is left cannot be known, so it counts as expired
//! and is refreshed before it is handed out. One obtained in the past by
//! a wall clock that was ahead then, and is right now, is trusted for
//! longer than it lives: the instance refuses it (the proxy refreshes on
//! that 401), and after a reboot nothing better is known.
//!
//! Schedules sleep on tokio's timer, which does not count a suspend: a
//! sleep of an hour begun before a suspend of a day still has its hour to
//! go after the resume. Rather than wake every scheduler in short chunks
//! to re-check (one wake-up per authentication per chunk, for thousands
//! of authentications), one task watches the clocks and wakes them all
//! when the boot clock ran ahead of the timer (a suspend) or the wall
//! clock moved apart from the boot clock (a step); each scheduler then
//! plans again from the boot clock. A caller never waits for that: the
//! token path reads the boot clock itself, so the first `snctl token`
//! after a resume refreshes an expired token, once, however many ask.
//!
//! The token machinery reads the time through a [`Clock`] it is given, so
//! that tests can drive the clocks apart: one that follows tokio's paused
//! timer, moved on by a suspend or a step.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::TokenSet;

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// Now, in milliseconds on the boot clock (CLOCK_BOOTTIME): since the
/// host booted, suspends included; it never steps.
pub fn boot_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Linux has had CLOCK_BOOTTIME since 2.6.39; nothing to fall back on.
        return 0;
    }
    // `time_t` and `c_long` are 32 bits wide on some targets.
    #[allow(clippy::useless_conversion)]
    let ms = i64::from(ts.tv_sec) * 1000 + i64::from(ts.tv_nsec) / 1_000_000;
    ms
}

/// The kernel's id of this boot (`/proc/sys/kernel/random/boot_id`), read
/// once; empty where it cannot be read, which matches no stored stamp.
pub fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_string())
            .unwrap_or_default()
    })
}

/// Where the token machinery reads the time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch (the wall clock).
    fn now_ms(&self) -> i64;

    /// Now, in milliseconds on the boot clock.
    fn boot_ms(&self) -> i64;

    /// Which boot the boot clock counts from ([`boot_id`]).
    fn boot_id(&self) -> &str;

    /// How long from now until `at_boot_ms` on the boot clock; zero when
    /// it has passed.
    fn until(&self, at_boot_ms: i64) -> Duration {
        Duration::from_millis(at_boot_ms.saturating_sub(self.boot_ms()).max(0) as u64)
    }

    /// The wall-clock time of `boot_ms`, by the wall clock as it is now.
    fn wall_of(&self, boot_ms: i64) -> i64 {
        self.now_ms()
            .saturating_add(boot_ms.saturating_sub(self.boot_ms()))
    }

    /// When `tokens` were obtained, on the boot clock: their stamp when it
    /// is of this boot, else reckoned from their wall-clock times as of
    /// now. Obtained in the future by the wall clock means the clock went
    /// back since: they count as obtained a whole lifetime ago, so expired
    /// now, as do tokens older than that (never placed further back, so
    /// that an edited stamp or time cannot overflow what is reckoned from
    /// it).
    fn boot_of_obtained(&self, tokens: &TokenSet) -> i64 {
        let (now, boot) = (self.now_ms(), self.boot_ms());
        let ago = match &tokens.obtained_boot {
            Some(stamp)
                if !stamp.boot_id.is_empty()
                    && stamp.boot_id == self.boot_id()
                    && stamp.boot_ms <= boot =>
            {
                boot.saturating_sub(stamp.boot_ms)
            }
            _ => now.saturating_sub(tokens.obtained_at_ms),
        };
        let lifetime = tokens
            .expires_at_ms
            .saturating_sub(tokens.obtained_at_ms)
            .max(0);
        // From the future: how much is left cannot be known. Older than its
        // lifetime is expired however much older.
        if ago < 0 {
            boot.saturating_sub(lifetime)
        } else {
            boot.saturating_sub(ago.min(lifetime))
        }
    }
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }

    fn boot_ms(&self) -> i64 {
        boot_ms()
    }

    fn boot_id(&self) -> &str {
        boot_id()
    }
}
