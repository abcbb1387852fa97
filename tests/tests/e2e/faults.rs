//! Upstream failures, as a matrix: every grant that refreshes against every
//! way an instance fails. In each cell the daemon keeps answering, the valid
//! token keeps being served (even to callers asking for more validity than
//! it has) without a request storm, `show` and `status` say what is wrong in
//! one line, and the first refresh after the fault clears brings the state
//! back to ok. Retries back off and honour `Retry-After`; a refused
//! credential is not retried until someone acts.
//!
//! One daemon and one fake (over HTTPS, the daemon given its CA in
//! `[http] ca_file`) per grant, the grants in parallel threads. The backoff
//! of those daemons is long, so that within a cell only the test's own
//! `refresh` reaches the instance and requests can be counted exactly; a
//! second daemon per grant with a short backoff lets the scheduler retry on
//! its own. `cargo test -p snctl-tests --test e2e fault_matrix -- --nocapture`
//! prints the matrix.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use snctl::protocol::{
    AddRequest, AuthState, Grant, JwtSettings, LoginProof, LoginRequest, StartLoginRequest,
    UpstreamKind, UserLogin,
};
use snctl::{ClientError, Error, Secret};
use snctl_tests::fake::{FakeInstance, Fault};
use snctl_tests::harness::{
    free_port, runtime, test_config, wait_until, TestDaemon, CLIENT_ID, CLIENT_SECRET,
};

use crate::{add_request, Prod};

const USER: &str = "abel.tuter";
const PASSWORD: &str = "matrix-password-4Fz";
const SUBJECT: &str = "svc.matrix";
const NAME: &str = "prod";
/// The daemons' upstream request timeout in the matrix.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The matrix daemons' first backoff: a first retry is planned 10 to 20 s
/// out, longer than any cell lasts, so the scheduler stays out of the counts.
const BACKOFF_MIN: Duration = Duration::from_secs(20);
/// What callers ask for: a token of 1800 s is never this fresh for long.
const ASK: Duration = Duration::from_secs(1799);

fn upstream_kind(err: &ClientError) -> Option<UpstreamKind> {
    match err {
        ClientError::Daemon(Error::Upstream(u)) => Some(u.kind),
        _ => None,
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The grants that refresh, as the matrix labels them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    ClientCredentials,
    Password,
    AuthorizationCode,
    JwtBearer,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::ClientCredentials,
        Kind::Password,
        Kind::AuthorizationCode,
        Kind::JwtBearer,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::ClientCredentials => "client_credentials",
            Kind::Password => "password",
            Kind::AuthorizationCode => "authorization_code",
            Kind::JwtBearer => "jwt_bearer",
        }
    }

    /// What ServiceNow's generic 401 makes of this grant, and the words
    /// that say so.
    fn refused(self) -> (AuthState, &'static str) {
        match self {
            Kind::ClientCredentials => (AuthState::Rejected, "refused the client credentials"),
            Kind::JwtBearer => (AuthState::Rejected, "refused the JWT assertion"),
            Kind::Password | Kind::AuthorizationCode => {
                (AuthState::NeedsLogin, "refused the refresh token")
            }
        }
    }
}

/// A fake instance over HTTPS with everything each grant needs, a daemon
/// that trusts its CA, and `prod` added with one grant.
struct Bench {
    kind: Kind,
    daemon: TestDaemon,
    _dir: tempfile::TempDir,
    fake: FakeInstance,
    redirect_port: u16,
}

impl Bench {
    /// `fake` shared by benches of the same grant; `tune` adjusts the
    /// daemon's configuration.
    fn start(
        kind: Kind,
        fake: Option<FakeInstance>,
        tune: impl FnOnce(&mut snctld::Config),
    ) -> Bench {
        let fake = fake.unwrap_or_else(|| {
            let fake = runtime()
                .block_on(FakeInstance::start_tls())
                .expect("HTTPS fake starts");
            fake.add_client(CLIENT_ID, CLIENT_SECRET);
            fake.add_user(USER, PASSWORD);
            fake.add_user(SUBJECT, "unused-password");
            fake
        });
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.http.ca_file = Some(write_ca(dir.path(), &fake));
        config.http.request_timeout = REQUEST_TIMEOUT;
        tune(&mut config);
        let daemon = TestDaemon::start(config).expect("daemon starts");
        let bench = Bench {
            kind,
            daemon,
            _dir: dir,
            fake,
            redirect_port: free_port(),
        };
        bench.add();
        bench
    }

    fn client(&self) -> snctl::Client {
        self.daemon.client()
    }

    fn add(&self) {
        let mut client = self.client();
        let mut request = add_request(NAME, &self.fake.url());
        match self.kind {
            Kind::ClientCredentials => {
                client.add(request).unwrap();
            }
            Kind::Password => {
                request.grant = Grant::Password;
                request.user = Some(user_login());
                client.add(request).unwrap();
            }
            Kind::JwtBearer => {
                let key = ring::signature::EcdsaKeyPair::generate_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &ring::rand::SystemRandom::new(),
                )
                .unwrap();
                self.fake.add_jwt_key(CLIENT_ID, key.as_ref());
                request.grant = Grant::JwtBearer;
                request.jwt = Some(JwtSettings {
                    key: Secret::new(STANDARD.encode(key.as_ref())),
                    subject: SUBJECT.into(),
                    kid: None,
                });
                client.add(request).unwrap();
            }
            Kind::AuthorizationCode => {
                request.grant = Grant::AuthorizationCode;
                request.redirect_port = Some(self.redirect_port);
                self.browser_login(Some(request));
            }
        }
    }

    /// A person logs in again, as `needs-login` asks.
    fn login_again(&self) {
        match self.kind {
            Kind::Password => {
                let login = LoginRequest {
                    name: NAME.into(),
                    proof: LoginProof::Password(user_login()),
                    client_secret: None,
                };
                self.client().login(login).unwrap();
            }
            Kind::AuthorizationCode => self.browser_login(None),
            _ => unreachable!("only people log in"),
        }
    }

    /// The authorization-code flow, the test as the browser: the fake's
    /// consent redirect is read rather than followed, and its code handed
    /// to the daemon as the CLI's loopback listener would.
    fn browser_login(&self, add: Option<AddRequest>) {
        let redirect = format!("http://127.0.0.1:{}/callback", self.redirect_port);
        self.fake.set_redirect_uri(CLIENT_ID, &redirect);
        let mut client = self.client();
        let start = StartLoginRequest {
            name: NAME.into(),
            add,
            client_secret: None,
        };
        let challenge = client.start_login(start).unwrap();
        let ca = reqwest::Certificate::from_pem(self.fake.ca_pem().unwrap().as_bytes()).unwrap();
        let browser = reqwest::blocking::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .add_root_certificate(ca)
            .build()
            .unwrap();
        let response = browser.get(&challenge.authorize_url).send().unwrap();
        assert_eq!(response.status(), 302, "the consent page redirects");
        let location = response.headers()["location"].to_str().unwrap();
        let (_, query) = location.split_once('?').expect("a query");
        let code = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("a code");
        let login = LoginRequest {
            name: NAME.into(),
            proof: LoginProof::AuthorizationCode {
                code: Secret::new(code),
                state: challenge.state,
            },
            client_secret: None,
        };
        client.login(login).unwrap();
    }

    /// Lifts every fault; the state at the daemon is left as it is.
    fn clear_faults(&self) {
        self.fake.set_standing_fault(None);
        self.fake.set_untrusted_certificate(false);
    }

    /// Back to a working authentication after a cell, whatever it left.
    fn recover(&self) {
        self.clear_faults();
        let mut client = self.client();
        if client.show(NAME).unwrap().state == AuthState::NeedsLogin {
            self.login_again();
        } else {
            client.refresh(NAME).unwrap();
        }
    }
}

fn user_login() -> UserLogin {
    UserLogin {
        username: USER.into(),
        password: Secret::new(PASSWORD.into()),
    }
}

fn write_ca(dir: &Path, fake: &FakeInstance) -> std::path::PathBuf {
    let path = dir.join("instance-ca.pem");
    std::fs::write(&path, fake.ca_pem().expect("an HTTPS fake")).unwrap();
    path
}

/// One fault as the matrix installs it, and how the daemon must name it.
struct Case {
    label: &'static str,
    install: Box<dyn Fn(&FakeInstance) + Send + Sync>,
    kind: UpstreamKind,
    /// Words the one-line message must contain.
    says: &'static str,
}

fn standing(fault: Fault) -> Box<dyn Fn(&FakeInstance) + Send + Sync> {
    Box::new(move |fake| fake.set_standing_fault(Some(fault.clone())))
}

const RETRY_AFTER: u64 = 120;

fn cases() -> Vec<Case> {
    let status = |code: u16, says| Case {
        label: match code {
            500 => "HTTP 500",
            502 => "HTTP 502",
            _ => "HTTP 503",
        },
        install: standing(Fault::status(code)),
        kind: UpstreamKind::ServerError,
        says,
    };
    vec![
        status(500, "HTTP 500"),
        status(502, "HTTP 502"),
        status(503, "HTTP 503"),
        Case {
            label: "429 Retry-After 120",
            install: standing(Fault::too_many_requests(RETRY_AFTER)),
            kind: UpstreamKind::RateLimited,
            says: "rate limiting token requests (HTTP 429, Retry-After 120 s)",
        },
        Case {
            label: "timeout (no answer)",
            install: standing(Fault::Delay(REQUEST_TIMEOUT * 3)),
            kind: UpstreamKind::Timeout,
            says: "no answer from",
        },
        Case {
            label: "slow body (1 B/100 ms)",
            install: standing(Fault::SlowBody(Duration::from_millis(100))),
            kind: UpstreamKind::Timeout,
            says: "no answer from",
        },
        Case {
            label: "reset before processing",
            install: standing(Fault::ResetBeforeProcessing),
            kind: UpstreamKind::Connection,
            says: "broke before the token request was answered",
        },
        Case {
            label: "reset after issuing",
            install: standing(Fault::ResetAfterProcessing),
            kind: UpstreamKind::Connection,
            says: "broke before the token request was answered",
        },
        Case {
            label: "HTML 200 (hibernating)",
            install: standing(Fault::Html),
            kind: UpstreamKind::NotJson,
            says: "hibernating",
        },
        Case {
            label: "truncated JSON",
            install: standing(Fault::Truncated),
            kind: UpstreamKind::BadResponse,
            says: "cut off",
        },
        Case {
            label: "malformed JSON",
            install: standing(Fault::BadJson),
            kind: UpstreamKind::BadResponse,
            says: "not a valid token response",
        },
        Case {
            label: "401 access_denied",
            install: standing(Fault::access_denied()),
            kind: UpstreamKind::AccessDenied,
            // Per grant: see Kind::refused.
            says: "",
        },
        Case {
            label: "TLS: untrusted cert",
            install: Box::new(|fake| fake.set_untrusted_certificate(true)),
            kind: UpstreamKind::Tls,
            says: "TLS failure",
        },
    ]
}

/// One line of the printed matrix.
struct Row {
    grant: &'static str,
    fault: String,
    /// Upstream token requests (HTTPS handshakes for the TLS cell) made by
    /// the failing refresh, then by the callers hammering `token`.
    requests: String,
    state: String,
    retry: String,
    outcome: Result<String, String>,
    message: Option<String>,
}

/// What a cell saw, for its row.
struct Seen {
    requests: String,
    state: &'static str,
    retry: String,
    says: String,
    /// The one-line message `show` gave, if the cell looked at one.
    message: Option<String>,
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    text.lines().next().unwrap_or("").to_string()
}

/// Runs `cell` and turns a failed assertion into a failed row.
fn row(grant: &'static str, fault: &str, cell: impl FnOnce() -> Seen) -> Row {
    match catch_unwind(AssertUnwindSafe(cell)) {
        Ok(seen) => Row {
            grant,
            fault: fault.into(),
            requests: seen.requests,
            state: seen.state.into(),
            retry: seen.retry,
            outcome: Ok(seen.says),
            message: seen.message,
        },
        Err(payload) => Row {
            grant,
            fault: fault.into(),
            requests: "?".into(),
            state: "?".into(),
            retry: "?".into(),
            outcome: Err(panic_text(payload)),
            message: None,
        },
    }
}

/// Callers hammer `token`, most asking for more validity than the token
/// has: each gets `valid`.
fn hammer(client: &mut snctl::Client, valid: &snctl::Token) {
    for i in 0..30 {
        let token = if i % 3 == 0 {
            client.token(NAME)
        } else {
            client.token_with(NAME, ASK)
        }
        .unwrap_or_else(|e| panic!("the valid token is not served: {e}"));
        assert!(
            token.access_token == valid.access_token,
            "another token than the valid one was served"
        );
    }
}

/// One cell: `case` against the bench's grant.
fn cell(bench: &Bench, case: &Case) -> Seen {
    let fake = &bench.fake;
    let mut client = bench.client();
    let valid = client.token(NAME).unwrap();
    let refusal = case.kind == UpstreamKind::AccessDenied;
    let (state, says) = match refusal {
        true => bench.kind.refused(),
        false => (AuthState::Failing, case.says),
    };
    let (asked, connected) = (fake.token_requests(), fake.connections());

    (case.install)(fake);
    let before = now_secs();
    let err = client.refresh(NAME).unwrap_err();
    let after = now_secs();
    match state {
        AuthState::NeedsLogin => assert!(
            matches!(err, ClientError::Daemon(Error::NeedsLogin { .. })),
            "needs-login expected: {err}"
        ),
        _ => {
            assert_eq!(upstream_kind(&err), Some(case.kind), "{err}");
            assert_eq!(err.kind().exit_code(), 7);
            let message = err.to_string();
            assert!(message.contains(says), "{message:?} lacks {says:?}");
            assert!(!message.contains('\n'), "{message:?}");
        }
    }
    // The TLS cell never reaches the token endpoint: count handshakes.
    let tls = case.kind == UpstreamKind::Tls;
    let count = || match tls {
        true => fake.connections() - connected,
        false => fake.token_requests() - asked,
    };
    let by_refresh = count();
    assert_eq!(by_refresh, 1, "one upstream attempt per refresh");

    // While the fault stands: the daemon answers, the valid token is
    // served, and callers add no upstream requests.
    hammer(&mut client, &valid);
    let by_callers = count() - by_refresh;
    assert_eq!(
        by_callers, 0,
        "callers in backoff or refused cause no requests"
    );
    let shown = client.show(NAME).unwrap();
    assert_eq!(shown.state, state);
    let message = shown.last_error.clone().expect("show names the failure");
    assert!(message.contains(says), "{message:?} lacks {says:?}");
    assert!(!message.contains('\n'), "{message:?}");
    let status = client.status().unwrap();
    assert_eq!(status.unhealthy, 1, "status counts it unhealthy");
    assert_eq!(
        status.needs_login,
        u32::from(state == AuthState::NeedsLogin)
    );
    let retry = match shown.next_refresh_at {
        None => {
            assert!(refusal, "a transient failure plans a retry");
            "none".to_string()
        }
        Some(at) => {
            assert!(!refusal, "a refused credential is not retried");
            // A first failure waits at least half of backoff_min, a 429 at
            // least its Retry-After.
            let floor = match case.kind {
                UpstreamKind::RateLimited => RETRY_AFTER as i64,
                _ => BACKOFF_MIN.as_secs() as i64 / 2,
            };
            assert!(
                at >= before + floor - 1,
                "retry planned {} s out",
                at - after
            );
            format!("{} s", at - after)
        }
    };

    // Once the fault clears, the next refresh (or, after a refused refresh
    // token, the next login) works and the state is ok again.
    bench.clear_faults();
    match state {
        AuthState::NeedsLogin => bench.login_again(),
        _ => {
            client.refresh(NAME).unwrap();
        }
    }
    let shown = client.show(NAME).unwrap();
    assert_eq!(shown.state, AuthState::Ok);
    assert_eq!(shown.last_error, None);
    assert_eq!(client.status().unwrap().unhealthy, 0);
    let fresh = client.token(NAME).unwrap();
    assert!(
        fresh.access_token != valid.access_token,
        "a new token after recovery"
    );
    assert!(fake.is_access_token_valid(fresh.access_token.expose()));

    Seen {
        requests: format!("{by_refresh}+{by_callers}"),
        state: state.as_str(),
        retry,
        says: says.to_string(),
        message: Some(message.replace(&fake.url(), "INSTANCE")),
    }
}

/// Forced refreshes against a standing 503: each failure plans a longer
/// wait than the one before (read from `show`), up to rounding to seconds.
fn backoff_grows(bench: &Bench) -> Seen {
    let mut client = bench.client();
    let valid = client.token(NAME).unwrap();
    let asked = bench.fake.token_requests();
    bench.fake.set_standing_fault(Some(Fault::status(503)));
    // (lower, upper) bounds of each planned delay, in seconds.
    let mut planned = Vec::new();
    for _ in 0..5 {
        let before = now_secs();
        client.refresh(NAME).unwrap_err();
        let after = now_secs();
        let at = client.show(NAME).unwrap().next_refresh_at.unwrap();
        planned.push((at - after, at - before + 1));
    }
    hammer(&mut client, &valid);
    let requests = bench.fake.token_requests() - asked;
    assert_eq!(
        requests, 5,
        "one request per forced refresh, none by callers"
    );
    for pair in planned.windows(2) {
        assert!(
            pair[1].1 >= pair[0].0,
            "a later plan is not shorter: {planned:?}"
        );
    }
    for pair in planned.windows(3) {
        assert!(
            pair[2].0 > pair[0].1,
            "two failures later the wait has grown: {planned:?}"
        );
    }
    bench.recover();
    let shown: Vec<String> = planned.iter().map(|(low, _)| low.to_string()).collect();
    Seen {
        requests: format!("{requests}+0"),
        state: AuthState::Failing.as_str(),
        retry: format!("{} s", shown.join("/")),
        says: "each failure plans a longer wait".into(),
        message: None,
    }
}

/// A daemon with a short backoff on the same fake: the scheduler retries a
/// 503 on its own while callers hammer, with no more requests than the
/// backoff allows, and recovers by itself once the instance does.
fn scheduler_backs_off(kind: Kind, fake: FakeInstance) -> Seen {
    let bench = Bench::start(kind, Some(fake), |c| {
        c.refresh.backoff_min = Duration::from_millis(250);
        c.refresh.backoff_max = Duration::from_secs(2);
    });
    let mut client = bench.client();
    let valid = client.token(NAME).unwrap();
    let asked = bench.fake.token_requests();
    bench.fake.set_standing_fault(Some(Fault::status(503)));
    client.refresh(NAME).unwrap_err();
    // Plans of at least 125, 250, 500, 1000, 1000... ms: at most 6 retries
    // fit in 4 s, however fast the machine. A storm would be hundreds.
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(4) {
        hammer(&mut client, &valid);
    }
    let requests = bench.fake.token_requests() - asked;
    assert!(
        requests <= 1 + 6 + 1,
        "{requests} requests in 4 s of backoff"
    );
    assert!(
        wait_until(Duration::from_secs(30), || bench.fake.token_requests()
            - asked
            >= 3),
        "the scheduler retries on its own"
    );
    assert_eq!(client.show(NAME).unwrap().state, AuthState::Failing);

    bench.fake.set_standing_fault(None);
    assert!(
        wait_until(Duration::from_secs(30), || {
            client.show(NAME).unwrap().state == AuthState::Ok
        }),
        "the scheduler recovers once the instance does"
    );
    assert!(client.token(NAME).unwrap().access_token != valid.access_token);
    Seen {
        requests: format!("{requests} in 4 s"),
        state: AuthState::Failing.as_str(),
        retry: "0.25..2 s".into(),
        says: "retried by the scheduler, then ok".into(),
        message: None,
    }
}

/// Every cell of one grant's row of the matrix.
fn grant_rows(kind: Kind) -> Vec<Row> {
    let grant = kind.label();
    let bench = Bench::start(kind, None, |c| {
        c.refresh.backoff_min = BACKOFF_MIN;
        c.refresh.backoff_max = Duration::from_secs(600);
    });
    let mut rows = Vec::new();
    for case in cases() {
        let row = row(grant, case.label, || cell(&bench, &case));
        if row.outcome.is_err() {
            // Leave the next cell a working authentication.
            let _ = catch_unwind(AssertUnwindSafe(|| bench.recover()));
        }
        rows.push(row);
    }
    rows.push(row(grant, "5x 503: planned waits", || {
        backoff_grows(&bench)
    }));
    let Bench {
        fake, daemon, _dir, ..
    } = bench;
    drop(daemon);
    rows.push(row(grant, "503, scheduler retries", || {
        scheduler_backs_off(kind, fake)
    }));
    rows
}

/// Without the fake's CA the daemon cannot add an authentication on it, says
/// why in one line naming `ca_file`, and keeps serving; the control: the
/// same fake works once `[http] ca_file` names its CA.
fn tls_without_the_ca_file() -> Seen {
    let fake = runtime().block_on(FakeInstance::start_tls()).unwrap();
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(test_config(dir.path())).unwrap();
    let mut client = daemon.client();
    let err = client.add(add_request(NAME, &fake.url())).unwrap_err();
    assert_eq!(upstream_kind(&err), Some(UpstreamKind::Tls), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("TLS failure") && message.contains("ca_file"),
        "{message}"
    );
    assert!(!message.contains('\n'));
    assert_eq!(fake.token_requests(), 0, "nothing reached the instance");
    assert!(
        client.list().unwrap().is_empty(),
        "the daemon still answers"
    );
    let handshakes = fake.connections();
    drop(daemon);

    let control = tempfile::tempdir().unwrap();
    let mut config = test_config(control.path());
    config.http.ca_file = Some(write_ca(control.path(), &fake));
    let daemon = TestDaemon::start(config).unwrap();
    let mut client = daemon.client();
    client.add(add_request(NAME, &fake.url())).unwrap();
    let token = client.token(NAME).unwrap();
    assert!(fake.is_access_token_valid(token.access_token.expose()));
    assert_eq!(client.show(NAME).unwrap().state, AuthState::Ok);
    Seen {
        requests: format!("{handshakes}+0"),
        state: "-",
        retry: "-".into(),
        says: "TLS failure … set ca_file; with ca_file: ok".into(),
        message: Some(message.replace(&fake.url(), "INSTANCE")),
    }
}

fn print_matrix(rows: &[Row]) {
    let width = |f: &dyn Fn(&Row) -> usize, title: &str| {
        rows.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let g = width(&|r| r.grant.len(), "grant");
    let f = width(&|r| r.fault.chars().count(), "fault");
    let q = width(&|r| r.requests.len(), "requests");
    let s = width(&|r| r.state.len(), "state");
    let t = width(&|r| r.retry.len(), "retry in");
    let mut out = format!(
        "\nupstream fault matrix (requests: by the failing refresh + by callers hammering `token`)\n\
         {:g$}  {:f$}  {:q$}  {:s$}  {:t$}  outcome\n",
        "grant", "fault", "requests", "state", "retry in"
    );
    for r in rows {
        let outcome = match &r.outcome {
            Ok(says) => format!("ok: says \"{says}\""),
            Err(why) => format!("FAILED: {why}"),
        };
        out.push_str(&format!(
            "{:g$}  {:f$}  {:q$}  {:s$}  {:t$}  {outcome}\n",
            r.grant, r.fault, r.requests, r.state, r.retry
        ));
    }
    out.push_str("\nwhat `snctl show` says (last_error), by fault:\n");
    let mut said = std::collections::BTreeSet::new();
    for r in rows {
        if let Some(message) = &r.message {
            if said.insert(message) {
                out.push_str(&format!("{:f$}  {message}\n", r.fault));
            }
        }
    }
    println!("{out}");
}

#[test]
fn fault_matrix() {
    let threads: Vec<_> = Kind::ALL
        .into_iter()
        .map(|kind| std::thread::spawn(move || grant_rows(kind)))
        .chain(std::iter::once(std::thread::spawn(|| {
            vec![row(
                "client_credentials",
                "TLS: no ca_file (add)",
                tls_without_the_ca_file,
            )]
        })))
        .collect();
    let rows: Vec<Row> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("matrix thread"))
        .collect();
    print_matrix(&rows);
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.outcome
                .as_ref()
                .err()
                .map(|why| format!("{} × {}: {why}", r.grant, r.fault))
        })
        .collect();
    assert!(failed.is_empty(), "failed cells:\n{}", failed.join("\n"));
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
    for _ in 0..20 {
        let token = client.token_with("prod", ASK).unwrap();
        assert_eq!(token.access_token, valid.access_token);
    }
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
        proxy: None,
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
