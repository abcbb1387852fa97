//! Clocks, with the built `snctld` and a fake instance that runs on the
//! real clock and is the judge of expiry (its Table API refuses an expired
//! token): the daemon stopped (SIGSTOP) past a token's life, and its wall
//! clock stepped forward and back under libfaketime while it runs.
//!
//! Iterations: `SNCTL_CLOCK_ITERATIONS` (default 2) of each.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snctl_tests::fake::FakeInstance;
use snctl_tests::harness::{fake, snctl, DaemonProcess};

/// Where Debian's `faketime` package puts the preload library.
const LIBFAKETIME: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

fn iterations() -> usize {
    std::env::var("SNCTL_CLOCK_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

fn add(daemon: &DaemonProcess, fake: &FakeInstance) {
    let out = crate::add_by_secret(&daemon.socket, &fake.url(), "prod");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `snctl token prod --json [--min-valid SECS]`: the token and its
/// `expires_at`.
fn get_token(socket: &Path, min_valid: Option<&str>) -> (String, i64) {
    let mut args = vec!["token", "prod", "--json"];
    if let Some(secs) = min_valid {
        args.extend(["--min-valid", secs]);
    }
    let out = snctl(socket, &args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        json["access_token"].as_str().unwrap().to_string(),
        json["expires_at"].as_i64().unwrap(),
    )
}

/// Whether the instance takes `token`, asked at once (the fake's own
/// bookkeeping, so that a loaded machine's delays do not count), and then
/// through its Table API (an expired token gets 401).
fn accepted(fake: &FakeInstance, token: &str) -> bool {
    if !fake.is_access_token_valid(token) {
        return false;
    }
    let status = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "{}/api/now/table/incident?sysparm_limit=1",
            fake.url()
        ))
        .bearer_auth(token)
        .send()
        .unwrap()
        .status();
    status == 200
}

fn real_now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_daemon_stopped_past_its_tokens_life_hands_out_a_valid_token_after_one_refresh() {
    let iterations = iterations();
    let fake = fake();
    fake.set_access_lifetime(20);
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        DaemonProcess::start_with_log_filter(dir.path(), &[], "info").expect("snctld starts");
    add(&daemon, &fake);
    let mut expired = 0;
    for round in 0..iterations {
        get_token(&daemon.socket, None);
        daemon.signal(libc::SIGSTOP);
        // Past the 20 s life, and past the refresh planned at 15 s.
        std::thread::sleep(Duration::from_secs(21));
        let before = fake.token_requests();
        let issued_before = fake.tokens_issued();
        daemon.signal(libc::SIGCONT);
        let (token, _) = get_token(&daemon.socket, None);
        if !accepted(&fake, &token) {
            expired += 1;
        }
        // The overdue scheduler and the caller share one refresh; the next
        // is planned 15 s later (room for a loaded machine).
        std::thread::sleep(Duration::from_millis(500));
        let upstream = fake.token_requests() - before;
        // On a failure, the tokens issued tell a second request the daemon
        // made (2) from one the instance counted but never answered (1).
        assert_eq!(
            upstream,
            1,
            "round {round}: {upstream} token requests, {} tokens issued; the log: {}",
            fake.tokens_issued() - issued_before,
            daemon.log_text()
        );
    }
    println!(
        "{iterations} stops of 21 s past a 20 s token life: {expired} expired tokens handed out, \
         one refresh after each"
    );
    assert_eq!(expired, 0);
}

/// The daemon's wall clock, offset from the real one through the file
/// libfaketime reads on every call.
struct FakedClock {
    file: PathBuf,
}

impl FakedClock {
    fn set(&self, offset_secs: i64) {
        std::fs::write(&self.file, format!("{offset_secs:+}\n")).unwrap();
    }
}

#[test]
fn wall_clock_steps_forward_and_back_hand_out_no_expired_token() {
    let Some(library) = LIBFAKETIME.iter().find(|p| Path::new(p).exists()) else {
        eprintln!("skipped: libfaketime is not installed (Debian package `faketime`)");
        return;
    };
    let iterations = iterations();
    let fake = fake();
    fake.set_access_lifetime(20);
    let dir = tempfile::tempdir().unwrap();
    let clock = FakedClock {
        file: dir.path().join("faketime"),
    };
    clock.set(0);
    // Only the wall clock is faked: CLOCK_MONOTONIC and CLOCK_BOOTTIME
    // stay real (without FAKETIME_DONT_FAKE_MONOTONIC, libfaketime moves
    // them with the wall clock, which no host does).
    let daemon = DaemonProcess::start_configured(dir.path(), &[], "info", |command| {
        command
            .env("LD_PRELOAD", library)
            .env("FAKETIME_TIMESTAMP_FILE", &clock.file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    })
    .expect("snctld starts");
    add(&daemon, &fake);
    let (mut handed_out, mut expired, mut early) = (0, 0, 0);
    for round in 0..iterations {
        clock.set(0);
        // A fresh token: the next refresh is planned 15 s ahead.
        let out = snctl(&daemon.socket, &["refresh", "prod"], None);
        assert!(out.status.success(), "{out:?}");
        let before = fake.token_requests();

        // Forward an hour: the token is not expired, whatever the wall says.
        clock.set(3600);
        let (token, expires_at) = get_token(&daemon.socket, None);
        assert!(
            expires_at > real_now_secs() + 3000,
            "round {round}: the daemon's wall clock did not move (expires_at {expires_at}); \
             is libfaketime in effect?"
        );
        handed_out += 1;
        if !accepted(&fake, &token) {
            expired += 1;
        }
        let refreshes = fake.token_requests() - before;
        assert!(refreshes <= 1, "round {round}: {refreshes} early refreshes");
        early += refreshes;

        // Back two hours, an hour behind the real clock; wait until every
        // token held so far has died by the real clock. By the wall clock
        // they all look valid for another hour.
        clock.set(-3600);
        std::thread::sleep(Duration::from_secs(21));
        // Valid for 10 s more: room for a loaded machine between the
        // hand-out and the check.
        let (token, _) = get_token(&daemon.socket, Some("10"));
        handed_out += 1;
        if !accepted(&fake, &token) {
            expired += 1;
        }
    }
    println!(
        "{iterations} rounds of wall-clock steps (+1 h, then -2 h): {handed_out} tokens handed \
         out, {expired} expired, {early} early refreshes"
    );
    assert_eq!(expired, 0);
    let log = daemon.log_text();
    assert!(
        log.contains("the wall clock stepped back"),
        "the step is logged: {log}"
    );
}
