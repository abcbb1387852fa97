//! The master key on real files: where it comes from, what a wrong or
//! exposed one changes (nothing), blobs moved between rows, `snctld rekey`
//! and its crash windows.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use snctl_shared::protocol::{ClientAuth, Grant};
use snctl_shared::Secret;
use snctld::config::Config;
use snctld::crypto::{
    load_master_key, read_key_file, CryptoError, KeySource, KeySources, MasterKey, MasterKeyConfig,
    KEY_FILE, NEW_KEY_FILE,
};
use snctld::rekey::{self, rekey};
use snctld::store::{Authentication, Db, RowError, TokenSet, UncheckedDb, DB_FILE};

/// Everything under `dir`; the state directory is `dir/state`.
fn config(dir: &Path) -> Config {
    let mut config = Config::under(dir);
    config.http.connect_timeout = Duration::from_secs(5);
    config.http.request_timeout = Duration::from_secs(5);
    config
}

fn mkdir_private(path: &Path) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
}

/// A new key file at `path` (mode 0600); returns its key id.
fn new_key_file(path: &Path) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let (key, _) = load_master_key(&KeySources::state_dir(scratch.path()), None).unwrap();
    fs::copy(scratch.path().join(KEY_FILE), path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    key.id_hex()
}

/// The database, opened with the key the configuration's sources give
/// (created in the state directory for a new one).
fn open_db(config: &Config) -> Db {
    mkdir_private(&config.state_dir);
    let unchecked = UncheckedDb::open(&config.state_dir.join(DB_FILE)).unwrap();
    let check = unchecked.key_check().unwrap();
    let (key, _) = load_master_key(&config.key_sources(), check.as_deref()).unwrap();
    unchecked.prepare(Arc::new(key)).unwrap()
}

fn secret_of(name: &str) -> String {
    format!("client-secret-of-{name}")
}

fn sample(name: &str, with_refresh: bool) -> (Authentication, TokenSet) {
    (
        Authentication {
            name: name.into(),
            instance_url: "https://acme.service-now.com".into(),
            grant: Grant::ClientCredentials,
            client_id: "cid".into(),
            client_auth: ClientAuth::Form,
            scope: None,
            client_secret: Secret::new(secret_of(name)),
            created_at_ms: 1,
            username: None,
            redirect_port: None,
            refresh_lifespan_secs: snctld::store::DEFAULT_REFRESH_LIFESPAN_SECS,
            readers: Default::default(),
            jwt: None,
            proxy: false,
        },
        TokenSet {
            access_token: Secret::new(format!("access-token-of-{name}")),
            expires_at_ms: 2_000,
            obtained_at_ms: 1_000,
            refresh_token: with_refresh.then(|| Secret::new(format!("refresh-token-of-{name}"))),
            refresh_issued_ms: with_refresh.then_some(1_000),
            obtained_boot: None,
        },
    )
}

/// Stores `names` (every other one without a refresh token) and closes
/// the database.
fn populate(config: &Config, names: &[&str]) {
    let mut db = open_db(config);
    for (i, name) in names.iter().enumerate() {
        let (auth, tokens) = sample(name, i % 2 == 0);
        db.insert(&auth, &tokens).unwrap();
    }
}

/// Every authentication's secrets, as loaded.
fn secrets(db: &mut Db) -> BTreeMap<String, (String, String, Option<String>)> {
    db.load_all()
        .unwrap()
        .into_iter()
        .map(|r| {
            let tokens = r.tokens.expect("tokens stored");
            (
                r.auth.name,
                (
                    r.auth.client_secret.expose().to_string(),
                    tokens.access_token.expose().to_string(),
                    tokens.refresh_token.map(|t| t.expose().to_string()),
                ),
            )
        })
        .collect()
}

fn sql(config: &Config) -> Connection {
    Connection::open(config.state_dir.join(DB_FILE)).unwrap()
}

/// The key id of every sealed blob in the database, the key check included.
fn blob_key_ids(config: &Config) -> Vec<String> {
    let conn = sql(config);
    let mut ids = Vec::new();
    let mut stmt = conn
        .prepare("SELECT client_secret, access_token, refresh_token FROM authentications")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok([
                r.get::<_, Option<Vec<u8>>>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ])
        })
        .unwrap();
    for row in rows {
        for blob in row.unwrap().into_iter().flatten() {
            ids.push(MasterKey::blob_key_id(&blob).unwrap());
        }
    }
    let check: Vec<u8> = conn
        .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
            r.get(0)
        })
        .unwrap();
    ids.push(MasterKey::blob_key_id(&check).unwrap());
    ids
}

fn stored_check(config: &Config) -> Vec<u8> {
    UncheckedDb::open(&config.state_dir.join(DB_FILE))
        .unwrap()
        .key_check()
        .unwrap()
        .expect("a key check")
}

/// Every file in a directory: name -> (bytes, mtime, mode).
type Snapshot = BTreeMap<String, (Vec<u8>, (i64, i64), u32)>;

fn snapshot(dir: &Path) -> Snapshot {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                (
                    fs::read(entry.path()).unwrap(),
                    (meta.mtime(), meta.mtime_nsec()),
                    meta.mode(),
                ),
            )
        })
        .collect()
}

fn file_names(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.keys().map(String::as_str).collect()
}

#[test]
fn swapped_blobs_fail_alone_and_name_their_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    populate(&config, &["alpha", "bravo", "charlie", "delta"]);
    {
        let conn = sql(&config);
        let blob = |name: &str| -> Vec<u8> {
            conn.query_row(
                "SELECT client_secret FROM authentications WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .unwrap()
        };
        // alpha's client secret in bravo's row and the other way round.
        let (alpha, bravo) = (blob("alpha"), blob("bravo"));
        let set = "UPDATE authentications SET client_secret = ?2 WHERE name = ?1";
        conn.execute(set, rusqlite::params!["alpha", bravo])
            .unwrap();
        conn.execute(set, rusqlite::params!["bravo", alpha])
            .unwrap();
        // charlie's access token in its refresh token's column.
        conn.execute_batch(
            "UPDATE authentications SET refresh_token = access_token WHERE name = 'charlie'",
        )
        .unwrap();
    }

    let mut db = open_db(&config);
    // The whole-table load stops at the first bad blob...
    let err = db.load_all().unwrap_err().to_string();
    assert!(err.contains("client_secret of alpha"), "{err}");
    // ...the tolerant one names each and loads the rest.
    let (records, unreadable) = db.load_readable().unwrap();
    let names: Vec<_> = records.iter().map(|r| r.auth.name.as_str()).collect();
    assert_eq!(names, ["delta"]);
    assert_eq!(records[0].auth.client_secret.expose(), secret_of("delta"));
    let reported: Vec<_> = unreadable
        .iter()
        .map(|e| match e {
            RowError::Sealed(CryptoError::Open { name, field }) => (name.as_str(), *field),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(
        reported,
        [
            ("alpha", "client_secret"),
            ("bravo", "client_secret"),
            ("charlie", "refresh_token")
        ]
    );
    let message = unreadable[2].to_string();
    assert!(
        message.contains("refresh_token of charlie") && message.contains("does not open"),
        "{message}"
    );
    // Leaving them out wrote nothing: the rows are all still there.
    let count: i64 = sql(&config)
        .query_row("SELECT count(*) FROM authentications", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 4);
    drop(db);

    // And the daemon starts, serving what opens.
    snctld::open_state(&config).expect("starts despite the damaged rows");
}

#[test]
fn rekey_keeps_every_authentication_working_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    populate(&config, &["alpha", "bravo", "charlie"]);
    let before = secrets(&mut open_db(&config));
    let key_path = config.state_dir.join(KEY_FILE);
    let old_key = fs::read(&key_path).unwrap();
    let old_id = read_key_file(&key_path).unwrap().id_hex();
    let old_secret_blob: Vec<u8> = sql(&config)
        .query_row(
            "SELECT client_secret FROM authentications WHERE name = 'alpha'",
            [],
            |r| r.get(0),
        )
        .unwrap();

    let done = rekey(&config, None, &mut |_| {}).unwrap();
    // alpha and charlie: secret, access, refresh; bravo: secret, access;
    // and the key check.
    assert_eq!(done.resealed, 3 + 2 + 3 + 1);
    assert_eq!(done.old_id, old_id);
    assert_ne!(done.new_id, old_id);
    assert_eq!(done.new_key, key_path);
    assert!(done.instructions().is_none());
    let summary = done.summary();
    assert!(
        summary.contains("re-sealed 9 blobs")
            && summary.contains(&format!("{old_id} -> {}", done.new_id)),
        "{summary}"
    );

    // The key file was replaced in place, private; no leftover.
    assert!(!config.state_dir.join(NEW_KEY_FILE).exists());
    assert_eq!(
        fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(read_key_file(&key_path).unwrap().id_hex(), done.new_id);
    assert!(!summary.contains(fs::read_to_string(&key_path).unwrap().trim()));
    // Every blob carries the new key id, with a fresh nonce.
    let ids = blob_key_ids(&config);
    assert_eq!(ids.len(), 9);
    assert!(ids.iter().all(|id| *id == done.new_id), "{ids:?}");
    let new_secret_blob: Vec<u8> = sql(&config)
        .query_row(
            "SELECT client_secret FROM authentications WHERE name = 'alpha'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_ne!(new_secret_blob[21..], old_secret_blob[21..]);

    // Everything opens with the new key, and the daemon starts.
    assert_eq!(secrets(&mut open_db(&config)), before);
    let state = snctld::open_state(&config).unwrap();
    assert_eq!(state.key_source(), &KeySource::StateDir(key_path.clone()));
    drop(state);

    // The old key is refused.
    let old = dir.path().join("old.key");
    fs::write(&old, &old_key).unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o600)).unwrap();
    let err = snctld::open_state(&Config {
        master_key: MasterKeyConfig {
            file: Some(old.clone()),
        },
        ..config.clone()
    })
    .err()
    .expect("the old key is refused")
    .to_string();
    assert!(
        err.contains(&old.display().to_string()) && err.contains("not the key"),
        "{err}"
    );
}

#[test]
fn rekey_is_refused_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    populate(&config, &["alpha"]);
    let state = snctld::open_state(&config).unwrap();
    let err = format!("{:#}", rekey(&config, None, &mut |_| {}).unwrap_err());
    assert!(err.contains("stop it first"), "{err}");
    drop(state);

    // Nor does a daemon start while a rekey holds the lock.
    {
        use std::os::fd::AsRawFd;
        let held = fs::File::open(&config.state_dir).unwrap();
        // SAFETY: flock on a descriptor we own.
        let locked = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(locked, 0);
        let err = format!("{:#}", snctld::open_state(&config).err().expect("refused"));
        assert!(err.contains("snctld rekey is running"), "{err}");
    }

    // A daemon answering on the socket (whatever its state directory).
    let listener = std::os::unix::net::UnixListener::bind(&config.socket).unwrap();
    let err = format!("{:#}", rekey(&config, None, &mut |_| {}).unwrap_err());
    assert!(
        err.contains("serving") && err.contains("stop it first"),
        "{err}"
    );
    drop(listener);
    fs::remove_file(&config.socket).unwrap();

    assert_eq!(blob_key_ids(&config).len(), 4);
    rekey(&config, None, &mut |_| {}).unwrap();
}

#[test]
fn a_crash_between_the_commit_and_the_rename_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    populate(&config, &["alpha", "bravo"]);
    let before = secrets(&mut open_db(&config));
    let key_path = config.state_dir.join(KEY_FILE);
    let new_path = config.state_dir.join(NEW_KEY_FILE);
    let old_key = fs::read(&key_path).unwrap();

    let new_id = rekey_then_crash(&config);
    // The crash's state: the database on the new key, the old key file in
    // place, the new one next to it.
    assert_eq!(fs::read(&key_path).unwrap(), old_key);
    assert!(new_path.exists());
    let check = stored_check(&config);
    assert_eq!(MasterKey::blob_key_id(&check).unwrap(), new_id);
    let new_key = fs::read(&new_path).unwrap();

    let (key, source) = load_master_key(&config.key_sources(), Some(&check)).unwrap();
    assert_eq!(key.id_hex(), new_id);
    assert_eq!(source, KeySource::StateDir(key_path.clone()));
    // The rename was finished.
    assert!(!new_path.exists());
    assert_eq!(fs::read(&key_path).unwrap(), new_key);
    assert_eq!(
        fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(secrets(&mut open_db(&config)), before);

    // The same through a daemon start.
    let new_id = rekey_then_crash(&config);
    let state = snctld::open_state(&config).unwrap();
    assert_eq!(state.key_source(), &KeySource::StateDir(key_path.clone()));
    drop(state);
    assert!(!new_path.exists());
    assert_eq!(read_key_file(&key_path).unwrap().id_hex(), new_id);
}

/// A rekey that stops right after its commit, before the new key is put
/// in place, as a crash there would; the new key id.
fn rekey_then_crash(config: &Config) -> String {
    let committed = rekey::commit(config, None, &mut |_| {}).unwrap();
    let new_id = committed.rekeyed().new_id.clone();
    drop(committed);
    new_id
}

#[test]
fn a_rekey_that_did_not_commit_leaves_the_old_key_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    populate(&config, &["alpha", "bravo"]);
    let key_path = config.state_dir.join(KEY_FILE);
    let new_path = config.state_dir.join(NEW_KEY_FILE);
    let old_id = read_key_file(&key_path).unwrap().id_hex();

    // Died after writing snctld.key.new, before the commit.
    new_key_file(&new_path);
    let state = snctld::open_state(&config).unwrap();
    assert_eq!(state.key_source(), &KeySource::StateDir(key_path.clone()));
    drop(state);
    assert!(!new_path.exists(), "the unused new key is removed");
    assert_eq!(read_key_file(&key_path).unwrap().id_hex(), old_id);

    // A blob that does not open stops the rekey before anything changes.
    sql(&config)
        .execute_batch(
            "UPDATE authentications SET client_secret =
                 (SELECT client_secret FROM authentications WHERE name = 'bravo')
             WHERE name = 'alpha'",
        )
        .unwrap();
    let before = snapshot(&config.state_dir);
    let err = format!("{:#}", rekey(&config, None, &mut |_| {}).unwrap_err());
    assert!(
        err.contains("client_secret of alpha") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(snapshot(&config.state_dir), before);
    assert!(blob_key_ids(&config).iter().all(|id| *id == old_id));
}

#[test]
fn a_wrong_or_exposed_key_refuses_the_start_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    populate(&config, &["alpha", "bravo"]);
    let key_path = config.state_dir.join(KEY_FILE);
    let right_key = fs::read(&key_path).unwrap();

    // Another key in place of the right one.
    fs::remove_file(&key_path).unwrap();
    new_key_file(&key_path);
    let before = snapshot(&config.state_dir);
    assert_eq!(file_names(&before), [DB_FILE, KEY_FILE]);
    let err = format!("{:#}", snctld::open_state(&config).err().expect("refused"));
    assert!(
        err.contains(&key_path.display().to_string())
            && err.contains("is not the key this database was sealed with"),
        "{err}"
    );
    assert_eq!(snapshot(&config.state_dir), before);
    let err = format!("{:#}", rekey(&config, None, &mut |_| {}).unwrap_err());
    assert!(err.contains("is not the key"), "{err}");
    assert_eq!(snapshot(&config.state_dir), before);

    // The right key, readable by the group.
    fs::remove_file(&key_path).unwrap();
    fs::write(&key_path, &right_key).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)).unwrap();
    let before = snapshot(&config.state_dir);
    let err = format!("{:#}", snctld::open_state(&config).err().expect("refused"));
    assert!(
        err.contains(&key_path.display().to_string())
            && err.contains("readable by group or others")
            && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(snapshot(&config.state_dir), before);
    let err = format!("{:#}", rekey(&config, None, &mut |_| {}).unwrap_err());
    assert!(err.contains("chmod 600"), "{err}");
    assert_eq!(snapshot(&config.state_dir), before);

    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    snctld::open_state(&config).unwrap();
}

#[test]
fn a_configured_key_file_that_is_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("etc").join("master.key");
    fs::create_dir(dir.path().join("etc")).unwrap();

    // An existing database with a state directory key.
    let plain = config(dir.path());
    populate(&plain, &["alpha"]);
    let configured = Config {
        master_key: MasterKeyConfig {
            file: Some(missing.clone()),
        },
        ..plain.clone()
    };
    let before = snapshot(&configured.state_dir);
    let err = format!(
        "{:#}",
        snctld::open_state(&configured).err().expect("refused")
    );
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(snapshot(&configured.state_dir), before);
    assert!(!missing.exists(), "never created");
    let err = format!("{:#}", rekey(&configured, None, &mut |_| {}).unwrap_err());
    assert!(err.contains("does not exist"), "{err}");
    assert!(!missing.exists());

    // A first start: no key and no database are created anywhere.
    let fresh = Config {
        state_dir: dir.path().join("fresh"),
        ..configured.clone()
    };
    let err = format!("{:#}", snctld::open_state(&fresh).err().expect("refused"));
    assert!(err.contains("does not exist"), "{err}");
    assert!(!missing.exists());
    assert_eq!(file_names(&snapshot(&fresh.state_dir)), Vec::<&str>::new());
}

#[test]
fn key_sources_in_order_credentials_then_configured_then_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    mkdir_private(&creds);
    let creds_key = creds.join(KEY_FILE);
    let creds_id = new_key_file(&creds_key);
    let conf_key = dir.path().join("master.key");
    let conf_id = new_key_file(&conf_key);
    let state_key_bytes = {
        let path = dir.path().join("state.key");
        new_key_file(&path);
        fs::read(&path).unwrap()
    };
    let state_id = {
        let scratch = tempfile::tempdir().unwrap();
        fs::write(scratch.path().join(KEY_FILE), &state_key_bytes).unwrap();
        fs::set_permissions(
            scratch.path().join(KEY_FILE),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        read_key_file(&scratch.path().join(KEY_FILE))
            .unwrap()
            .id_hex()
    };
    // A first start in a state directory holding its own key.
    let start = |name: &str, credentials_dir: Option<&Path>, key_file: Option<&Path>| {
        let config = Config {
            state_dir: dir.path().join(name),
            credentials_dir: credentials_dir.map(Path::to_path_buf),
            master_key: MasterKeyConfig {
                file: key_file.map(Path::to_path_buf),
            },
            ..config(dir.path())
        };
        mkdir_private(&config.state_dir);
        let key = config.state_dir.join(KEY_FILE);
        fs::write(&key, &state_key_bytes).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let state = snctld::open_state(&config).unwrap();
        let source = state.key_source().clone();
        drop(state);
        let id = MasterKey::blob_key_id(&stored_check(&config)).unwrap();
        (config, source, id)
    };

    let (_, source, id) = start("s1", Some(&creds), Some(&conf_key));
    assert_eq!(source, KeySource::Credentials(creds_key.clone()));
    assert_eq!(id, creds_id);

    // A credentials directory without snctld.key passes to the next source.
    let empty_creds = dir.path().join("other-credentials");
    mkdir_private(&empty_creds);
    let (_, source, id) = start("s2", Some(&empty_creds), Some(&conf_key));
    assert_eq!(source, KeySource::Configured(conf_key.clone()));
    assert_eq!(id, conf_id);

    let (state_sealed, source, id) = start("s3", None, None);
    assert_eq!(
        source,
        KeySource::StateDir(state_sealed.state_dir.join(KEY_FILE))
    );
    assert_eq!(id, state_id);

    // The first source present is the key: a wrong one is never passed
    // over for a later one that would open the database.
    let err = format!(
        "{:#}",
        snctld::open_state(&Config {
            credentials_dir: Some(creds.clone()),
            ..state_sealed.clone()
        })
        .err()
        .expect("refused")
    );
    assert!(
        err.contains(&creds_key.display().to_string()) && err.contains("not the key"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        snctld::open_state(&Config {
            master_key: MasterKeyConfig {
                file: Some(conf_key.clone())
            },
            ..state_sealed.clone()
        })
        .err()
        .expect("refused")
    );
    assert!(
        err.contains(&conf_key.display().to_string()) && err.contains("not the key"),
        "{err}"
    );
}

#[test]
fn rekey_of_an_administrator_key_writes_the_new_key_where_told() {
    let dir = tempfile::tempdir().unwrap();
    let conf_key = dir.path().join("master.key");
    new_key_file(&conf_key);
    let config = Config {
        master_key: MasterKeyConfig {
            file: Some(conf_key.clone()),
        },
        ..config(dir.path())
    };
    populate(&config, &["alpha", "bravo"]);
    assert!(!config.state_dir.join(KEY_FILE).exists());
    let before = secrets(&mut open_db(&config));
    let snap = snapshot(&config.state_dir);

    // Where to? Not over an existing file.
    let err = format!("{:#}", rekey(&config, None, &mut |_| {}).unwrap_err());
    assert!(err.contains("--new-key-file"), "{err}");
    let taken = dir.path().join("taken.key");
    fs::write(&taken, "keep me").unwrap();
    let err = format!(
        "{:#}",
        rekey(&config, Some(&taken), &mut |_| {}).unwrap_err()
    );
    assert!(err.contains(&taken.display().to_string()), "{err}");
    assert_eq!(fs::read(&taken).unwrap(), b"keep me");
    assert_eq!(snapshot(&config.state_dir), snap);

    let new = dir.path().join("new.key");
    let mut said = String::new();
    let done = rekey(&config, Some(&new), &mut |text| said.push_str(text)).unwrap();
    assert_eq!(done.new_key, new);
    assert_eq!(
        fs::metadata(&new).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(read_key_file(&new).unwrap().id_hex(), done.new_id);
    let instructions = done.instructions().expect("what to do");
    assert_eq!(said, instructions, "said before the re-seal");
    assert!(
        instructions.contains(&format!("cp {} {}", new.display(), conf_key.display())),
        "{instructions}"
    );
    // Nothing of ours in the state directory; the configured key untouched.
    assert!(!config.state_dir.join(KEY_FILE).exists());
    assert!(!config.state_dir.join(NEW_KEY_FILE).exists());

    // Until the administrator installs it, the old key is refused, and a
    // second rekey says where the right key is.
    assert!(snctld::open_state(&config).is_err());
    let err = format!("{:#}", rekey(&config, Some(&new), &mut |_| {}).unwrap_err());
    assert!(err.contains("already sealed with the key in"), "{err}");
    fs::copy(&new, &conf_key).unwrap();
    assert_eq!(secrets(&mut open_db(&config)), before);
    snctld::open_state(&config).unwrap();

    // The same from a systemd credential.
    let creds = dir.path().join("credentials");
    mkdir_private(&creds);
    fs::copy(&conf_key, creds.join(KEY_FILE)).unwrap();
    let config = Config {
        credentials_dir: Some(creds.clone()),
        ..config
    };
    let newer = dir.path().join("newer.key");
    let done = rekey(&config, Some(&newer), &mut |_| {}).unwrap();
    let instructions = done.instructions().unwrap();
    assert!(
        instructions.contains(&format!(
            "systemd-creds encrypt --name=snctld.key {}",
            newer.display()
        )),
        "{instructions}"
    );
    fs::copy(&newer, creds.join(KEY_FILE)).unwrap();
    assert_eq!(secrets(&mut open_db(&config)), before);
}

#[test]
fn a_state_directory_open_to_others_is_refused_or_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    populate(&config, &["alpha"]);
    fs::set_permissions(&config.state_dir, fs::Permissions::from_mode(0o770)).unwrap();
    let before = snapshot(&config.state_dir);
    let err = format!("{:#}", snctld::open_state(&config).err().expect("refused"));
    assert!(
        err.contains("writable by group or others") && err.contains("chmod 700"),
        "{err}"
    );
    let err = format!("{:#}", rekey(&config, None, &mut |_| {}).unwrap_err());
    assert!(err.contains("chmod 700"), "{err}");
    assert_eq!(snapshot(&config.state_dir), before);

    // Readable only: a warning, and it starts.
    fs::set_permissions(&config.state_dir, fs::Permissions::from_mode(0o750)).unwrap();
    snctld::open_state(&config).unwrap();
}

#[test]
fn the_rekey_command_prints_one_line_without_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    populate(&config, &["alpha", "bravo"]);
    let key_path = config.state_dir.join(KEY_FILE);
    let old_id = read_key_file(&key_path).unwrap().id_hex();
    let old_key = fs::read_to_string(&key_path).unwrap();
    let empty_config = dir.path().join("snctld.toml");
    fs::write(&empty_config, "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snctld"))
        .arg("rekey")
        .arg("--socket")
        .arg(&config.socket)
        .arg("--state-dir")
        .arg(&config.state_dir)
        .arg("--config")
        .arg(&empty_config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_id = read_key_file(&key_path).unwrap().id_hex();
    let new_key = fs::read_to_string(&key_path).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("re-sealed 6 blobs (the key check included): key id {old_id} -> {new_id}")
    );
    assert!(!stdout.contains(old_key.trim()) && !stdout.contains(new_key.trim()));
}

/// The schema-4 database and key in `tests/data/schema-4` (written by the
/// snctld of that schema) copied into the state directory of `config`,
/// with `key` (the fixture's when `None`) as its key.
fn schema_4_state(config: &Config, key: Option<&Path>) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/schema-4");
    mkdir_private(&config.state_dir);
    let db = config.state_dir.join(DB_FILE);
    fs::copy(data.join(DB_FILE), &db).unwrap();
    let key_path = config.state_dir.join(KEY_FILE);
    fs::copy(key.unwrap_or(&data.join(KEY_FILE)), &key_path).unwrap();
    for file in [&db, &key_path] {
        fs::set_permissions(file, fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn user_version(config: &Config) -> i64 {
    sql(config)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_schema_4_database_is_signed_only_once_its_key_is_proven() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let other = dir.path().join("other.key");
    new_key_file(&other);
    schema_4_state(&config, Some(&other));
    let before = snapshot(&config.state_dir);
    let err = format!("{:#}", snctld::open_state(&config).err().expect("refused"));
    assert!(err.contains("is not the key"), "{err}");
    assert_eq!(snapshot(&config.state_dir), before, "nothing migrated");
    assert_eq!(user_version(&config), 4);

    let dir = tempfile::tempdir().unwrap();
    let config = self::config(dir.path());
    schema_4_state(&config, None);
    drop(snctld::open_state(&config).unwrap());
    assert_eq!(user_version(&config), snctld::store::SCHEMA_VERSION);
    let mut db = open_db(&config);
    let loaded = secrets(&mut db);
    assert_eq!(
        loaded["prod"],
        (
            "fixture-client-secret".to_string(),
            "fixture-access-token-prod".to_string(),
            None
        )
    );
    let prod = db.load_all().unwrap().remove(1);
    assert_eq!(prod.auth.readers.users, [0, 4242]);
    drop(db);
    // Signed under the key: a rekey checks and re-signs every row.
    rekey(&config, None, &mut |_| {}).unwrap();
    assert_eq!(open_db(&config).load_all().unwrap().len(), 2);
}

#[test]
fn a_database_put_back_below_signed_settings_is_neither_served_nor_rekeyed() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    populate(&config, &["alpha"]);
    drop(snctld::open_state(&config).unwrap());
    assert!(config.state_dir.join(snctld::state::SIGNED_MARKER).exists());
    sql(&config)
        .execute_batch(
            "ALTER TABLE authentications DROP COLUMN settings_mac;
             PRAGMA user_version = 4;
             UPDATE authentications SET allow_users = '' WHERE name = 'alpha'",
        )
        .unwrap();

    let err = format!("{:#}", snctld::open_state(&config).err().expect("refused"));
    assert!(
        err.contains("older or edited database") && err.contains("--trust-old-backup"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // A rekey would migrate it, signing the edit: refused the same way.
    let err = format!("{:#}", rekey(&config, None, &mut |_| {}).unwrap_err());
    assert!(err.contains("older or edited database"), "{err}");
    let version: i64 = sql(&config)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4, "nothing was migrated or signed");
    assert!(!config.state_dir.join(NEW_KEY_FILE).exists());
}
