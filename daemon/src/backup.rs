//! Backups over the socket (`snctl backup`): the first request copies the
//! database into a snapshot held in memory, the following ones read it in
//! chunks of [`BACKUP_CHUNK`] bytes (see [`BackupRequest`]). Every chunk
//! names the master key's file, which the backup needs and does not hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use snctl_shared::protocol::{BackupChunk, BackupRequest, BACKUP_CHUNK};
use snctl_shared::Error;

use crate::store::Store;

/// The temporary copy a backup is made in, inside the state directory.
pub const BACKUP_TMP_FILE: &str = "snctld.db.backup-tmp";

/// How long a backup snapshot is kept after its last chunk was asked for.
const BACKUP_KEEP: Duration = Duration::from_secs(300);

/// The snapshots of a running daemon.
pub struct Backups {
    store: Store,
    /// Where the copy is made: [`BACKUP_TMP_FILE`] in the state directory.
    tmp: PathBuf,
    /// Where the master key came from, told with every chunk.
    key_path: PathBuf,
    snapshots: Mutex<Snapshots>,
}

/// Backup snapshots not yet read to the end.
#[derive(Default)]
struct Snapshots {
    next_id: u64,
    kept: HashMap<u64, (Arc<Vec<u8>>, Instant)>,
}

impl Backups {
    pub fn new(store: Store, state_dir: &Path, key_path: &Path) -> Backups {
        Backups {
            store,
            tmp: state_dir.join(BACKUP_TMP_FILE),
            key_path: key_path.to_path_buf(),
            snapshots: Mutex::default(),
        }
    }

    /// One chunk of a backup; the first request takes the snapshot. A
    /// snapshot is dropped once its last chunk is sent, or `BACKUP_KEEP`
    /// after it was last read.
    pub async fn chunk(&self, request: BackupRequest) -> Result<BackupChunk, Error> {
        let (id, bytes) = match request.snapshot {
            None => self.take().await?,
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

    /// Copies the database into a new snapshot.
    async fn take(&self) -> Result<(u64, Arc<Vec<u8>>), Error> {
        let tmp = self.tmp.clone();
        let bytes = self.store.call(move |db| db.backup(&tmp)).await;
        let bytes = Arc::new(bytes.map_err(|error| {
            tracing::error!(%error, "backup failed");
            Error::Internal {
                message: format!("cannot copy the database: {error}"),
            }
        })?);
        let mut snapshots = self.snapshots();
        snapshots.next_id += 1;
        tracing::info!(
            snapshot = snapshots.next_id,
            bytes = bytes.len(),
            "backup snapshot taken"
        );
        Ok((snapshots.next_id, bytes))
    }

    /// The backup snapshots, those unread for [`BACKUP_KEEP`] dropped.
    fn snapshots(&self) -> MutexGuard<'_, Snapshots> {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        snapshots
            .kept
            .retain(|_, (_, used)| used.elapsed() < BACKUP_KEEP);
        snapshots
    }
}
