//! Configuration: paths from the command line and the environment, tuning
//! from an optional TOML file (`/etc/snctld/snctld.toml`, or
//! `$XDG_CONFIG_HOME/snctld/snctld.toml` in user mode).
//!
//! ```toml
//! [server]
//! max_connections = 512
//! max_connections_per_user = 64   # admins are not limited, and keep 16 of their own
//! idle_timeout_secs = 120
//! read_timeout_secs = 10
//!
//! [refresh]
//! ahead = 0.75            # refresh when 75 % of a token's lifetime has passed
//! jitter = 0.05
//! backoff_min_secs = 2
//! backoff_max_secs = 300
//!
//! [access]
//! admin_group = "snctl-admin"   # members may add, change and remove authentications
//! socket_group = "snctl"        # group of the socket (system mode: 0660)
//!
//! [master_key]
//! file = "/etc/snctld/master.key"   # after $CREDENTIALS_DIRECTORY/snctld.key, before the state dir's
//!
//! [login]
//! redirect_port = 8751    # default port of http://127.0.0.1:PORT/callback
//! timeout_secs = 600      # how long a started browser login waits
//!
//! [http]
//! ca_file = "/etc/ssl/private/proxy-ca.pem"
//! connect_timeout_secs = 10
//! request_timeout_secs = 30
//!
//! [log]
//! filter = "info"         # tracing filter, e.g. "info,snctld::tokens=debug"; RUST_LOG and -v win
//!
//! [proxy]
//! names = ["prod"]        # serve DIR/prod.sock, an authenticating HTTP proxy to prod's instance
//! all = false             # or every authentication, later ones too
//! dir = "/run/snctld/proxy"   # default: the socket's directory + "/proxy"
//! on_rate_limit = "reject"  # while a 429 holds: answer 429 at once, or "hold" the request
//! hold_max_secs = 30      # "hold" waits at most this long, else 429 at once
//! tcp_port = 8752         # also serve http://127.0.0.1:8752/NAME/… (off by default)
//!
//! [metrics]
//! listen = "127.0.0.1:9474"   # or "/run/snctld/metrics/metrics.sock": serve /metrics (off by default)
//! ```
//!
//! Each section is defined by the module that uses it (`[server]`
//! [`crate::server`], `[refresh]` and `[login]` [`crate::tokens`],
//! `[access]` [`crate::access`], `[master_key]` [`crate::crypto`], `[http]`
//! [`crate::servicenow`], `[log]` [`crate::logging`], `[proxy]`
//! [`crate::proxy`], `[metrics]` [`crate::exporter`]). This module finds the file and assembles the
//! sections.
//!
//! SIGHUP reads the file again ([`Config::reload`]) and compares it with the
//! running one ([`crate::reload`]). A file that does not parse changes
//! nothing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use snctl_shared::paths::{self, APP_DIR, SOCKET_FILE};

use crate::access::{AccessConfig, AccessSection};
use crate::crypto::{KeySources, MasterKeyConfig};
use crate::exporter::MetricsSection;
pub use crate::exporter::{MetricsConfig, MetricsListen};
use crate::logging::{LogConfig, LogSection};
use crate::ownership::{self, UnsafeFile};
use crate::proxy::ProxySection;
pub use crate::proxy::{OnRateLimit, ProxyConfig};
use crate::server::{Limits, ServerSection};
use crate::servicenow::{HttpConfig, HttpSection};
use crate::settings::{debug, octal, optional, Applies, Changes, InvalidSetting};
use crate::tokens::{LoginPolicy, LoginSection, RefreshPolicy, RefreshSection};

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// `$CREDENTIALS_DIRECTORY`, where systemd puts `snctld.key`.
    pub credentials_dir: Option<PathBuf>,
    /// Mode of the socket file: 0600 for a user daemon, 0660 for the system one.
    pub socket_mode: u32,
    /// Mode of directories the daemon creates for its socket.
    pub socket_dir_mode: u32,
    /// `[server]`.
    pub limits: Limits,
    pub http: HttpConfig,
    pub refresh: RefreshPolicy,
    pub login: LoginPolicy,
    pub access: AccessConfig,
    pub master_key: MasterKeyConfig,
    pub log: LogConfig,
    /// Where this configuration came from, to read it again on SIGHUP;
    /// `None` for one built in code ([`Config::under`]).
    pub origin: Option<Origin>,
    /// `[proxy]`: the local authenticating proxies.
    pub proxy: ProxyConfig,
    /// `[metrics]`: where `/metrics` is served, if anywhere.
    pub metrics: MetricsConfig,
}

/// The inputs of [`Config::load`], kept for [`Config::reload`].
#[derive(Debug, Clone)]
pub struct Origin {
    pub mode: Mode,
    pub overrides: PathOverrides,
}

/// Whether the daemon serves the whole host or one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    System,
    User,
}

impl Mode {
    /// Root runs the system daemon; anyone else a user daemon.
    pub fn detect() -> Mode {
        if nix::unistd::geteuid().is_root() {
            Mode::System
        } else {
            Mode::User
        }
    }
}

/// The command line's say on paths.
#[derive(Debug, Default, Clone)]
pub struct PathOverrides {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("XDG_RUNTIME_DIR is not set, so there is no default socket path: give --socket PATH")]
    NoSocketPath,
    #[error("neither XDG_STATE_HOME nor HOME is set: give --state-dir DIR")]
    NoStateDir,
    #[error("this configuration was not read from a file")]
    NotFromFile,
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Unsafe(#[from] UnsafeFile),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    refresh: RefreshSection,
    #[serde(default)]
    login: LoginSection,
    #[serde(default)]
    access: AccessSection,
    #[serde(default)]
    master_key: MasterKeyConfig,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    proxy: ProxySection,
    #[serde(default)]
    metrics: MetricsSection,
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home_dir(sub: &str) -> Option<PathBuf> {
    env_dir("HOME").map(|h| h.join(sub))
}

impl Config {
    /// A user-mode daemon with everything under `dir` (socket
    /// `dir/snctld.sock`, state `dir/state`) and default settings, ignoring
    /// the environment and config files: for embedding and tests.
    pub fn under(dir: &Path) -> Config {
        Config {
            socket: dir.join(SOCKET_FILE),
            state_dir: dir.join("state"),
            credentials_dir: None,
            socket_mode: 0o600,
            socket_dir_mode: 0o700,
            limits: Limits::default(),
            http: HttpConfig::default(),
            refresh: RefreshPolicy::default(),
            login: LoginPolicy::default(),
            access: AccessConfig::default(),
            master_key: MasterKeyConfig::default(),
            log: LogConfig::default(),
            origin: None,
            proxy: ProxyConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }

    /// Builds the configuration for `mode` from the overrides, the
    /// environment and the config file (when there is one).
    pub fn load(mode: Mode, overrides: PathOverrides) -> Result<Config, ConfigError> {
        let origin = Origin {
            mode,
            overrides: overrides.clone(),
        };
        let (socket, state_dir, config_file) = default_paths(mode);
        let socket = overrides.socket.unwrap_or(socket);
        let state_dir = overrides.state_dir.unwrap_or(state_dir);
        if socket.as_os_str().is_empty() {
            return Err(ConfigError::NoSocketPath);
        }
        if state_dir.as_os_str().is_empty() {
            return Err(ConfigError::NoStateDir);
        }
        let (file, explicit) = match overrides.config {
            Some(path) => (path, true),
            None => (config_file, false),
        };
        let system = mode == Mode::System;
        let mut config = Config {
            credentials_dir: env_dir("CREDENTIALS_DIRECTORY"),
            socket_mode: if system { 0o660 } else { 0o600 },
            socket_dir_mode: if system { 0o755 } else { 0o700 },
            access: if system {
                AccessConfig::system()
            } else {
                AccessConfig::default()
            },
            origin: Some(origin),
            socket,
            state_dir,
            ..Config::under(Path::new(""))
        };
        let file = (explicit || file.exists()).then_some(file);
        if let Some(file) = &file {
            config.apply_file(file)?;
        }
        config.check_files(file.as_deref())?;
        Ok(config)
    }

    /// Reads a TOML file over the current values.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let file: File = toml::from_str(&text).map_err(|e| parse(e.message().to_string()))?;
        self.apply_sections(file)
            .map_err(|InvalidSetting(message)| parse(message))
    }

    /// Refuses the configuration file read and the `[http] ca_file` named
    /// when another user than root or snctld's could change them
    /// ([`ownership::check_file`]): the file says who is admin, the CA
    /// which servers pass for an instance. At start and at every reload.
    fn check_files(&self, file: Option<&Path>) -> Result<(), UnsafeFile> {
        let files = [
            (file, "configuration file"),
            (self.http.ca_file.as_deref(), "ca_file"),
        ];
        for (path, what) in files {
            if let Some(path) = path {
                ownership::check_file(path, what)?;
            }
        }
        Ok(())
    }

    /// Each section over its current values, in file order.
    fn apply_sections(&mut self, file: File) -> Result<(), InvalidSetting> {
        self.limits.apply(file.server)?;
        self.refresh.apply(file.refresh)?;
        self.access.apply(file.access);
        self.master_key.apply(file.master_key);
        self.login.apply(file.login)?;
        self.http.apply(file.http);
        self.log.apply(file.log)?;
        self.proxy.apply(file.proxy)?;
        self.metrics.apply(file.metrics)
    }

    /// Where the master key may be.
    pub fn key_sources(&self) -> KeySources {
        KeySources {
            credentials_dir: self.credentials_dir.clone(),
            key_file: self.master_key.file.clone(),
            state_dir: self.state_dir.clone(),
        }
    }

    /// The configuration read again from the same sources (flags,
    /// environment, file), for SIGHUP.
    pub fn reload(&self) -> Result<Config, ConfigError> {
        let origin = self.origin.as_ref().ok_or(ConfigError::NotFromFile)?;
        Config::load(origin.mode, origin.overrides.clone())
    }

    /// What differs in `new` among the paths and modes the command line and
    /// the environment set: all of them apply at the next start.
    pub fn path_changes(&self, new: &Config) -> Changes {
        let next = Applies::NextStart;
        let (a, b) = (self, new);
        let mut changes = Changes::default();
        changes
            .compare("--socket", next, &a.socket, &b.socket, debug)
            .compare("--state-dir", next, &a.state_dir, &b.state_dir, debug)
            .compare(
                "CREDENTIALS_DIRECTORY",
                next,
                &a.credentials_dir,
                &b.credentials_dir,
                optional,
            )
            .compare("socket mode", next, &a.socket_mode, &b.socket_mode, octal)
            .compare(
                "socket dir mode",
                next,
                &a.socket_dir_mode,
                &b.socket_dir_mode,
                octal,
            );
        changes
    }
}

/// The default socket, state directory and configuration file of `mode`;
/// empty where the environment does not say.
fn default_paths(mode: Mode) -> (PathBuf, PathBuf, PathBuf) {
    match mode {
        Mode::System => (
            PathBuf::from(paths::SYSTEM_SOCKET),
            PathBuf::from("/var/lib").join(APP_DIR),
            PathBuf::from("/etc").join(APP_DIR).join("snctld.toml"),
        ),
        Mode::User => (
            env_dir("XDG_RUNTIME_DIR")
                .map(|d| d.join(APP_DIR).join(SOCKET_FILE))
                .unwrap_or_default(),
            env_dir("XDG_STATE_HOME")
                .or_else(|| home_dir(".local/state"))
                .map(|d| d.join(APP_DIR))
                .unwrap_or_default(),
            env_dir("XDG_CONFIG_HOME")
                .or_else(|| home_dir(".config"))
                .map(|d| d.join(APP_DIR).join("snctld.toml"))
                .unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::reload::Reload;
    use crate::settings::Applies;

    #[test]
    fn file_values_apply_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snctld.toml");
        std::fs::write(
            &path,
            "[server]\nmax_connections = 3\n[refresh]\nahead = 0.5\n[login]\nredirect_port = 9000\n",
        )
        .unwrap();
        let overrides = PathOverrides {
            socket: Some(dir.path().join("s.sock")),
            state_dir: Some(dir.path().to_path_buf()),
            config: Some(path.clone()),
        };
        let config = Config::load(Mode::User, overrides.clone()).unwrap();
        assert_eq!(config.limits.max_connections, 3);
        assert_eq!(config.refresh.ahead, 0.5);
        assert_eq!(config.login.redirect_port, 9000);
        assert_eq!(config.socket_mode, 0o600);

        std::fs::write(&path, "[server]\nmax_conections = 3\n").unwrap();
        let err = Config::load(Mode::User, overrides).unwrap_err().to_string();
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn reload_reads_the_file_again_and_names_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snctld.toml");
        std::fs::write(&path, "[refresh]\nahead = 0.5\n").unwrap();
        let overrides = PathOverrides {
            socket: Some(dir.path().join("s.sock")),
            state_dir: Some(dir.path().to_path_buf()),
            config: Some(path.clone()),
        };
        let running = Config::load(Mode::User, overrides).unwrap();
        assert!(Reload::between(&running, &running.reload().unwrap()).is_empty());

        std::fs::write(
            &path,
            "[refresh]\nahead = 0.6\n[access]\nadmin_group = \"ops\"\n[log]\nfilter = \"debug\"\n",
        )
        .unwrap();
        let new = running.reload().unwrap();
        let reload = Reload::between(&running, &new);
        let changes: Vec<_> = reload.changes().collect();
        let named: Vec<_> = changes.iter().map(|c| c.setting).collect();
        assert_eq!(named, ["log.filter", "refresh.ahead", "access.admin_group"]);
        assert_eq!(changes[2].old, "(none)");
        assert_eq!(changes[2].new, "\"ops\"");
        assert!(changes.iter().all(|c| c.applies == Applies::Now));
        std::fs::write(&path, "[server]\nread_timeout_secs = 3\n").unwrap();
        let reload = Reload::between(&running, &running.reload().unwrap());
        let later: Vec<_> = reload.changes().map(|c| (c.setting, c.applies)).collect();
        assert!(
            later.contains(&("server.read_timeout_secs", Applies::NextStart)),
            "{later:?}"
        );

        std::fs::write(&path, "[log]\nfilter = \"snctld=nonsense=\"\n").unwrap();
        let err = running.reload().unwrap_err().to_string();
        assert!(err.contains("log.filter"), "{err}");
        assert!(Config::under(dir.path()).reload().is_err());
    }

    #[test]
    fn proxy_rate_limit_and_tcp_settings_parse_with_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snctld.toml");
        let overrides = PathOverrides {
            socket: Some(dir.path().join("s.sock")),
            state_dir: Some(dir.path().to_path_buf()),
            config: Some(path.clone()),
        };
        std::fs::write(&path, "[proxy]\nnames = [\"prod\"]\n").unwrap();
        let config = Config::load(Mode::User, overrides.clone()).unwrap();
        assert_eq!(config.proxy.on_rate_limit, OnRateLimit::Reject);
        assert_eq!(config.proxy.hold_max, Duration::from_secs(30));
        assert_eq!(config.proxy.tcp_port, None);

        std::fs::write(
            &path,
            "[proxy]\non_rate_limit = \"hold\"\nhold_max_secs = 5\ntcp_port = 8752\n",
        )
        .unwrap();
        let config = Config::load(Mode::User, overrides.clone()).unwrap();
        assert_eq!(config.proxy.on_rate_limit, OnRateLimit::Hold);
        assert_eq!(config.proxy.hold_max, Duration::from_secs(5));
        assert_eq!(config.proxy.tcp_port, Some(8752));

        std::fs::write(&path, "[proxy]\non_rate_limit = \"wait\"\n").unwrap();
        let err = Config::load(Mode::User, overrides.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxy.on_rate_limit"), "{err}");
        std::fs::write(&path, "[proxy]\nhold_max_secs = 0\n").unwrap();
        let err = Config::load(Mode::User, overrides).unwrap_err().to_string();
        assert!(err.contains("proxy.hold_max_secs"), "{err}");
    }
}
