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
use std::time::Duration;

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

/// The longest any `*_secs` duration of the file may be: a day. Longer
/// ones are mistakes, and the largest would overflow the clock's
/// arithmetic.
pub const MAX_SECS: u64 = 24 * 60 * 60;

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
    #[error(
        "the configuration {path} is invalid: {message}; correct it and try it with \
         `snctld check-config`"
    )]
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
        self.apply_toml(&text, path)
    }

    /// Reads the text of a TOML file (`path` names it in the errors) over
    /// the current values.
    pub fn apply_toml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(&message),
        };
        let file: File = toml::from_str(text).map_err(|e| parse(toml_error(text, &e)))?;
        self.apply_sections(file)
            .map_err(|InvalidSetting(message)| parse(message))
    }

    /// The ways this configuration breaks the ranges the configuration
    /// file's documentation promises; empty for one that holds them all.
    /// Stated apart from the checks made while reading the file, so that the
    /// property tests and the `config` fuzz target can hold every accepted
    /// file against it.
    #[doc(hidden)]
    pub fn broken_invariants(&self) -> Vec<String> {
        let mut broken = Vec::new();
        let mut check = |holds: bool, what: &str| {
            if !holds {
                broken.push(what.to_owned());
            }
        };
        let secs = |d: Duration| d.as_secs_f64();
        let sane = |d: Duration| (1.0..=MAX_SECS as f64).contains(&secs(d));
        let l = &self.limits;
        check(l.max_connections >= 1, "server.max_connections >= 1");
        check(l.max_per_uid >= 1, "server.max_connections_per_user >= 1");
        check(sane(l.idle_timeout), "server.idle_timeout_secs in range");
        check(sane(l.read_timeout), "server.read_timeout_secs in range");
        let r = &self.refresh;
        check((0.1..=0.95).contains(&r.ahead), "refresh.ahead in range");
        check((0.0..=0.2).contains(&r.jitter), "refresh.jitter in range");
        check(sane(r.backoff_min), "refresh.backoff_min_secs in range");
        check(sane(r.backoff_max), "refresh.backoff_max_secs in range");
        check(r.backoff_min <= r.backoff_max, "refresh.backoff_min <= max");
        check(self.login.redirect_port != 0, "login.redirect_port != 0");
        let login = secs(self.login.timeout);
        check(
            (30.0..=3600.0).contains(&login),
            "login.timeout_secs in range",
        );
        check(
            sane(self.http.connect_timeout),
            "http.connect_timeout_secs in range",
        );
        check(
            sane(self.http.request_timeout),
            "http.request_timeout_secs in range",
        );
        let p = &self.proxy;
        check(
            p.names
                .iter()
                .all(|n| snctl_shared::name::validate(n).is_ok()),
            "proxy.names are authentication names",
        );
        check(
            (1.0..=3600.0).contains(&secs(p.hold_max)),
            "proxy.hold_max_secs in range",
        );
        if let Some(filter) = &self.log.filter {
            check(
                crate::logging::parse_filter(filter).is_ok(),
                "log.filter parses",
            );
        }
        if let Some(MetricsListen::Tcp(addr)) = &self.metrics.listen {
            check(addr.ip().is_loopback(), "metrics.listen is loopback");
        }
        broken
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
        check_backoff(self.refresh.backoff_min, self.refresh.backoff_max)?;
        self.access.apply(file.access);
        self.master_key.apply(file.master_key);
        self.login.apply(file.login)?;
        self.http.apply(file.http)?;
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

/// `[refresh]`'s backoff: at least a second (none would retry a failing
/// refresh at once, without end), at most [`MAX_SECS`], the least no more
/// than the most.
fn check_backoff(min: Duration, max: Duration) -> Result<(), InvalidSetting> {
    for (setting, value) in [("backoff_min_secs", min), ("backoff_max_secs", max)] {
        if !(1..=MAX_SECS).contains(&value.as_secs()) {
            return Err(InvalidSetting(format!(
                "refresh.{setting} must be between 1 and {MAX_SECS}"
            )));
        }
    }
    if min > max {
        return Err(InvalidSetting(
            "refresh.backoff_min_secs must not exceed refresh.backoff_max_secs".into(),
        ));
    }
    Ok(())
}

/// Reads a whole-seconds setting that must be between 1 and [`MAX_SECS`]:
/// zero would time out at once, the largest overflow the clock.
pub(crate) fn seconds(
    setting: &str,
    value: Option<u64>,
) -> Result<Option<Duration>, InvalidSetting> {
    match value {
        Some(secs) if !(1..=MAX_SECS).contains(&secs) => Err(InvalidSetting(format!(
            "{setting} must be between 1 and {MAX_SECS}"
        ))),
        value => Ok(value.map(Duration::from_secs)),
    }
}

/// A TOML parse error as the line it is on, the key there when the line
/// has one (`line 3, server.read_timeout_secs: invalid type: …`), and
/// what is wrong.
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let at = span.start.min(text.len());
    let before = &text.as_bytes()[..at];
    let number = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    match key_of(line, &text[..start]) {
        Some(key) => format!("line {number}, {key}: {message}"),
        None => format!("line {number}: {message}"),
    }
}

/// The dotted key set on `line` (`section.key`, with the last table
/// header among the lines `before`), when it is a plain `key = value`.
fn key_of(line: &str, before: &str) -> Option<String> {
    let bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let key = line.split_once('=')?.0.trim();
    if !key.split('.').all(bare) {
        return None;
    }
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find_map(|l| l.strip_prefix('[')?.split(']').next())
        .map(str::trim);
    match table {
        Some(table) if table.split('.').all(bare) => Some(format!("{table}.{key}")),
        Some(_) => None,
        None => Some(key.to_owned()),
    }
}

/// `text` on one line: control characters (a quoted key or value may
/// hold a newline) escaped.
fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
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
    use proptest::prelude::*;

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

    /// Loads `text` as the configuration file's, over the defaults.
    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let mut config = Config::under(Path::new("/nonexistent"));
        config.apply_toml(text, Path::new("/etc/snctld/snctld.toml"))?;
        Ok(config)
    }

    /// Every key of the file, by section.
    const KEYS: &[(&str, &[&str])] = &[
        (
            "server",
            &[
                "max_connections",
                "max_connections_per_user",
                "idle_timeout_secs",
                "read_timeout_secs",
            ],
        ),
        (
            "refresh",
            &["ahead", "jitter", "backoff_min_secs", "backoff_max_secs"],
        ),
        ("access", &["admin_group", "socket_group"]),
        ("master_key", &["file"]),
        ("login", &["redirect_port", "timeout_secs"]),
        (
            "http",
            &["ca_file", "connect_timeout_secs", "request_timeout_secs"],
        ),
        ("log", &["filter"]),
        (
            "proxy",
            &[
                "names",
                "all",
                "dir",
                "on_rate_limit",
                "hold_max_secs",
                "tcp_port",
            ],
        ),
        ("metrics", &["listen"]),
    ];

    /// A TOML value of any type, biased to the edges.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop_oneof![
                Just(0u64),
                Just(1),
                Just(30),
                Just(3600),
                Just(86_400),
                Just(86_401),
                Just(65_535),
                Just(65_536),
                Just(i64::MAX as u64),
                any::<u64>()
            ]
            .prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(-0.0),
                Just(0.1),
                Just(0.95),
                Just(0.2),
                any::<f64>()
            ]
            .prop_map(|f| format!("{f:?}").replace("NaN", "nan")),
            any::<bool>().prop_map(|b| b.to_string()),
            "\\PC{0,12}".prop_map(|t| format!("{t:?}")),
            "[\\x00-\\x1f\\x7f a-z/.:]{0,12}".prop_map(|t| format!("{t:?}")),
            proptest::collection::vec("[a-z0-9 ./_-]{0,8}", 0..3).prop_map(|v| format!("{v:?}")),
            Just("\"127.0.0.1:9474\"".to_owned()),
            Just("\"10.0.0.1:9474\"".to_owned()),
            Just("\"hold\"".to_owned()),
            Just("{ a = 1 }".to_owned()),
            "\\PC{0,6}",
        ]
    }

    /// A configuration file: known sections and keys (sometimes misspelt)
    /// with values of any type, or any text at all.
    fn file() -> impl Strategy<Value = String> {
        let line = (
            0..KEYS.len(),
            any::<prop::sample::Index>(),
            value(),
            0..20u8,
        )
            .prop_map(|(section, key, value, twist)| {
                let (name, keys) = KEYS[section];
                let key = key.get(keys);
                match twist {
                    0 => format!("[{name}]\n{key}x = {value}\n"),
                    1 => format!("[{name}\n{key} = {value}\n"),
                    2 => format!("{name}.{key} = {value}\n"),
                    3 => format!("[{name}]\n\"{key}\\n\" = {value}\n"),
                    _ => format!("[{name}]\n{key} = {value}\n"),
                }
            });
        prop_oneof![
            4 => proptest::collection::vec(line, 1..4).prop_map(|lines| lines.concat()),
            1 => "\\PC{0,64}",
            1 => "[\\x00-\\x7f]{0,64}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text: no panic; an error is one line that names the file,
        /// the line or key at fault, and what to do; an accepted file keeps
        /// every promise of the documentation.
        #[test]
        fn any_file_is_refused_in_one_line_or_holds_its_invariants(text in file()) {
            match load_text(&text) {
                Ok(config) => {
                    let broken = config.broken_invariants();
                    prop_assert!(broken.is_empty(), "{text:?} accepted, breaking {broken:?}");
                }
                Err(error) => {
                    let message = error.to_string();
                    prop_assert!(
                        !message.chars().any(char::is_control),
                        "not one line: {message:?}"
                    );
                    prop_assert!(message.contains("/etc/snctld/snctld.toml"), "{message}");
                    let names_where = message.contains(" line ")
                        || KEYS.iter().any(|(section, keys)| {
                            message.contains(&format!("{section}."))
                                || keys.iter().any(|k| message.contains(k))
                        });
                    prop_assert!(names_where, "{text:?}: names no line nor key: {message}");
                    prop_assert!(message.contains("snctld check-config"), "{message}");
                }
            }
        }
    }

    #[test]
    fn the_largest_durations_are_refused_rather_than_overflowing_later() {
        for text in [
            "[server]\nread_timeout_secs = 9223372036854775807\n",
            "[server]\nidle_timeout_secs = 0\n",
            "[http]\nrequest_timeout_secs = 9223372036854775807\n",
            "[http]\nconnect_timeout_secs = 0\n",
            "[refresh]\nbackoff_min_secs = 0\n",
            "[refresh]\nbackoff_min_secs = 600\nbackoff_max_secs = 60\n",
        ] {
            let message = load_text(text).unwrap_err().to_string();
            let key = text.lines().nth(1).unwrap().split(' ').next().unwrap();
            assert!(message.contains(key), "{text:?}: {message}");
        }
        let config = load_text("[refresh]\nbackoff_min_secs = 600\nbackoff_max_secs = 600\n");
        assert!(config.unwrap().broken_invariants().is_empty());
    }

    #[test]
    fn a_log_filter_padded_before_a_wide_character_is_read_not_a_panic() {
        // Found by the `config` fuzz target (shortened): the filter parser
        // of tracing-subscriber indexed an untrimmed directive with the
        // positions of its trimmed form, and panicked inside a character.
        for text in [
            "[log]\nfilter = \" iz  \u{f47a}=  ,er r ,,:tj\"\n",
            "[log]\nfilter = \" \u{e9}t\u{e9}=debug\"\n",
        ] {
            match load_text(text) {
                Ok(config) => assert!(config.broken_invariants().is_empty()),
                Err(error) => assert!(error.to_string().contains("log.filter"), "{error}"),
            }
        }
        // Also found by the fuzz target: a field value compiled as a
        // regular expression took gigabytes; values are plain text now.
        let oom = r#"[log]
filter ="z@oces,,,z@o:ec,,,,,,,,[S ],,iz@oces,,,,,,,,[^d_a={{e=e.&pppppppppp.........................................................&.................................={etld::|},,,,,,[u}],,, iz@[$ ],,,,,,,,,[us],,,,,,,,[Su'],,, i, S,,],[,,,,,,,,,:,[S Su'],,,...............................={etld::|},,,,,,[u}],,, iz@[$ ],,,,,,,,,[us],,,,,,,,[Su'],,, i, S,,],[,,,,,,,,,:,[S Su'],,, i,,,,[S ],,,,,,,,,:1,[S ],$,,,,,,,,[us],,, iz@oces,,g"
"#;
        let _ = load_text(oom);
        let config = load_text("[log]\nfilter = \" info , snctld=debug,\"\n").unwrap();
        assert_eq!(config.log.filter.as_deref(), Some("info,snctld=debug"));
    }

    #[test]
    fn a_syntax_error_names_its_line_and_key() {
        let message = load_text("[server]\nmax_connections = 3\nread_timeout_secs = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("server.read_timeout_secs"), "{message}");
        let message = load_text("[server]\n\"max\\nconnections\" = 3\n")
            .unwrap_err()
            .to_string();
        assert!(!message.contains('\n'), "{message:?}");
    }
}
