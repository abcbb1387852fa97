//! What the configuration's sections share. Each section is defined by the
//! module that uses it (`[server]` in [`crate::server`], `[proxy]` in
//! [`crate::proxy`], …) as a TOML section read over its defaults and a
//! comparison of two values; [`crate::config`] assembles the file and
//! [`crate::reload`] acts on the comparison.

use std::fmt::Debug;

/// A value in the configuration file that cannot be used: the message
/// names the setting as written in the file and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

/// When a changed setting takes effect on SIGHUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// At once, in the running daemon.
    Now,
    /// When the daemon starts again.
    NextStart,
}

/// One setting that differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// As written in the file, e.g. `refresh.ahead`; paths by their flag.
    pub setting: &'static str,
    pub old: String,
    pub new: String,
    pub applies: Applies,
}

/// The changes of one section, in the order its settings are compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes(pub Vec<Change>);

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Change> {
        self.0.iter()
    }

    /// Whether one of the changes takes effect at once.
    pub fn any_now(&self) -> bool {
        self.0.iter().any(|c| c.applies == Applies::Now)
    }

    /// Notes `setting` when `old` and `new` differ, both shown with `show`.
    pub fn compare<T: PartialEq + ?Sized>(
        &mut self,
        setting: &'static str,
        applies: Applies,
        old: &T,
        new: &T,
        show: impl Fn(&T) -> String,
    ) -> &mut Self {
        if old != new {
            self.0.push(Change {
                setting,
                old: show(old),
                new: show(new),
                applies,
            });
        }
        self
    }
}

/// A value as `Debug` shows it.
pub fn debug<T: Debug + ?Sized>(value: &T) -> String {
    format!("{value:?}")
}

/// An optional value as `Debug` shows it, `(none)` when unset.
pub fn optional<T: Debug>(value: &Option<T>) -> String {
    value.as_ref().map(debug).unwrap_or_else(|| "(none)".into())
}

/// A file mode in octal.
pub fn octal(mode: &u32) -> String {
    format!("{mode:o}")
}
