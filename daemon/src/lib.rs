//! snctld: keeps ServiceNow OAuth tokens fresh and hands them to local
//! processes over a Unix socket.
//!
//! Start-up is split so that nothing is written before the master key is
//! proven right and the socket is bound only once the state is usable:
//! [`open_state`] (key and database, synchronous), [`server::bind`] (or the
//! socket systemd passed, [`systemd::take_passed_socket`]), then [`run`]
//! until the shutdown future completes. `main` and the tests call the same
//! three; `main` calls [`run_with`] to talk to systemd and reload on SIGHUP.
//!
//! What the daemon is made of, from the socket inwards:
//!
//! - [`server`]: the Unix socket, its connections and frames;
//!   [`proxy`]: the authenticating HTTP proxies beside it.
//! - [`access`]: who is on the other end and what they may do.
//! - [`dispatch`]: one handler per request kind; [`backup`] serves backups.
//! - [`tokens`]: the token cache, refresh schedules and logins, talking to
//!   the instance through [`servicenow`] (and [`jwt`] for JWT bearer
//!   grants); [`instance`]: which instance URLs are allowed.
//! - [`store`]: the SQLite database on its own thread, sealed with the
//!   master key of [`crypto`]; [`state`]: the directory both live in.
//! - [`serve`]: the serve/stop sequence; [`reload`]: SIGHUP.
//! - [`config`]: the configuration file, assembled from the sections each
//!   module defines ([`settings`], [`logging`]).
//! - [`systemd`]: socket activation, notifications, `--daemon`;
//!   [`process`]: what the process does to itself before holding secrets.
//! - Offline work on a stopped daemon's state: [`rekey`], [`restore`].
//! - [`http`]: what both HTTP clients of the instance share; [`clock`]:
//!   the time; [`manual`]: the man pages.
//!
//! Dependencies point one way: nothing imports from this root, and no
//! module imports one that imports it back.

pub mod access;
pub mod backup;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod dispatch;
pub mod exporter;
pub mod http;
pub mod instance;
pub mod jwt;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod ownership;
pub mod process;
pub mod proxy;
pub mod rekey;
pub mod reload;
pub mod restore;
pub mod serve;
pub mod server;
pub mod servicenow;
pub mod settings;
pub mod state;
pub mod store;
pub mod systemd;
pub mod tokens;

/// snctld's version and, when built from a git checkout, the revision
/// (build.rs): what `--version`, the hello, `snctl status` and the metrics'
/// build info say, so that a bug report names the build.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("SNCTL_BUILD_REVISION"));

pub use backup::BACKUP_TMP_FILE;
pub use config::Config;
pub use serve::{run, run_with, ServeError, SHUTDOWN_GRACE};
pub use state::{open_state, State, StateError};
