//! The socket: accepting connections, reading frames, answering them.
//!
//! One thread per connection (see [`serve`]), any number of requests per
//! connection, one at a time. A connection waiting for its next request
//! may idle for `idle_timeout`; once a frame has started it must arrive
//! whole within `read_timeout`. Anything wrong with a frame (too large, malformed, late)
//! ends that connection and nothing else. Past `max_connections`, new
//! connections are closed at once.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::{Listener as IpcListener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use snctl_shared::frame::{self, FrameBuf, FrameError, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use snctl_shared::protocol::{
    Hello, HelloReply, Reply, Request, RequestRef, Response, TokenRequestRef,
};
use snctl_shared::Error;
use snctl_shared::PROTOCOL_VERSION;

use crate::access::Peer;
use crate::settings::{debug, Applies, Changes, InvalidSetting};
use crate::tokens::Warm;

/// Limits on connections.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections one non-admin user may hold at once.
    pub max_per_uid: usize,
    /// How long a connection may wait between requests.
    pub idle_timeout: Duration,
    /// How long a started frame may take to arrive, and a reply to be taken.
    pub read_timeout: Duration,
    /// How long a connection waits for its next request on a thread of its
    /// own; past this it waits on the runtime's poller and its thread goes
    /// back to the pool (an idle connection holds no thread).
    pub park_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            max_per_uid: 64,
            idle_timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(10),
            park_after: Duration::from_secs(1),
        }
    }
}

/// `[server]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    max_connections: Option<usize>,
    max_connections_per_user: Option<usize>,
    idle_timeout_secs: Option<u64>,
    read_timeout_secs: Option<u64>,
}

impl Limits {
    /// How long a connection's thread waits for its next request: until
    /// it parks, or its idle time is over if that comes first.
    fn between_requests(&self) -> Duration {
        self.park_after.min(self.idle_timeout)
    }

    /// Reads `[server]` over these limits.
    pub fn apply(&mut self, s: ServerSection) -> Result<(), InvalidSetting> {
        if let Some(n) = s.max_connections {
            if n == 0 {
                return Err(InvalidSetting(
                    "server.max_connections must be at least 1".into(),
                ));
            }
            self.max_connections = n;
        }
        if let Some(n) = s.max_connections_per_user {
            if n == 0 {
                return Err(InvalidSetting(
                    "server.max_connections_per_user must be at least 1".into(),
                ));
            }
            self.max_per_uid = n;
        }
        let seconds = crate::config::seconds;
        if let Some(idle) = seconds("server.idle_timeout_secs", s.idle_timeout_secs)? {
            self.idle_timeout = idle;
        }
        if let Some(read) = seconds("server.read_timeout_secs", s.read_timeout_secs)? {
            self.read_timeout = read;
        }
        Ok(())
    }

    /// What differs in `new`; the limits are set when the server starts.
    pub fn changes(&self, new: &Limits) -> Changes {
        let next = Applies::NextStart;
        let mut changes = Changes::default();
        changes
            .compare(
                "server.max_connections",
                next,
                &self.max_connections,
                &new.max_connections,
                debug,
            )
            .compare(
                "server.max_connections_per_user",
                next,
                &self.max_per_uid,
                &new.max_per_uid,
                debug,
            )
            .compare(
                "server.idle_timeout_secs",
                next,
                &self.idle_timeout,
                &new.idle_timeout,
                debug,
            )
            .compare(
                "server.read_timeout_secs",
                next,
                &self.read_timeout,
                &new.read_timeout,
                debug,
            );
        changes
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another snctld is already serving {0}: stop it first, or give this one another --socket"
    )]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket: move it away or choose another --socket")]
    NotASocket(PathBuf),
    #[error("cannot create the socket directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("the socket directory {path} {problem}: anyone who can write there could replace the socket; use a directory only snctld's user can write (e.g. /run/snctld)")]
    UnsafeDir { path: PathBuf, problem: String },
    #[error("the path of the socket directory {path} is not safe: {problem}; anyone who can change it could point clients at another socket: use a path that only root and snctld's user can change (e.g. /run/snctld)")]
    UnsafePath { path: PathBuf, problem: String },
    #[error("the socket passed by the service manager (fd {fd}) {problem}: give the socket unit a single ListenStream= with a filesystem path")]
    Passed { fd: i32, problem: String },
    #[error("cannot give the socket {path} to group {group}: {source}")]
    Group {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
}

/// A listening socket: bound by snctld (its file is removed when the
/// listener is dropped) or passed by the service manager (left alone).
pub struct Listener {
    inner: IpcListener,
    path: PathBuf,
    passed: bool,
}

impl Listener {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the service manager passed this socket (socket activation):
    /// its file, mode and group are the manager's, never touched here.
    pub fn is_passed(&self) -> bool {
        self.passed
    }

    /// The next connection and who is on its other end.
    async fn accept(&self) -> io::Result<(Stream, Peer)> {
        let stream = self.inner.accept().await?;
        let peer = match &stream {
            Stream::UdSocket(socket) => Peer::of(socket.inner())?,
        };
        Ok((stream, peer))
    }

    /// The next connection, or `None` once `stop` is cancelled. A failed
    /// accept (EMFILE and friends) is logged and tried again after a short
    /// pause instead of spinning.
    pub(crate) async fn next(&self, stop: &CancellationToken) -> Option<(Stream, Peer)> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                accepted = self.accept() => match accepted {
                    Ok(accepted) => return Some(accepted),
                    Err(error) => {
                        tracing::warn!(%error, socket = %self.path.display(), "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    /// Serves `fd`, a socket the service manager passed, once
    /// [`check_passed`] has accepted it. Needs a tokio runtime. Dropping the
    /// listener closes the descriptor and leaves the socket file in place.
    pub fn adopt(fd: OwnedFd, path: PathBuf) -> Result<Listener, BindError> {
        use interprocess::os::unix::uds_local_socket::tokio::Listener as UdsListener;
        let raw = fd.as_raw_fd();
        // From a descriptor interprocess reclaims no name: the file stays.
        let uds = UdsListener::try_from(fd).map_err(|e| BindError::Passed {
            fd: raw,
            problem: format!("cannot be served: {e}"),
        })?;
        Ok(Listener {
            inner: IpcListener::from(uds),
            path,
            passed: true,
        })
    }
}

/// Checks that `fd`, passed by the service manager, is what snctld serves:
/// a listening stream socket in the Unix domain, bound to a filesystem
/// path (never the abstract namespace, which has no permissions). Returns
/// that path.
pub fn check_passed(fd: BorrowedFd<'_>) -> Result<PathBuf, BindError> {
    use nix::sys::socket::{
        getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
    };
    let raw = fd.as_raw_fd();
    let problem = |problem: String| BindError::Passed { fd: raw, problem };
    let addr = getsockname::<SockaddrStorage>(raw)
        .map_err(|e| problem(format!("is not a socket ({e})")))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(problem(format!(
            "is not a Unix socket but {}",
            addr.family()
                .map(|f| format!("{f:?}"))
                .unwrap_or_else(|| "of an unknown family".into())
        )));
    }
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => {
            return Err(problem(format!(
                "is a {other:?} socket, not a stream socket (ListenStream=)"
            )))
        }
        Err(e) => return Err(problem(format!("has no socket type ({e})"))),
    }
    match getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => return Err(problem("is not listening".into())),
        Err(e) => return Err(problem(format!("cannot be checked for listening ({e})"))),
    }
    let unix = addr
        .as_unix_addr()
        .ok_or_else(|| problem("has no Unix address".into()))?;
    match unix.path() {
        Some(path) => Ok(path.to_path_buf()),
        None if unix.as_abstract().is_some() => Err(problem(
            "is in the abstract namespace, which has no permissions".into(),
        )),
        None => Err(problem("has no name".into())),
    }
}

/// Binds the socket at `path` with `mode`, replacing a stale socket file
/// left by a daemon that died, but never one that still answers.
pub fn bind(
    path: &Path,
    mode: u32,
    dir_mode: u32,
    group: Option<&str>,
) -> Result<Listener, BindError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.exists() {
        let me = nix::unistd::geteuid().as_raw();
        snctl_shared::paths::check_before_creating(dir, |uid| uid == me || uid == 0).map_err(
            |e| BindError::UnsafePath {
                path: dir.to_path_buf(),
                problem: e.to_string(),
            },
        )?;
        let dir_err = |source| BindError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)
            .map_err(dir_err)?;
        // The umask (snctld's is 077) cut the mode: a system socket's
        // directory must let its group through.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
            .map_err(dir_err)?;
    }
    check_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(path.to_path_buf())),
            Err(_) => {
                tracing::info!(path = %path.display(), "replacing a stale socket");
                let _ = std::fs::remove_file(path);
            }
        },
        Err(_) => {}
    }
    let listen_err = |source| BindError::Listen {
        path: path.to_path_buf(),
        source,
    };
    let name = path.to_fs_name::<GenericFilePath>().map_err(listen_err)?;
    let inner = ListenerOptions::new()
        .name(name)
        .mode(mode as libc::mode_t)
        // Unlink the socket file when the listener is dropped.
        .reclaim_name(true)
        .create_tokio()
        .map_err(listen_err)?;
    // The group first, then the mode: the mode given above was cut by the
    // umask (snctld's is 077), so until now the socket was only stricter.
    if let Some(name) = group {
        give_group(path, name)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(listen_err)?;
    Ok(Listener {
        inner,
        path: path.to_path_buf(),
        passed: false,
    })
}

/// The socket's directory must be ours (or root's) and writable by nobody
/// else, as git's credential cache also demands: whoever can write there
/// can put their own socket in our place. So must every directory and link
/// on the way to it: whoever can swap a link on the path can point clients
/// at another directory.
fn check_dir(dir: &Path) -> Result<(), BindError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if let Err(e) = snctl_shared::paths::check_traversal(dir, |uid| uid == me || uid == 0) {
        return Err(BindError::UnsafePath {
            path: dir.to_path_buf(),
            problem: e.to_string(),
        });
    }
    let meta = std::fs::metadata(dir).map_err(|source| BindError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let problem = if meta.uid() != me && meta.uid() != 0 {
        Some(format!(
            "belongs to uid {}, not to snctld's uid {me}",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by {} (mode {:o})",
            if meta.mode() & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(BindError::UnsafeDir {
            path: dir.to_path_buf(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Gives the socket file to `name` (a group name or number; system mode:
/// `snctl`), so that its members may connect. A group that does not exist
/// is skipped with a warning.
fn give_group(path: &Path, name: &str) -> Result<(), BindError> {
    use std::os::unix::fs::MetadataExt;
    let Some(gid) = crate::access::group_id(name) else {
        tracing::warn!(group = %name, "the socket group does not exist: only root, snctld's user and its primary group can connect");
        return Ok(());
    };
    // Already its group when it is snctld's own (the shipped unit's
    // Group=): no chown, which the unit's system call filter denies.
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.gid() == gid) {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|source| BindError::Group {
        path: path.to_path_buf(),
        group: name.to_string(),
        source,
    })
}

/// Connections kept for admins once `max_connections` are taken, so that
/// a flood of connections never locks an admin out.
pub const ADMIN_RESERVE: usize = 16;

/// Who may hold a connection on one listener: at most `max_connections`,
/// at most `max_per_uid` for one non-admin user, and a reserve that only
/// admins may use once the rest are taken.
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    per_uid: Arc<PerUid>,
    max_connections: usize,
    max_per_uid: usize,
}

/// A connection let in by a [`Gate`], counted until dropped.
pub(crate) struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: UidSlot,
}

impl Gate {
    pub(crate) fn new(limits: &Limits) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            reserve: Arc::new(Semaphore::new(ADMIN_RESERVE)),
            per_uid: Arc::new(PerUid::default()),
            max_connections: limits.max_connections,
            max_per_uid: limits.max_per_uid,
        }
    }

    /// Lets `peer` in, or logs why not (the caller then closes).
    pub(crate) fn admit(&self, peer: &Peer, admin: bool) -> Option<Admitted> {
        let Some(slot) = self.per_uid.take(peer.uid, self.max_per_uid, admin) else {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                unit = peer.unit.as_deref(),
                limit = self.max_per_uid,
                "connection limit of this user reached; closing a new connection"
            );
            return None;
        };
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .or_else(|e| match admin {
                true => self.reserve.clone().try_acquire_owned(),
                false => Err(e),
            });
        let Ok(permit) = permit else {
            tracing::warn!(
                limit = self.max_connections,
                "connection limit reached; closing a new connection"
            );
            return None;
        };
        Some(Admitted {
            _permit: permit,
            _slot: slot,
        })
    }
}

/// Open connections per uid.
#[derive(Default)]
struct PerUid(std::sync::Mutex<std::collections::HashMap<u32, usize>>);

/// One connection counted for its uid until dropped.
struct UidSlot {
    table: Arc<PerUid>,
    uid: u32,
}

impl PerUid {
    /// A slot for `uid`, unless a non-admin already holds `limit`.
    fn take(self: &Arc<Self>, uid: u32, limit: usize, admin: bool) -> Option<UidSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(uid).or_insert(0);
        if !admin && *count >= limit {
            return None;
        }
        *count += 1;
        Some(UidSlot {
            table: self.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut counts = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// Counts open connections for `snctl status`, and every one accepted
/// for `snctl metrics`.
#[derive(Default)]
pub struct Gauge(AtomicU32, AtomicU64);

/// What answers the requests [`serve`] reads: the dispatcher
/// ([`crate::dispatch::Dispatcher`]), which the server does not know.
pub trait Handler: Send + Sync + 'static {
    /// Whether `peer` is an admin (they keep connection slots of their own).
    fn is_admin(&self, peer: &Peer) -> bool;
    /// Counts the open connections, for the status.
    fn connections(&self) -> &Gauge;
    /// Answers one request from `peer`.
    fn handle(&self, peer: &Peer, request: Request) -> impl Future<Output = Response>;
    /// Answers a token request at once when a token valid long enough is
    /// in hand and `peer` may read it: the answer encoded into `out` (a
    /// whole frame), and the token's expiry in seconds since the epoch.
    /// `warm` is the connection's copy of its last answer, which it may
    /// answer from. `None` sends the request the whole way
    /// ([`Handler::handle`]), which refreshes, waits or refuses.
    fn token_now(
        &self,
        peer: &Peer,
        request: &TokenRequestRef<'_>,
        warm: &mut Warm,
        out: &mut Vec<u8>,
    ) -> Option<i64>;
}

impl Gauge {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// How many were accepted since the start.
    pub fn total(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }
}

struct Open<'a>(&'a Gauge);

impl<'a> Open<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.0.fetch_add(1, Ordering::Relaxed);
        gauge.1.fetch_add(1, Ordering::Relaxed);
        Open(gauge)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `stop` is cancelled, then waits for the
/// requests in flight to be answered. `started` hears once the accept loop
/// runs.
///
/// Each connection is served by a thread started for it, which reads its
/// frames, answers a warm token itself and drives the (async) request
/// handlers on the runtime's handle for the rest. A connection that waits
/// longer than [`Limits::park_after`] for its next request ends its thread
/// and waits on the runtime's poller, its buffers released ([`Session`]):
/// an idle connection costs a few KiB, not a thread (BENCHMARKS.md); its
/// next request starts a thread again. At most `max_connections` +
/// [`ADMIN_RESERVE`] such threads run at once.
///
/// A thread started for the connection, not one of the runtime's blocking
/// pool: with busy callers on two cores, connections served by the pool's
/// threads fell below 80 % of the thread floor in three to five times as
/// many slices (BENCHMARKS.md, "Threads of their own"). Where the kernel
/// first puts the connection's thread decides it: a connection moved to a
/// new thread once already busy did worse than the pool. A new thread
/// costs about 70 µs at a connection's start (and at its next request
/// after parking) on a 2-core VM, where a pool thread cost none: a
/// one-shot `snctl token` pays it. Detached at once, so that its stack is
/// given back as it ends (kept joinable until then, a thousand ended
/// threads kept 12 MiB of stacks).
///
/// Served as tasks on the runtime's workers instead, a burst of callers woke one task each on two workers,
/// and the kernel, which shares the CPU per thread, gave those two the
/// share of two callers: at 64 callers one request in a hundred waited
/// milliseconds (BENCHMARKS.md). A thread per connection gets the CPU as its
/// caller does.
pub async fn serve<H: Handler>(
    listener: Listener,
    daemon: Arc<H>,
    limits: Limits,
    stop: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let gate = Gate::new(&limits);
    let tracker = TaskTracker::new();
    let live = Arc::new(Live::default());
    let runtime = tokio::runtime::Handle::current();
    if let Some(started) = started {
        let _ = started.send(());
    }
    // Who is calling, before any frame is read; a caller we cannot name
    // gets nothing.
    while let Some((stream, peer)) = listener.next(&stop).await {
        let Some(admitted) = gate.admit(&peer, daemon.is_admin(&peer)) else {
            continue;
        };
        let stream = match blocking(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot serve a connection; closing it");
                continue;
            }
        };
        let (daemon, limits, live, runtime) = (
            daemon.clone(),
            limits.clone(),
            live.clone(),
            runtime.clone(),
        );
        tracker.spawn(async move {
            let _open = Open::new(daemon.connections());
            let conn = match Conn::new(stream, &limits) {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::debug!(%error, "connection ended");
                    return;
                }
            };
            let Some(registered) = live.register(&conn.stream) else {
                return; // stopping
            };
            // Boxed: moved between the task, its thread and the poller
            // as a pointer, it is held once, where the task's state would
            // hold a copy per place it passes through (an idle connection
            // costs the difference: BENCHMARKS.md, "Idle connections").
            let mut session = Some(Box::new(Session {
                _registered: registered,
                conn,
                peer,
                audited: Audited::default(),
                warm: Warm::default(),
                greeted: false,
            }));
            // On a thread until it ends or parks; parked on the poller
            // until its next request.
            while let Some(mut serving) = session.take() {
                let (daemon, runtime) = (daemon.clone(), runtime.clone());
                let (done, served) = tokio::sync::oneshot::channel();
                let started = std::thread::Builder::new()
                    .name("snctld-conn".into())
                    .stack_size(CONNECTION_STACK)
                    .spawn(move || {
                        let result = connection(&mut serving, &*daemon, &runtime);
                        let _ = done.send((serving, result));
                    });
                // Detached now (see above).
                if let Err(error) = started.map(drop) {
                    tracing::warn!(%error, "cannot start a thread for a connection; closing it (raise the unit's TasksMax= or lower [server] max_connections)");
                    break;
                }
                // A thread that panicked took the session with it.
                let Ok((back, result)) = served.await else { break };
                match result {
                    Err(ConnError::Park(left)) => {
                        let mut parked = back;
                        parked.conn.release();
                        parked.warm.release();
                        match parked.conn.readable_within(left).await {
                            Ok(true) => session = Some(parked),
                            Ok(false) => {
                                tracing::debug!(error = %ConnError::Idle, "connection ended")
                            }
                            Err(error) => tracing::debug!(%error, "connection ended"),
                        }
                    }
                    Err(error) => tracing::debug!(%error, "connection ended"),
                    Ok(()) => {}
                }
            }
            drop(admitted);
        });
    }
    drop(listener);
    // Connections waiting for their next request end now; those with a
    // request in flight answer it first.
    live.stop();
    tracker.close();
    tracker.wait().await;
}

/// The stack of a connection's thread: as a thread of the runtime's
/// blocking pool has. The requests other than a warm token run their
/// handlers on it (`Handle::block_on`), a refresh's HTTP exchange among
/// them. Only the pages it touches take memory.
const CONNECTION_STACK: usize = 2 * 1024 * 1024;

/// The accepted stream as a blocking socket, off the runtime's poller.
fn blocking(stream: Stream) -> io::Result<UnixStream> {
    let Stream::UdSocket(socket) = stream;
    let stream = UnixStream::from(OwnedFd::try_from(socket)?);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// The sockets of the connections being served, so that a stop can end
/// their waits for a next request.
#[derive(Default)]
struct Live(std::sync::Mutex<LiveInner>);

#[derive(Default)]
struct LiveInner {
    stopping: bool,
    next: u64,
    sockets: std::collections::HashMap<u64, std::os::fd::RawFd>,
}

/// A connection's place in [`Live`], given up (before its socket closes)
/// when dropped.
struct Registered {
    live: Arc<Live>,
    id: u64,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `stream`, unless the daemon is stopping.
    fn register(self: &Arc<Self>, stream: &UnixStream) -> Option<Registered> {
        let mut inner = self.lock();
        if inner.stopping {
            return None;
        }
        inner.next += 1;
        let id = inner.next;
        inner.sockets.insert(id, stream.as_raw_fd());
        Some(Registered {
            live: self.clone(),
            id,
        })
    }

    /// Shuts the reading side of every connection: a wait for a next
    /// request sees the end of the stream; a reply still goes out.
    fn stop(&self) {
        let mut inner = self.lock();
        inner.stopping = true;
        for fd in inner.sockets.values() {
            // The descriptor is open: its connection deregisters (under this
            // lock) before closing it.
            let _ = nix::sys::socket::shutdown(*fd, nix::sys::socket::Shutdown::Read);
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.live.lock().sockets.remove(&self.id);
    }
}

/// Names a connection remembers having audited; past this many, every
/// handout of another authentication is logged.
const MAX_AUDITED_NAMES: usize = 64;

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("idle for too long")]
    Idle,
    #[error("frame not completed in time")]
    Slow,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("client speaks protocol {0}")]
    Version(u32),
    /// Waited [`Limits::park_after`] for a next request: to wait on the
    /// runtime's poller for the rest of its idle time.
    #[error("parked")]
    Park(Duration),
}

/// A connection between two stretches on a thread: what its thread hands
/// to the poller when it parks, and takes back when a request comes.
struct Session {
    /// Its place in [`Live`]: given up (dropped first) before the socket
    /// closes.
    _registered: Registered,
    conn: Conn,
    peer: Peer,
    /// Authentications whose tokens this connection has been given: the
    /// audit line is written once per connection and authentication. The
    /// caller is fixed for the connection's life, so a process asking
    /// again on it adds nothing to the record, only volume to the log (a
    /// service asking per API call would write thousands of lines a
    /// second).
    audited: Audited,
    /// Its copy of the last token it was answered.
    warm: Warm,
    /// The hello was answered.
    greeted: bool,
}

/// Serves `session` on this thread until it ends (`Ok`, or the error that
/// ended it) or parks ([`ConnError::Park`]).
fn connection<H: Handler>(
    session: &mut Session,
    daemon: &H,
    runtime: &tokio::runtime::Handle,
) -> Result<(), ConnError> {
    let Session {
        conn,
        peer,
        audited,
        warm,
        greeted,
        ..
    } = session;
    if !*greeted {
        tracing::debug!(%peer, "connection");
        let Some(hello) = conn.read::<Hello>()? else {
            return Ok(());
        };
        let reply = HelloReply {
            protocol_version: PROTOCOL_VERSION,
            daemon_version: crate::VERSION.to_string(),
        };
        conn.write(&reply)?;
        if hello.protocol_version != PROTOCOL_VERSION {
            // A warning an admin sees, since the client's user only gets
            // its own message; once per user, protocol and client version
            // in a while, so that a client retrying in a loop does not
            // flood the log. The version string is the client's to
            // choose: cut short, and quoted (escaped).
            let client_version: String = hello.client_version.chars().take(64).collect();
            if mismatch_is_news(peer.uid, hello.protocol_version, &client_version) {
                tracing::warn!(%peer, client_version = ?client_version,
                    "a client speaks protocol {} but snctld speaks {}: refused; snctl and snctld must be of the same release (README, \"Versions\")",
                    hello.protocol_version, PROTOCOL_VERSION);
            }
            return Err(ConnError::Version(hello.protocol_version));
        }
        *greeted = true;
    }
    while conn.next()? {
        // The warm path: a token request read in place and answered from
        // the token in hand, on this thread, into the connection's own
        // buffer: one read, one write, nothing allocated.
        let payload = conn.frames.front()?.unwrap_or_default();
        if let Ok(RequestRef::Token(r)) = frame::decode_request_ref(payload) {
            if let Some(expires_at) = daemon.token_now(peer, &r, warm, &mut conn.out) {
                audited.handed_out(r.name, peer, expires_at);
                conn.frames.pop();
                conn.send_out()?;
                continue;
            }
        }
        answer(conn, peer, daemon, runtime, audited)?;
    }
    Ok(())
}

/// Whether a protocol mismatch of this user, protocol and client version
/// is to be logged: the first time, and again after
/// [`MISMATCH_LOG_EVERY`]. Remembers at most [`MAX_AUDITED_NAMES`] kinds.
fn mismatch_is_news(uid: u32, protocol: u32, client_version: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Seen = HashMap<(u32, u32, String), std::time::Instant>;
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    let key = (uid, protocol, client_version.to_string());
    if seen
        .get(&key)
        .is_some_and(|&at| now.duration_since(at) < MISMATCH_LOG_EVERY)
    {
        return false;
    }
    if seen.len() >= MAX_AUDITED_NAMES {
        seen.retain(|_, &mut at| now.duration_since(at) < MISMATCH_LOG_EVERY);
        if seen.len() >= MAX_AUDITED_NAMES {
            return false;
        }
    }
    seen.insert(key, now);
    true
}

/// How often one kind of protocol mismatch is logged again.
const MISMATCH_LOG_EVERY: Duration = Duration::from_secs(600);

/// Answers the request at the front of `conn` the whole way
/// ([`Handler::handle`]). Kept out of [`connection`]'s loop: the handler's
/// future lives in this function's stack frame, not in the one the warm
/// path runs in.
#[inline(never)]
fn answer<H: Handler>(
    conn: &mut Conn,
    peer: &Peer,
    daemon: &H,
    runtime: &tokio::runtime::Handle,
    audited: &mut Audited,
) -> Result<(), ConnError> {
    let request = frame::decode_request::<Request>(conn.frames.front()?.unwrap_or_default());
    conn.frames.pop();
    let request = request?;
    let kind = request.kind();
    let name = match &request {
        Request::Token(r) => Some(r.name.clone()),
        _ => None,
    };
    let response: Response = runtime.block_on(daemon.handle(peer, request));
    if let (Some(name), Ok(Reply::Token(token))) = (name, &response) {
        audited.handed_out(&name, peer, token.expires_at);
    }
    match &response {
        Err(error @ Error::Forbidden { .. }) => {
            tracing::warn!(
                request = kind,
                uid = peer.uid,
                pid = peer.pid,
                unit = peer.unit.as_deref(),
                "refused: {error}"
            )
        }
        Err(error) => tracing::debug!(request = kind, %error, "request failed"),
        Ok(_) => {}
    }
    frame::encode_into(&response, MAX_RESPONSE_FRAME, &mut conn.out)?;
    let large = conn.out.len() > KEPT_REPLY_BUFFER;
    drop(response);
    let sent = conn.send_out();
    if large {
        // A large reply (a listing of thousands) was built of many small
        // pieces, all freed now.
        crate::process::give_back_free_memory();
    }
    sent
}

/// The authentications whose tokens a connection was given, for its audit
/// lines.
#[derive(Default)]
struct Audited(Vec<String>);

impl Audited {
    /// Logs the handout of `name`'s token (expiring at `expires_at`, in
    /// seconds since the epoch) unless this connection was given one
    /// before.
    fn handed_out(&mut self, name: &str, peer: &Peer, expires_at: i64) {
        if self.0.iter().any(|n| n == name) {
            return;
        }
        tracing::info!(
            %name,
            uid = peer.uid,
            pid = peer.pid,
            unit = peer.unit.as_deref(),
            valid_secs = expires_at - crate::clock::now_ms() / 1000,
            "token handed out"
        );
        if self.0.len() < MAX_AUDITED_NAMES {
            self.0.push(name.to_string());
        }
    }
}

/// Capacity of a connection's reply buffer kept between replies: a large
/// one (a listing of thousands) is given back once sent.
const KEPT_REPLY_BUFFER: usize = 16 * 1024;

/// One connection's socket, read a frame at a time ([`FrameBuf`]). A
/// connection waiting for its next request may idle for `idle_timeout`;
/// once a frame has started it must arrive whole within `read_timeout`, and
/// a reply must be taken within `read_timeout`.
struct Conn {
    stream: UnixStream,
    limits: Limits,
    frames: FrameBuf,
    /// The reply being sent, encoded: one buffer for the connection's life.
    out: Vec<u8>,
    /// The socket's receive timeout now: set only when it changes, so a
    /// frame that arrives whole costs one read and no other call.
    timeout: Duration,
}

impl Conn {
    fn new(stream: UnixStream, limits: &Limits) -> Result<Conn, ConnError> {
        let wait = limits.between_requests();
        stream
            .set_read_timeout(Some(wait))
            .and_then(|()| stream.set_write_timeout(Some(limits.read_timeout)))
            .map_err(FrameError::Io)?;
        Ok(Conn {
            stream,
            limits: limits.clone(),
            frames: FrameBuf::new(MAX_REQUEST_FRAME),
            out: Vec::with_capacity(frame::READ_CHUNK),
            timeout: wait,
        })
    }

    /// Gives back the buffers while the connection is parked between
    /// requests; they come back with its next request.
    fn release(&mut self) {
        self.frames.release();
        self.out = Vec::new();
    }

    /// Waits on the runtime's poller, for at most `left`, until the
    /// connection has something to read (a request, its end, or the stop
    /// that shut its reading side); `false` when `left` ran out first.
    async fn readable_within(&self, left: Duration) -> io::Result<bool> {
        use std::os::fd::AsFd;
        // SAFETY: the descriptor is borrowed from the connection's socket,
        // which stays open while this registration lives (it ends with
        // this function).
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                self.stream.as_fd(),
                tokio::io::Interest::READABLE,
            )
        }?;
        match tokio::time::timeout(left, fd.readable()).await {
            Ok(ready) => ready.map(|_| true),
            Err(_) => Ok(false),
        }
    }

    /// Waits until a whole frame is at the front of [`Conn::frames`];
    /// `false` when the client closed the connection, or the daemon is
    /// stopping, between requests.
    /// A connection still waiting after [`Limits::park_after`] ends with
    /// [`ConnError::Park`], or [`ConnError::Idle`] when that was its whole
    /// `idle_timeout`.
    fn next(&mut self) -> Result<bool, ConnError> {
        if self.frames.is_empty() {
            let wait = self.limits.between_requests();
            self.set_timeout(wait)?;
            let idle = match self.limits.idle_timeout.checked_sub(wait) {
                Some(left) if !left.is_zero() => ConnError::Park(left),
                _ => ConnError::Idle,
            };
            if self.fill(idle)? == 0 {
                return Ok(false);
            }
        }
        // Read only once a frame came in pieces.
        let mut deadline = None;
        while self.frames.front()?.is_none() {
            let deadline = *deadline
                .get_or_insert_with(|| std::time::Instant::now() + self.limits.read_timeout);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ConnError::Slow);
            }
            self.set_timeout(left)?;
            if self.fill(ConnError::Slow)? == 0 {
                return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()).into());
            }
        }
        Ok(true)
    }

    /// Reads one frame; `None` when the client closed the connection, or
    /// the daemon is stopping, between requests.
    fn read<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, ConnError> {
        if !self.next()? {
            return Ok(None);
        }
        Ok(self.frames.take(frame::decode_request)?)
    }

    /// One read; a timeout is `late`.
    fn fill(&mut self, late: ConnError) -> Result<usize, ConnError> {
        let mut stream = &self.stream;
        match self.frames.read_from(&mut stream) {
            Err(FrameError::Io(e)) if timed_out(&e) => Err(late),
            read => Ok(read?),
        }
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<(), ConnError> {
        if timeout != self.timeout {
            self.stream
                .set_read_timeout(Some(timeout))
                .map_err(FrameError::Io)?;
            self.timeout = timeout;
        }
        Ok(())
    }

    fn write<T: Serialize>(&mut self, message: &T) -> Result<(), ConnError> {
        frame::encode_into(message, MAX_RESPONSE_FRAME, &mut self.out)?;
        self.send_out()
    }

    /// Sends the frame in [`Conn::out`].
    fn send_out(&mut self) -> Result<(), ConnError> {
        use nix::sys::socket::{send, MsgFlags};
        let mut sent = 0;
        while sent < self.out.len() {
            // MSG_NOSIGNAL: a caller that went away is an error here, not a
            // SIGPIPE for the whole daemon.
            match send(
                self.stream.as_raw_fd(),
                &self.out[sent..],
                MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => sent += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => {
                    let error = io::Error::from(errno);
                    return Err(match timed_out(&error) {
                        true => ConnError::Slow,
                        false => FrameError::Io(error).into(),
                    });
                }
            }
        }
        if self.out.capacity() > KEPT_REPLY_BUFFER {
            self.out = Vec::with_capacity(frame::READ_CHUNK);
        }
        Ok(())
    }
}

/// How a socket timeout shows.
fn timed_out(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn hello(version: &str) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            client_version: version.into(),
        }
    }

    fn limits(idle: Duration, read: Duration) -> Limits {
        Limits {
            idle_timeout: idle,
            read_timeout: read,
            park_after: idle,
            ..Limits::default()
        }
    }

    #[test]
    fn frames_are_read_whole_however_they_arrive() {
        use std::io::Write;
        let limits = limits(Duration::from_secs(30), Duration::from_secs(30));
        let (mut client, daemon) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(daemon, &limits).unwrap();
        // Two frames in one write (a hello sent with the first request).
        let mut both = frame::encode(&hello("one"), MAX_REQUEST_FRAME).unwrap();
        both.extend(frame::encode(&hello("two"), MAX_REQUEST_FRAME).unwrap());
        client.write_all(&both).unwrap();
        assert_eq!(conn.read::<Hello>().unwrap().unwrap().client_version, "one");
        assert_eq!(conn.read::<Hello>().unwrap().unwrap().client_version, "two");
        // A frame in pieces: header split, payload in two.
        let one = frame::encode(&hello("three"), MAX_REQUEST_FRAME).unwrap();
        let writer = std::thread::spawn(move || {
            for piece in [&one[..2], &one[2..6], &one[6..]] {
                client.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            client
        });
        assert_eq!(
            conn.read::<Hello>().unwrap().unwrap().client_version,
            "three"
        );
        // The end of the stream between frames: no more requests.
        drop(writer.join().unwrap());
        assert!(conn.read::<Hello>().unwrap().is_none());
    }

    #[test]
    fn a_late_frame_and_an_idle_connection_end_with_their_reasons() {
        use std::io::Write;
        let limits = limits(Duration::from_millis(200), Duration::from_millis(200));
        let (mut client, daemon) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(daemon, &limits).unwrap();
        assert!(matches!(conn.read::<Hello>(), Err(ConnError::Idle)));
        let one = frame::encode(&hello("late"), MAX_REQUEST_FRAME).unwrap();
        client.write_all(&one[..3]).unwrap();
        assert!(matches!(conn.read::<Hello>(), Err(ConnError::Slow)));
        // Cut off mid-frame.
        let (mut client, daemon) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(daemon, &limits).unwrap();
        client.write_all(&one[..6]).unwrap();
        drop(client);
        assert!(matches!(
            conn.read::<Hello>(),
            Err(ConnError::Frame(FrameError::Io(_)))
        ));
        // A header claiming more than a request may hold.
        let (mut client, daemon) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(daemon, &limits).unwrap();
        client.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(matches!(
            conn.read::<Hello>(),
            Err(ConnError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn a_stop_ends_the_wait_for_a_next_request() {
        let limits = limits(Duration::from_secs(600), Duration::from_secs(600));
        let live = Arc::new(Live::default());
        let (_client, daemon) = UnixStream::pair().unwrap();
        let waiting = {
            let live = live.clone();
            std::thread::spawn(move || {
                let _registered = live.register(&daemon).expect("not stopping yet");
                let mut conn = Conn::new(daemon, &limits).unwrap();
                conn.read::<Hello>().map(|h| h.is_none())
            })
        };
        // Stop once the connection is registered (it then waits in read).
        while live.lock().sockets.is_empty() {
            std::thread::yield_now();
        }
        live.stop();
        assert!(matches!(waiting.join().unwrap(), Ok(true)));
        let (_client, late) = UnixStream::pair().unwrap();
        assert!(
            live.register(&late).is_none(),
            "no new connection once stopping"
        );
    }

    #[test]
    fn an_idle_connection_parks_and_wakes_on_a_request_or_a_stop() {
        use std::io::Write;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let limits = Limits {
            park_after: Duration::from_millis(50),
            ..limits(Duration::from_secs(60), Duration::from_secs(60))
        };
        let live = Arc::new(Live::default());
        let (mut client, daemon) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(daemon, &limits).unwrap();
        let _registered = live.register(&conn.stream).unwrap();
        // Nothing within `park_after`: it parks with the rest of its idle
        // time, its buffers given back.
        match conn.read::<Hello>() {
            Err(ConnError::Park(left)) => {
                assert_eq!(left, Duration::from_secs(60) - Duration::from_millis(50))
            }
            other => panic!("expected to park, got {other:?}"),
        }
        conn.release();
        assert_eq!(conn.out.capacity(), 0);
        // A request wakes it, and is read whole.
        client
            .write_all(&frame::encode(&hello("after"), MAX_REQUEST_FRAME).unwrap())
            .unwrap();
        assert!(runtime
            .block_on(conn.readable_within(Duration::from_secs(60)))
            .unwrap());
        assert_eq!(
            conn.read::<Hello>().unwrap().unwrap().client_version,
            "after"
        );
        // Nothing more: the rest of its idle time runs out.
        assert!(!runtime
            .block_on(conn.readable_within(Duration::from_millis(50)))
            .unwrap());
        // A stop wakes a parked connection, which then reads the end.
        live.stop();
        assert!(runtime
            .block_on(conn.readable_within(Duration::from_secs(60)))
            .unwrap());
        assert!(conn.read::<Hello>().unwrap().is_none());
    }

    fn refusal(fd: BorrowedFd<'_>) -> String {
        check_passed(fd).unwrap_err().to_string()
    }

    #[test]
    fn only_a_listening_unix_stream_socket_on_a_path_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(check_passed(listener.as_fd()).unwrap(), path);

        let (stream, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(refusal(stream.as_fd()).contains("is not listening"));

        let datagram = std::os::unix::net::UnixDatagram::bind(dir.path().join("d")).unwrap();
        let said = refusal(datagram.as_fd());
        assert!(
            said.contains("is a Datagram socket, not a stream socket"),
            "{said}"
        );

        let tcp = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        assert!(refusal(tcp.as_fd()).contains("is not a Unix socket"));

        let file = std::fs::File::open(dir.path()).unwrap();
        assert!(refusal(file.as_fd()).contains("is not a socket"));

        use std::os::linux::net::SocketAddrExt;
        let name = format!("snctld-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
        let hidden = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let said = refusal(hidden.as_fd());
        assert!(said.contains("abstract namespace"), "{said}");
        assert!(said.contains("single ListenStream="), "{said}");
    }
}
