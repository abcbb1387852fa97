//! snctld: keeps ServiceNow OAuth tokens fresh and hands them to local
//! processes over a Unix socket.
//!
//! Start-up is split so that nothing is written before the master key is
//! proven right and the socket is bound only once the state is usable:
//! [`open_state`] (key and database, synchronous), [`server::bind`] (or the
//! socket systemd passed, [`systemd::take_passed_socket`]), then [`run`]
//! until the shutdown future completes. `main` and the tests call the same
//! three; `main` calls [`run_with`] to talk to systemd and reload on SIGHUP.

pub mod access;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod jwt;
pub mod process;
pub mod proxy;
pub mod rekey;
pub mod restore;
pub mod server;
pub mod servicenow;
pub mod store;
pub mod systemd;
pub mod tokens;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use snctl_shared::protocol::{
    BackupChunk, BackupRequest, DaemonStatus, Reply, Request, Response, BACKUP_CHUNK,
};
use snctl_shared::Error;
use snctl_shared::PROTOCOL_VERSION;

use access::{Access, Peer};
pub use config::Config;
use crypto::KeySource;
use server::{Gauge, Listener};
use servicenow::ServiceNow;
use store::{Record, Store, StoreThread, UncheckedDb, DB_FILE};
use systemd::Service;
use tokens::Tokens;

/// The opened state directory: key checked, database migrated and loaded.
pub struct State {
    store: Store,
    thread: StoreThread,
    records: Vec<Record>,
    key_source: KeySource,
    /// Shared lock on the state directory, held while the daemon runs so
    /// that `snctld rekey` cannot run under it.
    _lock: Option<StateDirLock>,
}

impl State {
    /// Where the master key came from.
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }
}

/// Opens the state directory: creates it (0700) when missing, refuses one
/// that group or others may write, takes its shared lock, loads and checks
/// the master key ([`crypto::load_master_key`], from the sources the
/// configuration names), then migrates the database, checks it (`PRAGMA
/// quick_check`; anything but "ok" stops the start) and loads it. A wrong or
/// exposed key fails here, before anything is written, and so does a
/// database holding a trigger ([`store::UncheckedDb::prepare`]). An
/// authentication whose sealed secrets do not open, whose settings fail
/// their MAC or whose instance URL is refused is logged and left out; the
/// others load.
pub fn open_state(config: &Config) -> anyhow::Result<State> {
    use anyhow::Context;
    use std::os::unix::fs::DirBuilderExt;
    let dir = &config.state_dir;
    if !dir.exists() {
        // Nothing is made through a path another user could redirect.
        // SAFETY: geteuid cannot fail and touches no memory.
        let me = unsafe { libc::geteuid() };
        snctl_shared::paths::check_before_creating(dir, |uid| uid == me || uid == 0).map_err(
            |e| {
                anyhow::anyhow!(
                    "cannot create the state directory {}: its path is not safe: {e}; use a path that only root and snctld's user can change",
                    dir.display()
                )
            },
        )?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    }
    check_state_dir(dir)?;
    let lock = match lock_state_dir(dir, false) {
        Ok(lock) => Some(lock),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => anyhow::bail!(
            "snctld rekey is running on the state directory {}: wait for it to finish",
            dir.display()
        ),
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "cannot lock the state directory; a running `snctld rekey` would go unnoticed");
            None
        }
    };
    let sources = crypto::KeySources::of(config);
    let db_path = dir.join(DB_FILE);
    // Without a database the key comes first, so that a refused key leaves
    // no empty database behind.
    let (db, (key, key_source)) = if db_path.exists() {
        let db = UncheckedDb::open(&db_path)?;
        let check = db.key_check()?;
        let key = crypto::load_master_key(&sources, check.as_deref())?;
        (db, key)
    } else {
        let key = crypto::load_master_key(&sources, None)?;
        (UncheckedDb::open(&db_path)?, key)
    };
    tracing::info!(key = %key_source.path().display(), key_id = %key.id_hex(), "master key loaded");
    private_files(&db_path)?;
    let mut db = db.prepare(Arc::new(key))?;
    let check = db
        .quick_check()
        .with_context(|| format!("cannot check the database {}", db_path.display()))?;
    if check != "ok" {
        anyhow::bail!(
            "the database {} is damaged (SQLite quick_check: {}): restore it from a backup, or move it away to start empty",
            db_path.display(),
            check
                .lines()
                .filter(|l| !l.starts_with("***"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let (records, unreadable) = db.load_readable()?;
    for error in &unreadable {
        match error {
            store::RowError::Sealed(crypto::CryptoError::Open { name, field }) => {
                tracing::error!(authentication = %name, field = *field, "{error}: left out, the other authentications are served");
            }
            // Its message says it is left out and what to do.
            _ => tracing::error!(authentication = error.name().unwrap_or_default(), "{error}"),
        }
    }
    let (store, thread) = Store::spawn(db).context("cannot start the store thread")?;
    Ok(State {
        store,
        thread,
        records,
        key_source,
        _lock: lock,
    })
}

/// The database and its WAL files are created 0600; one that others may
/// read (restored from a backup, say) is made private again.
fn private_files(db: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "the database was open to others: made it 0600");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| anyhow::anyhow!("cannot make {} private (chmod 600): {e}", path.display()),
            )?;
        }
    }
    Ok(())
}

/// Refuses a state directory that group or others may write (it holds the
/// key and the database), or whose path goes through a directory or link
/// another user could change; warns when they may read or enter it.
pub(crate) fn check_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    snctl_shared::paths::check_traversal(dir, |uid| uid == me || uid == 0).map_err(|e| {
        anyhow::anyhow!(
            "the path of the state directory {} is not safe: {e}; use a path that only root and snctld's user can change",
            dir.display()
        )
    })?;
    let meta = std::fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("cannot read the state directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("the state directory {} is not a directory", dir.display());
    }
    if meta.uid() != me && meta.uid() != 0 {
        anyhow::bail!(
            "the state directory {} belongs to uid {}, not to snctld's uid {me} or root: another user could swap its files; run `chown {me} {}`",
            dir.display(),
            meta.uid(),
            dir.display()
        );
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        anyhow::bail!(
            "the state directory {} is writable by group or others (mode {mode:o}): run `chmod 700 {}` and start again",
            dir.display(),
            dir.display()
        );
    }
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = %format!("{mode:o}"), "the state directory is open to group or others; 0700 is expected (chmod 700)");
    }
    Ok(())
}

/// For work on the state directory with the daemon stopped (`rekey`,
/// `restore`): the directory checked, its lock held exclusively, and no
/// daemon answering on the socket.
pub(crate) fn lock_stopped_state_dir(config: &Config) -> anyhow::Result<StateDirLock> {
    use anyhow::Context;
    let dir = &config.state_dir;
    check_state_dir(dir)?;
    let stop_first = "stop it first (systemctl stop snctld.socket snctld.service)";
    let lock = match lock_state_dir(dir, true) {
        Ok(lock) => lock,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => anyhow::bail!(
            "snctld is running on {} (it holds the state directory's lock): {stop_first}",
            dir.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot lock the state directory {}", dir.display()))
        }
    };
    if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        anyhow::bail!(
            "snctld is running and serving {}: {stop_first}",
            config.socket.display()
        );
    }
    Ok(lock)
}

/// An advisory lock (`flock`) on the state directory: shared for a running
/// daemon, exclusive for `snctld rekey`. Released when dropped, or when the
/// process dies.
pub(crate) struct StateDirLock(#[allow(dead_code)] std::fs::File);

/// Takes the lock without waiting: `WouldBlock` when it is held in a
/// conflicting way.
pub(crate) fn lock_state_dir(
    dir: &std::path::Path,
    exclusive: bool,
) -> std::io::Result<StateDirLock> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(dir)?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a descriptor we own; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(StateDirLock(file))
}

/// What request handlers share.
pub struct Daemon {
    tokens: Tokens,
    /// Replaced when SIGHUP changes the admin group.
    access: RwLock<Arc<Access>>,
    started: Instant,
    socket: PathBuf,
    state_dir: PathBuf,
    connections: Gauge,
    /// Woken after admin requests, which may change the status summary.
    changed: tokio::sync::Notify,
    /// For backups (the tokens have their own handle).
    store: Store,
    /// Where the master key came from, told with every backup chunk.
    key_path: PathBuf,
    /// Backup snapshots being read, by id.
    backups: Mutex<Snapshots>,
}

/// The temporary copy a backup is made in, inside the state directory.
pub const BACKUP_TMP_FILE: &str = "snctld.db.backup-tmp";

/// How long a backup snapshot is kept after its last chunk was asked for.
const BACKUP_KEEP: Duration = Duration::from_secs(300);

/// Backup snapshots not yet read to the end.
#[derive(Default)]
struct Snapshots {
    next_id: u64,
    kept: HashMap<u64, (Arc<Vec<u8>>, Instant)>,
}

impl Daemon {
    fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One line for systemd's `STATUS=`.
    fn summary(&self) -> String {
        let o = self.tokens.overview();
        let plural = if o.authentications == 1 { "" } else { "s" };
        let mut line = format!(
            "serving {} authentication{plural} on {}",
            o.authentications,
            self.socket.display()
        );
        if o.unhealthy > 0 {
            line.push_str(&format!("; {} unhealthy", o.unhealthy));
            if o.needs_login > 0 {
                line.push_str(&format!(" ({} need login)", o.needs_login));
            }
        }
        line
    }

    /// Whether `peer` is an admin (they keep connection slots of their own).
    pub fn is_admin(&self, peer: &Peer) -> bool {
        self.access().is_admin(peer)
    }

    /// Answers one request from `peer`, if the access rules allow it.
    pub async fn handle(&self, peer: &Peer, request: Request) -> Response {
        let access = &*self.access();
        match request {
            Request::Token(r) => {
                let reader = |readers: &_| access.require_reader(peer, &r.name, readers);
                let token = self.tokens.token(&r.name, r.min_valid, reader).await?;
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
                let response = self.handle_admin(admin).await;
                self.changed.notify_one();
                response
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
            Request::Backup(r) => self.backup(r).await.map(Reply::Backup),
            Request::Token(_) | Request::List | Request::Show(_) | Request::Status => {
                Err(Error::Internal {
                    message: format!("{} is not an admin request", request.kind()),
                })
            }
        }
    }

    /// One chunk of a backup; the first request takes the snapshot (see
    /// [`BackupRequest`]). A snapshot is dropped once its last chunk is
    /// sent, or [`BACKUP_KEEP`] after it was last read.
    async fn backup(&self, request: BackupRequest) -> Result<BackupChunk, Error> {
        let (id, bytes) = match request.snapshot {
            None => {
                let tmp = self.state_dir.join(BACKUP_TMP_FILE);
                let bytes = self.store.call(move |db| db.backup(&tmp)).await;
                let bytes = Arc::new(bytes.map_err(|error| {
                    tracing::error!(%error, "backup failed");
                    Error::Internal {
                        message: format!("cannot copy the database: {error}"),
                    }
                })?);
                let mut snapshots = self.snapshots();
                snapshots.next_id += 1;
                tracing::info!(snapshot = snapshots.next_id, bytes = bytes.len(), "backup snapshot taken");
                (snapshots.next_id, bytes)
            }
            Some(id) => match self.snapshots().kept.get(&id) {
                Some((bytes, _)) => (id, bytes.clone()),
                None => {
                    return Err(Error::invalid(format!(
                        "backup snapshot {id} is gone (each chunk must be asked for within {} s): run the backup again",
                        BACKUP_KEEP.as_secs()
                    )))
                }
            },
        };
        let total = bytes.len();
        let start = usize::try_from(request.offset)
            .ok()
            .filter(|&o| o <= total)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "offset {} is past the end of backup snapshot {id} ({total} bytes)",
                    request.offset
                ))
            })?;
        let end = total.min(start + BACKUP_CHUNK);
        let mut snapshots = self.snapshots();
        if end == total {
            snapshots.kept.remove(&id);
        } else {
            snapshots.kept.insert(id, (bytes.clone(), Instant::now()));
        }
        Ok(BackupChunk {
            snapshot: id,
            total: total as u64,
            offset: start as u64,
            bytes: bytes[start..end].to_vec(),
            key: self.key_path.display().to_string(),
        })
    }

    /// The backup snapshots, those unread for [`BACKUP_KEEP`] dropped.
    fn snapshots(&self) -> std::sync::MutexGuard<'_, Snapshots> {
        let mut snapshots = self.backups.lock().unwrap_or_else(|p| p.into_inner());
        snapshots
            .kept
            .retain(|_, (_, used)| used.elapsed() < BACKUP_KEEP);
        snapshots
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

/// How long a shutdown waits for requests and refreshes in flight before
/// it stops without them. A refresh still waiting on the instance then has
/// nothing to commit; whatever was sent to the store is written before the
/// database closes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often the `STATUS=` summary is looked at besides after admin
/// requests (failures found by the scheduler change it too).
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Serves `listener` until `shutdown` completes, then stops accepting,
/// answers the requests in flight, lets running refreshes commit and
/// closes the database.
pub async fn run(
    config: Config,
    state: State,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with(config, state, listener, shutdown, Service::none()).await
}

/// [`run`], telling `service` how it goes (readiness, status, stopping,
/// watchdog) and, when it [reloads](Service::reloads), reading the
/// configuration again on SIGHUP. The drain at shutdown is bounded by
/// [`SHUTDOWN_GRACE`].
pub async fn run_with(
    config: Config,
    state: State,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
    service: Service,
) -> anyhow::Result<()> {
    let upstream = ServiceNow::new(&config.http)?;
    let State {
        store,
        thread,
        records,
        key_source,
        ..
    } = state;
    let mut hangup = if service.reloads() {
        use tokio::signal::unix::{signal, SignalKind};
        Some(
            signal(SignalKind::hangup())
                .map_err(|e| anyhow::anyhow!("cannot listen for SIGHUP: {e}"))?,
        )
    } else {
        None
    };
    let count = records.len();
    let proxy_names: Vec<String> = if config.proxy.all {
        records.iter().map(|r| r.auth.name.clone()).collect()
    } else {
        config.proxy.names.clone()
    };
    let proxy_dir = config.proxy.dir_for(&config.socket);
    let mut proxy_listeners = Vec::with_capacity(proxy_names.len());
    for name in proxy_names {
        let path = proxy_dir.join(format!("{name}.sock"));
        let listener = server::bind(
            &path,
            config.socket_mode,
            config.socket_dir_mode,
            config.access.socket_group.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("proxy for {name}: {e}"))?;
        if !records.iter().any(|r| r.auth.name == name) {
            tracing::warn!(%name, "proxy: no such authentication yet; requests get 404 until it is added");
        }
        proxy_listeners.push((name, listener));
    }
    let tcp_listener = match config.proxy.tcp_port {
        Some(port) => {
            let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
                .await
                .map_err(|e| anyhow::anyhow!("proxy on 127.0.0.1:{port}: {e}"))?;
            Some(listener)
        }
        None => None,
    };
    let http = upstream.http().clone();
    let tokens = Tokens::start(
        records,
        store.clone(),
        upstream,
        config.refresh.clone(),
        config.login.clone(),
    );
    let daemon = Arc::new(Daemon {
        tokens: tokens.clone(),
        access: RwLock::new(Arc::new(Access::new(&config.access))),
        started: Instant::now(),
        socket: listener.path().to_path_buf(),
        state_dir: config.state_dir.clone(),
        connections: Gauge::default(),
        changed: tokio::sync::Notify::new(),
        store: store.clone(),
        key_path: key_source.path().to_path_buf(),
        backups: Mutex::default(),
    });
    tracing::info!(socket = %listener.path().display(), passed = listener.is_passed(), authentications = count, "serving");
    let stop = CancellationToken::new();
    let (started, accepting) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(server::serve(
        listener,
        daemon.clone(),
        config.limits.clone(),
        stop.clone(),
        Some(started),
    ));
    let mut proxies = Vec::with_capacity(proxy_listeners.len() + 1);
    let mut by_name = std::collections::HashMap::new();
    for (name, listener) in proxy_listeners {
        tracing::info!(%name, socket = %listener.path().display(), "proxy serving");
        let one = proxy::Proxy::new(name.clone(), daemon.clone(), http.clone(), &config);
        by_name.insert(name, one.clone());
        proxies.push(tokio::spawn(proxy::serve(
            listener,
            one,
            config.limits.clone(),
            stop.clone(),
        )));
    }
    if let Some(listener) = tcp_listener {
        match listener.local_addr() {
            Ok(addr) => {
                tracing::info!(%addr, names = ?by_name.keys().collect::<Vec<_>>(), "proxy serving on TCP")
            }
            Err(error) => tracing::warn!(%error, "proxy serving on TCP, address unknown"),
        }
        proxies.push(tokio::spawn(proxy::serve_tcp(
            listener,
            by_name,
            config.limits.clone(),
            stop.clone(),
        )));
    }
    if accepting.await.is_ok() {
        service.ready(&daemon.summary());
    }
    if let Some(period) = service.watchdog_period() {
        let pinger = service.clone();
        tokens.spawn_watchdog(period, move || pinger.ping());
        tracing::info!(
            period_ms = period.as_millis() as u64,
            "sending WATCHDOG=1 to systemd"
        );
    }
    let status = service
        .notifies()
        .then(|| tokio::spawn(report_status(daemon.clone(), service.clone(), stop.clone())));
    let mut running = config;
    tokio::pin!(shutdown);
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = hup => reload(&mut running, &daemon, &service),
        }
    }
    tracing::info!("shutting down");
    service.stopping();
    stop.cancel();
    // Connections first: a request waiting on a refresh needs the
    // schedulers' machinery until it is answered. Past the grace, the
    // schedulers are still told to stop (the first poll cancels them).
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let drained = tokio::time::timeout_at(deadline, async {
        if server.await.is_err() {
            tracing::error!("the server task panicked");
        }
        for proxy in proxies {
            if proxy.await.is_err() {
                tracing::error!("a proxy task panicked");
            }
        }
    })
    .await
    .is_ok();
    let stopped = tokio::time::timeout_at(deadline, tokens.shutdown())
        .await
        .is_ok();
    if !(drained && stopped) {
        tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "requests or refreshes still waiting on the instance: stopping without them"
        );
    }
    if let Some(status) = status {
        status.abort();
    }
    store.close();
    drop(store);
    tokio::task::spawn_blocking(move || thread.join()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Sends `STATUS=` when the summary changes, until `stop`.
async fn report_status(daemon: Arc<Daemon>, service: Service, stop: CancellationToken) {
    let mut last = daemon.summary();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = daemon.changed.notified() => {}
            _ = tokio::time::sleep(STATUS_EVERY) => {}
        }
        let now = daemon.summary();
        if now != last {
            service.status(&now);
            last = now;
        }
    }
}

/// SIGHUP: reads the configuration again, applies what can change while
/// serving (`log.filter`, `access.admin_group`, `[refresh]`, `[login]`)
/// and logs every change and
/// whether it applied; the others apply at the next start. A file that
/// does not load changes nothing.
fn reload(running: &mut Config, daemon: &Daemon, service: &Service) {
    let new = match running.reload() {
        Ok(new) => new,
        Err(error) => {
            tracing::error!("SIGHUP: configuration not reloaded, the running one stays: {error}");
            return;
        }
    };
    let changes = running.changes(&new);
    if changes.is_empty() {
        tracing::info!("SIGHUP: configuration reloaded, nothing changed");
        return;
    }
    for config::Change {
        setting,
        old,
        new: value,
    } in changes
    {
        match setting {
            "log.filter" => match service.set_log_filter(new.log_filter.as_deref()) {
                Ok(true) => {
                    running.log_filter = new.log_filter.clone();
                    tracing::info!(%setting, from = %old, to = %value, "SIGHUP: {setting} changed, applied");
                }
                Ok(false) => {
                    running.log_filter = new.log_filter.clone();
                    tracing::warn!(%setting, from = %old, to = %value, "SIGHUP: {setting} changed, not used: RUST_LOG or -v set the filter");
                }
                Err(error) => {
                    tracing::error!(%setting, %error, "SIGHUP: cannot apply {setting}");
                }
            },
            "access.admin_group" => {
                let access = Arc::new(Access::new(&new.access));
                *daemon.access.write().unwrap_or_else(|p| p.into_inner()) = access;
                running.access.admin_group = new.access.admin_group.clone();
                tracing::info!(%setting, from = %old, to = %value, "SIGHUP: {setting} changed, applied");
            }
            _ if setting.starts_with("refresh.") || setting.starts_with("login.") => {
                daemon
                    .tokens
                    .set_policies(new.refresh.clone(), new.login.clone());
                running.refresh = new.refresh.clone();
                running.login = new.login.clone();
                tracing::info!(%setting, from = %old, to = %value, "SIGHUP: {setting} changed, applied");
            }
            _ => {
                tracing::warn!(%setting, from = %old, to = %value, "SIGHUP: {setting} changed; it applies at the next start");
            }
        }
    }
}
