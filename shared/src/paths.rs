//! Where the daemon's socket is, and whether a path to it can be trusted.
//!
//! Clients look in this order: `--socket`, `$SNCTL_SOCKET`, the user
//! daemon's socket when it exists, the system daemon's socket.
//!
//! A path is only as safe as every directory and symbolic link on the way
//! to it: whoever can replace one component can point the rest of the path
//! at a socket of their own. [`check_traversal`] walks a path the way the
//! kernel resolves it and names the first component someone else could
//! change; the daemon runs it on its socket and state directories, the
//! client library on a socket served by another user.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Environment variable naming the socket.
pub const SOCKET_ENV: &str = "SNCTL_SOCKET";
/// The system daemon's socket.
pub const SYSTEM_SOCKET: &str = "/run/snctld/snctld.sock";
/// Socket file name inside the runtime directory.
pub const SOCKET_FILE: &str = "snctld.sock";
/// Directory name under `/run`, `$XDG_RUNTIME_DIR`, state and config homes.
pub const APP_DIR: &str = "snctld";

/// The user daemon's socket, `$XDG_RUNTIME_DIR/snctld/snctld.sock`, when
/// `XDG_RUNTIME_DIR` is set.
pub fn user_socket(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let runtime = env("XDG_RUNTIME_DIR").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(runtime).join(APP_DIR).join(SOCKET_FILE))
}

/// The socket a client should connect to.
///
/// `env` reads an environment variable and `exists` tells whether a path
/// exists; [`client_socket`] passes the real ones.
pub fn resolve_client_socket(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
    exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = env(SOCKET_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    match user_socket(&env) {
        Some(user) if exists(&user) => user,
        _ => PathBuf::from(SYSTEM_SOCKET),
    }
}

/// [`resolve_client_socket`] with the process environment and file system.
pub fn client_socket(explicit: Option<&Path>) -> PathBuf {
    resolve_client_socket(explicit, |k| std::env::var_os(k), |p| p.exists())
}

/// Symbolic links followed at most while checking a path, as the kernel's
/// own limit (`ELOOP`).
const MAX_LINKS: usize = 40;

/// A component of a path that someone other than the trusted owners could
/// change, or a path that cannot be walked.
#[derive(Debug, thiserror::Error)]
pub enum UnsafePath {
    /// A symbolic link on the way belongs to an untrusted user.
    #[error("{link} is a symbolic link owned by uid {uid}, who could point it elsewhere")]
    Link {
        /// The link.
        link: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// A directory on the way belongs to an untrusted user.
    #[error("{dir} belongs to uid {uid}, who could replace what is in it")]
    Owner {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// A directory on the way may be written by others and is not sticky.
    #[error("{dir} is writable by {who} (mode {mode:o}), who could replace what is in it")]
    Writable {
        /// The directory.
        dir: PathBuf,
        /// Who may write it besides its owner: its group, or everyone.
        who: &'static str,
        /// Its permission bits.
        mode: u32,
    },
    /// More links than the kernel would follow.
    #[error("{path} goes through more than {MAX_LINKS} symbolic links")]
    Loop {
        /// The path being walked.
        path: PathBuf,
    },
    /// A component could not be read.
    #[error("cannot check {path}: {source}")]
    Io {
        /// The component that could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Walks `path` as the kernel would resolve it and checks that nobody but
/// the owners `trusted` accepts could change where it leads: every
/// directory passed through belongs to a trusted owner and is writable by
/// nobody else, unless it is sticky (like `/tmp`: there an entry can only
/// be replaced by its owner, which is checked on the entry itself), and
/// every symbolic link belongs to a trusted owner. The last component is
/// not checked (its owner and mode are the caller's rule) and need not
/// exist yet; returns the path it resolves to, links followed.
pub fn check_traversal(path: &Path, trusted: impl Fn(u32) -> bool) -> Result<PathBuf, UnsafePath> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnsafePath::Io { path, source }
    };
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let mut resolved = PathBuf::from("/");
    if path.is_relative() {
        let cwd = std::env::current_dir().map_err(io(Path::new(".")))?;
        push_front(&mut pending, &cwd);
    }
    let mut links = 0;
    pending.extend(components(path));
    while let Some(name) = pending.pop_front() {
        match name.as_os_str() {
            n if n == OsStr::new("/") => resolved = PathBuf::from("/"),
            n if n == OsStr::new("..") => {
                resolved.pop();
            }
            _ => {
                check_passed_through(&resolved, &trusted)?;
                let next = resolved.join(&name);
                let meta = match std::fs::symlink_metadata(&next) {
                    // A last component yet to be made (a socket to bind)
                    // leads nowhere else.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && pending.is_empty() => {
                        resolved = next;
                        continue;
                    }
                    meta => meta.map_err(io(&next))?,
                };
                if meta.file_type().is_symlink() {
                    if !trusted(meta.uid()) {
                        return Err(UnsafePath::Link {
                            link: next,
                            uid: meta.uid(),
                        });
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(UnsafePath::Loop {
                            path: path.to_path_buf(),
                        });
                    }
                    let target = std::fs::read_link(&next).map_err(io(&next))?;
                    push_front(&mut pending, &target);
                } else {
                    resolved = next;
                }
            }
        }
    }
    Ok(resolved)
}

/// Before `path` is created with its missing parents: checks the way to
/// the nearest ancestor that exists, and that ancestor as a directory to
/// create in, so that nothing is made through a path another user could
/// redirect.
pub fn check_before_creating(path: &Path, trusted: impl Fn(u32) -> bool) -> Result<(), UnsafePath> {
    match path.ancestors().skip(1).find(|a| a.exists()) {
        Some(existing) => {
            let resolved = check_traversal(existing, &trusted)?;
            check_passed_through(&resolved, &trusted)
        }
        None => Ok(()),
    }
}

/// Puts `path`'s components at the front of `pending`, in order; an
/// absolute path restarts from the root.
fn push_front(pending: &mut VecDeque<OsString>, path: &Path) {
    for name in components(path).into_iter().rev() {
        pending.push_front(name);
    }
}

fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir => Some(OsString::from("/")),
            Component::ParentDir => Some(OsString::from("..")),
            Component::Normal(name) => Some(name.to_os_string()),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// A directory the walk passes through.
fn check_passed_through(dir: &Path, trusted: impl Fn(u32) -> bool) -> Result<(), UnsafePath> {
    let meta = std::fs::metadata(dir).map_err(|source| UnsafePath::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !trusted(meta.uid()) {
        return Err(UnsafePath::Owner {
            dir: dir.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(UnsafePath::Writable {
            dir: dir.to_path_buf(),
            who: if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn explicit_beats_environment_beats_user_beats_system() {
        let vars = [
            ("SNCTL_SOCKET", "/e.sock"),
            ("XDG_RUNTIME_DIR", "/run/user/7"),
        ];
        let always = |_: &Path| true;
        let never = |_: &Path| false;
        assert_eq!(
            resolve_client_socket(Some(Path::new("/x.sock")), env(&vars), always),
            PathBuf::from("/x.sock")
        );
        assert_eq!(
            resolve_client_socket(None, env(&vars), always),
            PathBuf::from("/e.sock")
        );
        let vars = [("XDG_RUNTIME_DIR", "/run/user/7")];
        assert_eq!(
            resolve_client_socket(None, env(&vars), always),
            PathBuf::from("/run/user/7/snctld/snctld.sock")
        );
        assert_eq!(
            resolve_client_socket(None, env(&vars), never),
            PathBuf::from(SYSTEM_SOCKET)
        );
        assert_eq!(
            resolve_client_socket(None, env(&[]), always),
            PathBuf::from(SYSTEM_SOCKET)
        );
    }

    /// This process's uid, as the owner of a file it makes.
    fn me() -> u32 {
        let probe = tempfile::tempfile().unwrap();
        probe.metadata().unwrap().uid()
    }

    #[test]
    fn a_path_of_trusted_directories_and_links_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let me = me();
        let trusted = |uid| uid == 0 || uid == me;
        let real = dir.path().join("a").join("b");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink("a/b", dir.path().join("link")).unwrap();
        let resolved = check_traversal(&dir.path().join("link/../b/./x"), trusted);
        // `..` applies to where the link led, as the kernel does it.
        assert_eq!(
            resolved.unwrap(),
            std::fs::canonicalize(dir.path()).unwrap().join("a/b/x")
        );
    }

    #[test]
    fn a_directory_others_may_write_is_unsafe_unless_sticky() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let me = me();
        let trusted = |uid| uid == 0 || uid == me;
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o775)).unwrap();
        let err = check_traversal(&shared.join("sock"), trusted).unwrap_err();
        assert!(
            matches!(
                err,
                UnsafePath::Writable {
                    who: "its group",
                    ..
                }
            ),
            "{err}"
        );
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_traversal(&shared.join("sock"), trusted).unwrap();
        // Creating in it is checked the same way.
        check_before_creating(&shared.join("new/deeper"), trusted).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_before_creating(&shared.join("new/deeper"), trusted).unwrap_err();
        assert!(
            matches!(
                err,
                UnsafePath::Writable {
                    who: "everyone",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn untrusted_owners_and_link_loops_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_traversal(&dir.path().join("x"), |_| false).unwrap_err();
        assert!(
            matches!(&err, UnsafePath::Owner { dir, .. } if dir == Path::new("/")),
            "{err}"
        );
        let me = me();
        let trusted = |uid| uid == 0 || uid == me;
        std::os::unix::fs::symlink("b", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        let err = check_traversal(&dir.path().join("a/x"), trusted).unwrap_err();
        assert!(matches!(err, UnsafePath::Loop { .. }), "{err}");
        let link = dir.path().join("c");
        std::os::unix::fs::symlink("/", &link).unwrap();
        let owner = std::fs::symlink_metadata(&link).unwrap().uid();
        let err =
            check_traversal(&link.join("x"), |uid| uid != owner || uid == u32::MAX).unwrap_err();
        assert!(
            matches!(err, UnsafePath::Owner { .. } | UnsafePath::Link { .. }),
            "{err}"
        );
    }
}
