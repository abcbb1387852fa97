//! Living under a service manager, or on a host without one.
//!
//! - Socket activation ([`take_passed_socket`]): the listening socket that
//!   systemd passes (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) is served
//!   instead of binding one, and never unlinked: systemd owns it.
//! - Notifications ([`Service`]), only when `NOTIFY_SOCKET` is set:
//!   `READY=1` with a `STATUS=` line once the state is open and checked and
//!   the accept loop runs, `STATUS=` when the summary changes, `RELOADING=1`
//!   when a SIGHUP arrives and `READY=1` again once it is handled (with
//!   the reload's failure in `STATUS=`), `STOPPING=1`
//!   at shutdown, `WATCHDOG=1` from the token machinery when
//!   `WATCHDOG_USEC` asks for it (see [`crate::tokens::Tokens::spawn_watchdog`]).
//! - `--daemon` ([`daemonize()`]): forks with the daemonize crate before any
//!   thread or runtime exists; the first process waits on a pipe until the
//!   daemon serves (`ok`) or fails (its one-line error), and exits with that.
//!
//! The protocol bits (the environment variables, the datagram format) come
//! from the `sd-notify` crate; only the checks on what is passed are ours.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::logging::{LogFilterError, SetLogFilter};
use crate::server;

/// Why the daemon cannot take what systemd passed, or fork.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error(
        "the sockets passed by the service manager are unusable (LISTEN_FDS, LISTEN_FDNAMES): {0}"
    )]
    ListenFds(io::Error),
    #[error("the service manager passed {count} sockets ({list}); snctld serves exactly one: give the socket unit a single ListenStream=")]
    TooManySockets { count: usize, list: String },
    #[error(transparent)]
    Passed(#[from] server::BindError),
    #[error("cannot open the log file {}", path.display())]
    LogFile { path: PathBuf, source: io::Error },
    #[error("cannot create a pipe: {0}")]
    Pipe(nix::Error),
    #[error("cannot fork: {0}")]
    Fork(daemonize::Error),
    #[error("the daemon ended before serving the socket{}", match log_file {
        Some(path) => format!(": see {}", path.display()),
        None => "; run snctld in the foreground, or give --log-file, to see why".into(),
    })]
    EndedBeforeServing { log_file: Option<PathBuf> },
    /// The daemon's own one-line error, read from the pipe.
    #[error("{0}")]
    Daemon(String),
}

/// A socket passed by the service manager, checked by
/// [`server::check_passed`].
pub struct PassedSocket {
    pub fd: OwnedFd,
    /// The path it is bound to.
    pub path: PathBuf,
    /// Its name from `LISTEN_FDNAMES` (`unknown` without one).
    pub name: String,
}

/// Takes the listening socket systemd passed, if it passed one for this
/// process (`LISTEN_PID`), and unsets `LISTEN_FDS`, `LISTEN_PID` and
/// `LISTEN_FDNAMES` whatever they said, so that nothing started later
/// inherits them. Refuses more than one socket, and one that is not a
/// listening Unix stream socket bound to a path.
///
/// Call it first thing in `main`, before any thread exists: it changes the
/// environment.
pub fn take_passed_socket() -> Result<Option<PassedSocket>, SystemdError> {
    // SAFETY: called from main before any other thread is started (the
    // contract above), so nothing reads the environment concurrently.
    let passed: Vec<(i32, String)> = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(SystemdError::ListenFds)?
        .collect();
    let (raw, name) = match passed.len() {
        0 => return Ok(None),
        1 => passed.into_iter().next().expect("one"),
        count => {
            return Err(SystemdError::TooManySockets {
                count,
                list: passed
                    .iter()
                    .map(|(fd, name)| format!("fd {fd} {name}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    // SAFETY: sd_listen_fds(3): descriptors 3.. are handed to this process
    // by the manager, and nothing else in it owns them.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let path = server::check_passed(fd.as_fd())?;
    Ok(Some(PassedSocket { fd, path, name }))
}

/// What the daemon tells whoever started it. Cheap to clone.
#[derive(Clone, Default)]
pub struct Service {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `NOTIFY_SOCKET` was set when the daemon started.
    notify: bool,
    /// `WATCHDOG_USEC`, when it is meant for this process.
    watchdog: Option<Duration>,
    /// `--daemon`: the pipe to the waiting first process.
    ready_pipe: Mutex<Option<File>>,
    /// Whether SIGHUP reloads the configuration.
    reload: bool,
    set_log_filter: Option<SetLogFilter>,
    /// Set by `STOPPING=1`; held while sending, so that no `WATCHDOG=1`
    /// follows it.
    stopping: Mutex<bool>,
}

impl Service {
    /// No service manager, no reload: for tests and embedding.
    pub fn none() -> Service {
        Service::default()
    }

    /// What the environment asks for (`NOTIFY_SOCKET`, `WATCHDOG_USEC` and
    /// `WATCHDOG_PID`), with the `--daemon` readiness pipe when there is
    /// one; SIGHUP reloads the configuration file.
    pub fn from_env(ready_pipe: Option<File>, set_log_filter: Option<SetLogFilter>) -> Service {
        let notify = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        Service {
            inner: Arc::new(Inner {
                notify,
                watchdog,
                ready_pipe: Mutex::new(ready_pipe),
                reload: true,
                set_log_filter,
                stopping: Mutex::new(false),
            }),
        }
    }

    /// Whether a service manager listens to notifications.
    pub fn notifies(&self) -> bool {
        self.inner.notify
    }

    /// Whether SIGHUP reloads the configuration.
    pub fn reloads(&self) -> bool {
        self.inner.reload
    }

    /// How often to send `WATCHDOG=1`: half the manager's interval.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.inner.watchdog.map(|d| d / 2)
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.inner.notify {
            return;
        }
        if let Err(error) = sd_notify::notify(states) {
            tracing::warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }

    /// The socket is served: `READY=1` and `STATUS=`, and `ok` to the
    /// first process of `--daemon`.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
        self.answer_parent("ok");
    }

    /// A SIGHUP arrived: `RELOADING=1`, with the monotonic time systemd
    /// wants beside it for `Type=notify-reload`.
    pub fn reloading(&self) {
        let mut states = vec![
            NotifyState::Reloading,
            NotifyState::Status("reloading the configuration"),
        ];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.send(&states);
    }

    /// The reload is over: `READY=1` again, and `STATUS=` the summary, or
    /// the summary and why the file was refused (the running configuration
    /// stays).
    pub fn reloaded(&self, status: &str, refused: Option<&str>) {
        let status = match refused {
            None => one_line(status),
            Some(error) => format!(
                "{}; the last reload failed, the running configuration stays: {}",
                one_line(status),
                one_line(error)
            ),
        };
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(&one_line(status))]);
    }

    /// Shutting down: `STOPPING=1`; no `WATCHDOG=1` after it.
    pub fn stopping(&self) {
        let mut stopping = self
            .inner
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *stopping = true;
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: finishing the requests in flight"),
        ]);
    }

    /// The start failed with `error`: to the first process of `--daemon`,
    /// and as `STATUS=` (never `READY=1`).
    pub fn failed(&self, error: &str) {
        let line = one_line(error);
        self.send(&[NotifyState::Status(&format!("failed to start: {line}"))]);
        self.answer_parent(&line);
    }

    /// `WATCHDOG=1`, until [`Service::stopping`].
    pub fn ping(&self) {
        let stopping = self
            .inner
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !self.inner.notify || *stopping {
            return;
        }
        if let Err(error) = sd_notify::notify(&[NotifyState::Watchdog]) {
            tracing::warn!(%error, "cannot send WATCHDOG=1 (NOTIFY_SOCKET)");
        }
    }

    /// See [`SetLogFilter`]; `Ok(false)` too when nothing can set it.
    pub fn set_log_filter(&self, filter: Option<&str>) -> Result<bool, LogFilterError> {
        match &self.inner.set_log_filter {
            Some(set) => set(filter),
            None => Ok(false),
        }
    }

    /// Writes the verdict to the `--daemon` pipe, once, and closes it.
    fn answer_parent(&self, verdict: &str) {
        let pipe = self
            .inner
            .ready_pipe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut pipe) = pipe {
            // The first process may be gone (killed): nothing to tell then.
            let _ = pipe.write_all(format!("{verdict}\n").as_bytes());
        }
    }
}

/// Status lines and errors are single lines for systemd and the pipe.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where `--daemon` leaves the process.
pub enum Forked {
    /// In the daemon: serve, and report through the pipe (give it to
    /// [`Service::from_env`]).
    Daemon(File),
    /// The first process, with the daemon's verdict, or a daemon that could
    /// not even begin (its error already sent): exit with this.
    Exit(ExitCode),
}

/// `--daemon`: forks twice with the daemonize crate (new session, working
/// directory `/`, umask 077, stdin and stdout on /dev/null, stderr on
/// `log_file` or /dev/null) and locks `pid_file` (flock, held while the
/// daemon lives) with the daemon's pid in it.
///
/// Must run before any thread or runtime exists: only the calling thread
/// survives a fork. Paths must be absolute (the daemon runs in `/`).
///
/// The first process waits until the daemon reports: `ok` once it serves
/// the socket (exit 0), or its one-line error (printed, exit 1). A second
/// daemon on the same pid file fails with a message naming the file and
/// the running pid.
pub fn daemonize(pid_file: &Path, log_file: Option<&Path>) -> Result<Forked, SystemdError> {
    let stderr = match log_file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| SystemdError::LogFile {
                    path: path.to_path_buf(),
                    source,
                })?;
            // SIGHUP opens it again (logrotate).
            crate::logging::set_log_file(path);
            daemonize::Stdio::from(file)
        }
        None => daemonize::Stdio::devnull(),
    };
    let (mut reader, writer) = pipe()?;
    let outcome = daemonize::Daemonize::new()
        .pid_file(pid_file)
        .working_directory("/")
        .umask(0o077)
        .stdout(daemonize::Stdio::devnull())
        .stderr(stderr)
        .execute();
    match outcome {
        daemonize::Outcome::Parent(Err(error)) => Err(SystemdError::Fork(error)),
        daemonize::Outcome::Parent(Ok(_)) => {
            // Only the daemon's copy of the write end stays open: its exit
            // (or its verdict) ends the read.
            drop(writer);
            let mut verdict = String::new();
            let read = reader.read_to_string(&mut verdict);
            let verdict = verdict.trim();
            match (read, verdict) {
                (Ok(_), "ok") => Ok(Forked::Exit(ExitCode::SUCCESS)),
                (Ok(_), "") | (Err(_), _) => Err(SystemdError::EndedBeforeServing {
                    log_file: log_file.map(Path::to_path_buf),
                }),
                (Ok(_), error) => Err(SystemdError::Daemon(error.to_string())),
            }
        }
        daemonize::Outcome::Child(Ok(_)) => {
            drop(reader);
            Ok(Forked::Daemon(writer))
        }
        daemonize::Outcome::Child(Err(error)) => {
            drop(reader);
            let message = match pid_file_holder(pid_file) {
                Some(pid) => format!(
                    "another snctld (pid {pid}) holds the pid file {}: it is running; stop it first, or give this one another --pid-file",
                    pid_file.display()
                ),
                None => format!(
                    "cannot become a daemon (pid file {}): {error}",
                    pid_file.display()
                ),
            };
            let mut writer = writer;
            let _ = writer.write_all(format!("{message}\n").as_bytes());
            Ok(Forked::Exit(ExitCode::FAILURE))
        }
    }
}

/// The pid in `pid_file` when another process holds its lock.
fn pid_file_holder(pid_file: &Path) -> Option<String> {
    use nix::fcntl::{Flock, FlockArg};
    let file = File::open(pid_file).ok()?;
    // Taken, it is released at once; only a lock held elsewhere matters.
    let mut file = match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => return None,
        Err((file, _)) => file,
    };
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let pid = text.trim();
    Some(if pid.is_empty() {
        "unknown".into()
    } else {
        pid.to_string()
    })
}

/// Removes `pid_file` at a clean exit when it still names this process (the
/// lock is held until the process ends).
pub fn remove_pid_file(pid_file: &Path) {
    let ours = std::fs::read_to_string(pid_file)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(pid_file);
    }
}

/// A pipe whose ends are closed on exec.
fn pipe() -> Result<(File, File), SystemdError> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SystemdError::Pipe)?;
    Ok((File::from(read), File::from(write)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_one_line() {
        assert_eq!(one_line("a\n  b\n\nc "), "a b c");
    }
}
