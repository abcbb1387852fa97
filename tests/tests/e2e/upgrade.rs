//! Every database this project has written opens in the current daemon,
//! is migrated, and serves: `tests/data/schema-N/` holds, per schema
//! version, a database and its master key as that version's snctld left
//! them (see tests/data/README.md for how each was made).

use std::path::Path;

use snctl::protocol::{AuthState, Grant, LoginProof, LoginRequest, UserLogin};
use snctl::{ErrorKind, Secret};
use snctl_tests::fake::FakeInstance;
use snctl_tests::harness::{fake, state_of_schema, TestDaemon};

const CLIENT_ID: &str = "fixture-client-id";
const CLIENT_SECRET: &str = "fixture-client-secret";
const USER: &str = "abel.tuter";
const PASSWORD: &str = "fixture-password";

/// The state directory of `dir` holding schema `version`'s fixture, its
/// authentications pointed at `fake` (the instance that wrote them is
/// gone; a database of a schema before 5 has no signed settings yet, so
/// this is what an admin moving to a new instance could have done).
fn pointed_at(version: u32, dir: &Path, fake: &FakeInstance) {
    let state = state_of_schema(dir, version);
    let conn = rusqlite::Connection::open(state.join("snctld.db")).unwrap();
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(found, i64::from(version), "the fixture's schema");
    conn.execute("UPDATE authentications SET instance_url = ?1", [fake.url()])
        .unwrap();
}

#[test]
fn databases_of_every_earlier_schema_are_migrated_and_serve() {
    for version in 1..=3 {
        let fake = fake();
        fake.add_client(CLIENT_ID, CLIENT_SECRET);
        fake.add_user(USER, PASSWORD);
        let dir = tempfile::tempdir().unwrap();
        pointed_at(version, dir.path(), &fake);
        let daemon = TestDaemon::in_dir(dir.path());
        let expected: &[&str] = if version == 1 {
            &["prod"]
        } else {
            &["desk", "prod"]
        };
        assert_eq!(daemon.names(), expected, "schema {version}");

        // Client credentials: the stored token has expired; a new one is
        // had with the stored (sealed) client secret.
        let mut client = daemon.client();
        let prod = client.show("prod").unwrap();
        assert_eq!(prod.client_id, CLIENT_ID, "schema {version}");
        assert_eq!(prod.grant, Grant::ClientCredentials);
        assert_eq!(prod.scope.as_deref(), Some("useraccount"));
        if version >= 3 {
            assert_eq!(prod.readers.users, ["root"], "schema {version}");
            assert_eq!(prod.readers.units, ["sync.service"], "schema {version}");
        }
        let token = client.token("prod").unwrap();
        assert!(
            fake.is_access_token_valid(token.access_token.expose()),
            "schema {version}"
        );

        // A person's login: its refresh token was the old instance's, so
        // it needs a new login, which works with the stored client secret.
        if version >= 2 {
            let desk = client.show("desk").unwrap();
            assert_eq!(desk.grant, Grant::Password);
            let login = desk.login.expect("a login");
            assert_eq!(login.username.as_deref(), Some(USER), "schema {version}");
            let err = client.token("desk").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NeedsLogin, "schema {version}: {err}");
            let desk = client
                .login(LoginRequest {
                    name: "desk".into(),
                    proof: LoginProof::Password(UserLogin {
                        username: USER.into(),
                        password: Secret::new(PASSWORD.into()),
                    }),
                    client_secret: None,
                })
                .unwrap();
            assert_eq!(desk.state, AuthState::Ok);
            let token = client.token("desk").unwrap();
            assert!(fake.is_access_token_valid(token.access_token.expose()));
        }
        daemon.stop().unwrap();

        let conn = rusqlite::Connection::open(dir.path().join("state/snctld.db")).unwrap();
        let now: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(now, snctld::store::SCHEMA_VERSION, "schema {version}");
    }
}

/// A fixture of a schema whose settings are signed, in a daemon of its own:
/// it serves as written. Its tokens live for decades, so nothing is asked
/// of the instance that wrote them (which is gone); and it cannot be
/// re-pointed at a new one, its settings being signed.
fn serves_as_written(version: u32) -> (tempfile::TempDir, TestDaemon) {
    let dir = tempfile::tempdir().unwrap();
    state_of_schema(dir.path(), version);
    let daemon = TestDaemon::in_dir(dir.path());
    assert_eq!(daemon.names(), ["desk", "prod"], "schema {version}");
    let mut client = daemon.client();
    for name in ["prod", "desk"] {
        let shown = client.show(name).unwrap();
        assert_eq!(shown.client_id, CLIENT_ID);
        assert_eq!(shown.state, AuthState::Ok, "schema {version}: {name}");
        let token = client.token(name).unwrap();
        assert!(!token.access_token.expose().is_empty());
        assert_eq!(token.instance_url, shown.instance_url);
    }
    let desk = client.show("desk").unwrap();
    assert_eq!(desk.login.unwrap().username.as_deref(), Some(USER));
    (dir, daemon)
}

#[test]
fn a_database_of_schema_5_keeps_its_signatures_through_the_migration() {
    // Schema 6 added the proxy setting; a row signed before it (proxy off)
    // keeps its MAC, so nothing is refused or signed again.
    let (_dir, daemon) = serves_as_written(5);
    assert!(!daemon.client().show("prod").unwrap().proxy);
}

#[test]
fn a_database_of_schema_6_keeps_its_proxy_through_the_migration() {
    // Schema 7 added the tokens' boot stamps; tokens stored before have
    // none and are judged by the wall clock.
    let (dir, daemon) = serves_as_written(6);
    assert_proxy_of_prod(dir.path(), &daemon);
}

#[test]
fn a_database_of_the_current_schema_serves_as_written() {
    assert_eq!(
        snctld::store::SCHEMA_VERSION,
        7,
        "add a fixture of the new schema"
    );
    let (dir, daemon) = serves_as_written(7);
    assert_proxy_of_prod(dir.path(), &daemon);
}

/// `prod` of the fixtures of schema 6 on was added with `--proxy`: its
/// socket is made and accepts.
fn assert_proxy_of_prod(dir: &Path, daemon: &TestDaemon) {
    let mut client = daemon.client();
    let prod = client.show("prod").unwrap();
    assert!(prod.proxy, "prod was added with --proxy");
    let socket = dir.join("proxy").join("prod.sock");
    assert_eq!(
        prod.proxy_socket.map(|s| (s.path, s.error)),
        Some((socket.display().to_string(), None))
    );
    assert!(!client.show("desk").unwrap().proxy);
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
}

#[test]
fn each_migration_step_is_logged_with_its_versions() {
    use snctl_tests::harness::DaemonProcess;
    let dir = tempfile::tempdir().unwrap();
    state_of_schema(dir.path(), 3);
    let daemon = DaemonProcess::start_with_log_filter(dir.path(), &[], "info").unwrap();
    let log = daemon.log_text();
    for (from, to) in [(3, 4), (4, 5), (5, 6)] {
        assert!(
            log.contains(&format!("database schema migrated from={from} to={to}")),
            "{from} -> {to}: {log}"
        );
    }
    assert!(!log.contains("from=2"), "{log}");
    drop(daemon);

    // A new database is created, not migrated: nothing to say.
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_with_log_filter(dir.path(), &[], "info").unwrap();
    assert!(
        !daemon.log_text().contains("migrated"),
        "{}",
        daemon.log_text()
    );
}

/// What is on disk under `dir`: every entry's path, mode and SHA-256 (a
/// directory's as `dir`), sorted, so that two snapshots compare byte for
/// byte.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, u32, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode();
            let what = if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
                digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
            };
            out.push((path, mode, what));
        }
    }
    out.sort();
    out
}

/// The current schema's fixture under `dir/state`, its version set to
/// `version` as if a newer snctld had written it; checkpointed, no `-wal`
/// left.
fn state_of_future_schema(dir: &Path, version: i64) -> std::path::PathBuf {
    let current = u32::try_from(snctld::store::SCHEMA_VERSION).unwrap();
    let state = state_of_schema(dir, current);
    set_version(&state.join("snctld.db"), version);
    state
}

fn set_version(db: &Path, version: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(&format!("PRAGMA user_version = {version}"))
        .unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    let _ = std::fs::remove_file(db.with_extension("db-wal"));
}

/// Runs the built `snctld` with `args` on `dir`'s socket and state
/// directory; its exit code and stderr.
fn snctld(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(snctl_tests::harness::bin("snctld"))
        .arg("--socket")
        .arg(dir.join("snctld.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one error line of a refusal: names the version found and the one
/// this snctld supports, and says what to do.
fn assert_refused_for(version: i64, code: Option<i32>, stderr: &str, what: &str) {
    assert_eq!(code, Some(1), "{what} {version}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what} {version}: one line: {stderr}");
    let line = lines[0];
    assert!(
        line.contains(&format!("schema version {version}"))
            && line.contains(&format!("({})", snctld::store::SCHEMA_VERSION))
            && line.contains("install a newer snctld"),
        "{what} {version}: {line}"
    );
}

/// Versions no snctld of today writes: the next one, and far ones.
const FUTURE: [i64; 3] = [8, 1000, i32::MAX as i64];

#[test]
fn a_database_of_a_newer_schema_is_refused_by_start_and_rekey_and_nothing_changes() {
    assert_eq!(snctld::store::SCHEMA_VERSION, 7, "move FUTURE on");
    for version in FUTURE {
        let dir = tempfile::tempdir().unwrap();
        let state = state_of_future_schema(dir.path(), version);
        let before = snapshot(dir.path());
        assert_eq!(before.len(), 3, "{before:?}");

        let (code, stderr) = snctld(dir.path(), &[]);
        assert_refused_for(version, code, &stderr, "start");
        assert_eq!(snapshot(dir.path()), before, "start {version}");

        let (code, stderr) = snctld(dir.path(), &["rekey"]);
        assert_refused_for(version, code, &stderr, "rekey");
        assert_eq!(snapshot(dir.path()), before, "rekey {version}");
        assert!(state.join("snctld.key").exists());
    }
}

#[test]
fn a_backup_of_a_newer_schema_is_refused_by_restore_and_nothing_changes() {
    for version in FUTURE {
        let dir = tempfile::tempdir().unwrap();
        state_of_schema(dir.path(), 6);
        let backup = dir.path().join("newer.db");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/schema-7/snctld.db"),
            &backup,
        )
        .unwrap();
        set_version(&backup, version);
        let before = snapshot(dir.path());

        let (code, stderr) = snctld(dir.path(), &["restore", backup.to_str().unwrap()]);
        assert_refused_for(version, code, &stderr, "restore");
        assert_eq!(snapshot(dir.path()), before, "restore {version}");
    }
}

#[test]
fn a_database_of_a_version_no_snctld_writes_is_refused_in_one_line_and_nothing_changes() {
    // Below 1 with tables in it: not made by snctld, or its version was
    // edited. (0 with no table is a new database.)
    for version in [-1, 0, i64::from(i32::MIN)] {
        let dir = tempfile::tempdir().unwrap();
        state_of_future_schema(dir.path(), version);
        let before = snapshot(dir.path());
        for args in [&[][..], &["rekey"]] {
            let (code, stderr) = snctld(dir.path(), args);
            assert_eq!(code, Some(1), "{args:?} {version}: {stderr}");
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{args:?} {version}: {stderr}");
            assert!(
                lines[0].contains(&format!("schema version {version}"))
                    && lines[0].contains("not an snctld database")
                    && lines[0].contains("snctld restore"),
                "{args:?} {version}: {stderr}"
            );
            assert_eq!(snapshot(dir.path()), before, "{args:?} {version}");
        }
    }
}

/// The hello of protocol `version` as every snctl so far has written it,
/// by hand: a u32 little-endian length, then bincode 2's varint of the
/// version and the client's version string (a varint length, its bytes).
/// These bytes were the same in protocols 1 to 5 and must stay so.
fn hello_frame(version: u8, client_version: &str) -> Vec<u8> {
    assert!(
        version < 251 && client_version.len() < 251,
        "one-byte varints"
    );
    let mut payload = vec![version, client_version.len() as u8];
    payload.extend_from_slice(client_version.as_bytes());
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// A `HelloReply` frame decoded by hand, as an snctl of any protocol
/// does: (protocol_version, daemon_version).
fn decode_hello_reply(frame: &[u8]) -> (u32, String) {
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    let payload = &frame[4..];
    assert_eq!(payload.len(), len, "one whole frame: {frame:02x?}");
    assert!(payload[0] < 251 && payload[1] < 251, "{frame:02x?}");
    let text = std::str::from_utf8(&payload[2..]).unwrap();
    assert_eq!(text.len(), usize::from(payload[1]), "{frame:02x?}");
    (u32::from(payload[0]), text.to_string())
}

#[test]
fn the_hello_has_had_one_wire_form_in_every_protocol_version() {
    use snctl_shared::frame::{self, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
    use snctl_shared::protocol::{Hello, HelloReply};
    // Golden: protocol 1's hello from snctl 0.1.0, as sent since the first
    // commit. A change here strands every older snctl without a message.
    assert_eq!(
        hello_frame(1, "0.1.0"),
        [0x07, 0, 0, 0, 0x01, 0x05, b'0', b'.', b'1', b'.', b'0']
    );
    for version in 1..=snctl::PROTOCOL_VERSION + 1 {
        let v = u8::try_from(version).unwrap();
        let hello = Hello {
            protocol_version: version,
            client_version: "0.1.0".into(),
        };
        let bytes = hello_frame(v, "0.1.0");
        assert_eq!(frame::encode(&hello, MAX_REQUEST_FRAME).unwrap(), bytes);
        assert_eq!(frame::decode_request::<Hello>(&bytes[4..]).unwrap(), hello);
        let reply = HelloReply {
            protocol_version: version,
            daemon_version: "0.1.0 (49fc8a9)".into(),
        };
        let bytes = frame::encode(&reply, MAX_RESPONSE_FRAME).unwrap();
        assert_eq!(bytes, hello_frame(v, "0.1.0 (49fc8a9)"), "same shape");
        assert_eq!(decode_hello_reply(&bytes), (version, reply.daemon_version));
    }
}

#[test]
fn a_client_of_another_protocol_gets_the_daemons_version_and_the_daemon_logs_one_line() {
    use snctl_tests::harness::DaemonProcess;
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_with_log_filter(dir.path(), &[], "warn").unwrap();
    let current = snctl::PROTOCOL_VERSION;
    // Every older protocol, and a newer one.
    for version in (1..current).chain([current + 1]) {
        let client_version = format!("0.0.{version}");
        // An snctl sends its hello and first request in one write (here
        // variant 0, a token request, for "prod"): it is never read. Three
        // times, as a client retrying would: logged once.
        let mut bytes = hello_frame(u8::try_from(version).unwrap(), &client_version);
        bytes.extend_from_slice(&[0x07, 0, 0, 0, 0x00, 0x04, b'p', b'r', b'o', b'd', 0x3c]);
        let mut answer = Vec::new();
        for _ in 0..3 {
            let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
            stream.write_all(&bytes).unwrap();
            answer.clear();
            stream.read_to_end(&mut answer).unwrap();
        }
        // Only the hello's answer, then the end of the stream.
        let (daemon_protocol, daemon_version) = decode_hello_reply(&answer);
        assert_eq!(daemon_protocol, current, "to protocol {version}");
        assert!(
            daemon_version.starts_with(env!("CARGO_PKG_VERSION")),
            "{daemon_version}"
        );
        // What that snctl prints with it (its own message, the same text
        // in every protocol so far).
        let printed = snctl::Error::ProtocolMismatch {
            daemon: daemon_protocol,
            client: version,
        }
        .to_string();
        assert!(
            printed.starts_with(&format!(
                "snctl speaks protocol {version} but snctld speaks {current}:"
            )),
            "{printed}"
        );

        // The log is written off the connection's thread.
        let quoted = format!("\"{client_version}\"");
        snctl_tests::harness::wait_until(std::time::Duration::from_secs(10), || {
            daemon.log_text().contains(&quoted)
        });
        let log = daemon.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&quoted)).collect();
        assert_eq!(lines.len(), 1, "{log}");
        assert!(
            lines[0].contains(&format!("speaks protocol {version}"))
                && lines[0].contains(&format!("snctld speaks {current}")),
            "{}",
            lines[0]
        );
    }
    // The log is written in order: every line of the loop is in by now.
    let log = daemon.log_text();
    assert_eq!(
        log.matches("a client speaks protocol").count(),
        usize::try_from(current).unwrap(),
        "{log}"
    );
    // The daemon still serves a client of its own protocol.
    let mut client = snctl::Client::connect(&daemon.socket).unwrap();
    assert!(client.list().unwrap().is_empty());
}

#[test]
fn snctl_against_an_snctld_of_every_older_protocol_says_which_goes_with_which() {
    use std::io::{Read, Write};
    let current = snctl::PROTOCOL_VERSION;
    for version in 1..current {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("old.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        // An snctld of that protocol: reads the hello, answers with its
        // own (same bytes in every version), closes.
        let old = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut hello = [0u8; 4];
            stream.read_exact(&mut hello).unwrap();
            let mut rest = vec![0u8; u32::from_le_bytes(hello) as usize];
            stream.read_exact(&mut rest).unwrap();
            stream
                .write_all(&hello_frame(u8::try_from(version).unwrap(), "0.1.0"))
                .unwrap();
            (
                u32::from(rest[0]),
                String::from_utf8(rest[2..].to_vec()).unwrap(),
            )
        });
        let out = snctl_tests::harness::snctl(&socket, &["token", "prod"], None);
        let (client_protocol, client_version) = old.join().unwrap();
        assert_eq!(client_protocol, current);
        assert!(client_version.starts_with(env!("CARGO_PKG_VERSION")));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "snctl speaks protocol {current} but snctld speaks {version}:"
            )) && stderr.contains("same release")
                && stderr.contains("Versions")
                && stderr.contains("restart snctld"),
            "{stderr}"
        );
    }
}

#[test]
fn every_schema_so_far_has_a_fixture_and_each_opens_in_this_daemon() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let current = u32::try_from(snctld::store::SCHEMA_VERSION).unwrap();
    assert!(
        !data.join(format!("schema-{}", current + 1)).exists(),
        "a fixture of a schema this snctld does not know"
    );
    for version in 1..=current {
        let dir = tempfile::tempdir().unwrap();
        let state = state_of_schema(dir.path(), version);
        let conn = rusqlite::Connection::open(state.join("snctld.db")).unwrap();
        let found: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(found, version, "tests/data/schema-{version}");
        drop(conn);
        let daemon = TestDaemon::in_dir(dir.path());
        assert!(!daemon.names().is_empty(), "schema {version}");
        daemon.stop().unwrap();
    }
}
