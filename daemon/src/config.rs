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
//! all = false             # or every authentication there is when the daemon starts
//! dir = "/run/snctld/proxy"   # default: the socket's directory + "/proxy"
//! on_rate_limit = "reject"  # while a 429 holds: answer 429 at once, or "hold" the request
//! hold_max_secs = 30      # "hold" waits at most this long, else 429 at once
//! tcp_port = 8752         # also serve http://127.0.0.1:8752/NAME/… (off by default)
//! ```
//!
//! SIGHUP reads the file again ([`Config::reload`], [`Config::changes`]):
//! `log.filter` and `access.admin_group` apply at once; any other change is
//! logged and applies at the next start. A file that does not parse
//! changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use snctl_shared::paths::{self, APP_DIR, SOCKET_FILE};

use crate::server::Limits;
use crate::servicenow::HttpConfig;
use crate::tokens::{LoginPolicy, RefreshPolicy};

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
    pub limits: Limits,
    pub http: HttpConfig,
    pub refresh: RefreshPolicy,
    pub login: LoginPolicy,
    pub access: AccessConfig,
    /// A master key file named in the configuration.
    pub key_file: Option<PathBuf>,
    /// `[log] filter`: the log filter when neither `RUST_LOG` nor `-v` say.
    pub log_filter: Option<String>,
    /// Where this configuration came from, to read it again on SIGHUP;
    /// `None` for one built in code ([`Config::under`]).
    pub origin: Option<Origin>,
    /// `[proxy]`: the local authenticating proxies.
    pub proxy: ProxyConfig,
}

/// Which authentications get a proxy socket ([`crate::proxy`]), and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub names: Vec<String>,
    /// Every authentication there is when the daemon starts.
    pub all: bool,
    /// Where the `NAME.sock` files go; `None`: the socket's directory +
    /// `/proxy`.
    pub dir: Option<PathBuf>,
    /// What a request meets while the instance's 429 holds.
    pub on_rate_limit: OnRateLimit,
    /// The longest [`OnRateLimit::Hold`] makes a request wait.
    pub hold_max: Duration,
    /// A port on 127.0.0.1 serving every proxied authentication by path
    /// prefix (`/NAME/…`); `None`: no TCP listener.
    pub tcp_port: Option<u16>,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            names: Vec::new(),
            all: false,
            dir: None,
            on_rate_limit: OnRateLimit::Reject,
            hold_max: Duration::from_secs(30),
            tcp_port: None,
        }
    }
}

/// `[proxy] on_rate_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRateLimit {
    /// Answer 429 with `Retry-After` at once.
    Reject,
    /// Wait until the hold ends (at most `hold_max`), then forward.
    Hold,
}

impl ProxyConfig {
    /// The directory of the proxy sockets when the main socket is `socket`.
    pub fn dir_for(&self, socket: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            socket
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("proxy")
        })
    }
}

/// The inputs of [`Config::load`], kept for [`Config::reload`].
#[derive(Debug, Clone)]
pub struct Origin {
    pub mode: Mode,
    pub overrides: PathOverrides,
}

/// One setting that differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// As written in the file, e.g. `refresh.ahead`; paths by their flag.
    pub setting: &'static str,
    pub old: String,
    pub new: String,
}

/// Who may do what, by group name (resolved when the daemon starts).
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Members may run admin requests, besides root and the daemon's user.
    pub admin_group: Option<String>,
    /// Group that owns the socket file (system mode: `snctl`).
    pub socket_group: Option<String>,
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
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } == 0 {
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
    #[error("{0}")]
    Paths(String),
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
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
    master_key: MasterKeySection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    proxy: ProxySection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxySection {
    names: Option<Vec<String>>,
    all: Option<bool>,
    dir: Option<PathBuf>,
    on_rate_limit: Option<String>,
    hold_max_secs: Option<u64>,
    tcp_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    filter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessSection {
    admin_group: Option<String>,
    socket_group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MasterKeySection {
    file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginSection {
    redirect_port: Option<u16>,
    timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    max_connections: Option<usize>,
    max_connections_per_user: Option<usize>,
    idle_timeout_secs: Option<u64>,
    read_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshSection {
    ahead: Option<f64>,
    jitter: Option<f64>,
    backoff_min_secs: Option<u64>,
    backoff_max_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    ca_file: Option<PathBuf>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
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
            key_file: None,
            log_filter: None,
            origin: None,
            proxy: ProxyConfig::default(),
        }
    }

    /// Builds the configuration for `mode` from the overrides, the
    /// environment and the config file (when there is one).
    pub fn load(mode: Mode, overrides: PathOverrides) -> Result<Config, ConfigError> {
        let origin = Origin {
            mode,
            overrides: overrides.clone(),
        };
        let (socket, state_dir, config_file) = match mode {
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
        };
        let socket = overrides.socket.unwrap_or(socket);
        let state_dir = overrides.state_dir.unwrap_or(state_dir);
        if socket.as_os_str().is_empty() {
            return Err(ConfigError::Paths(
                "XDG_RUNTIME_DIR is not set, so there is no default socket path: give --socket PATH".into(),
            ));
        }
        if state_dir.as_os_str().is_empty() {
            return Err(ConfigError::Paths(
                "neither XDG_STATE_HOME nor HOME is set: give --state-dir DIR".into(),
            ));
        }
        let (file, explicit) = match overrides.config {
            Some(path) => (path, true),
            None => (config_file, false),
        };
        let mut config = Config {
            socket,
            state_dir,
            credentials_dir: env_dir("CREDENTIALS_DIRECTORY"),
            socket_mode: if mode == Mode::System { 0o660 } else { 0o600 },
            socket_dir_mode: if mode == Mode::System { 0o755 } else { 0o700 },
            limits: Limits::default(),
            http: HttpConfig::default(),
            refresh: RefreshPolicy::default(),
            login: LoginPolicy::default(),
            access: match mode {
                Mode::System => AccessConfig {
                    admin_group: Some("snctl-admin".into()),
                    socket_group: Some("snctl".into()),
                },
                Mode::User => AccessConfig::default(),
            },
            key_file: None,
            log_filter: None,
            origin: Some(origin),
            proxy: ProxyConfig::default(),
        };
        if explicit || file.exists() {
            config.apply_file(&file)?;
        }
        Ok(config)
    }

    /// Reads a TOML file over the current values.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: File = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let parse_err = |message: &str| ConfigError::Parse {
            path: path.to_path_buf(),
            message: message.to_string(),
        };
        let secs = Duration::from_secs;
        let s = file.server;
        if let Some(n) = s.max_connections {
            if n == 0 {
                return Err(parse_err("server.max_connections must be at least 1"));
            }
            self.limits.max_connections = n;
        }
        if let Some(n) = s.max_connections_per_user {
            if n == 0 {
                return Err(parse_err(
                    "server.max_connections_per_user must be at least 1",
                ));
            }
            self.limits.max_per_uid = n;
        }
        self.limits.idle_timeout = s
            .idle_timeout_secs
            .map(secs)
            .unwrap_or(self.limits.idle_timeout);
        self.limits.read_timeout = s
            .read_timeout_secs
            .map(secs)
            .unwrap_or(self.limits.read_timeout);
        let r = file.refresh;
        if let Some(ahead) = r.ahead {
            if !(0.1..=0.95).contains(&ahead) {
                return Err(parse_err("refresh.ahead must be between 0.1 and 0.95"));
            }
            self.refresh.ahead = ahead;
        }
        if let Some(jitter) = r.jitter {
            if !(0.0..=0.2).contains(&jitter) {
                return Err(parse_err("refresh.jitter must be between 0 and 0.2"));
            }
            self.refresh.jitter = jitter;
        }
        self.refresh.backoff_min = r
            .backoff_min_secs
            .map(secs)
            .unwrap_or(self.refresh.backoff_min);
        self.refresh.backoff_max = r
            .backoff_max_secs
            .map(secs)
            .unwrap_or(self.refresh.backoff_max);
        let a = file.access;
        // An empty name turns the default off.
        let group = |name: String| Some(name).filter(|n| !n.trim().is_empty());
        if let Some(name) = a.admin_group {
            self.access.admin_group = group(name);
        }
        if let Some(name) = a.socket_group {
            self.access.socket_group = group(name);
        }
        if file.master_key.file.is_some() {
            self.key_file = file.master_key.file;
        }
        let l = file.login;
        if let Some(port) = l.redirect_port {
            if port == 0 {
                return Err(parse_err("login.redirect_port must be a fixed port, not 0"));
            }
            self.login.redirect_port = port;
        }
        if let Some(t) = l.timeout_secs {
            if !(30..=3600).contains(&t) {
                return Err(parse_err("login.timeout_secs must be between 30 and 3600"));
            }
            self.login.timeout = secs(t);
        }
        let h = file.http;
        if h.ca_file.is_some() {
            self.http.ca_file = h.ca_file;
        }
        self.http.connect_timeout = h
            .connect_timeout_secs
            .map(secs)
            .unwrap_or(self.http.connect_timeout);
        self.http.request_timeout = h
            .request_timeout_secs
            .map(secs)
            .unwrap_or(self.http.request_timeout);
        if let Some(filter) = file.log.filter {
            if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&filter) {
                return Err(parse_err(&format!(
                    "log.filter {filter:?} is not a valid filter: {e}"
                )));
            }
            self.log_filter = Some(filter).filter(|f| !f.trim().is_empty());
        }
        let p = file.proxy;
        if let Some(names) = p.names {
            if let Some(bad) = names
                .iter()
                .find(|n| n.is_empty() || n.contains('/') || n.starts_with('.'))
            {
                return Err(parse_err(&format!(
                    "proxy.names: {bad:?} cannot name a socket file"
                )));
            }
            self.proxy.names = names;
        }
        self.proxy.all = p.all.unwrap_or(self.proxy.all);
        if p.dir.is_some() {
            self.proxy.dir = p.dir;
        }
        if let Some(mode) = p.on_rate_limit {
            self.proxy.on_rate_limit = match mode.as_str() {
                "reject" => OnRateLimit::Reject,
                "hold" => OnRateLimit::Hold,
                _ => {
                    return Err(parse_err(&format!(
                        "proxy.on_rate_limit: {mode:?} is neither \"reject\" nor \"hold\""
                    )))
                }
            };
        }
        if let Some(secs) = p.hold_max_secs {
            if !(1..=3600).contains(&secs) {
                return Err(parse_err("proxy.hold_max_secs must be between 1 and 3600"));
            }
            self.proxy.hold_max = Duration::from_secs(secs);
        }
        if p.tcp_port.is_some() {
            self.proxy.tcp_port = p.tcp_port;
        }
        Ok(())
    }

    /// The configuration read again from the same sources (flags,
    /// environment, file), for SIGHUP.
    pub fn reload(&self) -> Result<Config, ConfigError> {
        let origin = self.origin.as_ref().ok_or_else(|| {
            ConfigError::Paths("this configuration was not read from a file".into())
        })?;
        Config::load(origin.mode, origin.overrides.clone())
    }

    /// Every setting whose value differs in `new`: `log.filter` first (so
    /// that the lines about the others pass a new filter), then in file
    /// order.
    pub fn changes(&self, new: &Config) -> Vec<Change> {
        fn show<T: std::fmt::Debug>(value: &T) -> String {
            format!("{value:?}")
        }
        fn opt<T: std::fmt::Debug>(value: &Option<T>) -> String {
            value.as_ref().map(show).unwrap_or_else(|| "(none)".into())
        }
        let (a, b) = (self, new);
        let pairs: [(&'static str, String, String); 28] = [
            ("log.filter", opt(&a.log_filter), opt(&b.log_filter)),
            ("--socket", show(&a.socket), show(&b.socket)),
            ("--state-dir", show(&a.state_dir), show(&b.state_dir)),
            (
                "CREDENTIALS_DIRECTORY",
                opt(&a.credentials_dir),
                opt(&b.credentials_dir),
            ),
            (
                "socket mode",
                format!("{:o}", a.socket_mode),
                format!("{:o}", b.socket_mode),
            ),
            (
                "server.max_connections",
                show(&a.limits.max_connections),
                show(&b.limits.max_connections),
            ),
            (
                "server.max_connections_per_user",
                show(&a.limits.max_per_uid),
                show(&b.limits.max_per_uid),
            ),
            (
                "server.idle_timeout_secs",
                show(&a.limits.idle_timeout),
                show(&b.limits.idle_timeout),
            ),
            (
                "server.read_timeout_secs",
                show(&a.limits.read_timeout),
                show(&b.limits.read_timeout),
            ),
            (
                "refresh.ahead",
                show(&a.refresh.ahead),
                show(&b.refresh.ahead),
            ),
            (
                "refresh.jitter",
                show(&a.refresh.jitter),
                show(&b.refresh.jitter),
            ),
            (
                "refresh.backoff_min_secs",
                show(&a.refresh.backoff_min),
                show(&b.refresh.backoff_min),
            ),
            (
                "refresh.backoff_max_secs",
                show(&a.refresh.backoff_max),
                show(&b.refresh.backoff_max),
            ),
            (
                "access.admin_group",
                opt(&a.access.admin_group),
                opt(&b.access.admin_group),
            ),
            (
                "access.socket_group",
                opt(&a.access.socket_group),
                opt(&b.access.socket_group),
            ),
            ("master_key.file", opt(&a.key_file), opt(&b.key_file)),
            (
                "login.redirect_port",
                show(&a.login.redirect_port),
                show(&b.login.redirect_port),
            ),
            (
                "login.timeout_secs",
                show(&a.login.timeout),
                show(&b.login.timeout),
            ),
            ("http.ca_file", opt(&a.http.ca_file), opt(&b.http.ca_file)),
            (
                "http.connect_timeout_secs",
                show(&a.http.connect_timeout),
                show(&b.http.connect_timeout),
            ),
            (
                "http.request_timeout_secs",
                show(&a.http.request_timeout),
                show(&b.http.request_timeout),
            ),
            (
                "socket dir mode",
                format!("{:o}", a.socket_dir_mode),
                format!("{:o}", b.socket_dir_mode),
            ),
            ("proxy.names", show(&a.proxy.names), show(&b.proxy.names)),
            ("proxy.all", show(&a.proxy.all), show(&b.proxy.all)),
            ("proxy.dir", opt(&a.proxy.dir), opt(&b.proxy.dir)),
            (
                "proxy.on_rate_limit",
                show(&a.proxy.on_rate_limit),
                show(&b.proxy.on_rate_limit),
            ),
            (
                "proxy.hold_max_secs",
                show(&a.proxy.hold_max),
                show(&b.proxy.hold_max),
            ),
            (
                "proxy.tcp_port",
                opt(&a.proxy.tcp_port),
                opt(&b.proxy.tcp_port),
            ),
        ];
        pairs
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(setting, old, new)| Change { setting, old, new })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(running.changes(&running.reload().unwrap()).is_empty());

        std::fs::write(
            &path,
            "[refresh]\nahead = 0.6\n[access]\nadmin_group = \"ops\"\n[log]\nfilter = \"debug\"\n",
        )
        .unwrap();
        let new = running.reload().unwrap();
        let changes = running.changes(&new);
        let named: Vec<_> = changes.iter().map(|c| c.setting).collect();
        assert_eq!(named, ["log.filter", "refresh.ahead", "access.admin_group"]);
        assert_eq!(changes[2].old, "(none)");
        assert_eq!(changes[2].new, "\"ops\"");

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
