//! `[refresh]` and `[login]` in the configuration file: the token
//! machinery's settings ([`RefreshPolicy`], [`LoginPolicy`]), read over
//! their defaults and compared on SIGHUP. Both apply at once.

use std::time::Duration;

use serde::Deserialize;

use super::{LoginPolicy, RefreshPolicy};
use crate::settings::{debug, Applies, Changes, InvalidSetting};

/// `[refresh]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshSection {
    ahead: Option<f64>,
    jitter: Option<f64>,
    backoff_min_secs: Option<u64>,
    backoff_max_secs: Option<u64>,
}

/// `[login]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSection {
    redirect_port: Option<u16>,
    timeout_secs: Option<u64>,
}

impl RefreshPolicy {
    /// Reads `[refresh]` over this policy.
    pub fn apply(&mut self, r: RefreshSection) -> Result<(), InvalidSetting> {
        if let Some(ahead) = r.ahead {
            if !(0.1..=0.95).contains(&ahead) {
                return Err(InvalidSetting(
                    "refresh.ahead must be between 0.1 and 0.95".into(),
                ));
            }
            self.ahead = ahead;
        }
        if let Some(jitter) = r.jitter {
            if !(0.0..=0.2).contains(&jitter) {
                return Err(InvalidSetting(
                    "refresh.jitter must be between 0 and 0.2".into(),
                ));
            }
            self.jitter = jitter;
        }
        let secs = Duration::from_secs;
        self.backoff_min = r.backoff_min_secs.map(secs).unwrap_or(self.backoff_min);
        self.backoff_max = r.backoff_max_secs.map(secs).unwrap_or(self.backoff_max);
        Ok(())
    }

    /// What differs in `new`: the schedules take it at once.
    pub fn changes(&self, new: &RefreshPolicy) -> Changes {
        let now = Applies::Now;
        let mut changes = Changes::default();
        changes
            .compare("refresh.ahead", now, &self.ahead, &new.ahead, debug)
            .compare("refresh.jitter", now, &self.jitter, &new.jitter, debug)
            .compare(
                "refresh.backoff_min_secs",
                now,
                &self.backoff_min,
                &new.backoff_min,
                debug,
            )
            .compare(
                "refresh.backoff_max_secs",
                now,
                &self.backoff_max,
                &new.backoff_max,
                debug,
            );
        changes
    }
}

impl LoginPolicy {
    /// Reads `[login]` over this policy.
    pub fn apply(&mut self, l: LoginSection) -> Result<(), InvalidSetting> {
        if let Some(port) = l.redirect_port {
            if port == 0 {
                return Err(InvalidSetting(
                    "login.redirect_port must be a fixed port, not 0".into(),
                ));
            }
            self.redirect_port = port;
        }
        if let Some(t) = l.timeout_secs {
            if !(30..=3600).contains(&t) {
                return Err(InvalidSetting(
                    "login.timeout_secs must be between 30 and 3600".into(),
                ));
            }
            self.timeout = Duration::from_secs(t);
        }
        Ok(())
    }

    /// What differs in `new`: logins started afterwards take it.
    pub fn changes(&self, new: &LoginPolicy) -> Changes {
        let now = Applies::Now;
        let mut changes = Changes::default();
        changes
            .compare(
                "login.redirect_port",
                now,
                &self.redirect_port,
                &new.redirect_port,
                debug,
            )
            .compare(
                "login.timeout_secs",
                now,
                &self.timeout,
                &new.timeout,
                debug,
            );
        changes
    }
}
