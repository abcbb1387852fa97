//! `snctld rekey`: moves every sealed secret to a new master key.
//!
//! The daemon must be stopped. Rekey takes the state directory's lock
//! exclusively (a running daemon holds it shared from [`crate::open_state`]
//! until it exits) and, besides, refuses when the configured socket
//! answers.
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

use anyhow::{bail, Context};

use crate::config::Config;
use crate::crypto::{self, CryptoError, KeySource, MasterKey, NEW_KEY_FILE};
use crate::store::{UncheckedDb, DB_FILE};

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
) -> anyhow::Result<Rekeyed> {
    run(config, new_key_file, say, true)
}

/// Rekey up to and including the commit, without the final rename of
/// `snctld.key.new`: the state a crash right after the commit leaves. For
/// tests of the recovery.
#[doc(hidden)]
pub fn rekey_until_commit(config: &Config) -> anyhow::Result<Rekeyed> {
    run(config, None, &mut |_| {}, false)
}

fn run(
    config: &Config,
    new_key_file: Option<&Path>,
    say: &mut dyn FnMut(&str),
    rename: bool,
) -> anyhow::Result<Rekeyed> {
    let dir = &config.state_dir;
    if !dir.is_dir() {
        bail!(
            "there is no state directory {}: nothing to rekey",
            dir.display()
        );
    }
    let _lock = crate::state::lock_stopped_state_dir(config)?;
    let db_path = dir.join(DB_FILE);
    if !db_path.exists() {
        bail!(
            "there is no database {}: nothing to rekey",
            db_path.display()
        );
    }
    let db = UncheckedDb::open(&db_path)?;
    let Some(check) = db.key_check()? else {
        bail!(
            "the database {} was never started on (it has no key check): nothing to rekey",
            db_path.display()
        );
    };
    let (old, old_source) = match crypto::load_master_key(&config.key_sources(), Some(&check)) {
        Ok(loaded) => loaded,
        Err(error @ CryptoError::WrongKey { .. }) => {
            // Perhaps an earlier rekey committed and its key was not installed.
            if let Some(path) = new_key_file {
                if crypto::read_key_file(path).is_ok_and(|k| crypto::opens_check(&k, &check)) {
                    bail!(
                        "the database is already sealed with the key in {} (an earlier rekey committed): install that key, then start snctld",
                        path.display()
                    );
                }
            }
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    };
    let old_id = old.id_hex();

    // Where the new key goes, and who owns it.
    let (target, owner) = match (&old_source, new_key_file) {
        (KeySource::StateDir(path) | KeySource::Created(path), None) => {
            (dir.join(NEW_KEY_FILE), same_owner_as(path)?)
        }
        (KeySource::StateDir(path) | KeySource::Created(path), Some(_)) => bail!(
            "the master key is the state directory's {}: rekey replaces it there; leave out --new-key-file",
            path.display()
        ),
        (KeySource::Credentials(path) | KeySource::Configured(path), None) => bail!(
            "the master key comes from {}, which snctld does not manage: give --new-key-file PATH for the new key (rekey prints how to install it)",
            path.display()
        ),
        (KeySource::Credentials(_) | KeySource::Configured(_), Some(path)) => {
            (path.to_path_buf(), None)
        }
    };
    let (new_key, bytes) = MasterKey::generate()?;
    let new_id = new_key.id_hex();
    crypto::write_key_file(&target, &bytes, owner).with_context(|| {
        format!(
            "cannot write the new key to {}{}",
            target.display(),
            if new_key_file.is_some() {
                " (it must not exist yet)"
            } else {
                ""
            }
        )
    })?;
    drop(bytes);
    let mut done = Rekeyed {
        resealed: 0,
        old_id,
        new_id: new_id.clone(),
        old_source,
        new_key: target.clone(),
    };
    if let Some(instructions) = done.instructions() {
        say(&instructions);
    }

    // The old key moves into the database handle, which drops it at the
    // commit.
    let resealed = db
        .prepare(Arc::new(old))
        .and_then(|mut db| db.reseal(Arc::new(new_key)));
    done.resealed = match resealed {
        Ok(count) => count,
        Err(error) => {
            // Committed after all (an error after the commit frame reached
            // the disk)? Then the new key must stay.
            let committed = UncheckedDb::open(&db_path)
                .and_then(|db| db.key_check())
                .ok()
                .flatten()
                .and_then(|check| MasterKey::blob_key_id(&check))
                == Some(new_id.clone());
            if committed {
                return Err(anyhow::Error::new(error).context(format!(
                    "the database was re-sealed with key id {new_id}, kept in {}, but reported an error{}",
                    target.display(),
                    if new_key_file.is_none() {
                        " (snctld installs that key at its next start)"
                    } else {
                        ""
                    }
                )));
            }
            let _ = std::fs::remove_file(&target);
            let _ = crypto::sync_dir(target.parent().unwrap_or(Path::new(".")));
            return Err(anyhow::Error::new(error)
                .context("cannot re-seal the database; nothing was changed"));
        }
    };

    if let KeySource::StateDir(path) | KeySource::Created(path) = &done.old_source {
        if rename {
            let finish = || -> std::io::Result<()> {
                std::fs::rename(&target, path)?;
                crypto::sync_dir(dir)
            };
            finish().with_context(|| {
                format!(
                    "the database is re-sealed with the key in {}, which could not be renamed to {}; snctld finishes the rename at its next start",
                    target.display(),
                    path.display()
                )
            })?;
            done.new_key = path.clone();
        }
    }
    Ok(done)
}

/// Run as root on a daemon's state directory, the new key must stay the
/// daemon user's, like the old one.
fn same_owner_as(path: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    use std::os::unix::fs::MetadataExt;
    if nix::unistd::geteuid().as_raw() != 0 {
        return Ok(None);
    }
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the owner of {}", path.display()))?;
    Ok(Some((meta.uid(), meta.gid())))
}
