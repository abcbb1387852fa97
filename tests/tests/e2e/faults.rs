//! Upstream failures: the valid token keeps being served, the state says
//! what is wrong, retries back off, and a refused credential is not retried.

use std::time::Duration;

use snctl::protocol::{AuthState, UpstreamKind};
use snctl::{ClientError, Error};
use snctl_tests::fake::Fault;
use snctl_tests::harness::CLIENT_ID;

use crate::Prod;

fn upstream_kind(err: &ClientError) -> Option<UpstreamKind> {
    match err {
        ClientError::Daemon(Error::Upstream(u)) => Some(u.kind),
        _ => None,
    }
}

/// The valid token is served, even to callers asking for more validity
/// than it has.
fn assert_still_served(client: &mut snctl::Client, valid: &snctl::Token) {
    for _ in 0..20 {
        let token = client
            .token_with("prod", Duration::from_secs(1799))
            .unwrap();
        assert_eq!(token.access_token, valid.access_token);
    }
}

/// Adds `prod`, installs `fault` for every later token request, forces a
/// refresh, and checks what users rely on.
fn check_transient(fault: Fault, kind: UpstreamKind, words: &str) {
    let Prod {
        dir: _dir,
        fake,
        daemon,
    } = Prod::with(|_| {}, |c| c.http.request_timeout = Duration::from_secs(1));
    let mut client = daemon.client();
    let valid = client.token("prod").unwrap();

    fake.set_standing_fault(Some(fault));
    let err = client.refresh("prod").unwrap_err();
    assert_eq!(upstream_kind(&err), Some(kind), "{err}");
    assert_eq!(err.kind().exit_code(), 7);
    let message = err.to_string();
    assert!(message.contains(words), "{message}");
    assert!(!message.contains('\n'));

    // The valid token is still served, even to a caller asking for more
    // validity than it has, and asking does not hit the instance again.
    let asked = fake.token_requests();
    assert_still_served(&mut client, &valid);
    assert_eq!(
        fake.token_requests(),
        asked,
        "callers in backoff cause no upstream requests"
    );
    let shown = client.show("prod").unwrap();
    assert_eq!(shown.state, AuthState::Failing);
    assert!(shown.last_error.as_deref().unwrap_or("").contains(words));
    assert!(shown.next_refresh_at.is_some(), "a retry is planned");

    // Once the instance recovers, the next refresh works and clears the state.
    fake.set_standing_fault(None);
    client.refresh("prod").unwrap();
    let shown = client.show("prod").unwrap();
    assert_eq!(shown.state, AuthState::Ok);
    assert_eq!(shown.last_error, None);
}

#[test]
fn a_503_keeps_the_valid_token() {
    check_transient(Fault::status(503), UpstreamKind::ServerError, "HTTP 503");
}

#[test]
fn a_hibernating_instance_html_page_keeps_the_valid_token() {
    check_transient(Fault::Html, UpstreamKind::NotJson, "hibernating");
}

#[test]
fn a_timeout_keeps_the_valid_token() {
    check_transient(
        Fault::Delay(Duration::from_secs(3)),
        UpstreamKind::Timeout,
        "no answer",
    );
}

#[test]
fn malformed_json_keeps_the_valid_token() {
    check_transient(
        Fault::BadJson,
        UpstreamKind::BadResponse,
        "not a valid token response",
    );
}

#[test]
fn a_connection_reset_keeps_the_valid_token() {
    check_transient(
        Fault::ResetBeforeProcessing,
        UpstreamKind::Connection,
        "cannot talk to",
    );
}

#[test]
fn rate_limiting_is_honoured() {
    let Prod {
        dir: _dir,
        fake,
        daemon,
    } = Prod::start();
    let mut client = daemon.client();
    fake.push_fault(Fault::too_many_requests(120));
    let err = client.refresh("prod").unwrap_err();
    assert_eq!(
        upstream_kind(&err),
        Some(UpstreamKind::RateLimited),
        "{err}"
    );
    assert!(err.to_string().contains("Retry-After 120 s"), "{err}");
    let shown = client.show("prod").unwrap();
    let wait = shown.next_refresh_at.unwrap() - shown.last_refresh_at.unwrap();
    assert!(
        wait >= 115,
        "the retry waits for Retry-After (planned in {wait} s)"
    );
}

#[test]
fn a_refused_credential_is_not_retried_until_an_admin_acts() {
    let Prod {
        dir: _dir,
        fake,
        daemon,
    } = Prod::start();
    let mut client = daemon.client();
    let valid = client.token("prod").unwrap();

    // The admin rotated the secret in ServiceNow.
    fake.set_client_secret(CLIENT_ID, "rotated");
    let err = client.refresh("prod").unwrap_err();
    assert_eq!(upstream_kind(&err), Some(UpstreamKind::AccessDenied));
    assert!(err
        .to_string()
        .contains("glide.oauth.inbound.client.credential.grant_type.enabled"));
    let asked = fake.token_requests();
    assert_still_served(&mut client, &valid);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fake.token_requests(),
        asked,
        "no retry loop on a refused credential"
    );
    let shown = client.show("prod").unwrap();
    assert_eq!(shown.state, AuthState::Rejected);
    assert_eq!(shown.next_refresh_at, None);

    let mut update = snctl::protocol::UpdateRequest {
        name: "prod".into(),
        instance_url: None,
        client_id: None,
        client_secret: Some(snctl::Secret::new("rotated".into())),
        client_auth: None,
        scope: None,
        redirect_port: None,
        refresh_lifespan_secs: None,
        readers: None,
    };
    client.update(update.clone()).unwrap();
    assert_eq!(client.show("prod").unwrap().state, AuthState::Ok);
    update.client_secret = None;
    let err = client.update(update).unwrap_err();
    assert_eq!(
        err.kind().exit_code(),
        2,
        "an update that changes nothing is a usage error"
    );
}
