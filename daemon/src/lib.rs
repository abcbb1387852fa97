//! snctld: keeps ServiceNow OAuth tokens fresh and hands them to local
//! processes over a Unix socket.
//!
//! Start-up is split so that nothing is written before the master key is
//! proven right and the socket is bound only once the state is usable:
//! [`open_state`] (key and database, synchronous), [`server::bind`], then
//! [`run`] until the shutdown future completes. `main` and the tests call
//! the same three.

pub mod access;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod hygiene;
pub mod server;
pub mod servicenow;
pub mod store;
pub mod tokens;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use snctl_shared::protocol::{DaemonStatus, Reply, Request, Response};
use snctl_shared::Error;
use snctl_shared::PROTOCOL_VERSION;

use access::{Access, Peer};
pub use config::Config;
use crypto::KeySource;
use server::{Gauge, Listener};
use servicenow::ServiceNow;
use store::{Record, Store, StoreThread, UncheckedDb, DB_FILE};
use tokens::Tokens;

/// The opened state directory: key checked, database migrated and loaded.
pub struct State {
    store: Store,
    thread: StoreThread,
    records: Vec<Record>,
    key_source: KeySource,
}

impl State {
    /// Where the master key came from.
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }
}

/// Opens the state directory: creates it (0700) when missing, loads and
/// checks the master key, then migrates and loads the database. A wrong or
/// exposed key fails here, before anything is written.
pub fn open_state(config: &Config) -> anyhow::Result<State> {
    use anyhow::Context;
    use std::os::unix::fs::DirBuilderExt;
    if !config.state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .with_context(|| {
                format!(
                    "cannot create the state directory {}",
                    config.state_dir.display()
                )
            })?;
    }
    let db = UncheckedDb::open(&config.state_dir.join(DB_FILE))?;
    let check = db.key_check()?;
    let (key, key_source) = crypto::load_master_key(
        config.credentials_dir.as_deref(),
        &config.state_dir,
        check.as_deref(),
    )?;
    tracing::info!(key = %key_source.path().display(), key_id = %key.id_hex(), "master key loaded");
    let mut db = db.prepare(Arc::new(key))?;
    let records = db.load_all()?;
    let (store, thread) = Store::spawn(db).context("cannot start the store thread")?;
    Ok(State {
        store,
        thread,
        records,
        key_source,
    })
}

/// What request handlers share.
pub struct Daemon {
    tokens: Tokens,
    access: Access,
    started: Instant,
    socket: PathBuf,
    state_dir: PathBuf,
    connections: Gauge,
}

impl Daemon {
    /// Answers one request from `peer`, if the access rules allow it.
    pub async fn handle(&self, peer: &Peer, request: Request) -> Response {
        let access = &self.access;
        match request {
            Request::Token(r) => {
                let min_valid = Duration::from_secs(r.min_valid_secs.into());
                let reader = |readers: &_| access.require_reader(peer, &r.name, readers);
                let token = self.tokens.token(&r.name, min_valid, reader).await?;
                tracing::info!(
                    name = %r.name,
                    uid = peer.uid,
                    pid = ?peer.pid,
                    unit = ?peer.unit,
                    valid_secs = token.expires_at - clock::now_ms() / 1000,
                    "token handed out"
                );
                Ok(Reply::Token(token))
            }
            Request::List => Ok(Reply::List(
                self.tokens.list(|readers| access.may_read(peer, readers)),
            )),
            Request::Show(r) => self
                .tokens
                .show(&r.name, |readers| {
                    access.require_reader(peer, &r.name, readers)
                })
                .map(Reply::Auth),
            Request::Status => Ok(Reply::Status(self.status(access.is_admin(peer)))),
            admin => {
                access.require_admin(peer, admin.kind())?;
                self.handle_admin(admin).await
            }
        }
    }

    /// The requests only admins may make.
    async fn handle_admin(&self, request: Request) -> Response {
        match request {
            Request::Add(r) => self.tokens.add(r).await.map(Reply::Auth),
            Request::Update(r) => self.tokens.update(r).await.map(Reply::Auth),
            Request::Remove(r) => self.tokens.remove(r).await.map(Reply::Removed),
            Request::Refresh(r) => self.tokens.refresh(&r.name).await.map(Reply::Auth),
            Request::StartLogin(r) => self.tokens.start_login(r).await.map(Reply::LoginChallenge),
            Request::Login(r) => self.tokens.login(r).await.map(Reply::Auth),
            Request::Doctor(r) => self.tokens.doctor(&r.name).await.map(Reply::Diagnosis),
            Request::Token(_) | Request::List | Request::Show(_) | Request::Status => {
                Err(Error::Internal {
                    message: format!("{} is not an admin request", request.kind()),
                })
            }
        }
    }

    /// How the daemon is doing; authentication names only for admins.
    fn status(&self, admin: bool) -> DaemonStatus {
        let overview = self.tokens.overview();
        let named = |pair: Option<(String, i64)>| pair.filter(|_| admin);
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.display().to_string(),
            state_dir: self.state_dir.display().to_string(),
            authentications: overview.authentications,
            unhealthy: overview.unhealthy,
            next_refresh: named(overview.next_refresh),
            connections: self.connections.get(),
            needs_login: overview.needs_login,
            next_login_deadline: named(overview.next_login_deadline),
        }
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting,
/// answers the requests in flight, lets running refreshes commit and
/// closes the database.
pub async fn run(
    config: Config,
    state: State,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let upstream = ServiceNow::new(&config.http)?;
    let State {
        store,
        thread,
        records,
        ..
    } = state;
    server::give_group(listener.path(), config.access.socket_group.as_deref())?;
    let count = records.len();
    let tokens = Tokens::start(
        records,
        store.clone(),
        upstream,
        config.refresh.clone(),
        config.login.clone(),
    );
    let daemon = Arc::new(Daemon {
        tokens: tokens.clone(),
        access: Access::new(&config.access),
        started: Instant::now(),
        socket: listener.path().to_path_buf(),
        state_dir: config.state_dir.clone(),
        connections: Gauge::default(),
    });
    tracing::info!(socket = %listener.path().display(), authentications = count, "serving");
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        daemon,
        config.limits.clone(),
        stop.clone(),
    ));
    shutdown.await;
    tracing::info!("shutting down");
    stop.cancel();
    if server.await.is_err() {
        tracing::error!("the server task panicked");
    }
    tokens.shutdown().await;
    store.close();
    drop(store);
    tokio::task::spawn_blocking(move || thread.join()).await?;
    tracing::info!("stopped");
    Ok(())
}
