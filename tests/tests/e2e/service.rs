//! Running as a service: socket activation under `systemd-socket-activate`,
//! the sd_notify conversation (READY only once served, STATUS, WATCHDOG,
//! STOPPING), `--daemon` with its pid file, SIGTERM with requests in flight,
//! SIGHUP reloading the configuration between RELOADING=1 and READY=1, and
//! `snctld check-config`, which the units run before the SIGHUP.
//!
//! Waits are bounded; nothing asserts how long anything took.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use snctl_tests::fake::{FakeInstance, Fault};
use snctl_tests::harness::{
    become_subreaper, bin, fake, snctl, wait_pid, wait_until, DaemonProcess,
};

const LIMIT: Duration = Duration::from_secs(20);

/// `snctl add prod` for the fake's client (client credentials).
fn add_prod(socket: &Path, fake: &FakeInstance) {
    let out = crate::add_by_secret(socket, &fake.url(), "prod");
    assert!(out.status.success(), "add: {}", text(&out.stderr));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill with integer arguments only.
    unsafe { libc::kill(pid, signal) };
}

/// One datagram on the notify socket, and for `READY=1` whether the
/// daemon's socket answered (a full hello) right when it arrived.
#[derive(Debug, Clone)]
struct Note {
    text: String,
    served_at_ready: Option<bool>,
}

/// A service manager's NOTIFY_SOCKET, listened to on a thread.
struct Notifications {
    path: PathBuf,
    rx: mpsc::Receiver<Note>,
    seen: Vec<Note>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Notifications {
    fn listen(path: &Path, daemon_socket: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, daemon_socket) = (stop.clone(), daemon_socket.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let served_at_ready = text
                    .lines()
                    .any(|l| l == "READY=1")
                    .then(|| snctl::Client::connect(&daemon_socket).is_ok());
                let _ = tx.send(Note {
                    text,
                    served_at_ready,
                });
            }
        });
        Notifications {
            path: path.to_path_buf(),
            rx,
            seen: Vec::new(),
            stop,
            thread: Some(thread),
        }
    }

    /// The first note so far or within `limit` that has `line`.
    fn wait_for(&mut self, line: &str, limit: Duration) -> Option<Note> {
        let has = |n: &Note| n.text.lines().any(|l| l.starts_with(line));
        if let Some(note) = self.seen.iter().find(|n| has(n)) {
            return Some(note.clone());
        }
        let deadline = std::time::Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(note) => {
                    self.seen.push(note.clone());
                    if has(&note) {
                        return Some(note);
                    }
                }
                Err(_) => break,
            }
        }
        None
    }

    /// Every note received so far, in order.
    fn all(&mut self) -> Vec<Note> {
        while let Ok(note) = self.rx.try_recv() {
            self.seen.push(note);
        }
        self.seen.clone()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn notify_socket_hears_ready_once_served_then_status_watchdog_and_stopping() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let mut notes = Notifications::listen(&notify, &dir.path().join("snctld.sock"));
    let mut daemon = DaemonProcess::start_configured(dir.path(), &[], "info", |c| {
        c.env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", "400000");
    })
    .unwrap();

    let ready = notes.wait_for("READY=1", LIMIT).expect("READY=1 arrives");
    assert_eq!(
        ready.served_at_ready,
        Some(true),
        "the socket answers when READY=1 arrives"
    );
    assert!(
        ready.text.contains(&format!(
            "STATUS=serving 0 authentications on {}",
            daemon.socket.display()
        )),
        "{ready:?}"
    );
    let first = &notes.all()[0];
    assert!(
        first.text.contains("READY=1"),
        "READY=1 comes first: {first:?}"
    );

    add_prod(&daemon.socket, &fake);
    notes
        .wait_for("STATUS=serving 1 authentication on", LIMIT)
        .expect("STATUS follows the added authentication");
    notes
        .wait_for("WATCHDOG=1", LIMIT)
        .expect("WATCHDOG=1 with WATCHDOG_USEC set");

    assert!(daemon.stop(), "SIGTERM: exit 0");
    notes
        .wait_for("STOPPING=1", LIMIT)
        .expect("STOPPING=1 on SIGTERM");
    let all = notes.all();
    assert_eq!(
        all.iter().filter(|n| n.text.contains("READY=1")).count(),
        1,
        "{all:?}"
    );
    let stopping = all
        .iter()
        .position(|n| n.text.contains("STOPPING=1"))
        .unwrap();
    assert!(
        all[stopping + 1..]
            .iter()
            .all(|n| !n.text.contains("WATCHDOG=1")),
        "no WATCHDOG=1 after STOPPING=1: {all:?}"
    );
}

#[test]
fn a_wrong_key_stops_the_start_without_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = DaemonProcess::start(dir.path(), &[]).unwrap();
    assert!(first.stop());
    let key = dir.path().join("state").join("snctld.key");
    std::fs::write(&key, format!("{}\n", "42".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let notify = dir.path().join("notify");
    let mut notes = Notifications::listen(&notify, &dir.path().join("snctld.sock"));
    let err = DaemonProcess::start_configured(dir.path(), &[], "warn", |c| {
        c.env("NOTIFY_SOCKET", &notify);
    })
    .err()
    .expect("the wrong key stops the start");
    let message = format!("{err:#}");
    assert!(
        message.contains("not the key this database was sealed with"),
        "{message}"
    );
    let failed = notes
        .wait_for("STATUS=failed to start:", LIMIT)
        .expect("the failure is told");
    assert!(failed.text.contains("not the key"), "{failed:?}");
    let all = notes.all();
    assert!(
        all.iter().all(|n| !n.text.contains("READY=1")),
        "no READY=1: {all:?}"
    );
}

/// `systemd-socket-activate -l SOCKET [extra…] snctld …`: the socket is
/// made by it and passed to snctld on the first connection.
fn socket_activate(dir: &Path, extra: &[&str]) -> std::process::Child {
    let tool = Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        tool.exists(),
        "{} is missing: install systemd (apt-get install systemd)",
        tool.display()
    );
    let config = dir.join("snctld.toml");
    std::fs::write(&config, "").unwrap();
    let log = std::fs::File::create(dir.join("snctld.log")).unwrap();
    Command::new(tool)
        .arg("-l")
        .arg(dir.join("snctld.sock"))
        .args(extra)
        // It passes only the environment it is told to.
        .arg("-E")
        .arg("RUST_LOG=info")
        .arg(bin("snctld"))
        .arg("--socket")
        .arg(dir.join("snctld.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate runs")
}

#[test]
fn socket_activation_serves_tokens_through_the_passed_socket_and_leaves_it() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("snctld.sock");
    let mut child = socket_activate(dir.path(), &["--fdname=snctld"]);
    assert!(wait_until(LIMIT, || socket.exists()), "the socket is made");

    // The first connection starts snctld on the passed socket.
    add_prod(&socket, &fake);
    let out = snctl(&socket, &["token", "prod"], None);
    assert!(out.status.success(), "token: {}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(fake.is_access_token_valid(&token));

    // It execs snctld: the same pid.
    kill(child.id() as i32, libc::SIGTERM);
    assert!(
        wait_until(LIMIT, || matches!(child.try_wait(), Ok(Some(_)))),
        "snctld stops on SIGTERM"
    );
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("snctld.log")).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("using the socket systemd passed"), "{log}");
    assert!(log.contains("name=snctld"), "{log}");
    let meta = std::fs::symlink_metadata(&socket).expect("the socket file is left in place");
    assert!(meta.file_type().is_socket());
}

#[test]
fn a_passed_datagram_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("snctld.sock");
    let mut child = socket_activate(dir.path(), &["--datagram"]);
    assert!(wait_until(LIMIT, || socket.exists()), "the socket is made");
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"wake up", &socket)
        .unwrap();
    assert!(
        wait_until(LIMIT, || matches!(child.try_wait(), Ok(Some(_)))),
        "snctld refuses and exits"
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(dir.path().join("snctld.log")).unwrap();
    assert!(
        log.contains("the socket passed by the service manager (fd 3) is a Datagram socket, not a stream socket"),
        "{log}"
    );
    assert!(!dir.path().join("state").exists(), "nothing was opened");
}

/// `snctld --daemon --pid-file DIR/snctld.pid --log-file DIR/snctld.log`
/// with the socket and state under `dir` (or `socket` when given); returns
/// when the starting process exits.
fn daemon_start(dir: &Path, socket: Option<&Path>) -> Output {
    let default_socket = dir.join("snctld.sock");
    Command::new(bin("snctld"))
        .arg("--daemon")
        .arg("--pid-file")
        .arg(dir.join("snctld.pid"))
        .arg("--log-file")
        .arg(dir.join("snctld.log"))
        .arg("--socket")
        .arg(socket.unwrap_or(&default_socket))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("snctld runs")
}

fn pid_in(pid_file: &Path) -> i32 {
    std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn daemon_mode_serves_when_it_returns_and_sigterm_loses_no_refresh() {
    become_subreaper();
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let (socket, pid_file) = (
        dir.path().join("snctld.sock"),
        dir.path().join("snctld.pid"),
    );
    let log = || std::fs::read_to_string(dir.path().join("snctld.log")).unwrap_or_default();

    let out = daemon_start(dir.path(), None);
    assert!(out.status.success(), "{}{}", text(&out.stderr), log());
    // Serving the moment the starting process is gone.
    let mut client = snctl::Client::connect(&socket).expect("serving once --daemon returns");
    let pid = pid_in(&pid_file);
    assert_eq!(
        client.status().unwrap().pid,
        pid as u32,
        "the pid file names the daemon"
    );
    drop(client);

    // A second daemon on the same pid file refuses, naming file and pid.
    let again = daemon_start(dir.path(), Some(&dir.path().join("other.sock")));
    assert_eq!(again.status.code(), Some(1));
    let stderr = text(&again.stderr);
    assert!(
        stderr.contains(&format!(
            "another snctld (pid {pid}) holds the pid file {}",
            pid_file.display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(pid_in(&pid_file), pid, "the pid file is left alone");

    // SIGTERM while a refresh waits on the instance.
    add_prod(&socket, &fake);
    fake.push_fault(Fault::Delay(Duration::from_secs(2)));
    let requests = fake.token_requests();
    let refresh = Command::new(bin("snctl"))
        .args(["refresh", "prod"])
        .env("SNCTL_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(LIMIT, || fake.token_requests() > requests),
        "the refresh reaches the instance"
    );
    kill(pid, libc::SIGTERM);
    let refreshed = refresh.wait_with_output().unwrap();
    assert!(
        refreshed.status.success(),
        "the refresh in flight is answered: {}",
        text(&refreshed.stderr)
    );
    assert_eq!(wait_pid(pid, LIMIT), Some(0), "exit 0: {}", log());
    assert!(!pid_file.exists(), "the pid file goes at a clean exit");
    assert!(!socket.exists(), "the socket it bound goes too");
    let newest = fake
        .issued_access_tokens()
        .last()
        .cloned()
        .expect("tokens issued");

    // The refreshed token was committed: a new daemon serves it without
    // asking the instance.
    let out = daemon_start(dir.path(), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = pid_in(&pid_file);
    let calls = fake.token_requests();
    let out = snctl(&socket, &["token", "prod"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), newest);
    assert_eq!(fake.token_requests(), calls);
    kill(pid, libc::SIGTERM);
    assert_eq!(wait_pid(pid, LIMIT), Some(0), "{}", log());
}

/// logrotate without copytruncate: the log file is renamed, SIGHUP makes
/// the daemon write to a new file at the path, and the renamed one keeps
/// what was written before.
#[test]
fn sighup_reopens_the_log_file_after_it_is_moved() {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let (log, rotated) = (
        dir.path().join("snctld.log"),
        dir.path().join("snctld.log.1"),
    );
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();

    let out = daemon_start(dir.path(), None);
    assert!(out.status.success(), "{}{}", text(&out.stderr), read(&log));
    let pid = pid_in(&dir.path().join("snctld.pid"));
    assert!(
        wait_until(LIMIT, || read(&log).contains("serving")),
        "{}",
        read(&log)
    );
    std::fs::rename(&log, &rotated).unwrap();
    kill(pid, libc::SIGHUP);
    assert!(
        wait_until(LIMIT, || read(&log).contains("SIGHUP")),
        "the reload is logged in a new file at the path; the old one has: {}",
        read(&rotated)
    );
    assert!(read(&rotated).contains("serving"), "{}", read(&rotated));
    assert!(!read(&rotated).contains("SIGHUP"), "{}", read(&rotated));
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the new log file is private too");
    kill(pid, libc::SIGTERM);
    assert_eq!(wait_pid(pid, LIMIT), Some(0), "{}", read(&log));
}

#[test]
fn a_failing_daemon_start_exits_non_zero_with_the_daemons_error() {
    become_subreaper();
    // A socket directory anyone may write.
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = daemon_start(dir.path(), Some(&open.join("snctld.sock")));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("snctld: the socket directory"),
        "{stderr}"
    );
    assert!(stderr.contains("is writable by everyone"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!dir.path().join("snctld.pid").exists());

    // A wrong key.
    let dir = tempfile::tempdir().unwrap();
    let out = daemon_start(dir.path(), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = pid_in(&dir.path().join("snctld.pid"));
    kill(pid, libc::SIGTERM);
    assert_eq!(wait_pid(pid, LIMIT), Some(0));
    let key = dir.path().join("state").join("snctld.key");
    std::fs::write(&key, format!("{}\n", "42".repeat(32))).unwrap();
    let out = daemon_start(dir.path(), None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is not the key this database was sealed with"),
        "{stderr}"
    );
    assert!(!dir.path().join("snctld.sock").exists());
    assert!(!dir.path().join("snctld.pid").exists());
}

#[test]
fn shutdown_is_bounded_when_a_refresh_hangs_upstream() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
    add_prod(&daemon.socket, &fake);
    // Longer than the grace, shorter than the HTTP timeout (30 s).
    fake.push_fault(Fault::Delay(Duration::from_secs(25)));
    let requests = fake.token_requests();
    let mut refresh = Command::new(bin("snctl"))
        .args(["refresh", "prod"])
        .env("SNCTL_SOCKET", &daemon.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(LIMIT, || fake.token_requests() > requests));
    assert!(
        daemon.stop(),
        "exit 0 despite the hanging refresh: {}",
        daemon.log_text()
    );
    assert!(
        wait_until(LIMIT, || matches!(refresh.try_wait(), Ok(Some(_)))),
        "the client hears the daemon go"
    );
    let out = refresh.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("snctl: "), "a clean error: {stderr}");
    assert!(daemon.log_text().contains("stopping without them"));
}

#[test]
fn sighup_reloads_the_configuration_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("snctld.toml");
    let write = |text: &str| std::fs::write(&config, text).unwrap();
    write("[log]\nfilter = \"warn\"\n[refresh]\nahead = 0.75\n[access]\nadmin_group = \"snctl-admin\"\n");
    let config_arg = config.to_str().unwrap();
    let daemon = DaemonProcess::start_configured(dir.path(), &["--config", config_arg], "", |c| {
        c.env_remove("RUST_LOG");
    })
    .unwrap();
    let status = || {
        let out = snctl(&daemon.socket, &["status"], None);
        assert!(out.status.success(), "serving: {}", text(&out.stderr));
    };
    status();
    assert!(
        !daemon.log_text().contains("DEBUG"),
        "the file's filter counts"
    );

    // Live: log filter, admin group and refresh policy; a server limit
    // waits for a restart.
    let live = "[log]\nfilter = \"info,snctld=debug\"\n[refresh]\nahead = 0.5\n\
                [access]\nadmin_group = \"snctl-ops\"\n[server]\nread_timeout_secs = 20\n";
    write(live);
    daemon.signal(libc::SIGHUP);
    let logged = |line: &str| wait_until(LIMIT, || daemon.log_text().contains(line));
    assert!(
        logged("SIGHUP: log.filter changed, applied"),
        "{}",
        daemon.log_text()
    );
    assert!(
        logged("SIGHUP: access.admin_group changed, applied"),
        "{}",
        daemon.log_text()
    );
    assert!(
        logged("SIGHUP: refresh.ahead changed, applied"),
        "{}",
        daemon.log_text()
    );
    assert!(
        logged("SIGHUP: server.read_timeout_secs changed; it applies at the next start"),
        "{}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("to=\"snctl-ops\""),
        "{}",
        daemon.log_text()
    );
    status();
    assert!(
        logged("DEBUG"),
        "the new filter is in force: {}",
        daemon.log_text()
    );

    // An invalid file is refused and the running configuration stays.
    write("[refresh]\nahead = 5\n");
    daemon.signal(libc::SIGHUP);
    assert!(
        logged("configuration not reloaded, the running one stays"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon
        .log_text()
        .contains("refresh.ahead must be between 0.1 and 0.95"));
    status();

    // The invalid file changed nothing: the same file again changes only
    // the setting that still waits for a restart.
    write(live);
    daemon.signal(libc::SIGHUP);
    let count = |line: &str| daemon.log_text().matches(line).count();
    assert!(
        wait_until(LIMIT, || count("server.read_timeout_secs changed") == 2),
        "{}",
        daemon.log_text()
    );
    assert_eq!(count("SIGHUP: log.filter changed"), 1);
    assert_eq!(count("SIGHUP: refresh.ahead changed"), 1);
    assert_eq!(count("SIGHUP: access.admin_group changed"), 1);
    status();
}

#[test]
fn a_damaged_database_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = DaemonProcess::start(dir.path(), &[]).unwrap();
    assert!(first.stop());
    // The header's freelist count (offset 36) made wrong: queries still
    // work, quick_check does not pass.
    let db = dir.path().join("state").join(snctld::store::DB_FILE);
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[36..40].copy_from_slice(&3u32.to_be_bytes());
    std::fs::write(&db, bytes).unwrap();
    let err = DaemonProcess::start(dir.path(), &[])
        .err()
        .expect("a damaged database stops the start");
    let message = format!("{err:#}");
    assert!(
        message.contains("is damaged (SQLite quick_check: Freelist: size is 0 but should be 3"),
        "{message}"
    );
    assert!(!dir.path().join("snctld.sock").exists());
}

/// Starts snctld under `dir` with `--config FILE`; the one line it refused
/// to start with, or `None` when it serves (then it is stopped).
fn refused_with_config(dir: &Path, config: &Path) -> Option<String> {
    let config_arg = config.to_str().unwrap();
    match DaemonProcess::start_with_log_filter(dir, &["--config", config_arg], "warn") {
        Ok(mut daemon) => {
            assert!(daemon.stop());
            None
        }
        Err(error) => Some(format!("{error:#}")),
    }
}

#[test]
fn a_configuration_or_ca_file_others_could_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("snctld.toml");
    std::fs::write(&config, "[access]\nadmin_group = \"snctl-admin\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(refused_with_config(dir.path(), &config), None);

    // Writable by others.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let error = refused_with_config(dir.path(), &config).expect("refused");
    assert!(
        error.contains(&format!("the configuration file {}", config.display()))
            && error.contains("writable by group or others")
            && error.contains("chmod go-w"),
        "{error}"
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    // A CA file others could change.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o664)).unwrap();
    std::fs::write(&config, format!("[http]\nca_file = \"{}\"\n", ca.display())).unwrap();
    let error = refused_with_config(dir.path(), &config).expect("refused");
    assert!(
        error.contains(&format!("the ca_file {}", ca.display()))
            && error.contains("writable by group or others")
            && error.contains("chmod go-w"),
        "{error}"
    );
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(refused_with_config(dir.path(), &config), None);

    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped files owned by another user: chown needs root");
        return;
    }
    let nobody = 65534;
    std::os::unix::fs::chown(&ca, Some(nobody), None).unwrap();
    let error = refused_with_config(dir.path(), &config).expect("refused");
    assert!(
        error.contains(&format!("the ca_file {}", ca.display()))
            && error.contains(&format!("belongs to uid {nobody}"))
            && error.contains("chown"),
        "{error}"
    );
    std::os::unix::fs::chown(&ca, Some(0), None).unwrap();
    std::os::unix::fs::chown(&config, Some(nobody), None).unwrap();
    let error = refused_with_config(dir.path(), &config).expect("refused");
    assert!(
        error.contains(&format!("the configuration file {}", config.display()))
            && error.contains(&format!("belongs to uid {nobody}"))
            && error.contains("chown"),
        "{error}"
    );
    std::os::unix::fs::chown(&config, Some(0), None).unwrap();

    // Through a directory another user owns.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let moved = theirs.join("snctld.toml");
    std::fs::copy(&config, &moved).unwrap();
    std::os::unix::fs::chown(&theirs, Some(nobody), None).unwrap();
    let error = refused_with_config(dir.path(), &moved).expect("refused");
    assert!(
        error.contains("is not safe") && error.contains(&format!("belongs to uid {nobody}")),
        "{error}"
    );
}

#[test]
fn a_reload_of_a_configuration_others_could_change_keeps_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("snctld.toml");
    std::fs::write(&config, "[access]\nadmin_group = \"snctl-admin\"\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let daemon =
        DaemonProcess::start_with_log_filter(dir.path(), &["--config", config_arg], "info")
            .unwrap();
    std::fs::write(&config, "[access]\nadmin_group = \"intruders\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_until(LIMIT, || daemon
            .log_text()
            .contains("configuration not reloaded, the running one stays")),
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(log.contains("writable by group or others"), "{log}");
    assert!(!log.contains("access.admin_group changed"), "{log}");
    let out = snctl(&daemon.socket, &["status"], None);
    assert!(out.status.success(), "serving: {}", text(&out.stderr));
}

/// `snctld check-config --config FILE` (with the test's socket and state
/// paths, as a daemon would run).
fn check_config(dir: &Path, config: &Path) -> Output {
    Command::new(bin("snctld"))
        .arg("--socket")
        .arg(dir.join("snctld.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn check_config_is_quiet_for_a_valid_file_and_says_why_in_one_line_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("snctld.toml");
    std::fs::write(
        &config,
        "[refresh]\nahead = 0.5\n[log]\nfilter = \"info\"\n",
    )
    .unwrap();
    let out = check_config(dir.path(), &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "");
    assert!(!dir.path().join("state").exists(), "a check opens no state");

    for (body, says) in [
        (
            "[refresh]\nahead = 5\n",
            "refresh.ahead must be between 0.1 and 0.95",
        ),
        ("[refresh\nahead = 0.5\n", "is invalid"),
        ("[server]\nno_such_setting = 1\n", "no_such_setting"),
    ] {
        std::fs::write(&config, body).unwrap();
        let out = check_config(dir.path(), &config);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{body:?}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        assert!(stderr.starts_with("snctld: "), "{stderr:?}");
        assert!(stderr.contains(&config.display().to_string()), "{stderr:?}");
        assert!(stderr.contains(says), "{body:?}: {stderr:?}");
    }

    std::fs::remove_file(&config).unwrap();
    let out = check_config(dir.path(), &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read the configuration"));
}

#[test]
fn sighup_says_reloading_then_ready_whether_or_not_the_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("snctld.toml");
    std::fs::write(&config, "[refresh]\nahead = 0.75\n").unwrap();
    let notify = dir.path().join("notify");
    let mut notes = Notifications::listen(&notify, &dir.path().join("snctld.sock"));
    let config_arg = config.to_str().unwrap();
    let daemon =
        DaemonProcess::start_configured(dir.path(), &["--config", config_arg], "info", |c| {
            c.env("NOTIFY_SOCKET", &notify);
        })
        .unwrap();
    notes.wait_for("READY=1", LIMIT).expect("READY=1 at start");

    // A valid change, then an invalid file: each SIGHUP is bracketed.
    let readies = |notes: &mut Notifications| {
        notes
            .all()
            .iter()
            .filter(|n| n.text.lines().any(|l| l == "READY=1"))
            .count()
    };
    for (round, body) in [
        (1, "[refresh]\nahead = 0.5\n"),
        (2, "[refresh]\nahead = 5\n"),
    ] {
        std::fs::write(&config, body).unwrap();
        daemon.signal(libc::SIGHUP);
        assert!(
            wait_until(LIMIT, || readies(&mut notes) == round + 1),
            "{:?}",
            notes.all()
        );
        let all = notes.all();
        let reloading: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, n)| n.text.lines().any(|l| l == "RELOADING=1"))
            .map(|(i, _)| i)
            .collect();
        let ready = all
            .iter()
            .rposition(|n| n.text.lines().any(|l| l == "READY=1"))
            .unwrap();
        assert_eq!(reloading.len(), round, "{all:?}");
        assert!(reloading[round - 1] < ready, "RELOADING=1 first: {all:?}");
        assert!(
            all[ready].text.contains("STATUS=serving 0 authentications"),
            "{all:?}"
        );
        if round == 2 {
            assert!(
                all[ready]
                    .text
                    .contains("refresh.ahead must be between 0.1 and 0.95"),
                "the status says the reload failed: {all:?}"
            );
        }
    }
    let out = snctl(&daemon.socket, &["status"], None);
    assert!(out.status.success(), "serving: {}", text(&out.stderr));
}

/// The fields of one journald native-protocol entry (every value
/// length-encoded, as snctld writes them).
fn journal_fields(mut entry: &[u8]) -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    while let Some(newline) = entry.iter().position(|b| *b == b'\n') {
        let name = text(&entry[..newline]);
        let rest = &entry[newline + 1..];
        let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        fields.insert(name, text(&rest[8..8 + len]));
        entry = &rest[8 + len + 1..];
    }
    fields
}

/// Under systemd (stderr the stream `JOURNAL_STREAM` names), entries go to
/// journald's socket with the level's priority and the fields an admin
/// filters by. The daemon runs in a mount namespace of its own where a
/// socket of the test's is `/run/systemd/journal/socket`.
#[test]
fn under_systemd_warnings_reach_the_journal_at_their_priority_with_the_name() {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the journal test needs root for a mount namespace");
        return;
    }
    use std::ffi::CString;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let journald = UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    journald
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let c = |s: &str| CString::new(s).unwrap();
    let (tmpfs, run, systemd, journal) = (
        c("tmpfs"),
        c("/run"),
        c("/run/systemd"),
        c("/run/systemd/journal"),
    );
    let (root, source) = (c("/"), c(journal_dir.to_str().unwrap()));
    // The harness appends stderr to this file: made first, to name it.
    let log = dir.path().join("snctld.log");
    std::fs::File::create(&log).unwrap();
    let stderr = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", stderr.dev(), stderr.ino());
    let mut daemon = DaemonProcess::start_configured(dir.path(), &[], "info", move |command| {
        command.env("JOURNAL_STREAM", stream);
        let private = move || -> std::io::Result<()> {
            let check = |result: libc::c_int| match result {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            };
            let none = std::ptr::null();
            // SAFETY: syscalls with pointers to strings that outlive the
            // spawn; nothing allocates between fork and exec.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                check(libc::mount(none, root.as_ptr(), none, flags, none as _))?;
                check(libc::mount(
                    tmpfs.as_ptr(),
                    run.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    none as _,
                ))?;
                check(libc::mkdir(systemd.as_ptr(), 0o755))?;
                check(libc::mkdir(journal.as_ptr(), 0o755))?;
                check(libc::mount(
                    source.as_ptr(),
                    journal.as_ptr(),
                    none,
                    libc::MS_BIND,
                    none as _,
                ))
            }
        };
        // SAFETY: the closure makes syscalls only.
        unsafe { command.pre_exec(private) };
    })
    .unwrap();
    add_prod(&daemon.socket, &fake);
    fake.set_standing_fault(Some(Fault::status(503)));
    let out = snctl(&daemon.socket, &["refresh", "prod"], None);
    assert!(!out.status.success(), "the refresh fails");

    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    let found = wait_until(LIMIT, || {
        while let Ok(len) = journald.recv(&mut buf) {
            if len > 0 {
                entries.push(journal_fields(&buf[..len]));
            }
        }
        entries
            .iter()
            .any(|e| e["MESSAGE"].contains("refresh failed"))
    });
    assert!(found, "no refresh failure among {entries:#?}");
    let failed = entries
        .iter()
        .find(|e| e["MESSAGE"].contains("refresh failed"))
        .unwrap();
    assert_eq!(failed["PRIORITY"], "4", "{failed:#?}");
    assert_eq!(failed["SNCTL_NAME"], "prod", "{failed:#?}");
    assert_eq!(failed["SYSLOG_IDENTIFIER"], "snctld", "{failed:#?}");
    assert!(failed["MESSAGE"].contains("HTTP 503"), "{failed:#?}");
    assert!(
        entries.iter().any(|e| e["PRIORITY"] == "6"),
        "info lines too: {entries:#?}"
    );
    // The journal has them; stderr does not repeat them.
    assert!(
        !daemon.log_text().contains("refresh failed"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.stop(), "{}", daemon.log_text());
}

/// What snctld writes on a terminal (a pseudo-terminal under `script`)
/// from its start until SIGTERM once it serves, with `NO_COLOR` as given;
/// `None` when `script` is not installed.
fn on_a_terminal(no_color: Option<&str>) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("snctld.sock");
    let state = dir.path().join("state");
    // The shell waits (at most 20 s) for the socket, then stops snctld.
    let line = format!(
        "'{snctld}' --socket '{sock}' --state-dir '{state}' & p=$!; i=0; \
         while [ ! -S '{sock}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
         kill $p; wait $p",
        snctld = bin("snctld").display(),
        sock = socket.display(),
        state = state.display(),
    );
    let mut command = Command::new("script");
    command
        .args(["-qec", &line, "/dev/null"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = text(&out.stdout);
    assert!(written.contains("serving"), "{written}");
    Some(written)
}

#[test]
fn no_color_turns_the_colours_off_on_a_terminal() {
    let Some(coloured) = on_a_terminal(None) else {
        eprintln!("skipped: needs script (util-linux) for a pseudo-terminal");
        return;
    };
    assert!(coloured.contains("\x1b["), "{coloured}");
    // https://no-color.org: any value but the empty one.
    let plain = on_a_terminal(Some("1")).unwrap();
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert!(on_a_terminal(Some("")).unwrap().contains("\x1b["));
}
