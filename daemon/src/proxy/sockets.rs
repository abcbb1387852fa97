//! Which authentications have a proxy socket, turned on and off while the
//! daemon serves.
//!
//! An authentication gets `DIR/NAME.sock` when its own setting says so
//! (`snctl add --proxy`, `snctl update NAME --proxy on`, stored with it) or
//! the configuration's `[proxy] names` (or `all`) does.
//!
//! - At start, [`bind_at_start`] binds every one of them before anything
//!   serves. One the configuration names that cannot be bound stops the
//!   start: the admin fixes the file. One turned on by its setting is
//!   reported instead (a warning, and `snctl show`), so that the daemon
//!   still starts and the admin can turn it off with `snctl`.
//! - Then [`ProxySockets`], the dispatcher's handle, asks the task running
//!   [`supervise`] to bring the sockets in line after each admin request
//!   that may change them and after SIGHUP. It binds the new ones and
//!   closes those no longer wanted: when the request is answered, a new
//!   socket accepts and an old one's file is gone. Requests in flight on
//!   an old socket finish. Why a socket could not be bound is kept for
//!   `snctl show`, and tried again at the next request.
//!
//! The supervisor holds the dispatcher (its proxies answer through it);
//! the dispatcher holds only the handle, so neither keeps the other alive.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use snctl_shared::protocol::ProxySocket;

use super::{Proxy, ProxyConfig, Routes, Timeouts};
use crate::dispatch::Dispatcher;
use crate::server::{self, BindError, Limits, Listener};

/// Where the proxy sockets go and how they are made: from the
/// configuration, fixed while the daemon runs.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    /// `[proxy] dir`, or the main socket's directory + `/proxy`.
    pub dir: PathBuf,
    /// The main socket's mode, directory mode and group.
    pub mode: u32,
    pub dir_mode: u32,
    pub group: Option<String>,
}

impl SocketSettings {
    /// Where `name`'s socket is.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    fn bind(&self, name: &str) -> Result<Listener, BindError> {
        server::bind(
            &self.path_of(name),
            self.mode,
            self.dir_mode,
            self.group.as_deref(),
        )
    }
}

/// What turns proxies on besides each authentication's own setting:
/// `[proxy] names` and `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub names: Vec<String>,
    pub all: bool,
}

impl Wanted {
    pub fn of(config: &ProxyConfig) -> Wanted {
        Wanted {
            names: config.names.clone(),
            all: config.all,
        }
    }

    /// Every name that gets a socket, given the authentications there are
    /// (`all`) and those whose setting turns theirs on (`on`).
    fn names(&self, all: &[String], on: &[String]) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.names.iter().cloned().collect();
        if self.all {
            names.extend(all.iter().cloned());
        }
        names.extend(on.iter().cloned());
        names
    }
}

/// The sockets bound at start, and those that could not be.
pub struct AtStart {
    listeners: Vec<(String, Listener)>,
    failed: HashMap<String, String>,
}

/// A socket the configuration names could not be bound: the start stops.
#[derive(Debug, thiserror::Error)]
#[error("proxy for {name}: {error}")]
pub struct StartError {
    pub name: String,
    pub error: BindError,
}

/// Binds the socket of every authentication that gets one (`all` are the
/// stored ones, `on` those whose setting turns it on). A failure stops the
/// start when the configuration names the authentication (or says `all`),
/// and is logged and kept for `snctl show` when only its setting does.
pub fn bind_at_start(
    settings: &SocketSettings,
    wanted: &Wanted,
    all: &[String],
    on: &[String],
) -> Result<AtStart, StartError> {
    let mut started = AtStart {
        listeners: Vec::new(),
        failed: HashMap::new(),
    };
    for name in wanted.names(all, on) {
        match settings.bind(&name) {
            Ok(listener) => {
                if !all.contains(&name) {
                    tracing::warn!(%name, "proxy: no such authentication yet; requests get 404 until it is added");
                }
                started.listeners.push((name, listener));
            }
            Err(error) if wanted.all || wanted.names.contains(&name) => {
                return Err(StartError { name, error })
            }
            Err(error) => {
                tracing::error!(%name, "proxy: {error}; the authentication is served on the main socket only (`snctl update {name} --proxy off` stops trying)");
                started.failed.insert(name, error.to_string());
            }
        }
    }
    Ok(started)
}

enum Command {
    /// Bring the sockets in line with the settings; answer when done.
    Reconcile(oneshot::Sender<()>),
    /// `[proxy] names` or `all` changed (SIGHUP).
    Configure(Wanted),
}

/// The dispatcher's handle on the proxy sockets: where they are, which
/// serve, and the request to bring them in line.
pub struct ProxySockets {
    settings: SocketSettings,
    commands: mpsc::UnboundedSender<Command>,
    /// Every name that gets a socket: `None` serving, `Some` why not.
    state: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl ProxySockets {
    /// `name`'s socket, when it gets one.
    pub fn socket_of(&self, name: &str) -> Option<ProxySocket> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.get(name).map(|error| ProxySocket {
            path: self.settings.path_of(name).display().to_string(),
            error: error.clone(),
        })
    }

    /// Binds the sockets now wanted and closes the others; returns when
    /// they are in line (at once when the daemon is stopping).
    pub async fn reconcile(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Reconcile(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Takes new `[proxy] names` and `all` (SIGHUP), and brings the sockets
    /// in line with them soon after.
    pub fn configure(&self, wanted: Wanted) {
        let _ = self.commands.send(Command::Configure(wanted));
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }
}

/// What a proxy needs besides its name and the dispatcher.
pub(crate) struct ProxyParts {
    pub http: reqwest::Client,
    pub config: ProxyConfig,
    pub timeouts: Timeouts,
    pub limits: Limits,
}

/// The other end of [`ProxySockets`], until [`supervise`] takes it.
pub struct Commands {
    commands: mpsc::UnboundedReceiver<Command>,
    state: Arc<Mutex<HashMap<String, Option<String>>>>,
    settings: SocketSettings,
}

/// The handle for the dispatcher and the commands for [`supervise`],
/// knowing of `started`'s sockets.
pub fn channel(settings: SocketSettings, started: &AtStart) -> (ProxySockets, Commands) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state: HashMap<String, Option<String>> = started
        .listeners
        .iter()
        .map(|(name, _)| (name.clone(), None))
        .chain(
            started
                .failed
                .iter()
                .map(|(n, e)| (n.clone(), Some(e.clone()))),
        )
        .collect();
    let state = Arc::new(Mutex::new(state));
    (
        ProxySockets {
            settings: settings.clone(),
            commands: tx,
            state: state.clone(),
        },
        Commands {
            commands: rx,
            state,
            settings,
        },
    )
}

/// One proxy socket serving.
struct Running {
    stop: CancellationToken,
    accepting: JoinHandle<()>,
}

/// The task that owns the proxy sockets.
struct Supervisor {
    dispatcher: Arc<Dispatcher>,
    parts: ProxyParts,
    settings: SocketSettings,
    wanted: Wanted,
    running: HashMap<String, Running>,
    state: Arc<Mutex<HashMap<String, Option<String>>>>,
    routes: Routes,
    stop: CancellationToken,
    connections: TaskTracker,
}

/// Serves `started`'s sockets, then turns sockets on and off as
/// [`ProxySockets`] asks, until `stop`; then closes them all and waits for
/// their requests in flight. `routes` is kept in line for the TCP listener.
pub(crate) fn supervise(
    dispatcher: Arc<Dispatcher>,
    parts: ProxyParts,
    wanted: Wanted,
    started: AtStart,
    commands: Commands,
    routes: Routes,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let mut supervisor = Supervisor {
        dispatcher,
        parts,
        settings: commands.settings,
        wanted,
        running: HashMap::new(),
        state: commands.state,
        routes,
        stop,
        connections: TaskTracker::new(),
    };
    for (name, listener) in started.listeners {
        supervisor.start(name, listener);
    }
    let mut commands = commands.commands;
    tokio::spawn(async move {
        loop {
            let command = tokio::select! {
                _ = supervisor.stop.cancelled() => break,
                command = commands.recv() => command,
            };
            match command {
                Some(Command::Reconcile(done)) => {
                    supervisor.reconcile().await;
                    let _ = done.send(());
                }
                Some(Command::Configure(wanted)) => {
                    supervisor.wanted = wanted;
                    supervisor.reconcile().await;
                }
                None => break,
            }
        }
        supervisor.shut().await;
    })
}

impl Supervisor {
    /// Starts serving `name` on `listener`.
    fn start(&mut self, name: String, listener: Listener) {
        tracing::info!(%name, socket = %listener.path().display(), "proxy serving");
        let proxy = Proxy::new(
            name.clone(),
            self.dispatcher.clone(),
            self.parts.http.clone(),
            &self.parts.config,
            self.parts.timeouts,
        );
        let stop = self.stop.child_token();
        let accepting = tokio::spawn(super::serve(
            listener,
            proxy.clone(),
            self.parts.limits.clone(),
            stop.clone(),
            self.connections.clone(),
        ));
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), proxy);
        self.state_mut().insert(name.clone(), None);
        self.running.insert(name, Running { stop, accepting });
    }

    /// Closes `name`'s socket; returns when its file is gone.
    async fn close(&mut self, name: &str) {
        let Some(running) = self.running.remove(name) else {
            return;
        };
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        running.stop.cancel();
        if running.accepting.await.is_err() {
            tracing::error!(%name, "a proxy task panicked");
        }
        tracing::info!(%name, "proxy closed");
    }

    /// Binds what is wanted and not serving, closes what serves and is no
    /// longer wanted.
    async fn reconcile(&mut self) {
        let tokens = self.dispatcher.tokens();
        let all = tokens.names(|_| true);
        let on = tokens.names(|auth| auth.proxy);
        let wanted = self.wanted.names(&all, &on);
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !wanted.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            self.close(&name).await;
            self.state_mut().remove(&name);
        }
        self.state_mut().retain(|name, _| wanted.contains(name));
        for name in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            match self.settings.bind(&name) {
                Ok(listener) => self.start(name, listener),
                Err(error) => {
                    tracing::warn!(%name, "proxy: {error}");
                    self.state_mut().insert(name, Some(error.to_string()));
                }
            }
        }
    }

    /// Closes every socket, then waits for their requests in flight.
    async fn shut(mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            self.close(&name).await;
        }
        self.connections.close();
        self.connections.wait().await;
    }

    fn state_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<String>>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
