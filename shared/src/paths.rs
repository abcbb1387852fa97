//! Where the daemon's socket is (DESIGN §6).
//!
//! Clients look in this order: `--socket`, `$SNCTL_SOCKET`, the user
//! daemon's socket when it exists, the system daemon's socket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

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
}
