//! `snctld restore FILE`: puts a backup made by `snctl backup` in place of
//! the database.
//!
//! The daemon must be stopped: like [`crate::rekey`], restore takes the
//! state directory's lock exclusively and refuses when the configured socket
//! answers. The steps:
//!
//! 1. Open FILE and look at who could have written it: a file that belongs
//!    to another user than the one running restore (or root), or that group
//!    or others may write, is refused unless `--force`. Then copy its bytes
//!    (never a `-wal` beside it) to `snctld.db.restore` in the state
//!    directory, mode 0600, synced.
//! 2. Check that copy: a database of a schema this build knows, `PRAGMA
//!    integrity_check` "ok", no table, index, trigger or view that this
//!    snctld's schema does not create, every table with the columns of its
//!    schema version (no more, no fewer), a key check that the master key
//!    (from the daemon's own sources, [`Config::key_sources`]) opens, and every
//!    authentication's settings matching their MAC under that key with an
//!    instance URL `add` would accept. A backup of a schema older than
//!    [`SIGNED_SCHEMA`] has no MACs to check: it is refused unless
//!    `--trust-old-backup`, and its rows are then signed as they are.
//!    Anything else removes the copy and changes nothing.
//! 3. Checkpoint the current `snctld.db` when it opens, rename it (and a
//!    `-wal` left over) to `snctld.db.before-restore`, rename the copy into
//!    place and sync the directory.
//! 4. Open it the way the daemon does (key check, migrate, quick check,
//!    load) and record that the state directory's database signs its
//!    settings ([`crate::state::SIGNED_MARKER`]; one already there stays).
//!    If that fails, the previous database is put back.
//!
//! `snctld.db.before-restore` stays for the administrator to delete once
//! the restored database serves; a restore refuses to run while it is
//! there, so that it is never overwritten.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::crypto::{self, CryptoError};
use crate::state::StateError;
use crate::store::{ObjectList, RowError, StoreError, UncheckedDb, DB_FILE, SIGNED_SCHEMA};

/// The backup's copy while it is checked.
pub const RESTORE_FILE: &str = "snctld.db.restore";
/// The database a restore replaced, kept for the administrator.
pub const PREVIOUS_FILE: &str = "snctld.db.before-restore";

/// What the administrator vouches for on the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Restore a file that another user owns or others may write.
    pub force: bool,
    /// Restore a backup made before settings were signed, trusting its
    /// settings as they are.
    pub trust_old_backup: bool,
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// Authentications whose secrets open with the master key.
    pub authentications: usize,
    /// Sealed secrets that do not open (their authentications are left out
    /// when the daemon loads, as at any start).
    pub unreadable: usize,
    /// The database now in place.
    pub database: PathBuf,
    /// Where the replaced database is kept, when there was one.
    pub previous: Option<PathBuf>,
}

impl Restored {
    /// The closing lines `snctld restore` prints.
    pub fn summary(&self, file: &Path) -> String {
        let n = self.authentications;
        let mut text = format!(
            "restored {n} authentication{} from {} into {}",
            if n == 1 { "" } else { "s" },
            file.display(),
            self.database.display()
        );
        if self.unreadable > 0 {
            text.push_str(&format!(
                "; {} sealed secret(s) do not open with the master key and are left out",
                self.unreadable
            ));
        }
        if let Some(previous) = &self.previous {
            text.push_str(&format!(
                "\nthe previous database is kept as {}: delete it once snctld serves the restored one",
                previous.display()
            ));
        }
        text
    }
}

/// Why a restore stopped. Each message is one line with its cause and says
/// what was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot create the state directory {}: {error}", dir.display())]
    CreateDir { dir: PathBuf, error: io::Error },
    #[error("{} is left from an earlier restore: move it away first (it may be the only copy of that database); nothing was changed", path.display())]
    PreviousLeft { path: PathBuf },
    #[error("cannot remove the copy an earlier restore left: {0}")]
    CleanUp(io::Error),
    #[error("{} not restored; nothing was changed: {error}", file.display())]
    NotRestored {
        file: PathBuf,
        error: Box<RestoreError>,
    },
    #[error("cannot move {} to {}; the database in place was not replaced: {error}", db.display(), previous.display())]
    MovePrevious {
        db: PathBuf,
        previous: PathBuf,
        error: io::Error,
    },
    #[error("cannot rename {} to {}: {error}", staged.display(), db.display())]
    Install {
        staged: PathBuf,
        db: PathBuf,
        error: io::Error,
    },
    #[error("the restored database does not open: the previous database was put back: {0}")]
    PutBack(Box<RestoreError>),
    #[error("the restored database does not open: removed it: {0}")]
    Removed(Box<RestoreError>),
    #[error("the restored database does not open, and putting the previous one back failed ({put_back}): it is {}: {error}", previous.display())]
    NotPutBack {
        put_back: io::Error,
        previous: PathBuf,
        error: Box<RestoreError>,
    },
    #[error("cannot read the backup {}: {error}", path.display())]
    ReadBackup { path: PathBuf, error: io::Error },
    #[error("cannot copy the backup to {}: {error}", path.display())]
    CopyBackup { path: PathBuf, error: io::Error },
    #[error("the backup {} belongs to uid {owner}, not to uid {me} running restore or root: that user could have edited or replaced it; check where it came from, then `chown {me} {}` (or give --force)", path.display(), path.display())]
    BackupOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("the backup {} is writable by group or others (mode {mode:o}): any of them could have edited or replaced it; check where it came from, then `chmod 600 {}` (or give --force)", path.display(), path.display())]
    BackupWritable { path: PathBuf, mode: u32 },
    #[error("the backup is damaged (SQLite integrity_check: {0})")]
    Damaged(String),
    #[error("the backup holds {objects}, which snctld did not create: someone edited it{}; restore another backup", if *.trigger { " (a trigger would rewrite what snctld stores)" } else { "" })]
    Foreign { objects: String, trigger: bool },
    #[error("the backup is not an snctld database, or an empty one (it has no schema version or no key check): check that it is the file `snctl backup` wrote")]
    NotSnctld,
    #[error("the backup's schema does not match its version ({0}): it was edited (a column or the version changed); restore another backup")]
    SchemaMismatch(i64),
    #[error("the backup has schema {0}, from an snctld that did not sign settings: its instance URLs, client IDs and readers cannot be checked against the key; look at them (sqlite3 FILE 'SELECT name, instance_url, client_id, allow_users, allow_groups, allow_units FROM authentications') and, if they are right, restore with --trust-old-backup")]
    Unsigned(i64),
    #[error("the instance URL of {name} is refused: {reason}")]
    InstanceUrl { name: String, reason: String },
    #[error("the settings of {0} were changed outside snctld (they do not match their MAC under the master key): whoever edited the backup could send the secrets elsewhere; restore another backup")]
    Altered(String),
    #[error("the restored database has no key check")]
    NoKeyCheck,
    #[error("the restored database is damaged (SQLite quick_check: {0})")]
    RestoredDamaged(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Runs `snctld restore FILE` (see the module documentation).
pub fn restore(config: &Config, file: &Path, options: Options) -> Result<Restored, RestoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = &config.state_dir;
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| RestoreError::CreateDir {
                dir: dir.clone(),
                error,
            })?;
    }
    let _lock = crate::state::lock_stopped_state_dir(config)?;
    let db_path = dir.join(DB_FILE);
    let staged = dir.join(RESTORE_FILE);
    let previous = dir.join(PREVIOUS_FILE);
    if previous.exists() {
        return Err(RestoreError::PreviousLeft { path: previous });
    }

    remove_db_files(&staged).map_err(RestoreError::CleanUp)?;
    let checked = copy_private(file, &staged, options.force)
        .and_then(|()| check(config, &staged, options.trust_old_backup));
    if let Err(error) = checked {
        let _ = remove_db_files(&staged);
        return Err(RestoreError::NotRestored {
            file: file.to_path_buf(),
            error: Box::new(error),
        });
    }

    let had_previous = db_path.exists();
    if had_previous {
        checkpoint(&db_path);
        move_db_files(&db_path, &previous).map_err(|error| RestoreError::MovePrevious {
            db: db_path.clone(),
            previous: previous.clone(),
            error,
        })?;
    }
    let installed = fs::rename(&staged, &db_path).and_then(|()| crypto::sync_dir(dir));
    let opened = installed
        .map_err(|error| RestoreError::Install {
            staged: staged.clone(),
            db: db_path.clone(),
            error,
        })
        .and_then(|()| open_restored(config, &db_path));
    // The restored database signs its settings now: an older one put in
    // its place later is refused at start.
    let opened = opened.and_then(|counts| {
        crate::state::mark_signed(dir)?;
        Ok(counts)
    });
    match opened {
        Ok((authentications, unreadable)) => Ok(Restored {
            authentications,
            unreadable,
            database: db_path,
            previous: had_previous.then_some(previous),
        }),
        Err(error) => {
            let put_back = (|| -> io::Result<()> {
                remove_db_files(&db_path)?;
                if had_previous {
                    move_db_files(&previous, &db_path)?;
                }
                crypto::sync_dir(dir)
            })();
            let error = Box::new(error);
            Err(match put_back {
                Ok(()) if had_previous => RestoreError::PutBack(error),
                Ok(()) => RestoreError::Removed(error),
                Err(put_back) => RestoreError::NotPutBack {
                    put_back,
                    previous,
                    error,
                },
            })
        }
    }
}

/// Copies the bytes of `from` to `to` (created new, 0600, synced), once
/// `from` passes [`trusted_file`] (or `force`).
fn copy_private(from: &Path, to: &Path, force: bool) -> Result<(), RestoreError> {
    let unreadable = |error| RestoreError::ReadBackup {
        path: from.to_path_buf(),
        error,
    };
    let mut source = fs::File::open(from).map_err(unreadable)?;
    // The open file is what is looked at and copied: renaming another file
    // into its place afterwards changes neither.
    let meta = source.metadata().map_err(unreadable)?;
    if !force {
        trusted_file(from, &meta)?;
    }
    let mut write = || -> io::Result<()> {
        let mut target = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)?;
        io::copy(&mut source, &mut target)?;
        target.sync_all()
    };
    write().map_err(|error| RestoreError::CopyBackup {
        path: to.to_path_buf(),
        error,
    })
}

/// Refuses a backup file that someone else could have written: one that
/// belongs to another user than the one running restore (or root), or that
/// group or others may write. Its settings are checked against the key
/// anyway, but a file others could replace should not be restored without
/// a look.
fn trusted_file(path: &Path, meta: &fs::Metadata) -> Result<(), RestoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(RestoreError::BackupOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(RestoreError::BackupWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The checks before anything is replaced: schema, integrity, objects,
/// key, settings.
fn check(config: &Config, staged: &Path, trust_old_backup: bool) -> Result<(), RestoreError> {
    let db = UncheckedDb::open(staged).map_err(|error| match error {
        StoreError::SchemaUnknown { .. } => RestoreError::NotSnctld,
        error => error.into(),
    })?;
    let integrity = db.integrity_check()?;
    if integrity != "ok" {
        return Err(RestoreError::Damaged(integrity));
    }
    let foreign = db.foreign_objects()?;
    if !foreign.is_empty() {
        return Err(RestoreError::Foreign {
            trigger: foreign.iter().any(|o| o.kind == "trigger"),
            objects: ObjectList(foreign).to_string(),
        });
    }
    let version = db.version()?;
    if version < 1 {
        return Err(RestoreError::NotSnctld);
    }
    // Before anything reads a column the version promises.
    if !db.schema_matches()? {
        return Err(RestoreError::SchemaMismatch(version));
    }
    let Some(check) = db.key_check()? else {
        return Err(RestoreError::NotSnctld);
    };
    let (key, _) = crypto::load_master_key(&config.key_sources(), Some(&check))?;
    if version < SIGNED_SCHEMA {
        if !trust_old_backup {
            return Err(RestoreError::Unsigned(version));
        }
        return Ok(());
    }
    let mut changed = Vec::new();
    for problem in db.altered(&key)? {
        match problem {
            RowError::Altered { name } => changed.push(name),
            // Signed, so written by an snctld: but not sent anywhere now.
            RowError::InstanceUrl { name, reason } => {
                return Err(RestoreError::InstanceUrl { name, reason })
            }
            RowError::Sealed(error) => return Err(error.into()),
        }
    }
    if !changed.is_empty() {
        return Err(RestoreError::Altered(changed.join(", ")));
    }
    Ok(())
}

/// Opens the restored database as the daemon does; how many
/// authentications load, and how many sealed secrets do not open.
fn open_restored(config: &Config, db_path: &Path) -> Result<(usize, usize), RestoreError> {
    let db = UncheckedDb::open(db_path)?;
    let check = db.key_check()?.ok_or(RestoreError::NoKeyCheck)?;
    let (key, _) = crypto::load_master_key(&config.key_sources(), Some(&check))?;
    let mut db = db.prepare(Arc::new(key))?;
    let quick = db.quick_check()?;
    if quick != "ok" {
        return Err(RestoreError::RestoredDamaged(quick));
    }
    let (records, unreadable) = db.load_readable()?;
    Ok((records.len(), unreadable.len()))
}

/// Folds a `-wal` into the database when it opens; a database that does
/// not is moved with its `-wal` as it is.
fn checkpoint(db_path: &Path) {
    if let Ok(conn) = rusqlite::Connection::open(db_path) {
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let _ = conn.close();
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Renames a database and its `-wal` and `-journal`; drops its `-shm`
/// (rebuilt from the `-wal`).
fn move_db_files(from: &Path, to: &Path) -> io::Result<()> {
    remove_db_files(to)?;
    for suffix in ["", "-wal", "-journal"] {
        match fs::rename(with_suffix(from, suffix), with_suffix(to, suffix)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    remove_file(&with_suffix(from, "-shm"))
}

/// Removes a database and its side files, those that exist.
fn remove_db_files(path: &Path) -> io::Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        remove_file(&with_suffix(path, suffix))?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
