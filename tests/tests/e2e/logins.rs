//! Logins by a person: the password grant, the authorization-code grant
//! through the browser (a stand-in browser follows the fake's consent
//! redirect to snctl's loopback listener) and through a pasted redirect
//! address, and what happens when the refresh token stops working.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use snctl::protocol::{AuthState, LoginProof, LoginRequest, StartLoginRequest};
use snctl_tests::fake::{AuthorizeErrors, Consent, FakeInstance};

use crate::add_by_password;
use snctl_tests::harness::{
    bin, contains, files_under, free_port, snctl, snctl_env, wait_until, TestDaemon, CLIENT_ID,
    CLIENT_SECRET,
};

const USER: &str = "abel.tuter";
const PASSWORD: &str = "password-canary-7Qx";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fake with a user for the password grant, a daemon, and nothing added.
struct People {
    daemon: TestDaemon,
    dir: tempfile::TempDir,
    fake: FakeInstance,
}

impl People {
    fn start() -> People {
        let fake = snctl_tests::harness::fake();
        fake.add_user(USER, PASSWORD);
        let dir = tempfile::tempdir().unwrap();
        let daemon = TestDaemon::in_dir(dir.path());
        People { daemon, dir, fake }
    }

    fn socket(&self) -> &Path {
        self.daemon.socket()
    }

    /// `snctl add NAME --grant password` as [`USER`].
    fn add_password(&self, name: &str, extra: &[&str]) -> std::process::Output {
        let url = self.fake.url();
        add_by_password(self.socket(), &url, name, Some(USER), PASSWORD, extra)
    }

    /// Registers the Redirect URL for `port` and adds `NAME` with the
    /// authorization-code grant, the stand-in browser consenting.
    fn add_code(&self, name: &str, port: u16) -> std::process::Output {
        self.fake
            .set_redirect_uri(CLIENT_ID, &format!("http://127.0.0.1:{port}/callback"));
        self.add_code_as(name, port, CLIENT_ID)
    }

    /// Adds `NAME` with the authorization-code grant for `client_id`,
    /// listening on `port`, whatever the instance has registered.
    fn add_code_as(&self, name: &str, port: u16, client_id: &str) -> std::process::Output {
        let (url, port) = (self.fake.url(), port.to_string());
        let args = [
            "add",
            name,
            "--grant",
            "authorization-code",
            "--instance",
            &url,
            "--client-id",
            client_id,
            "--client-secret-stdin",
            "--redirect-port",
            &port,
        ];
        with_browser(self.socket(), &args, Some(&format!("{CLIENT_SECRET}\n")))
    }
}

/// snctl with `BROWSER` set to the stand-in browser.
fn with_browser(socket: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    with_browser_env(socket, args, stdin, &[])
}

/// [`with_browser`] with more of the stand-in browser's environment.
fn with_browser_env(
    socket: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> std::process::Output {
    let browser = bin("fake-browser");
    let mut all = vec![("BROWSER", browser.as_os_str())];
    all.extend(env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
    snctl_env(socket, args, stdin, &all)
}

/// [`with_browser_env`], and what the stand-in browser saw: `ok`, or why
/// its visit failed.
fn with_browser_report(
    socket: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let report_path = report.to_str().unwrap();
    let mut all = vec![("FAKE_BROWSER_REPORT", report_path)];
    all.extend_from_slice(env);
    let out = with_browser_env(socket, args, None, &all);
    // snctl does not wait for its browser: the browser may still be taking
    // the callback's answer when snctl is done.
    wait_until(Duration::from_secs(10), || report.exists());
    let seen = std::fs::read_to_string(&report).unwrap_or_else(|_| "no report".into());
    (out, seen)
}

/// The one line snctl printed on stderr for its error, without the prefix.
fn error_line(out: &std::process::Output) -> String {
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .rfind(|l| l.starts_with("snctl: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    line["snctl: ".len()..].to_owned()
}

#[test]
fn password_grant_adds_refreshes_and_never_stores_the_password() {
    let people = People::start();
    let out = people.add_password("desk", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("RFC 9700"),
        "the deprecation note: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("the login lasts until"));

    let mut client = people.daemon.client();
    let shown = client.show("desk").unwrap();
    let login = shown.login.expect("a login summary");
    assert_eq!(login.username.as_deref(), Some(USER));
    assert_eq!(login.refresh_lifespan_secs, 100 * 86_400);
    let issued = login.refresh_issued_at.expect("issue time");
    assert_eq!(login.refresh_expires_at, Some(issued + 100 * 86_400));

    // A refresh goes through the refresh token, which comes back unchanged
    // and keeps its first issue time.
    let first = client.token("desk").unwrap();
    let summary = client.refresh("desk").unwrap();
    assert_eq!(people.fake.refresh_tokens_issued().len(), 1);
    let second = client.token("desk").unwrap();
    assert_ne!(first.access_token, second.access_token);
    assert!(people
        .fake
        .is_access_token_valid(second.access_token.expose()));
    assert_eq!(
        summary.login.unwrap().refresh_issued_at,
        Some(issued),
        "ServiceNow's refresh token keeps its first expiry"
    );

    // The password never reaches the disk; the refresh token is sealed.
    let refresh = people.fake.refresh_tokens_issued().remove(0);
    for (path, bytes) in files_under(people.dir.path()) {
        assert!(!contains(&bytes, PASSWORD.as_bytes()), "{}", path.display());
        assert!(!contains(&bytes, refresh.as_bytes()), "{}", path.display());
    }

    // A new login with the remembered user name.
    let out = snctl(
        people.socket(),
        &["login", "desk", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(people.fake.refresh_tokens_issued().len(), 2);

    let out = snctl(
        people.socket(),
        &["login", "desk", "--password-stdin"],
        Some("wrong\n"),
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the previous login stays"));
    assert_eq!(client.show("desk").unwrap().state, AuthState::Ok);
}

#[test]
fn password_grant_without_a_user_or_with_a_wrong_password_saves_nothing() {
    let people = People::start();
    let url = people.fake.url();
    let out = add_by_password(people.socket(), &url, "desk", None, PASSWORD, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--username"));

    let wrong = "not-the-password";
    let out = add_by_password(people.socket(), &url, "desk", Some(USER), wrong, &[]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("user name and password"), "{stderr}");
    assert!(stderr.contains("nothing was saved"), "{stderr}");
    assert!(people.daemon.client().list().unwrap().is_empty());
}

#[test]
fn a_refused_refresh_token_needs_a_login_and_the_valid_token_is_still_served() {
    let people = People::start();
    people.fake.set_access_lifetime(8);
    let out = people.add_password("desk", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut client = people.daemon.client();

    // The admin deletes the user's tokens in ServiceNow.
    people.fake.revoke_refresh_tokens();
    let err = client.refresh("desk").unwrap_err();
    assert_eq!(err.kind().exit_code(), 5, "{err}");
    assert_eq!(
        err.to_string(),
        "authentication desk needs a new login: run `snctl login desk`"
    );
    let shown = client.show("desk").unwrap();
    assert_eq!(shown.state, AuthState::NeedsLogin);
    assert!(shown
        .last_error
        .unwrap()
        .contains("refused the refresh token"));

    // Until it expires, the access token in hand is served without asking
    // the instance again.
    let requests = people.fake.token_requests();
    let held = client.token_with("desk", Duration::ZERO).unwrap();
    assert!(people
        .fake
        .is_access_token_valid(held.access_token.expose()));
    assert_eq!(people.fake.token_requests(), requests);

    // Once it has expired: exit 5 with the documented message, and still no
    // retry loop against the instance.
    assert!(wait_until(Duration::from_secs(20), || {
        client.token_with("desk", Duration::ZERO).is_err()
    }));
    let out = snctl(people.socket(), &["token", "desk"], None);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "snctl: authentication desk needs a new login: run `snctl login desk`"
    );
    assert_eq!(people.fake.token_requests(), requests);
    let list = snctl(people.socket(), &["list"], None);
    assert!(
        text(&list.stdout).contains("needs-login"),
        "{}",
        text(&list.stdout)
    );
    assert_eq!(client.status().unwrap().needs_login, 1);

    // A login brings it back.
    let out = snctl(
        people.socket(),
        &["login", "desk", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(client.show("desk").unwrap().state, AuthState::Ok);
    let out = snctl(
        people.socket(),
        &["token", "desk", "--min-valid", "0"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn authorization_code_through_the_browser_and_the_loopback_listener() {
    let people = People::start();
    let port = free_port();
    let out = people.add_code("web", port);
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{port}/callback")),
        "the Redirect URL to register is printed: {stderr}"
    );
    assert_eq!(people.fake.authorize_requests(), 1);
    assert_eq!(people.fake.auth_code_exchanges(), 1);
    assert_eq!(people.fake.pkce_exchanges(), 1, "PKCE S256 was used");

    let mut client = people.daemon.client();
    let shown = client.show("web").unwrap();
    let login = shown.login.unwrap();
    assert_eq!(
        login.redirect_uri.as_deref(),
        Some(format!("http://127.0.0.1:{port}/callback").as_str())
    );
    let refresh = people.fake.refresh_tokens_issued().remove(0);
    assert_eq!(
        people.fake.refresh_token_user(&refresh).as_deref(),
        Some(USER)
    );
    let token = client.token("web").unwrap();
    assert!(people
        .fake
        .is_access_token_valid(token.access_token.expose()));
    client.refresh("web").unwrap();

    // Log in again the same way.
    let out = with_browser(people.socket(), &["login", "web"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(people.fake.auth_code_exchanges(), 2);

    // The person says no: the instance refused, and they are told how to
    // say yes.
    people.fake.set_consent(Consent::Deny);
    let out = with_browser(people.socket(), &["login", "web"], None);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let line = error_line(&out);
    assert!(line.contains("access_denied"), "{line}");
    assert!(line.contains("clicked Deny"), "{line}");
    assert!(
        line.ends_with("run `snctl login web` again and click Allow"),
        "{line}"
    );
    assert_eq!(client.show("web").unwrap().state, AuthState::Ok);
}

#[test]
fn an_unregistered_redirect_url_says_which_one_to_register() {
    let people = People::start();
    let (port, registered) = (free_port(), free_port());
    let expected = format!("http://127.0.0.1:{port}/callback");
    people.fake.set_redirect_uri(
        CLIENT_ID,
        &format!("http://127.0.0.1:{registered}/callback"),
    );

    // The instance redirects its refusal back to snctl.
    people.fake.set_authorize_errors(AuthorizeErrors::Redirect);
    let out = people.add_code_as("web", port, CLIENT_ID);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let line = error_line(&out);
    assert!(line.contains("Invalid redirect_uri"), "{line}");
    assert!(
        line.contains(&format!(
            "set the Redirect URL of the Application Registry record to exactly {expected}"
        )),
        "{line}"
    );
    assert!(line.contains("--redirect-port"), "{line}");
    assert!(!line.contains("again: run"), "{line}");
    assert!(people.daemon.client().list().unwrap().is_empty());

    // The instance hands out a code and refuses it at the exchange.
    people
        .fake
        .set_authorize_errors(AuthorizeErrors::AtExchange);
    let out = people.add_code_as("web", port, CLIENT_ID);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let line = error_line(&out);
    assert!(line.contains("Invalid redirect_uri"), "{line}");
    assert!(line.contains(&format!("to exactly {expected}")), "{line}");
    assert!(people.daemon.client().list().unwrap().is_empty());

    // A login of an authentication whose record changed since.
    people.fake.set_redirect_uri(CLIENT_ID, &expected);
    let out = people.add_code_as("web", port, CLIENT_ID);
    assert!(out.status.success(), "{}", text(&out.stderr));
    people.fake.set_redirect_uri(
        CLIENT_ID,
        &format!("http://127.0.0.1:{registered}/callback"),
    );
    people.fake.set_authorize_errors(AuthorizeErrors::Redirect);
    let out = with_browser(people.socket(), &["login", "web"], None);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let line = error_line(&out);
    assert!(line.contains(&format!("to exactly {expected}")), "{line}");
    assert!(
        line.contains("`snctl update web --redirect-port N`"),
        "{line}"
    );

    // The instance shows the person an error page and tells snctl nothing:
    // when the wait ends, what to check is said.
    people.fake.set_authorize_errors(AuthorizeErrors::Page);
    let out = with_browser(people.socket(), &["login", "web", "--timeout", "2"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let line = error_line(&out);
    assert!(line.contains("no login came back"), "{line}");
    assert!(
        line.contains(&format!("Redirect URL is exactly {expected}")),
        "{line}"
    );
}

#[test]
fn an_unknown_client_id_says_so() {
    let people = People::start();
    let port = free_port();
    people.fake.set_authorize_errors(AuthorizeErrors::Redirect);
    let out = people.add_code_as("web", port, "no-such-client");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let line = error_line(&out);
    assert!(line.contains("Invalid client_id"), "{line}");
    assert!(
        line.contains("does not know the client ID no-such-client"),
        "{line}"
    );
    assert!(line.contains("--client-id"), "{line}");
    assert!(people.daemon.client().list().unwrap().is_empty());
}

#[test]
fn a_callback_from_another_users_process_is_refused() {
    let people = People::start();
    let port = free_port();
    let out = people.add_code("web", port);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Another local user reads the authorize URL (and its state) from the
    // browser's command line and delivers a code of their own first.
    let (out, seen) = with_browser_report(
        people.socket(),
        &["login", "web"],
        &[("FAKE_BROWSER_INTRUDER_UID", "65534")],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(seen, "ok", "the intruder is refused, the browser is not");
    let warnings: Vec<_> = stderr.lines().filter(|l| l.contains("uid 65534")).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning names the other user: {stderr}"
    );
    assert_eq!(people.fake.issued_auth_codes().len(), 3);
    assert_eq!(
        people.fake.auth_code_exchanges(),
        2,
        "only the real login's code was exchanged"
    );
}

#[test]
fn a_login_says_which_servicenow_user_logged_in() {
    let people = People::start();
    let port = free_port();
    let out = people.add_code("web", port);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("logged in as {USER}")),
        "{}",
        text(&out.stdout)
    );
    let show = snctl(people.socket(), &["show", "web"], None);
    assert!(text(&show.stdout).contains(USER), "{}", text(&show.stdout));

    let out = with_browser(people.socket(), &["login", "web"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("logged in as {USER}")));

    // The instance does not say who: the login still counts.
    people.fake.set_current_user_available(false);
    let out = with_browser(people.socket(), &["login", "web"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("could not determine which ServiceNow user logged in"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        people.daemon.client().show("web").unwrap().state,
        AuthState::Ok
    );
}

#[test]
fn idle_connections_to_the_callback_port_do_not_hold_up_the_login() {
    let people = People::start();
    let port = free_port();
    let out = people.add_code("web", port);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (out, seen) = with_browser_report(
        people.socket(),
        &["login", "web", "--timeout", "60"],
        &[("FAKE_BROWSER_IDLE_CONNECTIONS", "100")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(seen, "ok", "the browser got its answer");
    assert_eq!(people.fake.auth_code_exchanges(), 2);
}

#[test]
fn a_redirect_with_the_wrong_state_is_rejected() {
    let people = People::start();
    let port = free_port();
    let out = people.add_code("web", port);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A redirect with another state (a forged one, or a web page poking at
    // the port) is refused and ignored: the login waits for its own.
    people.fake.set_state_override(Some("forged-state".into()));
    let out = with_browser(people.socket(), &["login", "web", "--timeout", "3"], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not carry this login's state"),
        "{stderr}"
    );
    assert!(stderr.contains("within"), "it timed out: {stderr}");
    assert_eq!(people.fake.auth_code_exchanges(), 1, "no exchange happened");

    // The daemon checks the state too, whatever a client sends.
    let mut client = people.daemon.client();
    let start = StartLoginRequest {
        name: "web".into(),
        add: None,
        client_secret: None,
    };
    let challenge = client.start_login(start).unwrap();
    let finish = |state: String| LoginRequest {
        name: "web".into(),
        proof: LoginProof::AuthorizationCode {
            code: snctl::Secret::new("some-code".into()),
            state,
        },
        client_secret: None,
    };
    let err = client
        .login(finish(format!("{}x", challenge.state)))
        .unwrap_err();
    assert_eq!(err.kind().exit_code(), 2, "{err}");
    assert!(err.to_string().contains("state does not match"), "{err}");
    // The started login is used up: a replay with the right state finds none.
    let err = client.login(finish(challenge.state)).unwrap_err();
    assert!(err.to_string().contains("no browser login"), "{err}");
}

#[test]
fn no_browser_login_takes_the_pasted_redirect_address() {
    let people = People::start();
    let port = free_port();
    let out = people.add_code("web", port);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut child = Command::new(bin("snctl"))
        .args(["login", "web", "--no-browser"])
        .env("SNCTL_SOCKET", people.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no URL printed");
        if let Some(url) = line.strip_prefix("  http") {
            break format!("http{}", url.trim_end());
        }
    };
    // The admin opens the URL on another machine; the browser ends on an
    // address that does not load there, which they copy back.
    let answer = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&url)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 302);
    let address = answer.headers()["location"].to_str().unwrap().to_string();
    assert!(address.starts_with(&format!("http://127.0.0.1:{port}/callback?")));
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "not an address").unwrap();
    writeln!(stdin, "  {address}  ").unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{rest}");
    assert_eq!(people.fake.auth_code_exchanges(), 2);
}

#[test]
fn updates_of_a_login_are_proven_first_and_a_rotated_secret_comes_with_a_login() {
    let people = People::start();
    let out = people.add_password("desk", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut client = people.daemon.client();
    let issued = client
        .show("desk")
        .unwrap()
        .login
        .unwrap()
        .refresh_issued_at;

    // The same secret again: proven with the refresh token, whose issue
    // time (and so the deadline) does not move.
    std::thread::sleep(Duration::from_millis(1100));
    let same = format!("{CLIENT_SECRET}\n");
    let out = snctl(
        people.socket(),
        &["update", "desk", "--client-secret-stdin"],
        Some(&same),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let login = client.show("desk").unwrap().login.unwrap();
    assert_eq!(login.refresh_issued_at, issued);

    // A mistyped secret changes nothing.
    let out = snctl(
        people.socket(),
        &["update", "desk", "--client-secret-stdin"],
        Some("typo\n"),
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the previous settings stay in use"));
    assert_eq!(client.show("desk").unwrap().state, AuthState::Ok);
    client.refresh("desk").unwrap();

    // The refresh token never goes to another host.
    let out = snctl(
        people.socket(),
        &[
            "update",
            "desk",
            "--instance",
            "https://other.service-now.com",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("login belongs to"));

    // The secret is rotated in ServiceNow and the login dies with it: a
    // login with the new secret saves both.
    people.fake.set_client_secret(CLIENT_ID, "rotated-secret");
    people.fake.revoke_refresh_tokens();
    assert_eq!(client.refresh("desk").unwrap_err().kind().exit_code(), 5);
    let out = snctl(
        people.socket(),
        &["login", "desk", "--client-secret-stdin", "--password-stdin"],
        Some(&format!("rotated-secret\n{PASSWORD}\n")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    client.refresh("desk").unwrap();
    assert_eq!(client.show("desk").unwrap().state, AuthState::Ok);

    // Options that do not fit the grant are refused, not ignored.
    let out = snctl(people.socket(), &["login", "desk", "--no-browser"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn browser_logins_waiting_at_once_are_bounded() {
    let people = People::start();
    let mut client = people.daemon.client();
    let start = |name: &str| {
        let mut add = snctl_tests::harness::add_request(name, &people.fake.url());
        add.grant = snctl::protocol::Grant::AuthorizationCode;
        add.redirect_port = Some(free_port());
        StartLoginRequest {
            name: name.into(),
            add: Some(add),
            client_secret: None,
        }
    };
    for i in 0..64 {
        client.start_login(start(&format!("web{i}"))).unwrap();
    }
    let err = client.start_login(start("one-too-many")).unwrap_err();
    assert_eq!(err.kind().exit_code(), 3, "{err}");
    assert!(
        err.to_string()
            .contains("64 browser logins are already waiting"),
        "{err}"
    );
    // Starting one of those again replaces it, as before the bound.
    client.start_login(start("web7")).unwrap();
}

#[test]
fn an_add_whose_redirect_carries_an_empty_error_says_to_run_the_same_add_again() {
    let people = People::start();
    let port = free_port();
    people
        .fake
        .set_redirect_uri(CLIENT_ID, &format!("http://127.0.0.1:{port}/callback"));
    let (url, port_arg) = (people.fake.url(), port.to_string());
    let mut child = Command::new(bin("snctl"))
        .args([
            "add",
            "desk",
            "--grant",
            "authorization-code",
            "--instance",
            &url,
            "--client-id",
            CLIENT_ID,
            "--client-secret-stdin",
            "--redirect-port",
            &port_arg,
            "--no-browser",
        ])
        .env("SNCTL_SOCKET", people.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{CLIENT_SECRET}").unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let authorize = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no URL printed");
        if let Some(url) = line.strip_prefix("  http") {
            break format!("http{}", url.trim_end());
        }
    };
    let state = reqwest::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("the authorize URL carries a state");
    // The redirect reaches the listener with an empty error and no code.
    let callback = reqwest::Url::parse_with_params(
        &format!("http://127.0.0.1:{port}/callback"),
        [("state", state.as_str()), ("error", "")],
    )
    .unwrap();
    let _ = reqwest::blocking::get(callback);
    let status = child.wait().unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    let line = rest
        .lines()
        .rfind(|l| l.starts_with("snctl: "))
        .unwrap_or_else(|| panic!("no error line: {rest}"));
    assert!(line.contains("no authorization code"), "{line}");
    assert!(line.contains("run the same `snctl add` again"), "{line}");
    assert!(!line.contains("snctl login desk"), "{line}");
    assert!(people.daemon.client().list().unwrap().is_empty());
}
