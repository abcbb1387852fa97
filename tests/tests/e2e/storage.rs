//! What is on disk: survives restarts, holds no secret in clear, and is
//! never touched by a daemon started with the wrong key.

use std::os::unix::fs::PermissionsExt;

use snctl_tests::harness::{
    contains, fake, files_under, snctl, test_config, DaemonProcess, TestDaemon, CLIENT_SECRET,
};

use crate::{add_request, Prod};

#[test]
fn a_restart_keeps_every_authentication_and_token() {
    let Prod { dir, fake, daemon } = Prod::start();
    daemon
        .client()
        .add(add_request("dev", &fake.url()))
        .unwrap();
    let before = daemon.client().token("prod").unwrap();
    daemon.stop().unwrap();

    let issued = fake.tokens_issued();
    let daemon = TestDaemon::in_dir(dir.path());
    let names = daemon.names();
    assert_eq!(names, ["dev", "prod"]);
    let after = daemon.client().token("prod").unwrap();
    assert_eq!(
        after.access_token, before.access_token,
        "the stored token is reused"
    );
    assert_eq!(
        fake.tokens_issued(),
        issued,
        "no new upstream request after a restart"
    );
}

#[test]
fn the_state_directory_holds_no_secret_in_clear() {
    let Prod { dir, fake, daemon } = Prod::start();
    let mut client = daemon.client();
    client.refresh("prod").unwrap();
    client.refresh("prod").unwrap();
    daemon.stop().unwrap();

    let state = dir.path().join("state");
    let files = files_under(&state);
    assert!(files.iter().any(|(p, _)| p.ends_with("snctld.db")));
    let mut needles = vec![CLIENT_SECRET.to_string()];
    needles.extend(fake.issued_access_tokens());
    assert_eq!(needles.len(), 4);
    for (path, bytes) in &files {
        for needle in &needles {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "{} holds a secret in clear",
                path.display()
            );
        }
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
    }
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn a_wrong_key_stops_the_start_and_writes_nothing() {
    let Prod {
        dir,
        fake: _fake,
        daemon,
    } = Prod::start();
    daemon.stop().unwrap();

    let state = dir.path().join("state");
    let key = state.join("snctld.key");
    std::fs::write(&key, format!("{}\n", "42".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = files_under(&state);
    let err = TestDaemon::start(test_config(dir.path()))
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("not the key this database was sealed with"),
        "{message}"
    );
    assert!(!message.contains('\n'));
    assert_eq!(
        files_under(&state),
        before,
        "nothing in the state directory changed"
    );
    assert!(
        !dir.path().join("snctld.sock").exists(),
        "no socket was created"
    );

    // An exposed key file is refused too.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = TestDaemon::start(test_config(dir.path()))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn the_daemon_binary_restarts_on_sigterm_without_losing_anything() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
    let out = snctl(
        &daemon.socket,
        &[
            "add",
            "prod",
            "--instance",
            &fake.url(),
            "--client-id",
            snctl_tests::harness::CLIENT_ID,
            "--client-secret-stdin",
        ],
        Some(CLIENT_SECRET),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = snctl(&daemon.socket, &["token", "prod"], None).stdout;
    assert!(daemon.stop(), "SIGTERM exits 0");
    assert!(!daemon.socket.exists(), "the socket is removed on shutdown");

    let daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
    let again = snctl(&daemon.socket, &["token", "prod"], None);
    assert!(again.status.success());
    assert_eq!(again.stdout, token);
    let status = snctl(&daemon.socket, &["status", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["authentications"], 1);
    assert_eq!(json["pid"], daemon.pid().unwrap());
}

#[test]
fn an_authentication_whose_secrets_do_not_open_is_left_out_and_can_be_removed() {
    let Prod { dir, fake, daemon } = Prod::start();
    daemon
        .client()
        .add(add_request("dev", &fake.url()))
        .unwrap();
    daemon.stop().unwrap();
    // A damaged (or hand-edited) row: dev's client secret is prod's blob,
    // sealed for another authentication.
    let db = dir.path().join("state").join(snctld::store::DB_FILE);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "UPDATE authentications SET client_secret =
                 (SELECT client_secret FROM authentications WHERE name = 'prod')
             WHERE name = 'dev'",
        )
        .unwrap();

    let daemon = TestDaemon::in_dir(dir.path());
    let names = daemon.names();
    assert_eq!(names, ["prod"], "the readable one is served");
    daemon.client().token("prod").unwrap();

    let out = snctl(daemon.socket(), &["remove", "dev"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing could be revoked"));
    daemon
        .client()
        .add(add_request("dev", &fake.url()))
        .unwrap();
    daemon.client().token("dev").unwrap();
}

#[test]
fn a_database_open_to_others_is_made_private_again() {
    let Prod {
        dir,
        fake: _fake,
        daemon,
    } = Prod::start();
    daemon.stop().unwrap();
    let db = dir.path().join("state").join(snctld::store::DB_FILE);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    daemon.client().token("prod").unwrap();
}

#[test]
fn a_schema_4_database_is_migrated_at_start_and_serves_then_an_edit_is_caught() {
    use snctl_tests::harness::CLIENT_ID;
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    // The database and key an snctld of schema 4 left.
    let state = snctl_tests::harness::state_of_schema(dir.path(), 4);
    let db = state.join(snctld::store::DB_FILE);

    let daemon = TestDaemon::in_dir(dir.path());
    assert_eq!(daemon.names(), ["desk", "prod"]);
    let token = daemon.client().token("prod").unwrap();
    assert_eq!(token.access_token.expose(), "fixture-access-token-prod");
    let shown = daemon.client().show("prod").unwrap();
    assert_eq!(shown.client_id, "fixture-client-id");
    let desk = daemon.client().token("desk").unwrap();
    assert_eq!(desk.access_token.expose(), "fixture-access-token-desk");
    // Every row now carries its settings' MAC.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, snctld::store::SCHEMA_VERSION);
        let unsigned: i64 = conn
            .query_row(
                "SELECT count(*) FROM authentications WHERE settings_mac IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unsigned, 0);
    }

    // An update after the migration is signed anew and works.
    let stdin = format!("{CLIENT_SECRET}\n");
    let out = snctl(
        daemon.socket(),
        &[
            "update",
            "prod",
            "--instance",
            &fake.url(),
            "--client-id",
            CLIENT_ID,
            "--client-secret-stdin",
        ],
        Some(&stdin),
    );
    assert!(out.status.success(), "{out:?}");
    daemon.stop().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let token = daemon.client().token("prod").unwrap();
    assert!(fake.is_access_token_valid(token.access_token.expose()));
    daemon.stop().unwrap();

    // A migrated row edited afterwards is caught like any other.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE authentications SET allow_users = '' WHERE name = 'prod'")
        .unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    assert_eq!(daemon.names(), ["desk"]);
}

/// Where a state directory records that its database has signed settings.
fn signed_marker(state: &std::path::Path) -> std::path::PathBuf {
    state.join(snctld::state::SIGNED_MARKER)
}

#[test]
fn a_database_put_back_below_signed_settings_is_refused_at_start() {
    let instance = fake();
    let attacker = fake();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start_with_log_filter(dir.path(), &[], "warn").unwrap();
    let mut request = add_request("prod", &instance.url());
    request.readers.users = vec!["root".into()];
    snctl::Client::connect(&daemon.socket)
        .unwrap()
        .add(request)
        .unwrap();
    assert!(daemon.stop());
    assert!(
        signed_marker(&daemon.state_dir).exists(),
        "the first start on signed settings records it"
    );

    // Settings edited and the database made to look like one from before
    // settings were signed, the daemon stopped.
    let db = daemon.state_dir.join(snctld::store::DB_FILE);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(&format!(
            "ALTER TABLE authentications DROP COLUMN settings_mac;
             PRAGMA user_version = 4;
             UPDATE authentications SET instance_url = '{}', allow_users = ''
                 WHERE name = 'prod'",
            attacker.url()
        ))
        .unwrap();
    let err = DaemonProcess::start_with_log_filter(dir.path(), &[], "warn")
        .err()
        .expect("an older database where signed settings were is refused");
    let message = format!("{err:#}");
    let line = message
        .lines()
        .find(|l| l.contains("older or edited database"))
        .unwrap_or_else(|| panic!("no line about the database: {message}"));
    assert!(
        line.contains("schema 4") && line.contains("snctld restore --trust-old-backup"),
        "{line}"
    );
    assert_eq!(attacker.token_requests(), 0);
    // Nothing was signed: the database is as it was put there.
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
}

#[test]
fn an_upgrade_from_schema_4_says_which_rows_it_signed_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = snctl_tests::harness::state_of_schema(dir.path(), 4);
    let mut daemon = DaemonProcess::start_with_log_filter(dir.path(), &[], "warn").unwrap();
    let log = daemon.log_text();
    let signed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("signed as found"))
        .collect();
    assert_eq!(signed.len(), 1, "{log}");
    assert!(
        signed[0].contains("2 authentications signed as found: desk, prod"),
        "{log}"
    );
    assert!(signed[0].contains("WARN"), "{log}");
    assert!(daemon.stop());
    assert!(signed_marker(&state).exists());
    // The next start signs nothing.
    let mut daemon = DaemonProcess::start_with_log_filter(dir.path(), &[], "warn").unwrap();
    assert!(daemon.stop());
    assert_eq!(daemon.log_text().matches("signed as found").count(), 1);
}
