//! `snctl doctor` telling ServiceNow's one generic 401 apart, and the
//! refresh-token deadline: shown ahead of time, warned about in the log.

use std::path::Path;
use std::time::Duration;

use snctl::protocol::{CheckOutcome, Diagnosis};
use snctl_tests::fake::FakeInstance;
use snctl_tests::harness::{snctl, wait_until, DaemonProcess, CLIENT_ID, CLIENT_SECRET};

use crate::Prod;

const USER: &str = "abel.tuter";
const PASSWORD: &str = "doctor-password";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn doctor(socket: &Path, name: &str) -> (Option<i32>, Diagnosis, String) {
    let out = snctl(socket, &["doctor", name, "--json"], None);
    let diagnosis: Diagnosis = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&out.stdout)));
    let human = snctl(socket, &["doctor", name], None);
    assert_eq!(human.status.code(), out.status.code());
    (out.status.code(), diagnosis, text(&human.stdout))
}

fn outcome(d: &Diagnosis, what: &str) -> CheckOutcome {
    d.checks
        .iter()
        .find(|c| c.what.starts_with(what))
        .unwrap_or_else(|| panic!("no check {what:?} in {:?}", d.checks))
        .outcome
}

#[test]
fn doctor_tells_a_disabled_grant_from_a_wrong_secret() {
    let prod = Prod::start();
    let socket = prod.daemon.socket();
    let (code, d, _) = doctor(socket, "prod");
    assert_eq!(code, Some(0));
    assert!(d.works && d.cause.is_none(), "{d:?}");

    // The system property is off: the client is accepted, the grant is not.
    prod.fake.set_client_credentials_enabled(false);
    let (code, d, human) = doctor(socket, "prod");
    assert_eq!(code, Some(7), "{human}");
    assert_eq!(outcome(&d, "instance reachable"), CheckOutcome::Pass);
    assert_eq!(outcome(&d, "token endpoint"), CheckOutcome::Pass);
    assert_eq!(outcome(&d, "client ID and secret"), CheckOutcome::Pass);
    assert_eq!(outcome(&d, "client-credentials grant"), CheckOutcome::Fail);
    let cause = d.cause.unwrap();
    assert!(
        cause.contains("glide.oauth.inbound.client.credential.grant_type.enabled")
            && cause.contains("OAuth Application User"),
        "{cause}"
    );
    assert!(
        human.contains("likely cause:") && human.contains("fix:"),
        "{human}"
    );

    // The secret was rotated in ServiceNow: the client itself is refused.
    prod.fake.set_client_credentials_enabled(true);
    prod.fake.set_client_secret(CLIENT_ID, "rotated");
    let (code, d, _) = doctor(socket, "prod");
    assert_eq!(code, Some(7));
    assert_eq!(outcome(&d, "client ID and secret"), CheckOutcome::Fail);
    assert!(d.cause.unwrap().contains("secret"));
    assert!(d
        .fix
        .unwrap()
        .contains("snctl update prod --client-secret-prompt"));

    // Fixed in ServiceNow: doctor's own attempt brings it back.
    prod.fake.set_client_secret(CLIENT_ID, CLIENT_SECRET);
    let (code, d, human) = doctor(socket, "prod");
    assert_eq!(code, Some(0), "{human}");
    assert!(d.works);
    assert!(human.contains("prod works"));
    assert_eq!(
        outcome(&d, "access token accepted"),
        CheckOutcome::Pass,
        "{human}"
    );
}

#[test]
fn doctor_sees_a_hibernating_instance() {
    let prod = Prod::start();
    prod.fake.set_hibernating(true);
    let (code, d, human) = doctor(prod.daemon.socket(), "prod");
    assert_eq!(code, Some(7), "{human}");
    assert_eq!(outcome(&d, "instance reachable"), CheckOutcome::Fail);
    assert_eq!(outcome(&d, "client ID and secret"), CheckOutcome::Skipped);
    assert!(d.cause.unwrap().contains("hibernating"), "{human}");
}

#[test]
fn doctor_tells_an_unavailable_token_endpoint_from_one_without_oauth() {
    let prod = Prod::start();
    // Down, being upgraded or overloaded: a 503, not a missing OAuth plugin.
    prod.fake
        .set_standing_fault(Some(snctl_tests::fake::Fault::status(503)));
    let (code, d, human) = doctor(prod.daemon.socket(), "prod");
    assert_eq!(code, Some(7), "{human}");
    assert_eq!(outcome(&d, "token endpoint"), CheckOutcome::Fail);
    let (cause, fix) = (d.cause.unwrap(), d.fix.unwrap());
    assert!(
        cause.contains("HTTP 503")
            && cause.contains("down, being upgraded or overloaded")
            && !cause.contains("does not serve OAuth"),
        "{human}"
    );
    assert!(
        !fix.contains("plugin") && fix.contains("snctl doctor prod"),
        "{human}"
    );

    // A web page with 200 really is not OAuth.
    prod.fake
        .set_standing_fault(Some(snctl_tests::fake::Fault::Html));
    let (code, d, human) = doctor(prod.daemon.socket(), "prod");
    assert_eq!(code, Some(7), "{human}");
    assert!(d.cause.unwrap().contains("does not serve OAuth"), "{human}");
    assert!(d.fix.unwrap().contains("OAuth 2.0 plugin"), "{human}");
}

/// A daemon process (its log is read) with `desk` added by password.
fn desk(fake: &FakeInstance, dir: &Path, lifespan: &str) -> DaemonProcess {
    let daemon = DaemonProcess::start(dir, &[]).unwrap();
    let url = fake.url();
    let extra = ["--refresh-token-lifespan", lifespan];
    let out = crate::add_by_password(&daemon.socket, &url, "desk", Some(USER), PASSWORD, &extra);
    assert!(out.status.success(), "{}", text(&out.stderr));
    daemon
}

fn people_fake() -> FakeInstance {
    let fake = snctl_tests::harness::fake();
    fake.add_user(USER, PASSWORD);
    fake
}

#[test]
fn the_refresh_token_deadline_is_shown_and_warned_about() {
    let fake = people_fake();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = desk(&fake, dir.path(), "10d");
    let warned = |daemon: &DaemonProcess, pattern: &str| {
        wait_until(Duration::from_secs(10), || {
            daemon.log_text().contains(pattern)
        })
    };
    // Ten days left: the 14-day warning, once.
    assert!(
        warned(&daemon, "the refresh token of desk dies in 9d 23h"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon
        .log_text()
        .contains("run `snctl login desk` before then"));

    let list = text(&snctl(&daemon.socket, &["list"], None).stdout);
    assert!(
        list.contains("LOGIN UNTIL") && (list.contains("in 9d") || list.contains("in 10d")),
        "{list}"
    );
    let show = text(&snctl(&daemon.socket, &["show", "desk"], None).stdout);
    assert!(
        show.contains("login until:") && show.contains("lifespan 10d"),
        "{show}"
    );
    let status = text(&snctl(&daemon.socket, &["status"], None).stdout);
    assert!(status.contains("next login due:  desk"), "{status}");

    // The record really says 12 hours: every threshold down to one day is
    // passed at once, and logged once.
    let out = snctl(
        &daemon.socket,
        &["update", "desk", "--refresh-token-lifespan", "12h"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unusually short"));
    assert!(warned(&daemon, "dies in 11h 59m"), "{}", daemon.log_text());
    let lines = |daemon: &DaemonProcess| {
        daemon
            .log_text()
            .matches("the refresh token of desk")
            .count()
    };
    assert_eq!(lines(&daemon), 2, "{}", daemon.log_text());

    // After a restart the warning comes again, since nobody may have seen it.
    assert!(daemon.stop());
    let daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || lines(&daemon) == 3));
}

#[test]
fn doctor_on_a_dead_refresh_token_says_log_in() {
    let fake = people_fake();
    let dir = tempfile::tempdir().unwrap();

    // Revoked in ServiceNow long before the recorded deadline.
    let daemon = desk(&fake, dir.path(), "100d");
    fake.revoke_refresh_tokens();
    let (code, d, human) = doctor(&daemon.socket, "desk");
    assert_eq!(code, Some(5), "{human}");
    assert!(d.needs_login);
    assert_eq!(outcome(&d, "client ID and secret"), CheckOutcome::Pass);
    assert_eq!(outcome(&d, "refresh token within"), CheckOutcome::Pass);
    assert_eq!(outcome(&d, "refresh token gets"), CheckOutcome::Fail);
    assert!(d.cause.unwrap().contains("before its recorded deadline"));
    assert!(d.fix.unwrap().contains("snctl login desk"));
    drop(daemon);

    // Past the recorded lifespan (two seconds, as the record says).
    let dir = tempfile::tempdir().unwrap();
    fake.set_refresh_lifespan(2);
    let daemon = desk(&fake, dir.path(), "2s");
    std::thread::sleep(Duration::from_millis(2100));
    let (code, d, human) = doctor(&daemon.socket, "desk");
    assert_eq!(code, Some(5), "{human}");
    assert_eq!(outcome(&d, "refresh token within"), CheckOutcome::Fail);
    assert!(d.cause.unwrap().contains("reached its lifespan"), "{human}");
    assert!(wait_until(Duration::from_secs(10), || daemon
        .log_text()
        .contains(
            "the refresh token of desk has reached its recorded lifespan"
        )));
}
