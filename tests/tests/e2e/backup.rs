//! `snctl backup FILE` and `snctld restore FILE`: an online copy taken while
//! tokens are fetched and refreshes commit holds no secret in clear, and
//! restored with the master key into a new state directory every
//! authentication works; a wrong key or a running daemon is refused and
//! changes nothing; only admins may back up. A backup edited without the
//! key (settings, triggers, an old schema to hide behind) or a restore file
//! others could have written is refused, and a database edited in place is
//! never used to send a secret anywhere.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use snctl_tests::fake::FakeInstance;
use snctl_tests::harness::{
    self, bin, contains, fake, snctl, test_config, wait_until, DaemonProcess, TestDaemon,
    CLIENT_SECRET,
};
use snctld::Config;

use crate::{add_by_password, add_request};

const USER: &str = "abel.tuter";
const PASSWORD: &str = "password-canary-B4k";

/// `snctld ARGS` (the built binary), outside any systemd credentials.
fn snctld(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin("snctld"))
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("snctld runs")
}

/// `snctld restore FILE` on the state directory and socket of `config`.
fn restore(config: &Config, file: &Path) -> Output {
    restore_with(config, file, &[])
}

/// `snctld restore FILE` with `flags` (`--force`, ...).
fn restore_with(config: &Config, file: &Path, flags: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "restore".as_ref(),
        "--state-dir".as_ref(),
        config.state_dir.as_os_str(),
        "--socket".as_ref(),
        config.socket.as_os_str(),
    ];
    args.extend(flags.iter().map(std::ffi::OsStr::new));
    args.push(file.as_os_str());
    snctld(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `snctl backup FILE` against `daemon`; asserts it worked.
fn backup(daemon: &TestDaemon, file: &Path) -> Output {
    let out = snctl(daemon.socket(), &["backup", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{out:?}");
    out
}

/// A state directory (0700) under `dir` holding a copy of `key`, as an
/// admin sets one up from their separate key backup.
fn new_state_dir(dir: &Path, key: &Path) -> Config {
    let config = test_config(dir);
    std::fs::create_dir(&config.state_dir).unwrap();
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let copy = config.state_dir.join("snctld.key");
    std::fs::copy(key, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
    config
}

/// Asserts that every authentication in `names` hands out a token the
/// instance accepts, and gets a new one on `refresh`.
fn every_authentication_works(daemon: &TestDaemon, fake: &FakeInstance, names: &[&str]) {
    let mut client = daemon.client();
    let listed: Vec<String> = client.list().unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(listed, names);
    for name in names {
        let token = client.token_with(name, Duration::from_secs(1)).unwrap();
        assert!(
            fake.is_access_token_valid(token.access_token.expose()),
            "{name}"
        );
        client.refresh(name).unwrap();
        let token = client.token_with(name, Duration::from_secs(1)).unwrap();
        assert!(
            fake.is_access_token_valid(token.access_token.expose()),
            "{name}"
        );
    }
}

/// The state directory's files, by name.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = harness::files_under(dir);
    files.sort();
    files
}

#[test]
fn a_backup_taken_while_tokens_refresh_restores_into_a_new_state_dir_where_every_authentication_works(
) {
    let fake = fake();
    fake.add_user(USER, PASSWORD);
    fake.set_access_lifetime(6);
    let old = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(test_config(old.path())).unwrap();
    daemon
        .client()
        .add(add_request("prod", &fake.url()))
        .unwrap();
    let out = add_by_password(
        daemon.socket(),
        &fake.url(),
        "desk",
        Some(USER),
        PASSWORD,
        &[],
    );
    assert!(out.status.success(), "{out:?}");

    // Clients fetch tokens and force refreshes while backups are taken.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let hammers: Vec<_> = (0..4)
        .map(|i| {
            let (stop, done) = (stop.clone(), done.clone());
            let mut client = daemon.client();
            std::thread::spawn(move || {
                let name = if i % 2 == 0 { "prod" } else { "desk" };
                while !stop.load(Ordering::Relaxed) {
                    if i < 2 {
                        client.refresh(name).unwrap();
                    } else {
                        client.token_with(name, Duration::from_secs(5)).unwrap();
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || done
        .load(Ordering::Relaxed)
        >= 8));
    let file = old.path().join("snctld.backup");
    for _ in 0..3 {
        let _ = std::fs::remove_file(&file);
        backup(&daemon, &file);
    }
    let out = snctl(
        daemon.socket(),
        &["backup", "--force", file.to_str().unwrap()],
        None,
    );
    stop.store(true, Ordering::Relaxed);
    for hammer in hammers {
        hammer.join().expect("no client failed");
    }
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let key = daemon.config.state_dir.join("snctld.key");
    assert!(
        stdout.contains(&format!("it is {}", key.display())) && stdout.contains("apart"),
        "{stdout}"
    );

    // Ciphertext only, and private.
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let bytes = std::fs::read(&file).unwrap();
    let mut secrets = vec![CLIENT_SECRET.to_string(), PASSWORD.to_string()];
    secrets.extend(fake.issued_access_tokens());
    secrets.extend(fake.refresh_tokens_issued());
    assert!(secrets.len() > 4, "tokens were issued: {}", secrets.len());
    for secret in &secrets {
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "a secret is in the backup in clear"
        );
    }
    let raw_key = std::fs::read(&key).unwrap();
    assert!(!contains(&bytes, &raw_key));

    // Without --force an existing file is left alone.
    let out = snctl(daemon.socket(), &["backup", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("--force"), "{out:?}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    daemon.stop().unwrap();

    // Restored into a new state directory with the key beside it.
    let new = tempfile::tempdir().unwrap();
    let config = new_state_dir(new.path(), &key);
    let out = restore(&config, &file);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("restored 2 authentications"),
        "{out:?}"
    );
    assert!(!config.state_dir.join("snctld.db.restore").exists());
    assert!(!config.state_dir.join("snctld.db.before-restore").exists());
    let restored = TestDaemon::start(config).unwrap();
    every_authentication_works(&restored, &fake, &["desk", "prod"]);
}

#[test]
fn restore_is_refused_with_a_wrong_key_or_while_the_daemon_runs_and_changes_nothing() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let daemon = TestDaemon::start(config.clone()).unwrap();
    daemon
        .client()
        .add(add_request("prod", &fake.url()))
        .unwrap();
    // More than one chunk (4 MiB) to send: a `meta` row of the test's own
    // (the daemon reads only its key check there; a table it did not
    // create would make restore refuse the backup), written beside the
    // running daemon.
    let filler: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let db = config.state_dir.join("snctld.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('filler', ?1)",
            [&filler],
        )
        .unwrap();
    }
    let file = dir.path().join("snctld.backup");
    backup(&daemon, &file);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > filler.len());
    // A rollback-journal database (format bytes 1, not WAL's 2): the file
    // is whole without a -wal.
    assert_eq!(&bytes[..16], b"SQLite format 3\0");
    assert_eq!(bytes[18..20], [1, 1]);

    // While the daemon runs.
    let before = daemon.client().list().unwrap();
    let out = restore(&config, &file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("stop it first"), "{out:?}");
    assert!(!config.state_dir.join("snctld.db.restore").exists());
    assert!(!config.state_dir.join("snctld.db.before-restore").exists());
    assert_eq!(daemon.client().list().unwrap(), before);

    // Into a state directory whose key is another: refused, untouched.
    let other = tempfile::tempdir().unwrap();
    let other_config = test_config(other.path());
    let other_daemon = TestDaemon::start(other_config.clone()).unwrap();
    other_daemon
        .client()
        .add(add_request("other", &fake.url()))
        .unwrap();
    other_daemon.stop().unwrap();
    let files = snapshot(&other_config.state_dir);
    let out = restore(&other_config, &file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is not the key this database was sealed with")
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(snapshot(&other_config.state_dir), files);
    let other_daemon = TestDaemon::start(other_config).unwrap();
    every_authentication_works(&other_daemon, &fake, &["other"]);
    other_daemon.stop().unwrap();

    // Over its own database, stopped: the previous one is kept, and a
    // second restore will not overwrite it.
    daemon.client().remove("prod", true).unwrap();
    daemon.stop().unwrap();
    let out = restore(&config, &file);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("restored 1 authentication "), "{stdout}");
    let previous = config.state_dir.join("snctld.db.before-restore");
    assert!(
        stdout.contains(&format!("kept as {}", previous.display())),
        "{stdout}"
    );
    assert!(previous.exists());
    let out = restore(&config, &file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("move it away first"), "{out:?}");
    let restored: Vec<u8> = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'filler'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(restored == filler, "the chunks were put together in order");
    let daemon = TestDaemon::start(config).unwrap();
    every_authentication_works(&daemon, &fake, &["prod"]);
}

#[test]
fn only_admins_may_back_up() {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only_admins_may_back_up needs root to run snctl as another uid");
        return;
    }
    let fake = fake();
    let dir = tempfile::Builder::new()
        .prefix("snctl-backup-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = test_config(dir.path());
    config.socket_mode = 0o666;
    let daemon = TestDaemon::start(config).unwrap();
    daemon
        .client()
        .add(add_request("prod", &fake.url()))
        .unwrap();
    // A copy of snctl anyone may run (the target directory may be out of
    // reach), made by another process so that no test forks with it open.
    let copy = dir.path().join("snctl");
    let copied = Command::new("cp")
        .arg(bin("snctl"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outside = tempfile::Builder::new()
        .prefix("snctl-backup-out-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = outside.path().join("stolen.db");
    let out = Command::new(&copy)
        .args(["backup", file.to_str().unwrap()])
        .env("SNCTL_SOCKET", daemon.socket())
        .current_dir(dir.path())
        .uid(4001)
        .gid(4001)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(
        text(&out.stderr).contains("forbidden: backup is for admins"),
        "{out:?}"
    );
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
}

/// Everyone may read the token of an authentication with no readers: the
/// attack clears them. This test's `prod` allows root only (an admin
/// anyway), so that clearing them is a change.
fn add_prod_for_root(daemon: &TestDaemon, fake: &FakeInstance) {
    let mut request = add_request("prod", &fake.url());
    request.readers.users = vec!["root".into()];
    daemon.client().add(request).unwrap();
}

/// A stopped daemon's state with `prod` (readable by root) and a backup
/// of it.
struct BackedUp {
    fake: FakeInstance,
    dir: tempfile::TempDir,
    /// The backup file.
    file: PathBuf,
    /// The daemon's master key.
    key: PathBuf,
}

fn backed_up_prod() -> BackedUp {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(test_config(dir.path())).unwrap();
    add_prod_for_root(&daemon, &fake);
    let file = dir.path().join("snctld.backup");
    backup(&daemon, &file);
    daemon.stop().unwrap();
    let key = dir.path().join("state").join("snctld.key");
    BackedUp {
        fake,
        dir,
        file,
        key,
    }
}

/// What someone who can write a backup file (but has no key) does: send
/// `prod`'s client secret to their own instance, readable by anyone.
fn redirect_to(db: &Path, attacker: &FakeInstance) {
    let changed = rusqlite::Connection::open(db)
        .unwrap()
        .execute(
            "UPDATE authentications SET instance_url = ?1, allow_users = '', allow_groups = '',
                 allow_units = '' WHERE name = 'prod'",
            [attacker.url()],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

#[test]
fn a_backup_edited_to_send_the_secret_elsewhere_is_refused_and_an_edited_database_sends_nothing() {
    let fake = fake();
    let attacker = fake_attacker();
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_with_log_filter(dir.path(), &[], "warn").unwrap();
    let client = || snctl::Client::connect(&daemon.socket).unwrap();
    let mut request = add_request("prod", &fake.url());
    request.readers.users = vec!["root".into()];
    client().add(request).unwrap();
    client().add(add_request("dev", &fake.url())).unwrap();
    let file = dir.path().join("snctld.backup");
    let out = snctl(&daemon.socket, &["backup", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{out:?}");
    redirect_to(&file, &attacker);

    // Restored into a new state directory with the right key: refused,
    // naming the authentication, and nothing is written.
    let new = tempfile::tempdir().unwrap();
    let config = new_state_dir(new.path(), &daemon.state_dir.join("snctld.key"));
    let before = snapshot(&config.state_dir);
    let out = restore(&config, &file);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("prod")
            && stderr.contains("changed outside snctld")
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(snapshot(&config.state_dir), before);

    // The same edit made to the database itself, the daemon stopped: prod
    // is left out with a line saying what to do, dev is served, and the
    // attacker's instance hears nothing.
    let mut daemon = daemon;
    assert!(daemon.stop());
    redirect_to(&daemon.state_dir.join("snctld.db"), &attacker);
    let daemon = DaemonProcess::start_with_log_filter(dir.path(), &[], "warn").unwrap();
    let mut client = snctl::Client::connect(&daemon.socket).unwrap();
    let names: Vec<String> = client.list().unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["dev"]);
    let out = snctl(&daemon.socket, &["token", "prod"], None);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let out = snctl(&daemon.socket, &["refresh", "prod"], None);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    client.token("dev").unwrap();
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("prod") && l.contains("changed outside snctld"))
        .unwrap_or_else(|| panic!("no line about prod: {log}"));
    assert!(line.contains("snctl remove prod"), "{line}");
    assert_eq!(
        attacker.token_requests(),
        0,
        "a token request reached the attacker"
    );
    assert_eq!(attacker.revoke_requests(), 0);

    // remove deletes it without a word to either instance.
    let out = snctl(&daemon.socket, &["remove", "prod"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(attacker.token_requests() + attacker.revoke_requests(), 0);
}

/// A second fake instance: the attacker's server.
fn fake_attacker() -> FakeInstance {
    fake()
}

#[test]
fn a_backup_holding_a_trigger_or_a_table_snctld_did_not_create_is_refused() {
    let BackedUp { dir, file, key, .. } = backed_up_prod();
    let cases = [
        (
            "trigger keep_instance",
            "CREATE TRIGGER keep_instance AFTER UPDATE OF instance_url ON authentications
             BEGIN UPDATE authentications SET instance_url = 'http://127.0.0.1:1'
                 WHERE name = NEW.name; END",
        ),
        ("table loot", "CREATE TABLE loot (x)"),
        (
            "view readers",
            "CREATE VIEW readers AS SELECT name, allow_users FROM authentications",
        ),
        (
            "index by_url",
            "CREATE INDEX by_url ON authentications (instance_url)",
        ),
    ];
    for (what, sql) in cases {
        let edited = dir.path().join("edited.backup");
        std::fs::copy(&file, &edited).unwrap();
        rusqlite::Connection::open(&edited)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        let new = tempfile::tempdir().unwrap();
        let config = new_state_dir(new.path(), &key);
        let before = snapshot(&config.state_dir);
        let out = restore(&config, &edited);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert!(
            stderr.contains(what)
                && stderr.contains("snctld did not create")
                && stderr.contains("nothing was changed"),
            "{what}: {stderr}"
        );
        // Only a trigger rewrites anything.
        assert_eq!(
            stderr.contains("a trigger would rewrite"),
            what.starts_with("trigger"),
            "{what}: {stderr}"
        );
        assert_eq!(snapshot(&config.state_dir), before, "{what}");
    }

    // A trigger in the live database stops the start, naming it.
    let db = dir.path().join("state").join("snctld.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(cases[0].1)
        .unwrap();
    let err = format!(
        "{:#}",
        TestDaemon::start(test_config(dir.path()))
            .err()
            .expect("refused")
    );
    assert!(
        err.contains("trigger keep_instance") && err.contains("snctld did not create"),
        "{err}"
    );
}

#[test]
fn a_restore_file_others_could_have_written_is_refused_without_force() {
    let BackedUp {
        fake,
        dir: _dir,
        file,
        key,
    } = backed_up_prod();

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let new = tempfile::tempdir().unwrap();
    let config = new_state_dir(new.path(), &key);
    let before = snapshot(&config.state_dir);
    let out = restore(&config, &file);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("writable by group or others")
            && stderr.contains("chmod 600")
            && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(snapshot(&config.state_dir), before);

    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&file, Some(4001), Some(4001)).unwrap();
        let out = restore(&config, &file);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            stderr.contains("belongs to uid 4001")
                && stderr.contains("chown")
                && stderr.contains("--force"),
            "{stderr}"
        );
        assert_eq!(snapshot(&config.state_dir), before);
    } else {
        eprintln!("skipped the other owner's file: chown needs root");
    }

    // The administrator looked and vouches for it.
    let out = restore_with(&config, &file, &["--force"]);
    assert!(out.status.success(), "{out:?}");
    let daemon = TestDaemon::start(config).unwrap();
    every_authentication_works(&daemon, &fake, &["prod"]);
}

/// The schema-4 database kept in `tests/data/schema-4` (made by the
/// snctld of that schema), copied into `dir` as a backup file, and its key.
fn schema_4_backup(dir: &Path) -> (PathBuf, PathBuf) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/schema-4");
    let (file, key) = (dir.join("old.backup"), dir.join("old.key"));
    std::fs::copy(data.join("snctld.db"), &file).unwrap();
    std::fs::copy(data.join("snctld.key"), &key).unwrap();
    for f in [&file, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (file, key)
}

#[test]
fn a_backup_of_the_schema_before_authenticated_settings_is_restored_only_when_vouched_for() {
    let dir = tempfile::tempdir().unwrap();
    let (file, key) = schema_4_backup(dir.path());
    let new = tempfile::tempdir().unwrap();
    let config = new_state_dir(new.path(), &key);
    let before = snapshot(&config.state_dir);
    let out = restore(&config, &file);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("schema 4")
            && stderr.contains("cannot be checked")
            && stderr.contains("--trust-old-backup")
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(snapshot(&config.state_dir), before);

    let out = restore_with(&config, &file, &["--trust-old-backup"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("restored 2 authentications"),
        "{out:?}"
    );
    assert!(
        text(&out.stderr).contains("2 authentications signed as found: desk, prod"),
        "{out:?}"
    );
    let marker = config.state_dir.join(snctld::state::SIGNED_MARKER);
    assert!(marker.exists(), "the restored database signs its settings");
    let daemon = TestDaemon::start(config.clone()).unwrap();
    assert_eq!(daemon.names(), ["desk", "prod"]);
    let token = daemon.client().token("prod").unwrap();
    assert_eq!(token.access_token.expose(), "fixture-access-token-prod");
    daemon.stop().unwrap();

    // Once more over that state directory, which has held signed settings:
    // restore still takes the old backup it is vouched for, and the marker
    // stays.
    let out = restore_with(&config, &file, &["--trust-old-backup"]);
    assert!(out.status.success(), "{out:?}");
    assert!(marker.exists());
    let daemon = TestDaemon::start(config).unwrap();
    assert_eq!(daemon.names(), ["desk", "prod"]);
}

/// `file` copied and changed by `sql`, as someone without the key could.
fn edited_copy(dir: &Path, file: &Path, sql: &str) -> PathBuf {
    let edited = dir.join("edited.backup");
    let _ = std::fs::remove_file(&edited);
    std::fs::copy(file, &edited).unwrap();
    rusqlite::Connection::open(&edited)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    edited
}

#[test]
fn a_backup_whose_schema_does_not_match_its_version_is_refused_in_one_line() {
    let BackedUp { dir, file, key, .. } = backed_up_prod();
    let new = tempfile::tempdir().unwrap();
    let config = new_state_dir(new.path(), &key);
    let before = snapshot(&config.state_dir);
    let refused = |edited: &Path, flags: &[&str]| {
        let out = restore_with(&config, edited, flags);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert_eq!(snapshot(&config.state_dir), before);
        stderr
    };

    // Schema 5 without its MAC column.
    let edited = edited_copy(
        dir.path(),
        &file,
        "ALTER TABLE authentications DROP COLUMN settings_mac",
    );
    let stderr = refused(&edited, &[]);
    assert!(
        stderr.contains("schema does not match its version")
            && stderr.contains("edited")
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );

    // Schema 4 in name, with the MAC column still there.
    let edited = edited_copy(dir.path(), &file, "PRAGMA user_version = 4");
    let stderr = refused(&edited, &["--trust-old-backup"]);
    assert!(
        stderr.contains("schema does not match its version") && !stderr.contains("duplicate"),
        "{stderr}"
    );

    // No schema version at all: not an snctld database, and no flag helps.
    let edited = edited_copy(dir.path(), &file, "PRAGMA user_version = 0");
    let stderr = refused(&edited, &[]);
    assert!(
        stderr.contains("not an snctld database") && !stderr.contains("--trust-old-backup"),
        "{stderr}"
    );
}

/// A backup is read from a copy the daemon makes on its store thread,
/// where every commit (a refresh's new tokens, an admin's change) waits its
/// turn: that copy is thrown away once read, so it is never synced to disk,
/// and a backup on a busy disk holds nobody up for the disk's sake. Seen by
/// tracing the daemon's `fsync`/`fdatasync` calls while five backups are
/// taken and nothing else happens: none. Needs `strace` and the right to
/// trace (root here); skips with a reason otherwise.
#[test]
fn a_backup_syncs_nothing_to_disk_on_the_store_thread() {
    if Command::new("strace").arg("-V").output().is_err() {
        println!("skipped: strace is not installed");
        return;
    }
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
    let mut client = snctl::Client::connect(&daemon.socket).unwrap();
    client.add(add_request("prod", &fake.url())).unwrap();
    let pid = daemon.pid().unwrap();
    let trace = dir.path().join("syncs.txt");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-e",
            "trace=fsync,fdatasync,sync_file_range",
            "-o",
        ])
        .arg(&trace)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let traced = wait_until(Duration::from_secs(20), || {
        harness::proc_status_kib(pid, "TracerPid:") == u64::from(strace.id())
    });
    if !traced {
        let _ = strace.kill();
        let _ = strace.wait();
        println!("skipped: strace cannot trace snctld here");
        return;
    }
    for _ in 0..5 {
        let backup = client.backup().unwrap();
        assert!(backup.bytes.starts_with(b"SQLite format 3\0"));
    }
    // SAFETY: SIGINT to the strace this test spawned: it detaches and ends.
    unsafe { libc::kill(strace.id() as libc::pid_t, libc::SIGINT) };
    strace.wait().unwrap();
    let syncs: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("sync"))
        .map(str::to_owned)
        .collect();
    assert!(
        syncs.is_empty(),
        "five backups synced {} times: {syncs:#?}",
        syncs.len()
    );
    assert_eq!(client.token("prod").unwrap().instance_url, fake.url());
}
