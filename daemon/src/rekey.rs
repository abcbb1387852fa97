//! `snctld rekey`: moves every sealed secret to a new master key.
//!
//! The daemon must be stopped. Rekey takes the state directory's lock
//! exclusively (a running daemon holds it shared from
//! [`crate::state::open_state`] until it exits) and, besides, refuses when
//! the configured socket answers.
//!
//! The steps, and what a crash between two of them leaves:
//!
//! 1. Load the current key from its sources ([`crypto::load_master_key`]),
//!    proven against the database's key check.
//! 2. Write the new key, mode 0600, synced with its directory: to
//!    `snctld.key.new` in the state directory when the current key is the
//!    state directory's, else to the file the administrator names
//!    (`--new-key-file`; a systemd credential or a configured key file is
//!    theirs to replace). A crash here leaves the database on the old key:
//!    the next start (or rekey) removes a stale `snctld.key.new`; an unused
//!    `--new-key-file` is just a file to delete.
//! 3. Re-seal every blob and the key check in one `BEGIN IMMEDIATE`
//!    transaction ([`Db::reseal`]) and commit. SQLite makes this all or
//!    nothing. The old key is dropped at the commit.
//! 4. State directory key: rename `snctld.key.new` over `snctld.key` and
//!    sync the directory. A crash between 3 and 4 leaves the old
//!    `snctld.key` with a database sealed with the `.new` key; the next
//!    start finds that the `.new` key opens the key check and finishes the
//!    rename. Administrator's key: the database now needs the new key, which
//!    was durable before the commit; rekey prints how to install it.
//!
//! [`Db::reseal`]: crate::store::Db::reseal

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::crypto::{self, CryptoError, KeySource, MasterKey, NEW_KEY_FILE};
use crate::state::{StateDirLock, StateError};
use crate::store::{StoreError, UncheckedDb, DB_FILE};

/// Why a rekey stopped. Each message is one line with its cause and says
/// what was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("there is no state directory {}: nothing to rekey", dir.display())]
    NoStateDir { dir: PathBuf },
    #[error("there is no database {}: nothing to rekey", path.display())]
    NoDatabase { path: PathBuf },
    #[error("the database {} was never started on (it has no key check): nothing to rekey", path.display())]
    NeverStarted { path: PathBuf },
    #[error("the database is already sealed with the key in {} (an earlier rekey committed): install that key, then start snctld", path.display())]
    AlreadyRekeyed { path: PathBuf },
    #[error("the master key is the state directory's {}: rekey replaces it there; leave out --new-key-file", path.display())]
    KeyInStateDir { path: PathBuf },
    #[error("the master key comes from {}, which snctld does not manage: give --new-key-file PATH for the new key (rekey prints how to install it)", path.display())]
    UnmanagedKey { path: PathBuf },
    #[error("cannot read the owner of {}: {error}", path.display())]
    Owner {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write the new key to {}{}: {error}", path.display(), if *must_not_exist { " (it must not exist yet)" } else { "" })]
    WriteKey {
        path: PathBuf,
        must_not_exist: bool,
        error: std::io::Error,
    },
    #[error("the database was re-sealed with key id {new_id}, kept in {}, but reported an error{}: {error}", path.display(), if *installed_at_start { " (snctld installs that key at its next start)" } else { "" })]
    CommittedWithError {
        new_id: String,
        path: PathBuf,
        installed_at_start: bool,
        error: Box<StoreError>,
    },
    #[error("cannot re-seal the database; nothing was changed: {error}")]
    Reseal { error: Box<StoreError> },
    #[error("the database is re-sealed with the key in {}, which could not be renamed to {}; snctld finishes the rename at its next start: {error}", new.display(), path.display())]
    Rename {
        new: PathBuf,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// What a rekey did.
#[derive(Debug)]
pub struct Rekeyed {
    /// Blobs re-sealed, the key check included.
    pub resealed: usize,
    /// Key ids (hex) before and after.
    pub old_id: String,
    pub new_id: String,
    /// Where the old key came from.
    pub old_source: KeySource,
    /// Where the new key is now.
    pub new_key: PathBuf,
}

impl Rekeyed {
    /// The closing line `snctld rekey` prints.
    pub fn summary(&self) -> String {
        format!(
            "re-sealed {} blob{} (the key check included): key id {} -> {}",
            self.resealed,
            if self.resealed == 1 { "" } else { "s" },
            self.old_id,
            self.new_id
        )
    }

    /// What the administrator must do, when the new key is theirs to
    /// install; `None` when rekey puts it in place itself.
    pub fn instructions(&self) -> Option<String> {
        let new = self.new_key.display();
        let old = self.old_source.path().display();
        let id = &self.new_id;
        match &self.old_source {
            KeySource::StateDir(_) | KeySource::Created(_) => None,
            KeySource::Credentials(_) => Some(format!(
                "The new key (key id {id}) is in {new}. Once this rekey has re-sealed the database, snctld starts only with it, not with the credential {old}.\n\
                 Install it as the snctld.key credential before starting snctld:\n  \
                 with LoadCredentialEncrypted=snctld.key:FILE in the unit:  systemd-creds encrypt --name=snctld.key {new} FILE\n  \
                 with LoadCredential=snctld.key:FILE in the unit:  install -m 600 {new} FILE\n\
                 then back it up apart from the database and delete {new}."
            )),
            KeySource::Configured(_) => Some(format!(
                "The new key (key id {id}) is in {new}. Once this rekey has re-sealed the database, snctld starts only with it, not with {old}.\n\
                 Install it in place of the configured key before starting snctld (cp keeps that file's owner and mode 0600):\n  \
                 cp {new} {old}\n\
                 then back it up apart from the database and delete {new}."
            )),
        }
    }
}

/// Runs `snctld rekey` (see the module documentation). `new_key_file` is
/// where the new key goes when the current key does not live in the state
/// directory; it must not exist yet. When the new key is the
/// administrator's to install, `say` is given the instructions (see
/// [`Rekeyed::instructions`]) once the key is written and before the
/// re-seal, so that they are out even if the process dies after its commit.
pub fn rekey(
    config: &Config,
    new_key_file: Option<&Path>,
    say: &mut dyn FnMut(&str),
) -> Result<Rekeyed, RekeyError> {
    commit(config, new_key_file, say)?.finish()
}

/// A rekey whose re-seal is committed (steps 1 to 3): from here on the
/// database opens only with the new key. A state directory key is still
/// `snctld.key.new` until [`Committed::finish`] renames it; one dropped
/// before that leaves what a crash there leaves, which the next start
/// finishes. The state directory stays locked until then.
#[must_use = "the new key is put in place by finish()"]
pub struct Committed {
    rekeyed: Rekeyed,
    dir: PathBuf,
    _lock: StateDirLock,
}

impl Committed {
    /// What was done so far.
    pub fn rekeyed(&self) -> &Rekeyed {
        &self.rekeyed
    }

    /// Step 4: renames a state directory key over the old one and syncs
    /// the directory; an administrator's key is theirs to install.
    pub fn finish(self) -> Result<Rekeyed, RekeyError> {
        let Committed {
            mut rekeyed, dir, ..
        } = self;
        if let KeySource::StateDir(path) | KeySource::Created(path) = &rekeyed.old_source {
            let finish = || -> std::io::Result<()> {
                std::fs::rename(&rekeyed.new_key, path)?;
                crypto::sync_dir(&dir)
            };
            finish().map_err(|error| RekeyError::Rename {
                new: rekeyed.new_key.clone(),
                path: path.clone(),
                error,
            })?;
            rekeyed.new_key = path.clone();
        }
        Ok(rekeyed)
    }
}

/// Steps 1 to 3 of [`rekey`]: the new key written and the database
/// re-sealed with it, committed.
pub fn commit(
    config: &Config,
    new_key_file: Option<&Path>,
    say: &mut dyn FnMut(&str),
) -> Result<Committed, RekeyError> {
    let dir = &config.state_dir;
    if !dir.is_dir() {
        return Err(RekeyError::NoStateDir { dir: dir.clone() });
    }
    let lock = crate::state::lock_stopped_state_dir(config)?;
    let db_path = dir.join(DB_FILE);
    if !db_path.exists() {
        return Err(RekeyError::NoDatabase { path: db_path });
    }
    let db = UncheckedDb::open(&db_path)?;
    // Its migration would sign an older database's settings unseen.
    crate::state::check_not_downgraded(dir, &db_path, &db)?;
    let Some(check) = db.key_check()? else {
        return Err(RekeyError::NeverStarted { path: db_path });
    };
    let (old, old_source) = old_key(config, new_key_file, &check)?;
    let old_id = old.id_hex();
    let (target, owner) = new_key_place(dir, &old_source, new_key_file)?;
    let (new_key, bytes) = MasterKey::generate()?;
    let new_id = new_key.id_hex();
    crypto::write_key_file(&target, &bytes, owner).map_err(|error| RekeyError::WriteKey {
        path: target.clone(),
        must_not_exist: new_key_file.is_some(),
        error,
    })?;
    drop(bytes);
    let mut rekeyed = Rekeyed {
        resealed: 0,
        old_id,
        new_id,
        old_source,
        new_key: target,
    };
    if let Some(instructions) = rekeyed.instructions() {
        say(&instructions);
    }
    rekeyed.resealed = reseal(db, old, new_key, &db_path, &rekeyed, new_key_file.is_none())?;
    Ok(Committed {
        rekeyed,
        dir: dir.clone(),
        _lock: lock,
    })
}

/// The key the database is sealed with now. When it does not open the
/// database, perhaps an earlier rekey committed and its key (in
/// `new_key_file`) was not installed: that is said.
fn old_key(
    config: &Config,
    new_key_file: Option<&Path>,
    check: &[u8],
) -> Result<(MasterKey, KeySource), RekeyError> {
    match crypto::load_master_key(&config.key_sources(), Some(check)) {
        Ok(loaded) => Ok(loaded),
        Err(error @ CryptoError::WrongKey { .. }) => {
            if let Some(path) = new_key_file {
                if crypto::read_key_file(path).is_ok_and(|k| crypto::opens_check(&k, check)) {
                    return Err(RekeyError::AlreadyRekeyed {
                        path: path.to_path_buf(),
                    });
                }
            }
            Err(error.into())
        }
        Err(error) => Err(error.into()),
    }
}

/// Where the new key goes, and who owns it: beside the old one in the state
/// directory (as `snctld.key.new`, renamed after the commit), or where the
/// administrator said when the old key is not snctld's to replace.
fn new_key_place(
    dir: &Path,
    old_source: &KeySource,
    new_key_file: Option<&Path>,
) -> Result<(PathBuf, Option<(u32, u32)>), RekeyError> {
    match (old_source, new_key_file) {
        (KeySource::StateDir(path) | KeySource::Created(path), None) => {
            Ok((dir.join(NEW_KEY_FILE), same_owner_as(path)?))
        }
        (KeySource::StateDir(path) | KeySource::Created(path), Some(_)) => {
            Err(RekeyError::KeyInStateDir { path: path.clone() })
        }
        (KeySource::Credentials(path) | KeySource::Configured(path), None) => {
            Err(RekeyError::UnmanagedKey { path: path.clone() })
        }
        (KeySource::Credentials(_) | KeySource::Configured(_), Some(path)) => {
            Ok((path.to_path_buf(), None))
        }
    }
}

/// Re-seals every blob under `new_key` in one transaction. On an error the
/// new key file is removed, unless the commit reached the disk after all:
/// then the new key must stay.
fn reseal(
    db: UncheckedDb,
    old: MasterKey,
    new_key: MasterKey,
    db_path: &Path,
    done: &Rekeyed,
    installed_at_start: bool,
) -> Result<usize, RekeyError> {
    // The old key moves into the database handle, which drops it at the
    // commit.
    let resealed = db
        .prepare(Arc::new(old))
        .and_then(|mut db| db.reseal(Arc::new(new_key)));
    let error = match resealed {
        Ok(count) => return Ok(count),
        Err(error) => Box::new(error),
    };
    let committed = UncheckedDb::open(db_path)
        .and_then(|db| db.key_check())
        .ok()
        .flatten()
        .and_then(|check| MasterKey::blob_key_id(&check))
        == Some(done.new_id.clone());
    if committed {
        return Err(RekeyError::CommittedWithError {
            new_id: done.new_id.clone(),
            path: done.new_key.clone(),
            installed_at_start,
            error,
        });
    }
    let target = &done.new_key;
    let _ = std::fs::remove_file(target);
    let _ = crypto::sync_dir(target.parent().unwrap_or(Path::new(".")));
    Err(RekeyError::Reseal { error })
}

/// Run as root on a daemon's state directory, the new key must stay the
/// daemon user's, like the old one.
fn same_owner_as(path: &Path) -> Result<Option<(u32, u32)>, RekeyError> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let meta = std::fs::metadata(path).map_err(|error| RekeyError::Owner {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(Some((meta.uid(), meta.gid())))
}
