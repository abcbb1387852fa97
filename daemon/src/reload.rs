//! SIGHUP: the configuration read again and compared with the running one.
//!
//! [`Reload::between`] asks each section what changed and whether it
//! applies now or at the next start; [`reload`] applies what can change
//! while serving (`[log] filter`, `access.admin_group`, `[refresh]`,
//! `[login]`, `[proxy] names` and `all`) and logs every change and whether
//! it applied. A file that does not load changes nothing.

use crate::access::Access;
use crate::config::{Config, ConfigError};
use crate::dispatch::Dispatcher;
use crate::proxy::sockets::Wanted;
use crate::settings::{Applies, Change, Changes};
use crate::systemd::Service;

/// What differs between the running configuration and a new one, by
/// section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reload {
    /// `[log]`: the filter applies at once.
    pub log: Changes,
    /// The paths and modes from flags and the environment.
    pub paths: Changes,
    pub server: Changes,
    /// `[refresh]` and `[login]`: the token machinery takes them at once.
    pub refresh: Changes,
    pub login: Changes,
    /// `[access]`: the admin group applies at once.
    pub access: Changes,
    pub master_key: Changes,
    pub http: Changes,
    pub proxy: Changes,
    pub metrics: Changes,
}

impl Reload {
    /// Compares every section of `old` with `new`.
    pub fn between(old: &Config, new: &Config) -> Reload {
        Reload {
            log: old.log.changes(&new.log),
            paths: old.path_changes(new),
            server: old.limits.changes(&new.limits),
            refresh: old.refresh.changes(&new.refresh),
            login: old.login.changes(&new.login),
            access: old.access.changes(&new.access),
            master_key: old.master_key.changes(&new.master_key),
            http: old.http.changes(&new.http),
            proxy: old.proxy.changes(&new.proxy),
            metrics: old.metrics.changes(&new.metrics),
        }
    }

    /// Every change: `log.filter` first (so that the lines about the others
    /// pass a new filter), then in file order.
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.log.iter().chain(self.besides_log())
    }

    /// The changes of every section but `[log]`, in file order.
    fn besides_log(&self) -> impl Iterator<Item = &Change> {
        [
            &self.paths,
            &self.server,
            &self.refresh,
            &self.access,
            &self.master_key,
            &self.login,
            &self.http,
            &self.proxy,
            &self.metrics,
        ]
        .into_iter()
        .flat_map(Changes::iter)
    }

    pub fn is_empty(&self) -> bool {
        self.changes().next().is_none()
    }
}

/// SIGHUP: reads the configuration again, applies what can change while
/// serving and logs every change and whether it applied; the others apply
/// at the next start. `running` takes the applied settings, so that one
/// waiting for the next start is named again on the next SIGHUP. A file
/// that does not load is logged and returned, and changes nothing.
pub fn reload(
    running: &mut Config,
    dispatcher: &Dispatcher,
    systemd: &Service,
) -> Result<(), ConfigError> {
    let new = match running.reload() {
        Ok(new) => new,
        Err(error) => {
            tracing::error!("SIGHUP: configuration not reloaded, the running one stays: {error}");
            return Err(error);
        }
    };
    let diff = Reload::between(running, &new);
    if diff.is_empty() {
        tracing::info!("SIGHUP: configuration reloaded, nothing changed");
        return Ok(());
    }
    if !diff.log.is_empty() {
        apply_log_filter(running, &new, &diff.log, systemd);
    }
    if diff.access.any_now() {
        dispatcher.set_access(Access::new(&new.access));
        running.access.admin_group = new.access.admin_group.clone();
    }
    if diff.proxy.any_now() {
        running.proxy.names = new.proxy.names.clone();
        running.proxy.all = new.proxy.all;
        dispatcher.proxies().configure(Wanted::of(&running.proxy));
    }
    if !diff.refresh.is_empty() || !diff.login.is_empty() {
        dispatcher
            .tokens()
            .set_policies(new.refresh.clone(), new.login.clone());
        running.refresh = new.refresh.clone();
        running.login = new.login.clone();
    }
    for change in diff.besides_log() {
        let Change {
            setting, old, new, ..
        } = change;
        match change.applies {
            Applies::Now => {
                tracing::info!(%setting, from = %old, to = %new, "SIGHUP: {setting} changed, applied")
            }
            Applies::NextStart => {
                tracing::warn!(%setting, from = %old, to = %new, "SIGHUP: {setting} changed; it applies at the next start")
            }
        }
    }
    Ok(())
}

/// Puts a changed `[log] filter` in force, unless `RUST_LOG` or `-v` set
/// the filter, and says which.
fn apply_log_filter(running: &mut Config, new: &Config, changes: &Changes, systemd: &Service) {
    let result = systemd.set_log_filter(new.log.filter.as_deref());
    if result.is_ok() {
        running.log = new.log.clone();
    }
    for Change {
        setting,
        old,
        new: value,
        ..
    } in changes.iter()
    {
        match &result {
            Ok(true) => {
                tracing::info!(%setting, from = %old, to = %value, "SIGHUP: {setting} changed, applied")
            }
            Ok(false) => {
                tracing::warn!(%setting, from = %old, to = %value, "SIGHUP: {setting} changed, not used: RUST_LOG or -v set the filter")
            }
            Err(error) => tracing::error!(%setting, %error, "SIGHUP: cannot apply {setting}"),
        }
    }
}
