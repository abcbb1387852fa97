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
            "mount -t tmpfs -o size={size},mode=0700 tmpfs '{}'",
            dir.display()
        );
        Namespace::mounted_by(dir, &script)
    }

    /// A namespace in which `mount` (a shell script) mounted `dir`.
    fn mounted_by(dir: &Path, mount: &str) -> Namespace {
        let script = format!("{mount} && echo mounted && exec sleep 3600");
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
        fill(self, &self.dir);
    }

    fn free(&self) {
        free(self, &self.dir);
    }
}

/// Fills the tmpfs `dir` of `ns` to the last byte.
fn fill(ns: &Namespace, dir: &Path) {
    // dd stops with "No space left on device": that is the point.
    ns.sh(&format!(
        "dd if=/dev/zero of='{}/fill' bs=4096 2>/dev/null",
        dir.display()
    ));
    let probe = ns.sh(&format!("echo x > '{}/probe'", dir.display()));
    assert!(!probe.status.success(), "the tmpfs is full");
}

fn free(ns: &Namespace, dir: &Path) {
    let rm = ns.sh(&format!("rm -f '{}/fill'", dir.display()));
    assert!(rm.status.success());
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
        // The log thread may lag behind the state `show` reports.
        wait_until(Duration::from_secs(10), || {
            daemon.log_text()[log_before..].contains("saved desk's new tokens")
        });
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
    // Where the directory cannot be made again for the running snctld (the
    // shipped unit's ProtectSystem=strict shows it a directory made again
    // read-only), `snctl backup` saves the newest tokens all the same: it
    // reads the copy snctld has open.
    let backup = dir.path().join("while-gone.db");
    let out = snctl(&daemon.socket, &["backup", backup.to_str().unwrap()], None);
    assert!(out.status.success(), "{out:?}");
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::copy(&backup, restored.join("snctld.db")).unwrap();
    std::fs::write(restored.join("snctld.key"), &key).unwrap();
    std::fs::set_permissions(
        restored.join("snctld.key"),
        PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let records = snctl_tests::harness::open_db(&restored)
        .unwrap()
        .load_all()
        .unwrap();
    let stored = records[0].tokens.as_ref().unwrap();
    assert_eq!(
        stored
            .refresh_token
            .as_ref()
            .map(|t| t.expose().to_string()),
        Some(newest.clone()),
        "the backup holds the newest refresh token"
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
    wait_until(Duration::from_secs(10), || {
        daemon.log_text()[log_before..].contains("saved desk's new tokens")
    });
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

/// Whether this machine can mount an ext4 image through a loop device (as
/// root, with `mkfs.ext4`); why not otherwise.
fn loop_ext4_unavailable() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting a loop device takes root");
    }
    for tool in ["unshare", "mkfs.ext4", "losetup"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some("unshare, losetup or mkfs.ext4 is not installed");
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no loop devices (/dev/loop-control)");
    }
    None
}

/// The state directory on ext4 in a sparse 16 MB image on a 24 MB tmpfs,
/// through a loop device (freed when the namespace ends). Filling the
/// tmpfs makes the loop device's writes fail, so ext4 gets real I/O errors
/// (`EIO`); device-mapper's `error` target would do the same, but this
/// kernel has no device-mapper. With a journal and `errors=remount-ro`, as
/// hosts mount it, the first failed journal write makes ext4 remount
/// itself read-only (until an fsck); without one (`errors=continue`) the
/// errors pass when the space is back.
fn ext4_on_loop(dir: &Path, journal: bool) -> (Namespace, PathBuf) {
    let back = dir.join("back");
    let state = dir.join("state");
    std::fs::create_dir_all(&back).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let (features, errors) = match journal {
        // commit=600: the journal is written when snctld syncs, not every
        // 5 s behind the test's back.
        true => ("", "errors=remount-ro,commit=600"),
        // discard: blocks ext4 frees are given back to the tmpfs, so
        // that the blocks a commit writes next need new space.
        false => ("-b 4096 -O ^has_journal", "errors=continue,discard"),
    };
    let mount = format!(
        "mount -t tmpfs -o size=24m,mode=0700 tmpfs '{b}' && truncate -s 16m '{b}/disk.img' \
         && mkfs.ext4 -q -F {features} '{b}/disk.img' \
         && mount -o loop,{errors} '{b}/disk.img' '{s}' \
         && chmod 0700 '{s}'",
        b = back.display(),
        s = state.display()
    );
    let ns = Namespace::mounted_by(&state, &mount);
    (ns, back)
}

fn mount_options(ns: &Namespace, dir: &Path) -> String {
    let out = ns.sh(&format!("findmnt -n -o OPTIONS '{}'", dir.display()));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A refresh whose commit fails: the new tokens are served, reported and
/// presented by the next refresh, never the superseded ones. Returns the
/// newest refresh token.
fn refresh_unsaved(daemon: &DaemonProcess, fake: &FakeInstance, what: &str) -> String {
    refresh(&daemon.socket);
    let unsaved = newest_refresh_token(fake);
    let served = token(&daemon.socket);
    assert_eq!(fake.issued_access_tokens().last(), Some(&served), "{what}");
    let shown = show(&daemon.socket);
    assert!(shown.contains("not yet saved"), "{what}: {shown}");
    let check = snctl(&daemon.socket, &["check", "desk"], None);
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{what}: WARNING: {said}");
    refresh(&daemon.socket);
    let newest = newest_refresh_token(fake);
    assert_eq!(
        fake.refresh_token_parent(&newest).as_deref(),
        Some(unsaved.as_str()),
        "{what}: the refresh presented the unsaved refresh token"
    );
    newest
}

/// A fake rotating refresh tokens and snctld on ext4 on a loop device
/// (see [`ext4_on_loop`]) with `desk` added; `None` (and a printed
/// reason) where that cannot be had.
fn on_loop_ext4(
    dir: &Path,
    journal: bool,
) -> Option<(FakeInstance, Namespace, PathBuf, String, DaemonProcess)> {
    if let Some(reason) = loop_ext4_unavailable() {
        eprintln!("skipped: {reason}");
        return None;
    }
    let runtime = snctl_tests::harness::runtime();
    let fake = runtime.block_on(FakeInstance::start()).unwrap();
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    fake.add_user(USER, PASSWORD);
    fake.set_rotate_refresh_tokens(true);
    let config = dir.join("snctld.toml");
    std::fs::write(
        &config,
        "[refresh]\nbackoff_min_secs = 1\nbackoff_max_secs = 2\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let (ns, back) = ext4_on_loop(dir, journal);
    let daemon = start(dir, &config, &ns);
    let add = crate::add_by_password(
        &daemon.socket,
        &fake.url(),
        "desk",
        Some(USER),
        PASSWORD,
        &[],
    );
    assert!(add.status.success(), "{add:?}");
    Some((fake, ns, back, config, daemon))
}

#[test]
fn an_io_error_keeps_the_new_tokens_in_memory_until_the_device_works_again() {
    let dir = tempfile::tempdir().unwrap();
    let Some((fake, ns, back, config, mut daemon)) = on_loop_ext4(dir.path(), false) else {
        return;
    };
    let rounds: usize = std::env::var("SNCTL_DISK_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for round in 0..rounds {
        let log_before = daemon.log_text().len();
        // The write-ahead log emptied (as a checkpoint does) and the free
        // blocks' space given back to the tmpfs, then all of it taken:
        // the commit's blocks are new ones, and their writes fail.
        let state = dir.path().join("state");
        let emptied = ns.sh(&format!(
            "python3 -c \"import sqlite3; sqlite3.connect('{}/snctld.db').execute('PRAGMA wal_checkpoint(TRUNCATE)')\" && fstrim '{}'",
            state.display(),
            state.display()
        ));
        assert!(emptied.status.success(), "{emptied:?}");
        fill(&ns, &back);
        let newest = refresh_unsaved(&daemon, &fake, "EIO");
        let shown = show(&daemon.socket);
        assert!(shown.contains("disk I/O error"), "round {round}: {shown}");
        free(&ns, &back);
        assert!(
            wait_until(Duration::from_secs(30), || !show(&daemon.socket)
                .contains("not yet saved")),
            "round {round}: the save never worked after the device recovered: {}",
            show(&daemon.socket)
        );
        // The log thread may lag behind the state `show` reports.
        wait_until(Duration::from_secs(10), || {
            daemon.log_text()[log_before..].contains("saved desk's new tokens")
        });
        let log = daemon.log_text()[log_before..].to_string();
        let failed = log.matches("cannot save desk's new tokens").count();
        let saved = log.matches("saved desk's new tokens").count();
        assert_eq!((failed, saved), (1, 1), "round {round}: {log}");
        daemon.kill();
        daemon = start(dir.path(), &config, &ns);
        refresh(&daemon.socket);
        assert_eq!(
            fake.refresh_token_parent(&newest_refresh_token(&fake))
                .as_deref(),
            Some(newest.as_str()),
            "round {round}: after kill -9 and a restart the saved refresh token is the newest"
        );
    }
    eprintln!(
        "EIO: {rounds} rounds, {} refresh tokens issued, {} superseded, none lost",
        fake.refresh_tokens_issued().len(),
        fake.superseded_refresh_tokens().len()
    );
}

#[test]
fn a_read_only_remount_keeps_the_new_tokens_in_memory_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let Some((fake, ns, back, config, daemon)) = on_loop_ext4(dir.path(), true) else {
        return;
    };
    let state = dir.path().join("state");
    let log_before = daemon.log_text().len();
    // The device fails; the first refresh's commit makes ext4 give up its
    // journal and remount read-only.
    fill(&ns, &back);
    refresh_unsaved(&daemon, &fake, "read-only");
    let options = mount_options(&ns, &state);
    assert!(
        options.contains("emergency_ro") || options.starts_with("ro"),
        "{options}"
    );
    // The space back changes nothing: the filesystem stays read-only. The
    // tokens stay in service and the save is retried; one error line.
    free(&ns, &back);
    let newest = refresh_unsaved(&daemon, &fake, "still read-only");
    assert!(fake.is_refresh_token_valid(&newest));
    wait_until(Duration::from_secs(10), || {
        daemon.log_text()[log_before..].contains("cannot save desk's new tokens")
    });
    let log = daemon.log_text()[log_before..].to_string();
    assert_eq!(
        log.matches("cannot save desk's new tokens").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("saved desk's new tokens"), "{log}");

    // `mount -o remount,rw` is accepted, but the journal stays aborted and
    // the next write remounts read-only again: only an unmount clears it,
    // and snctld holds the files. So the repair stops snctld; the stop
    // tries the save once more and names what it loses, and what to do.
    let remount = ns.sh(&format!(
        "mount -o remount,rw '{s}' && touch '{s}/probe'",
        s = state.display()
    ));
    assert!(!remount.status.success(), "{remount:?}");
    let mut daemon = daemon;
    assert!(daemon.stop(), "snctld stops cleanly");
    let log = daemon.log_text()[log_before..].to_string();
    let lost: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stopping with desk's newest tokens unsaved"))
        .collect();
    assert_eq!(lost.len(), 1, "{log}");
    assert!(lost[0].contains("snctl login desk"), "{}", lost[0]);
    let repair = ns.sh(&format!(
        "umount '{s}' && e2fsck -fy '{b}/disk.img' >/dev/null; \
         mount -o loop,errors=remount-ro '{b}/disk.img' '{s}'",
        s = state.display(),
        b = back.display()
    ));
    assert!(repair.status.success(), "{repair:?}");

    // Repaired and started again: the refresh token on disk was
    // superseded at the instance, which refuses it; one login cures that.
    let daemon = start(dir.path(), &config, &ns);
    let out = snctl(&daemon.socket, &["refresh", "desk"], None);
    assert!(!out.status.success(), "{out:?}");
    let shown = show(&daemon.socket);
    assert!(shown.contains("status:        needs-login"), "{shown}");
    let login = snctl(
        &daemon.socket,
        &["login", "desk", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(login.status.success(), "{login:?}");
    let served = token(&daemon.socket);
    assert!(fake.is_access_token_valid(&served));
    refresh(&daemon.socket);
    assert!(show(&daemon.socket).contains("status:        ok"));
    eprintln!(
        "read-only ({options}): {} refresh tokens issued, {} superseded; the stop named the \
         loss, one login after the fsck",
        fake.refresh_tokens_issued().len(),
        fake.superseded_refresh_tokens().len()
    );
}
