//! The state directory: where the master key and the database live.
//!
//! [`open_state`] opens it for a daemon that is about to serve (made when
//! missing, checked, its shared lock taken, the key proven right before
//! anything is written, the database migrated, checked and loaded);
//! [`lock_stopped_state_dir`] takes it for work done with the daemon
//! stopped (`snctld rekey`, `snctld restore`). The lock is an advisory
//! `flock` on the directory itself: shared while a daemon runs, exclusive
//! for the offline work, so that neither runs under the other.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};

use crate::config::Config;
use crate::crypto::{self, CryptoError, KeySource};
use crate::store::{
    self, Record, Store, StoreError, StoreThread, UncheckedDb, DB_FILE, SIGNED_SCHEMA,
};

/// Why the state directory cannot be used. Each message is one line with
/// its cause and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {}: its path is not safe: {reason}; use a path that only root and snctld's user can change", dir.display())]
    UnsafeToCreate { dir: PathBuf, reason: String },
    #[error("cannot create the state directory {}: {error}", dir.display())]
    Create { dir: PathBuf, error: io::Error },
    #[error("the path of the state directory {} is not safe: {reason}; use a path that only root and snctld's user can change", dir.display())]
    UnsafePath { dir: PathBuf, reason: String },
    #[error("cannot read the state directory {}: {error}", dir.display())]
    Read { dir: PathBuf, error: io::Error },
    #[error("the state directory {} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("the state directory {} belongs to uid {owner}, not to snctld's uid {me} or root: another user could swap its files; run `chown {me} {}`", dir.display(), dir.display())]
    Owner { dir: PathBuf, owner: u32, me: u32 },
    #[error("the state directory {} is writable by group or others (mode {mode:o}): run `chmod 700 {}` and start again", dir.display(), dir.display())]
    Writable { dir: PathBuf, mode: u32 },
    #[error("snctld rekey is running on the state directory {}: wait for it to finish", dir.display())]
    RekeyRunning { dir: PathBuf },
    #[error("snctld is running on {} (it holds the state directory's lock): {STOP_FIRST}", dir.display())]
    DaemonHoldsLock { dir: PathBuf },
    #[error("cannot lock the state directory {}: {error}", dir.display())]
    Lock { dir: PathBuf, error: io::Error },
    #[error("snctld is running and serving {}: {STOP_FIRST}", socket.display())]
    DaemonServing { socket: PathBuf },
    #[error("cannot make {} private (chmod 600): {error}", path.display())]
    MakePrivate { path: PathBuf, error: io::Error },
    #[error("cannot check the database {}: {error}", path.display())]
    Check { path: PathBuf, error: StoreError },
    #[error("the database {} is damaged (SQLite quick_check: {report}): restore it from a backup, or move it away to start empty", path.display())]
    Damaged { path: PathBuf, report: String },
    #[error("the database {} is at schema {version}, from before settings were signed, but this state directory's has been at schema {SIGNED_SCHEMA} ({} says so): an older or edited database was put in place, and its settings would be signed unseen; if it is a backup you trust, move it out of the state directory and run `snctld restore --trust-old-backup FILE`", path.display(), marker.display())]
    Downgraded {
        path: PathBuf,
        version: i64,
        marker: PathBuf,
    },
    #[error("cannot record in {} that the database signs its settings: {error}", path.display())]
    Mark { path: PathBuf, error: io::Error },
    #[error("cannot start the store thread: {0}")]
    StoreThread(io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The file in the state directory that records that its database has
/// been at a schema whose settings are signed ([`store::SIGNED_SCHEMA`]).
pub const SIGNED_MARKER: &str = "snctld.signed";

const STOP_FIRST: &str = "stop it first (systemctl stop snctld.socket snctld.service)";

/// The opened state directory: key checked, database migrated and loaded.
pub struct State {
    pub(crate) store: Store,
    pub(crate) thread: StoreThread,
    pub(crate) records: Vec<Record>,
    pub(crate) key_source: KeySource,
    /// Shared lock on the state directory, held while the daemon runs so
    /// that `snctld rekey` cannot run under it.
    pub(crate) lock: Option<StateDirLock>,
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
/// database holding a trigger ([`store::UncheckedDb::prepare`]), or one
/// below [`SIGNED_SCHEMA`] where the database has been at it
/// ([`check_not_downgraded`]). An
/// authentication whose sealed secrets do not open, whose settings fail
/// their MAC or whose instance URL is refused is logged and left out; the
/// others load.
pub fn open_state(config: &Config) -> Result<State, StateError> {
    let dir = &config.state_dir;
    if !dir.exists() {
        create_state_dir(dir)?;
    }
    check_state_dir(dir)?;
    let lock = match lock_state_dir(dir, false) {
        Ok(lock) => Some(lock),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(StateError::RekeyRunning { dir: dir.clone() })
        }
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "cannot lock the state directory; a running `snctld rekey` would go unnoticed");
            None
        }
    };
    let sources = config.key_sources();
    let db_path = dir.join(DB_FILE);
    // Without a database the key comes first, so that a refused key leaves
    // no empty database behind.
    let (db, (key, key_source)) = if db_path.exists() {
        let db = UncheckedDb::open(&db_path)?;
        check_not_downgraded(dir, &db_path, &db)?;
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
    let check = db.quick_check().map_err(|error| StateError::Check {
        path: db_path.clone(),
        error,
    })?;
    if check != "ok" {
        return Err(StateError::Damaged {
            path: db_path,
            report: check
                .lines()
                .filter(|l| !l.starts_with("***"))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    // Migrated: from here on, an older schema in its place is refused.
    mark_signed(dir)?;
    let (records, unreadable) = db.load_readable()?;
    db.release_cache()?;
    for error in &unreadable {
        match error {
            store::RowError::Sealed(CryptoError::Open { name, field }) => {
                tracing::error!(%name, field = *field, "{error}: left out, the other authentications are served");
            }
            // Its message says it is left out and what to do.
            _ => tracing::error!(name = error.name().unwrap_or_default(), "{error}"),
        }
    }
    let (store, thread) = Store::spawn(db).map_err(StateError::StoreThread)?;
    Ok(State {
        store,
        thread,
        records,
        key_source,
        lock,
    })
}

/// Refuses a database below [`SIGNED_SCHEMA`] in a state directory whose
/// database has been at it ([`SIGNED_MARKER`]): migrating it would sign its
/// settings as found, so that an edit made where they were not signed (or
/// an old copy put back) would pass for snctld's own. `snctld restore
/// --trust-old-backup` is the way for an old database one vouches for. A
/// database still empty (no version, no key check) holds nothing to sign.
pub(crate) fn check_not_downgraded(
    dir: &Path,
    db_path: &Path,
    db: &UncheckedDb,
) -> Result<(), StateError> {
    let marker = dir.join(SIGNED_MARKER);
    let version = db.version()?;
    if version >= SIGNED_SCHEMA || !marker.exists() {
        return Ok(());
    }
    if version == 0 && db.key_check()?.is_none() {
        return Ok(());
    }
    Err(StateError::Downgraded {
        path: db_path.to_path_buf(),
        version,
        marker,
    })
}

/// Records in the state directory that its database signs its settings
/// ([`SIGNED_MARKER`]), once: written beside and renamed into place, so
/// that it is either whole or absent. It is outside the database, so that
/// putting an older database in place does not take it away; whoever can
/// write the state directory is snctld's user or root already.
pub(crate) fn mark_signed(dir: &Path) -> Result<(), StateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let marker = dir.join(SIGNED_MARKER);
    if marker.exists() {
        return Ok(());
    }
    let tmp = dir.join(format!("{SIGNED_MARKER}.tmp"));
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(
            file,
            "The database of this state directory has been at schema {SIGNED_SCHEMA}, where \
             snctld signs the settings of each authentication: snctld refuses to start on an \
             older one here. Restore an old backup with `snctld restore --trust-old-backup FILE`."
        )?;
        file.sync_all()?;
        fs::rename(&tmp, &marker)?;
        crypto::sync_dir(dir)
    };
    write().map_err(|error| StateError::Mark {
        path: marker.clone(),
        error,
    })
}

/// Makes a missing state directory (0700), through no path another user
/// could redirect.
fn create_state_dir(dir: &Path) -> Result<(), StateError> {
    let me = nix::unistd::geteuid().as_raw();
    snctl_shared::paths::check_before_creating(dir, |uid| uid == me || uid == 0).map_err(|e| {
        StateError::UnsafeToCreate {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| StateError::Create {
            dir: dir.to_path_buf(),
            error,
        })
}

/// The database and its WAL files are created 0600; one that others may
/// read (restored from a backup, say) is made private again.
fn private_files(db: &Path) -> Result<(), StateError> {
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "the database was open to others: made it 0600");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|error| StateError::MakePrivate { path, error })?;
        }
    }
    Ok(())
}

/// Refuses a state directory that group or others may write (it holds the
/// key and the database), or whose path goes through a directory or link
/// another user could change; warns when they may read or enter it.
fn check_state_dir(dir: &Path) -> Result<(), StateError> {
    let me = nix::unistd::geteuid().as_raw();
    snctl_shared::paths::check_traversal(dir, |uid| uid == me || uid == 0).map_err(|e| {
        StateError::UnsafePath {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    let meta = fs::metadata(dir).map_err(|error| StateError::Read {
        dir: dir.to_path_buf(),
        error,
    })?;
    if !meta.is_dir() {
        return Err(StateError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(StateError::Owner {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StateError::Writable {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = %format!("{mode:o}"), "the state directory is open to group or others; 0700 is expected (chmod 700)");
    }
    Ok(())
}

/// For work on the state directory with the daemon stopped (`rekey`,
/// `restore`): the directory checked, its lock held exclusively, and no
/// daemon answering on the socket.
pub fn lock_stopped_state_dir(config: &Config) -> Result<StateDirLock, StateError> {
    let dir = &config.state_dir;
    check_state_dir(dir)?;
    let lock = match lock_state_dir(dir, true) {
        Ok(lock) => lock,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(StateError::DaemonHoldsLock { dir: dir.clone() })
        }
        Err(error) => {
            return Err(StateError::Lock {
                dir: dir.clone(),
                error,
            })
        }
    };
    if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        return Err(StateError::DaemonServing {
            socket: config.socket.clone(),
        });
    }
    Ok(lock)
}

/// An advisory lock (`flock`) on the state directory: shared for a running
/// daemon, exclusive for `snctld rekey`. Released when dropped, or when the
/// process dies.
pub struct StateDirLock(#[allow(dead_code)] Flock<File>);

/// Takes the lock without waiting: `WouldBlock` when it is held in a
/// conflicting way.
fn lock_state_dir(dir: &Path, exclusive: bool) -> io::Result<StateDirLock> {
    let file = File::open(dir)?;
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    let lock = Flock::lock(file, arg).map_err(|(_, errno)| io::Error::from(errno))?;
    Ok(StateDirLock(lock))
}
