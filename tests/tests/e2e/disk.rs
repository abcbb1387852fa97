//! A full disk while refreshes commit, with a fake instance that rotates
//! refresh tokens: the built `snctld` keeps its state directory on a tiny
//! tmpfs mounted in a mount namespace of its own, which the test fills.
//! Takes root (mounts); skips with a printed reason otherwise.
//!
//! Iterations: `SNCTL_DISK_ITERATIONS` (default 2) rounds of fill, refresh,
//! free, kill -9 and restart.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use snctl_tests::fake::FakeInstance;
use snctl_tests::harness::{snctl, wait_until, DaemonProcess, CLIENT_ID, CLIENT_SECRET};

const USER: &str = "abel.tuter";
const PASSWORD: &str = "disk-password";

/// A process holding a mount namespace of its own, with a tmpfs of `size`
/// mounted on a directory; the mount lives as long as the holder.
struct Namespace {
    holder: Child,
    /// `/proc/PID/ns/mnt` of the holder, for entering it.
    ns: File,
    dir: PathBuf,
}

impl Namespace {
    fn with_tmpfs(dir: &Path, size: &str) -> Namespace {
        std::fs::create_dir_all(dir).unwrap();
        let script = format!(
            "mount -t tmpfs -o size={size},mode=0700 tmpfs '{}' && echo mounted && exec sleep 3600",
            dir.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare runs");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "mounted", "the tmpfs is mounted");
        let ns = File::open(format!("/proc/{}/ns/mnt", holder.id())).unwrap();
        Namespace {
            holder,
            ns,
            dir: dir.to_path_buf(),
        }
    }

    /// Makes `command` run inside the namespace.
    fn enter(&self, command: &mut Command) {
        let fd = self.ns.as_raw_fd();
        // SAFETY: between fork and exec only setns, a plain system call, runs.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNS) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    /// Runs `sh -c script` inside the namespace.
    fn sh(&self, script: &str) -> Output {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        self.enter(&mut command);
        command.output().expect("sh runs")
    }

    /// Fills the tmpfs to the last byte.
    fn fill(&self) {
        // dd stops with "No space left on device": that is the point.
        self.sh(&format!(
            "dd if=/dev/zero of='{}/fill' bs=4096 2>/dev/null",
            self.dir.display()
        ));
        let probe = self.sh(&format!("echo x > '{}/probe'", self.dir.display()));
        assert!(!probe.status.success(), "the tmpfs is full");
    }

    fn free(&self) {
        let rm = self.sh(&format!("rm -f '{}/fill'", self.dir.display()));
        assert!(rm.status.success());
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn start(dir: &Path, config: &str, ns: &Namespace) -> DaemonProcess {
    DaemonProcess::start_configured(dir, &["--config", config], "info", |command| {
        ns.enter(command)
    })
    .expect("snctld starts")
}

fn show(socket: &Path) -> String {
    let out = snctl(socket, &["show", "desk"], None);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn token(socket: &Path) -> String {
    let out = snctl(socket, &["token", "desk"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn refresh(socket: &Path) {
    let out = snctl(socket, &["refresh", "desk"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn newest_refresh_token(fake: &FakeInstance) -> String {
    fake.refresh_tokens_issued()
        .last()
        .cloned()
        .expect("a refresh token issued")
}

#[test]
fn a_full_disk_during_rotating_refreshes_loses_no_refresh_token() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs in a mount namespace takes root");
        return;
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("skipped: unshare (util-linux) is not installed");
        return;
    }
    let iterations: usize = std::env::var("SNCTL_DISK_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let runtime = snctl_tests::harness::runtime();
    let fake = runtime.block_on(FakeInstance::start()).unwrap();
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    fake.add_user(USER, PASSWORD);
    fake.set_rotate_refresh_tokens(true);
    let dir = tempfile::tempdir().unwrap();
    // Quick retries, so that the save after the disk recovers comes soon.
    let config = dir.path().join("snctld.toml");
    std::fs::write(
        &config,
        "[refresh]\nbackoff_min_secs = 1\nbackoff_max_secs = 2\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let ns = Namespace::with_tmpfs(&dir.path().join("state"), "4m");
    let mut daemon = start(dir.path(), config, &ns);
    let add = crate::add_by_password(
        &daemon.socket,
        &fake.url(),
        "desk",
        Some(USER),
        PASSWORD,
        &[],
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );

    for round in 0..iterations {
        let log_before = daemon.log_text().len();
        ns.fill();

        // The refresh works upstream; only the commit fails.
        refresh(&daemon.socket);
        let unsaved = newest_refresh_token(&fake);
        let served = token(&daemon.socket);
        assert!(fake.is_access_token_valid(&served), "round {round}");
        assert_eq!(
            fake.issued_access_tokens().last(),
            Some(&served),
            "round {round}: the newest access token is served"
        );
        let shown = show(&daemon.socket);
        assert!(shown.contains("not yet saved"), "round {round}: {shown}");
        let check = snctl(&daemon.socket, &["check", "desk"], None);
        let said = String::from_utf8_lossy(&check.stdout);
        assert_eq!(check.status.code(), Some(1), "WARNING: {said}");
        assert!(said.contains("not yet saved"), "{said}");

        // A second refresh while unsaved presents the refresh token in
        // memory, not the superseded one on disk.
        refresh(&daemon.socket);
        let newest = newest_refresh_token(&fake);
        assert_eq!(
            fake.refresh_token_parent(&newest).as_deref(),
            Some(unsaved.as_str()),
            "round {round}: the refresh presented the unsaved refresh token"
        );
        assert!(fake.is_refresh_token_valid(&newest));
        assert!(show(&daemon.socket).contains("not yet saved"));

        ns.free();
        assert!(
            wait_until(Duration::from_secs(30), || !show(&daemon.socket)
                .contains("not yet saved")),
            "round {round}: the save never worked after the disk recovered"
        );
        let log = daemon.log_text()[log_before..].to_string();
        let failed = log.matches("cannot save desk's new tokens").count();
        let saved = log.matches("saved desk's new tokens").count();
        assert_eq!((failed, saved), (1, 1), "round {round}: {log}");

        // kill -9 after the save: a restart serves the newest login.
        daemon.kill();
        daemon = start(dir.path(), config, &ns);
        let served = token(&daemon.socket);
        assert!(fake.is_access_token_valid(&served));
        refresh(&daemon.socket);
        assert_eq!(
            fake.refresh_token_parent(&newest_refresh_token(&fake))
                .as_deref(),
            Some(newest.as_str()),
            "round {round}: after the restart the saved refresh token is the newest"
        );
        let shown = show(&daemon.socket);
        assert!(shown.contains("status:        ok"), "{shown}");
        assert!(!shown.contains("last error"), "{shown}");
    }
    eprintln!(
        "{iterations} rounds: {} refresh tokens issued, {} superseded, none lost",
        fake.refresh_tokens_issued().len(),
        fake.superseded_refresh_tokens().len()
    );
}

/// The state directory deleted under a running snctld (`rm -rf`, no
/// mount needed): SQLite would go on writing the unlinked file, and the
/// tokens would be gone at the next start. Each commit checks that the
/// database is still where it was opened; once the directory is back, the
/// database is written again from the open copy and the save goes on.
#[test]
fn a_state_directory_deleted_under_snctld_fails_the_saves_until_it_is_back() {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let runtime = snctl_tests::harness::runtime();
    let fake = runtime.block_on(FakeInstance::start()).unwrap();
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    fake.add_user(USER, PASSWORD);
    fake.set_rotate_refresh_tokens(true);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("snctld.toml");
    std::fs::write(
        &config,
        "[refresh]\nbackoff_min_secs = 1\nbackoff_max_secs = 2\n",
    )
    .unwrap();
    let config = ["--config", config.to_str().unwrap()];
    let mut daemon = DaemonProcess::start_with_log_filter(dir.path(), &config, "info").unwrap();
    let add = crate::add_by_password(
        &daemon.socket,
        &fake.url(),
        "desk",
        Some(USER),
        PASSWORD,
        &[],
    );
    assert!(add.status.success(), "{add:?}");
    // The admin keeps the key elsewhere, as `snctl backup` tells them to.
    let state = daemon.state_dir.clone();
    let key = std::fs::read(state.join("snctld.key")).unwrap();
    let log_before = daemon.log_text().len();

    std::fs::remove_dir_all(&state).unwrap();
    refresh(&daemon.socket);
    let unsaved = newest_refresh_token(&fake);
    let served = token(&daemon.socket);
    assert_eq!(fake.issued_access_tokens().last(), Some(&served));
    let shown = show(&daemon.socket);
    let db = state.join("snctld.db");
    assert!(
        shown.contains("not yet saved") && shown.contains(&db.display().to_string()),
        "{shown}"
    );
    let check = snctl(&daemon.socket, &["check", "desk"], None);
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "WARNING: {said}");
    assert!(said.contains("not yet saved"), "{said}");
    let status = snctl(&daemon.socket, &["status"], None);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("1 unhealthy"), "{said}");
    // A refresh meanwhile presents the unsaved refresh token.
    refresh(&daemon.socket);
    let newest = newest_refresh_token(&fake);
    assert_eq!(
        fake.refresh_token_parent(&newest).as_deref(),
        Some(unsaved.as_str())
    );
    assert!(
        !state.exists(),
        "nothing is created while the directory is gone"
    );

    // The directory back, with the key: the database is written again
    // from the open copy, and the tokens saved into it.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&state)
        .unwrap();
    std::fs::write(state.join("snctld.key"), &key).unwrap();
    std::fs::set_permissions(state.join("snctld.key"), PermissionsExt::from_mode(0o600)).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || !show(&daemon.socket)
            .contains("not yet saved")),
        "the save never worked after the directory came back"
    );
    let log = daemon.log_text()[log_before..].to_string();
    let failed = log.matches("cannot save desk's new tokens").count();
    let saved = log.matches("saved desk's new tokens").count();
    assert_eq!((failed, saved), (1, 1), "{log}");
    assert!(db.exists());

    // kill -9, restart: the newest login serves, no login asked for.
    daemon.kill();
    let daemon = DaemonProcess::start_with_log_filter(dir.path(), &config, "info").unwrap();
    let served = token(&daemon.socket);
    assert!(fake.is_access_token_valid(&served));
    refresh(&daemon.socket);
    assert_eq!(
        fake.refresh_token_parent(&newest_refresh_token(&fake))
            .as_deref(),
        Some(newest.as_str()),
        "after the restart the saved refresh token is the newest"
    );
    let shown = show(&daemon.socket);
    assert!(shown.contains("status:        ok"), "{shown}");
}
