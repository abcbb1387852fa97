//! `snctl check` as a monitoring system runs it (the monitoring-plugins
//! convention: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, one status line
//! with perfdata), and `snctl status` / `snctl list`, which exit 0 whatever
//! the health of what they report.

use std::path::Path;
use std::process::Output;

use snctl::protocol::AuthState;
use snctl_tests::fake::Fault;
use snctl_tests::harness::{snctl, TestDaemon};

use crate::{add_by_password, Prod};

const USER: &str = "abel.tuter";
const PASSWORD: &str = "password-canary-7Qx";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one status line `snctl check` printed, split at the `|` into what
/// it says and its perfdata.
fn verdict(out: &Output) -> (String, String) {
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    let line = stdout.trim_end();
    match line.split_once(" | ") {
        Some((says, perf)) => (says.to_owned(), perf.to_owned()),
        None => (line.to_owned(), String::new()),
    }
}

/// The number after `label` in `perf`, and what follows it.
fn perf_value<'a>(perf: &'a str, label: &str) -> (f64, &'a str) {
    let at = perf
        .find(label)
        .unwrap_or_else(|| panic!("no {label} in {perf}"));
    let rest = &perf[at + label.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    (rest[..end].parse().unwrap(), &rest[end..])
}

fn check_json(socket: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["check", "--json"];
    all.extend_from_slice(args);
    let out = snctl(socket, &all, None);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("JSON ({e}): {}", text(&out.stdout)));
    (out.status.code(), json)
}

/// `snctl status` and `snctl list` answer, exit 0, whatever is unhealthy.
fn status_and_list_exit_0(socket: &Path) {
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["list"],
        &["list", "--json"],
    ] {
        let out = snctl(socket, args, None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn check_is_ok_when_every_authentication_is_fine() {
    let prod = Prod::start();
    let out = snctl(prod.daemon.socket(), &["check"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let (says, perf) = verdict(&out);
    assert!(says.starts_with("SNCTL OK - 1 authentication"), "{says}");
    // The access token's remaining seconds, with min 0, in the
    // monitoring-plugins perfdata format.
    let (secs, rest) = perf_value(&perf, "'prod token'=");
    assert!(secs > 60.0 && secs <= 1800.0, "{perf}");
    assert!(rest.starts_with("s;;;0;"), "{perf}");

    let (code, json) = check_json(prod.daemon.socket(), &[]);
    assert_eq!(code, Some(0));
    assert_eq!(json["status"], "OK");
    assert_eq!(json["exit_code"], 0);
    assert_eq!(json["authentications"][0]["name"], "prod");
    assert_eq!(json["authentications"][0]["status"], "OK");
    assert_eq!(json["authentications"][0]["state"], "ok");
    assert!(
        json["authentications"][0]["access_valid_secs"]
            .as_i64()
            .unwrap()
            > 60
    );
}

#[test]
fn a_failing_refresh_with_a_token_in_hand_is_a_warning() {
    let prod = Prod::start();
    prod.fake.set_standing_fault(Some(Fault::status(503)));
    let mut client = prod.client();
    assert!(client.refresh("prod").is_err());
    assert_eq!(client.show("prod").unwrap().state, AuthState::Failing);

    let out = snctl(prod.daemon.socket(), &["check"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let (says, _) = verdict(&out);
    assert!(says.starts_with("SNCTL WARNING - "), "{says}");
    assert!(says.contains("prod: refreshes failing"), "{says}");
    assert!(says.contains("503"), "the reason: {says}");

    let (code, json) = check_json(prod.daemon.socket(), &[]);
    assert_eq!(code, Some(1));
    assert_eq!(json["status"], "WARNING");
    assert_eq!(json["exit_code"], 1);
    let finding = &json["authentications"][0]["findings"][0];
    assert_eq!(finding["status"], "WARNING");
    assert!(finding["message"]
        .as_str()
        .unwrap()
        .contains("refreshes failing"));

    status_and_list_exit_0(prod.daemon.socket());
}

#[test]
fn a_login_deadline_within_warn_days_is_a_warning() {
    let fake = snctl_tests::harness::fake();
    fake.add_user(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let out = add_by_password(
        daemon.socket(),
        &fake.url(),
        "desk",
        Some(USER),
        PASSWORD,
        &["--refresh-token-lifespan", "10d"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = snctl(daemon.socket(), &["check", "--warn-days", "14"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let (says, perf) = verdict(&out);
    assert!(says.starts_with("SNCTL WARNING - "), "{says}");
    assert!(
        says.contains("desk: login ends in 9d") || says.contains("desk: login ends in 10d"),
        "{says}"
    );
    assert!(says.contains("snctl login desk"), "what to do: {says}");
    // Days left, warning below 14, critical below 0.
    let (days, rest) = perf_value(&perf, "'desk login days'=");
    assert!((9.8..=10.0).contains(&days), "{perf}");
    assert!(rest.starts_with(";14:;0:;"), "{perf}");

    // The default is 14 days too; 7 days is not yet a warning.
    let out = snctl(daemon.socket(), &["check"], None);
    assert_eq!(out.status.code(), Some(1));
    let out = snctl(daemon.socket(), &["check", "--warn-days", "7"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn an_authentication_that_needs_a_login_is_critical() {
    let fake = snctl_tests::harness::fake();
    fake.add_user(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let url = fake.url();
    let out = add_by_password(daemon.socket(), &url, "desk", Some(USER), PASSWORD, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = crate::add_by_secret(daemon.socket(), &url, "prod");
    assert!(out.status.success(), "{}", text(&out.stderr));
    fake.revoke_refresh_tokens();
    assert!(daemon.client().refresh("desk").is_err());

    let out = snctl(daemon.socket(), &["check"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let (says, perf) = verdict(&out);
    assert!(says.starts_with("SNCTL CRITICAL - "), "{says}");
    assert!(says.contains("desk: needs a new login"), "{says}");
    assert!(says.contains("snctl login desk"), "{says}");
    assert!(says.contains("1 of 2"), "how many are fine: {says}");
    assert!(
        perf.contains("'desk token'=") && perf.contains("'prod token'="),
        "{perf}"
    );

    // Named, only those are checked.
    let out = snctl(daemon.socket(), &["check", "prod"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = snctl(daemon.socket(), &["check", "prod", "desk"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));

    let (code, json) = check_json(daemon.socket(), &[]);
    assert_eq!(code, Some(2));
    assert_eq!(json["status"], "CRITICAL");
    assert_eq!(json["exit_code"], 2);

    status_and_list_exit_0(daemon.socket());
}

#[test]
fn an_unreachable_daemon_is_critical() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let out = snctl(&socket, &["check"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let (says, perf) = verdict(&out);
    assert!(says.starts_with("SNCTL CRITICAL - "), "{says}");
    assert!(says.contains("snctld is not running"), "{says}");
    assert!(perf.is_empty(), "{perf}");

    let (code, json) = check_json(&socket, &[]);
    assert_eq!(code, Some(2));
    assert_eq!(json["status"], "CRITICAL");
    assert!(json["message"]
        .as_str()
        .unwrap()
        .contains("snctld is not running"));

    // The other commands keep their own code for it.
    for args in [&["status"][..], &["list"]] {
        assert_eq!(
            snctl(&socket, args, None).status.code(),
            Some(3),
            "{args:?}"
        );
    }
}

#[test]
fn an_unknown_name_or_a_usage_error_is_unknown() {
    let prod = Prod::start();
    let out = snctl(prod.daemon.socket(), &["check", "prod", "nosuch"], None);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let (says, _) = verdict(&out);
    assert!(says.starts_with("SNCTL UNKNOWN - "), "{says}");
    assert!(says.contains("nosuch"), "{says}");

    for args in [
        &["check", "--warn-days", "soon"][..],
        &["check", "--no-such-option"],
    ] {
        let out = snctl(prod.daemon.socket(), args, None);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).starts_with("SNCTL UNKNOWN - "),
            "{args:?}: {}",
            text(&out.stdout)
        );
    }
    // Help is not an error.
    let out = snctl(prod.daemon.socket(), &["check", "--help"], None);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("2  CRITICAL"), "{help}");
    assert!(help.contains("unreachable"), "{help}");
}

#[test]
fn an_empty_daemon_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let out = snctl(daemon.socket(), &["check"], None);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let (says, _) = verdict(&out);
    assert!(
        says.starts_with("SNCTL UNKNOWN - no authentications"),
        "{says}"
    );
}
