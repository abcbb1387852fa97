//! `[log]`: the log filter the configuration file sets. The log itself is
//! set up by `main` (stderr, through a writer thread); `RUST_LOG` and `-v`
//! win over the file, and SIGHUP applies a changed filter through a
//! [`SetLogFilter`].

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::settings::{optional, Applies, Changes, InvalidSetting};

/// `[log]` in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// The log filter when neither `RUST_LOG` nor `-v` say.
    pub filter: Option<String>,
}

/// `[log]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    filter: Option<String>,
}

impl LogConfig {
    /// Reads `[log]` over this setting; the filter must parse.
    pub fn apply(&mut self, section: LogSection) -> Result<(), InvalidSetting> {
        if let Some(filter) = section.filter {
            if let Err(e) = EnvFilter::builder().parse(&filter) {
                return Err(InvalidSetting(format!(
                    "log.filter {filter:?} is not a valid filter: {e}"
                )));
            }
            self.filter = Some(filter).filter(|f| !f.trim().is_empty());
        }
        Ok(())
    }

    /// What differs in `new`: the filter applies at once.
    pub fn changes(&self, new: &LogConfig) -> Changes {
        let mut changes = Changes::default();
        changes.compare(
            "log.filter",
            Applies::Now,
            &self.filter,
            &new.filter,
            optional,
        );
        changes
    }
}

/// Why a log filter could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    #[error("{0:?} is not a valid log filter: {1}")]
    Parse(String, String),
    #[error("cannot change the log filter: {0}")]
    Reload(String),
}

/// Applies `[log] filter` from a (re)read configuration: `Ok(false)` when
/// `RUST_LOG` or `-v` decide the filter instead.
pub type SetLogFilter = Box<dyn Fn(Option<&str>) -> Result<bool, LogFilterError> + Send + Sync>;
