//! Files snctld reads its own settings from (the configuration, `[http]
//! ca_file`) must be as safe as the state directory: whoever can change
//! them decides who is admin and which certificates vouch for an instance.
//!
//! [`check_file`] accepts a file owned by root or snctld's user, written by
//! nobody else, and reached through no directory or link another user could
//! change ([`snctl_shared::paths::check_traversal`], the rule of the socket
//! and state paths).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a file is not trusted. One line, the fix named.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeFile {
    #[error("the {what} {} is not safe: {reason}; use a path that only root and snctld's user can change", path.display())]
    Path {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the {what} {} belongs to uid {owner}, not to root or snctld's uid {me}: that user could change what snctld trusts; check it, then run `chown root {}` (or chown it to snctld's user)", path.display(), path.display())]
    Owner {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error("the {what} {} is writable by group or others (mode {mode:o}): any of them could change what snctld trusts; check it, then run `chmod go-w {}`", path.display(), path.display())]
    Writable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("cannot check the {what} {}: {error}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

/// Refuses `path` (the `what`, for the message) unless only root or
/// snctld's user could have written it or where it leads.
pub fn check_file(path: &Path, what: &'static str) -> Result<(), UnsafeFile> {
    let me = nix::unistd::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me;
    let resolved =
        snctl_shared::paths::check_traversal(path, trusted).map_err(|e| UnsafeFile::Path {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let meta = fs::metadata(&resolved).map_err(|error| UnsafeFile::Read {
        what,
        path: path.to_path_buf(),
        error,
    })?;
    if !trusted(meta.uid()) {
        return Err(UnsafeFile::Owner {
            what,
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(UnsafeFile::Writable {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_others_may_write_is_refused_and_a_private_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snctld.toml");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        check_file(&path, "configuration file").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
        let error = check_file(&path, "configuration file").unwrap_err();
        assert!(matches!(error, UnsafeFile::Writable { mode: 0o620, .. }));
        assert!(error.to_string().contains("chmod go-w"), "{error}");
        let missing = check_file(&dir.path().join("none"), "ca_file").unwrap_err();
        assert!(matches!(missing, UnsafeFile::Read { .. }), "{missing}");
    }
}
