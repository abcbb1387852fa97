//! The canary run. Known secrets (client secrets, a password, and the
//! tokens and codes the fake instance hands out, read back from it), the
//! daemon logging at trace level, and a full run through `snctl` and the
//! client library: adds of every grant, tokens, listings, refreshes,
//! logins, updates, upstream failures, refusals and removals.
//!
//! Afterwards no client secret, password, authorization code or refresh
//! token may appear in the daemon's log, in any output of `snctl`, in any
//! reply on the socket (its `Debug` text, JSON and wire bytes) or in clear
//! in the state directory; an access token only in what a successful
//! `snctl token` or `snctl exec` prints and in token replies.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use snctl::protocol::{
    AddRequest, ClientAuth, Grant, LoginProof, LoginRequest, MinValid, NameRequest, Readers,
    RemoveRequest, Reply, Request, Response, StartLoginRequest, TokenRequest, UpdateRequest,
    UserLogin,
};
use snctl::{Client, ClientError, Secret};
use snctl_shared::frame::{encode, MAX_RESPONSE_FRAME};
use snctl_tests::fake::{Consent, FakeInstance, Fault};
use snctl_tests::harness::{self, bin, contains, files_under, free_port, runtime, DaemonProcess};

const CC_ID: &str = "canary-cc-client";
const CC_SECRET: &str = "canary-client-secret-Q7cc";
const CC_ROTATED: &str = "canary-rotated-secret-Z4rr";
const PW_ID: &str = "canary-pw-client";
const PW_SECRET: &str = "canary-client-secret-K2pw";
const WEB_ID: &str = "canary-web-client";
const WEB_SECRET: &str = "canary-client-secret-M9web";
const LIB_ID: &str = "canary-lib-client";
const LIB_SECRET: &str = "canary-client-secret-H5lib";
const WRONG_SECRET: &str = "canary-mistyped-secret-V3xx";
/// The user the fake's consent page logs in as, too.
const USER: &str = "abel.tuter";
const PASSWORD: &str = "canary-password-J8pw";
const WRONG_PASSWORD: &str = "canary-mistyped-password-T6pw";
/// `nobody`, for requests from a caller who is not an admin.
const NOBODY: u32 = 65534;

/// Something a person or a program gets to see.
struct Seen {
    /// Where it was seen, for the failure message.
    place: String,
    bytes: Vec<u8>,
    /// Text (a leak is located by line) or bytes (by offset).
    text: bool,
    /// Whether an access token may appear in it.
    access_allowed: bool,
}

impl Seen {
    fn text(place: String, text: impl Into<String>, access_allowed: bool) -> Seen {
        Seen {
            place,
            bytes: text.into().into_bytes(),
            text: true,
            access_allowed,
        }
    }
}

/// A secret to look for.
struct Canary {
    /// What it is, e.g. "the refresh token #2".
    what: String,
    value: String,
    /// An access token: allowed where [`Seen::access_allowed`].
    access: bool,
}

impl Canary {
    fn never(what: impl Into<String>, value: impl Into<String>) -> Canary {
        Canary {
            what: what.into(),
            value: value.into(),
            access: false,
        }
    }
}

/// The start of a secret, enough to tell which one it was.
fn prefix(value: &str) -> String {
    format!("{}…", value.chars().take(6).collect::<String>())
}

/// Every canary found where it does not belong, as "the refresh token #2
/// (`AbCdEf…`) appears in snctld.log line 42".
fn leaks(seen: &[Seen], canaries: &[Canary]) -> Vec<String> {
    let mut found = Vec::new();
    for s in seen {
        for canary in canaries {
            if canary.access && s.access_allowed {
                continue;
            }
            let needle = canary.value.as_bytes();
            if needle.is_empty() {
                continue;
            }
            let Some(at) = s.bytes.windows(needle.len()).position(|w| w == needle) else {
                continue;
            };
            let location = if s.text {
                let line = s.bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
                format!("line {line}")
            } else {
                format!("at byte {at}")
            };
            found.push(format!(
                "{} (`{}`) appears in {} {location}",
                canary.what,
                prefix(&canary.value),
                s.place
            ));
        }
    }
    found
}

/// What a command must end with.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Success,
    Exit(i32),
    /// Any failure (the exact code is not what this test is about).
    Failure,
}

/// Who runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The test's own user: root or the daemon's user, an admin.
    Admin,
    /// uid and gid 65534, no admin and no reader unless allowed.
    Nobody,
}

/// The fake, the daemon as a process logging at trace level, and all that
/// was seen so far. Fields drop in order: the daemon stops before its
/// directory goes.
struct Run {
    daemon: DaemonProcess,
    dir: tempfile::TempDir,
    fake: FakeInstance,
    seen: Vec<Seen>,
    step: usize,
}

impl Run {
    fn start() -> Run {
        let fake = runtime()
            .block_on(FakeInstance::start())
            .expect("fake instance starts");
        for (id, secret) in [
            (CC_ID, CC_SECRET),
            (PW_ID, PW_SECRET),
            (WEB_ID, WEB_SECRET),
            (LIB_ID, LIB_SECRET),
        ] {
            fake.add_client(id, secret);
        }
        fake.add_user(USER, PASSWORD);
        let dir = tempfile::tempdir().unwrap();
        // Retries after a failure come long after this test, so that every
        // fault pushed on the fake meets the request it is meant for.
        let config = dir.path().join("snctld.toml");
        std::fs::write(
            &config,
            "[refresh]\nbackoff_min_secs = 600\nbackoff_max_secs = 600\n\n\
             [access]\nadmin_group = \"\"\nsocket_group = \"\"\n",
        )
        .unwrap();
        let config = config.to_str().unwrap().to_string();
        let daemon = DaemonProcess::start_with(dir.path(), &["--config", &config], "trace", None)
            .expect("snctld starts");
        Run {
            daemon,
            dir,
            fake,
            seen: Vec::new(),
            step: 0,
        }
    }

    /// Every secret of the run: the chosen ones, and what the fake handed
    /// out so far.
    fn canaries(&self) -> Vec<Canary> {
        let mut canaries = vec![
            Canary::never("the client secret of prod", CC_SECRET),
            Canary::never("the rotated client secret of prod", CC_ROTATED),
            Canary::never("the client secret of desk", PW_SECRET),
            Canary::never("the client secret of web", WEB_SECRET),
            Canary::never("the client secret of lib", LIB_SECRET),
            Canary::never("the mistyped client secret", WRONG_SECRET),
            Canary::never("the password", PASSWORD),
            Canary::never("the mistyped password", WRONG_PASSWORD),
        ];
        // How a secret travels with `--client-auth basic`, should a header
        // ever be logged.
        for (id, secret) in [
            (CC_ID, CC_SECRET),
            (CC_ID, CC_ROTATED),
            (PW_ID, PW_SECRET),
            (WEB_ID, WEB_SECRET),
            (LIB_ID, LIB_SECRET),
        ] {
            canaries.push(Canary::never(
                format!("the Basic credentials of {id}"),
                STANDARD.encode(format!("{id}:{secret}")),
            ));
        }
        for (i, token) in self.fake.refresh_tokens_issued().into_iter().enumerate() {
            canaries.push(Canary::never(
                format!("the refresh token #{}", i + 1),
                token,
            ));
        }
        for (i, code) in self.fake.issued_auth_codes().into_iter().enumerate() {
            canaries.push(Canary::never(
                format!("the authorization code #{}", i + 1),
                code,
            ));
        }
        for (i, token) in self.fake.issued_access_tokens().into_iter().enumerate() {
            canaries.push(Canary {
                what: format!("the access token #{}", i + 1),
                value: token,
                access: true,
            });
        }
        canaries
    }

    /// `text` with every secret cut down to its prefix.
    fn redacted(&self, text: &str) -> String {
        let mut text = text.to_string();
        for canary in self.canaries() {
            text = text.replace(&canary.value, &prefix(&canary.value));
        }
        text
    }

    /// Runs `snctl ARGS` as `who`, with `stdin` piped in and `BROWSER` set
    /// to the stand-in browser; records stdout and stderr and checks the
    /// exit. Returns stdout.
    fn cli(&mut self, who: Who, args: &[&str], stdin: Option<&str>, expect: Expect) -> String {
        self.step += 1;
        let mut command = Command::new(bin("snctl"));
        command
            .args(args)
            .env("SNCTL_SOCKET", &self.daemon.socket)
            .env("BROWSER", bin("fake-browser"))
            .stdin(harness::stdin_for(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if who == Who::Nobody {
            command.uid(NOBODY).gid(NOBODY);
        }
        let mut child = command.spawn().expect("snctl runs");
        harness::feed(&mut child, stdin);
        let out = child.wait_with_output().expect("snctl finishes");
        let code = out.status.code();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let shown = format!(
            "`snctl {}`{} (step {})",
            args.join(" "),
            if who == Who::Nobody {
                " run by nobody"
            } else {
                ""
            },
            self.step
        );
        let as_expected = match expect {
            Expect::Success => code == Some(0),
            Expect::Exit(n) => code == Some(n),
            Expect::Failure => code.is_some_and(|c| c != 0),
        };
        assert!(
            as_expected,
            "{shown} exited with {code:?}, not {expect:?}\nstdout: {}\nstderr: {}",
            self.redacted(&stdout),
            self.redacted(&stderr)
        );
        // Printing the token is what `token` and `exec` are for.
        let prints_token =
            matches!(args.first(), Some(&"token") | Some(&"exec")) && code == Some(0);
        self.seen.push(Seen::text(
            format!("the stdout of {shown}"),
            stdout.clone(),
            prints_token,
        ));
        self.seen
            .push(Seen::text(format!("the stderr of {shown}"), stderr, false));
        stdout
    }

    fn admin(&mut self, args: &[&str], stdin: Option<&str>, expect: Expect) -> String {
        self.cli(Who::Admin, args, stdin, expect)
    }

    /// Sends `request` with the client library and records the response as
    /// `Debug` text, JSON and the bytes of its frame, and an error as the
    /// message a program would print.
    fn ask(&mut self, client: &mut Client, request: Request) -> Response {
        self.step += 1;
        let kind = request.kind();
        let response: Response = match client.request(&request) {
            Ok(reply) => Ok(reply),
            Err(ClientError::Daemon(error)) => Err(error),
            Err(other) => panic!(
                "a {kind} request (step {}) got no answer: {other}",
                self.step
            ),
        };
        let place = |what: &str| {
            format!(
                "the {what} of the reply to a {kind} request (step {})",
                self.step
            )
        };
        let token = matches!(response, Ok(Reply::Token(_)));
        let json = serde_json::to_string(&response).expect("a reply encodes as JSON");
        let frame = encode(&response, MAX_RESPONSE_FRAME).expect("a reply encodes as a frame");
        let mut seen = vec![
            Seen::text(place("Debug text"), format!("{response:?}"), token),
            Seen::text(place("JSON"), json, token),
            Seen {
                place: place("frame"),
                bytes: frame,
                text: false,
                access_allowed: token,
            },
        ];
        if let Err(error) = &response {
            seen.push(Seen::text(place("error message"), error.to_string(), false));
        }
        self.seen.extend(seen);
        response
    }

    fn client(&self) -> Client {
        Client::connect(&self.daemon.socket).expect("client connects")
    }

    fn url(&self) -> String {
        self.fake.url()
    }
}

/// The name of the authentication a reply describes, or the error.
fn summary_name(response: &Response) -> Result<&str, String> {
    match response {
        Ok(Reply::Auth(summary)) => Ok(&summary.name),
        Ok(other) => Err(format!("not a summary: {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

fn add_request(name: &str, instance: &str, secret: &str) -> AddRequest {
    AddRequest {
        name: name.to_string(),
        instance_url: instance.to_string(),
        grant: Grant::ClientCredentials,
        client_id: LIB_ID.to_string(),
        client_secret: Secret::new(secret.to_string()),
        client_auth: ClientAuth::Basic,
        scope: None,
        user: None,
        redirect_port: None,
        refresh_lifespan_secs: None,
        readers: Readers::default(),
        jwt: None,
        proxy: false,
    }
}

fn update_secret(name: &str, secret: &str) -> UpdateRequest {
    UpdateRequest {
        name: name.to_string(),
        instance_url: None,
        client_id: None,
        client_secret: Some(Secret::new(secret.to_string())),
        client_auth: None,
        scope: None,
        redirect_port: None,
        refresh_lifespan_secs: None,
        readers: None,
        proxy: None,
    }
}

fn name(name: &str) -> NameRequest {
    NameRequest {
        name: name.to_string(),
    }
}

fn token(name: &str, min_valid_secs: u32) -> Request {
    Request::Token(TokenRequest {
        name: name.to_string(),
        min_valid: MinValid::Required(min_valid_secs),
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The client-credentials authentication `prod`: adds, tokens, listings,
/// each kind of upstream failure, a rotated secret.
fn client_credentials(run: &mut Run) {
    let url = run.url();
    let add = [
        "add",
        "prod",
        "--instance",
        &url,
        "--client-id",
        CC_ID,
        "--client-secret-stdin",
    ];
    run.admin(&add, Some(&format!("{WRONG_SECRET}\n")), Expect::Exit(7));
    run.admin(&add, Some(&format!("{CC_SECRET}\n")), Expect::Success);
    run.admin(&add, Some(&format!("{CC_SECRET}\n")), Expect::Exit(1));

    let printed = run.admin(&["token", "prod"], None, Expect::Success);
    assert!(run.fake.is_access_token_valid(printed.trim_end()));
    run.admin(&["token", "prod", "--json"], None, Expect::Success);
    run.admin(
        &["token", "prod", "--min-valid", "1799"],
        None,
        Expect::Success,
    );
    let env = run.admin(&["exec", "prod", "--", "env"], None, Expect::Success);
    assert!(env.contains("SN_ACCESS_TOKEN="));
    run.admin(&["refresh", "prod"], None, Expect::Success);
    run.admin(&["doctor", "prod"], None, Expect::Success);
    run.admin(&["doctor", "prod", "--json"], None, Expect::Success);

    // Each kind of failure, then a refresh that clears it; the failing
    // state is shown, listed and served from in between.
    for fault in [
        Fault::status(500),
        Fault::Html,
        Fault::BadJson,
        Fault::access_denied(),
    ] {
        run.fake.push_fault(fault);
        run.admin(&["refresh", "prod"], None, Expect::Exit(7));
        let shown = run.admin(&["show", "prod"], None, Expect::Success);
        assert!(shown.contains("last error:"), "{shown}");
        run.admin(&["list", "--json"], None, Expect::Success);
        run.admin(&["token", "prod"], None, Expect::Success);
        run.admin(&["refresh", "prod"], None, Expect::Success);
    }
    run.fake.set_standing_fault(Some(Fault::Html));
    run.admin(&["doctor", "prod"], None, Expect::Exit(7));
    run.fake.set_standing_fault(None);

    // The secret is rotated in ServiceNow: refused, diagnosed, a mistyped
    // new secret is refused, the right one works.
    run.fake.set_client_secret(CC_ID, CC_ROTATED);
    run.admin(&["refresh", "prod"], None, Expect::Exit(7));
    run.admin(&["show", "prod", "--json"], None, Expect::Success);
    run.admin(&["doctor", "prod"], None, Expect::Exit(7));
    run.admin(&["doctor", "prod", "--json"], None, Expect::Exit(7));
    let update = ["update", "prod", "--client-secret-stdin"];
    run.admin(&update, Some(&format!("{WRONG_SECRET}\n")), Expect::Exit(7));
    run.admin(&update, Some(&format!("{CC_ROTATED}\n")), Expect::Success);
    run.admin(&["token", "prod", "--json"], None, Expect::Success);
}

/// The password-grant authentication `desk`: the password on adds and
/// logins, wrong passwords and secrets, upstream failures.
fn password(run: &mut Run) {
    let url = run.url();
    let add = [
        "add",
        "desk",
        "--grant",
        "password",
        "--instance",
        &url,
        "--client-id",
        PW_ID,
        "--client-auth",
        "basic",
        "--username",
        USER,
        "--client-secret-stdin",
        "--password-stdin",
    ];
    let both = |secret: &str, password: &str| format!("{secret}\n{password}\n");
    run.admin(
        &add,
        Some(&both(PW_SECRET, WRONG_PASSWORD)),
        Expect::Exit(7),
    );
    run.admin(&add, Some(&both(WRONG_SECRET, PASSWORD)), Expect::Exit(7));
    run.fake.push_fault(Fault::status(500));
    run.admin(&add, Some(&both(PW_SECRET, PASSWORD)), Expect::Exit(7));
    run.admin(&add, Some(&both(PW_SECRET, PASSWORD)), Expect::Success);

    run.admin(&["token", "desk"], None, Expect::Success);
    run.admin(&["token", "desk", "--json"], None, Expect::Success);
    run.admin(&["show", "desk"], None, Expect::Success);
    run.admin(&["refresh", "desk"], None, Expect::Success);
    run.admin(&["doctor", "desk"], None, Expect::Success);

    let login = ["login", "desk", "--password-stdin"];
    run.admin(&login, Some(&format!("{PASSWORD}\n")), Expect::Success);
    run.admin(
        &login,
        Some(&format!("{WRONG_PASSWORD}\n")),
        Expect::Exit(7),
    );
    run.fake.push_fault(Fault::BadJson);
    run.admin(&login, Some(&format!("{PASSWORD}\n")), Expect::Exit(7));
    let with_secret = ["login", "desk", "--client-secret-stdin", "--password-stdin"];
    run.admin(
        &with_secret,
        Some(&both(WRONG_SECRET, PASSWORD)),
        Expect::Exit(7),
    );
    run.admin(
        &["update", "desk", "--client-secret-stdin"],
        Some(&format!("{WRONG_SECRET}\n")),
        Expect::Exit(7),
    );
    run.admin(
        &["update", "desk", "--client-secret-stdin"],
        Some(&format!("{PW_SECRET}\n")),
        Expect::Success,
    );

    for fault in [Fault::status(500), Fault::Html, Fault::BadJson] {
        run.fake.push_fault(fault);
        run.admin(&["refresh", "desk"], None, Expect::Exit(7));
        let shown = run.admin(&["show", "desk", "--json"], None, Expect::Success);
        assert!(!shown.contains("\"last_error\": null"), "{shown}");
        run.admin(&["refresh", "desk"], None, Expect::Success);
    }
}

/// The authorization-code authentication `web`, through the stand-in
/// browser and the loopback listener.
fn authorization_code(run: &mut Run, port: u16) {
    run.fake
        .set_redirect_uri(WEB_ID, &format!("http://127.0.0.1:{port}/callback"));
    let (url, port) = (run.url(), port.to_string());
    let add = [
        "add",
        "web",
        "--grant",
        "authorization-code",
        "--instance",
        &url,
        "--client-id",
        WEB_ID,
        "--client-secret-stdin",
        "--redirect-port",
        &port,
    ];
    // The exchange of the code is refused, then works.
    run.fake.push_fault(Fault::access_denied());
    run.admin(&add, Some(&format!("{WEB_SECRET}\n")), Expect::Failure);
    run.admin(&add, Some(&format!("{WEB_SECRET}\n")), Expect::Success);

    run.admin(&["token", "web", "--json"], None, Expect::Success);
    run.admin(&["show", "web"], None, Expect::Success);
    run.admin(&["refresh", "web"], None, Expect::Success);
    run.admin(&["login", "web"], None, Expect::Success);
    run.fake.set_consent(Consent::Deny);
    run.admin(&["login", "web"], None, Expect::Failure);
    run.fake.set_consent(Consent::default());
    run.fake.push_fault(Fault::status(500));
    run.admin(&["login", "web"], None, Expect::Failure);
    run.admin(
        &["update", "web", "--client-secret-stdin"],
        Some(&format!("{WRONG_SECRET}\n")),
        Expect::Exit(7),
    );
    run.admin(&["doctor", "web", "--json"], None, Expect::Success);
}

/// The instance forgets every refresh token: needs-login everywhere it
/// shows, the access token in hand still served, then new logins.
fn needs_login(run: &mut Run) {
    run.fake.revoke_refresh_tokens();
    run.admin(&["refresh", "desk"], None, Expect::Exit(5));
    run.admin(&["refresh", "web"], None, Expect::Exit(5));
    run.admin(
        &["token", "desk", "--min-valid", "0"],
        None,
        Expect::Success,
    );
    run.admin(&["list"], None, Expect::Success);
    run.admin(&["show", "desk"], None, Expect::Success);
    run.admin(&["status"], None, Expect::Success);
    run.admin(&["status", "--json"], None, Expect::Success);
    run.admin(&["doctor", "desk"], None, Expect::Exit(5));
    run.admin(&["doctor", "web", "--json"], None, Expect::Exit(5));
    run.admin(
        &["login", "desk", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
        Expect::Success,
    );
    run.admin(&["login", "web"], None, Expect::Success);
}

/// The same through the client library, including a browser login whose
/// code this test carries itself.
fn library(run: &mut Run) {
    let url = run.url();
    let mut client = run.client();
    let wrong = run.ask(
        &mut client,
        Request::Add(add_request("lib", &url, WRONG_SECRET)),
    );
    assert!(wrong.is_err(), "{wrong:?}");
    let added = run.ask(
        &mut client,
        Request::Add(add_request("lib", &url, LIB_SECRET)),
    );
    assert_eq!(summary_name(&added), Ok("lib"));
    for name in ["lib", "prod", "desk", "web"] {
        let reply = run.ask(&mut client, token(name, 60));
        assert!(matches!(reply, Ok(Reply::Token(_))), "{reply:?}");
        let shown = run.ask(&mut client, Request::Show(self::name(name)));
        assert_eq!(summary_name(&shown), Ok(name));
        let refreshed = run.ask(&mut client, Request::Refresh(self::name(name)));
        assert_eq!(summary_name(&refreshed), Ok(name));
        let doctor = run.ask(&mut client, Request::Doctor(self::name(name)));
        assert!(matches!(doctor, Ok(Reply::Diagnosis(_))), "{doctor:?}");
    }
    let fresh = run.ask(&mut client, token("lib", 1799));
    assert!(matches!(fresh, Ok(Reply::Token(_))), "{fresh:?}");
    let list = run.ask(&mut client, Request::List);
    assert!(
        matches!(&list, Ok(Reply::List(l)) if l.len() == 4),
        "{list:?}"
    );
    let status = run.ask(&mut client, Request::Status);
    assert!(matches!(status, Ok(Reply::Status(_))), "{status:?}");
    let missing = run.ask(&mut client, Request::Show(self::name("nowhere")));
    assert!(missing.is_err());

    let wrong = run.ask(
        &mut client,
        Request::Update(update_secret("lib", WRONG_SECRET)),
    );
    assert!(wrong.is_err(), "{wrong:?}");
    run.fake.push_fault(Fault::BadJson);
    let failed = run.ask(&mut client, Request::Refresh(self::name("lib")));
    assert!(failed.is_err(), "{failed:?}");
    let failing = run.ask(&mut client, Request::Show(self::name("lib")));
    assert!(
        matches!(&failing, Ok(Reply::Auth(a)) if a.last_error.is_some()),
        "{failing:?}"
    );

    // Password logins, wrong then right.
    let login = |password: &str| {
        Request::Login(LoginRequest {
            name: "desk".into(),
            proof: LoginProof::Password(UserLogin {
                username: USER.into(),
                password: Secret::new(password.into()),
            }),
            client_secret: None,
        })
    };
    let wrong = run.ask(&mut client, login(WRONG_PASSWORD));
    assert!(wrong.is_err(), "{wrong:?}");
    let right = run.ask(&mut client, login(PASSWORD));
    assert_eq!(summary_name(&right), Ok("desk"));

    // A browser login: the redirect is read here instead of by snctl's
    // listener, and its code handed to the daemon; then replayed.
    let start = StartLoginRequest {
        name: "web".into(),
        add: None,
        client_secret: None,
    };
    let challenge = match run.ask(&mut client, Request::StartLogin(start)) {
        Ok(Reply::LoginChallenge(challenge)) => challenge,
        other => panic!("no login challenge: {other:?}"),
    };
    let answer = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&challenge.authorize_url)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 302);
    let location = answer.headers()["location"].to_str().unwrap().to_string();
    let query = location.split_once('?').expect("a query").1;
    let code = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "code")
        .expect("a code")
        .1
        .into_owned();
    let finish = LoginRequest {
        name: "web".into(),
        proof: LoginProof::AuthorizationCode {
            code: Secret::new(code),
            state: challenge.state,
        },
        client_secret: None,
    };
    let logged_in = run.ask(&mut client, Request::Login(finish.clone()));
    assert_eq!(summary_name(&logged_in), Ok("web"));
    let replayed = run.ask(&mut client, Request::Login(finish));
    assert!(replayed.is_err(), "{replayed:?}");

    // A browser login for a new authentication, started and abandoned.
    let mut add = add_request("web2", &url, WEB_SECRET);
    add.grant = Grant::AuthorizationCode;
    add.client_id = WEB_ID.into();
    add.redirect_port = Some(free_port());
    let start = StartLoginRequest {
        name: "web2".into(),
        add: Some(add),
        client_secret: None,
    };
    let started = run.ask(&mut client, Request::StartLogin(start));
    assert!(
        matches!(started, Ok(Reply::LoginChallenge(_))),
        "{started:?}"
    );

    let removed = run.ask(
        &mut client,
        Request::Remove(RemoveRequest {
            name: "lib".into(),
            keep_upstream: false,
        }),
    );
    assert!(matches!(removed, Ok(Reply::Removed(_))), "{removed:?}");
}

/// A caller who is neither an admin nor, for `desk`, a reader. Needs root
/// (to run `snctl` as nobody); the socket is opened to everyone, as a
/// socket group would, so that the daemon's own rules decide.
fn not_an_admin(run: &mut Run) {
    run.admin(
        &["update", "desk", "--allow-user", "root"],
        None,
        Expect::Success,
    );
    run.admin(
        &["update", "prod", "--allow-user", "nobody"],
        None,
        Expect::Success,
    );
    std::fs::set_permissions(run.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&run.daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let nobody = |run: &mut Run, args: &[&str], stdin: Option<&str>, expect| {
        run.cli(Who::Nobody, args, stdin, expect)
    };
    // A reader of prod (named) and of web (anyone may read it).
    nobody(run, &["token", "prod"], None, Expect::Success);
    nobody(run, &["token", "web", "--json"], None, Expect::Success);
    nobody(run, &["exec", "prod", "--", "env"], None, Expect::Success);
    nobody(run, &["show", "prod", "--json"], None, Expect::Success);
    let list = nobody(run, &["list", "--json"], None, Expect::Success);
    assert!(
        list.contains("\"prod\"") && !list.contains("\"desk\""),
        "{list}"
    );
    nobody(run, &["list"], None, Expect::Success);
    nobody(run, &["status", "--json"], None, Expect::Success);
    // Not a reader of desk, not an admin.
    nobody(run, &["token", "desk"], None, Expect::Exit(6));
    nobody(run, &["token", "desk", "--json"], None, Expect::Exit(6));
    nobody(run, &["exec", "desk", "--", "env"], None, Expect::Exit(6));
    nobody(run, &["show", "desk"], None, Expect::Exit(6));
    nobody(run, &["refresh", "prod"], None, Expect::Exit(6));
    nobody(run, &["doctor", "desk"], None, Expect::Exit(6));
    nobody(run, &["remove", "prod"], None, Expect::Exit(6));
    let login = ["login", "desk", "--password-stdin"];
    nobody(run, &login, Some(&format!("{PASSWORD}\n")), Expect::Exit(6));
    let update = ["update", "prod", "--client-secret-stdin"];
    nobody(
        run,
        &update,
        Some(&format!("{CC_ROTATED}\n")),
        Expect::Exit(6),
    );
    let url = run.url();
    let add = [
        "add",
        "mine",
        "--instance",
        &url,
        "--client-id",
        CC_ID,
        "--client-secret-stdin",
    ];
    nobody(run, &add, Some(&format!("{CC_ROTATED}\n")), Expect::Exit(6));
}

#[test]
fn a_full_run_shows_no_secret_where_it_does_not_belong() {
    let mut run = Run::start();
    client_credentials(&mut run);
    password(&mut run);
    authorization_code(&mut run, free_port());
    needs_login(&mut run);
    library(&mut run);
    if is_root() {
        not_an_admin(&mut run);
    } else {
        eprintln!("not root: the requests of a caller who is not an admin are left out");
    }

    // Removal revokes the tokens at the instance.
    let revoked = run.fake.revoke_requests();
    for name in ["prod", "desk", "web"] {
        run.admin(&["remove", name], None, Expect::Success);
    }
    assert!(run.fake.revoke_requests() > revoked);
    let refresh_tokens = run.fake.refresh_tokens_issued();
    assert!(
        run.fake
            .revoked_tokens()
            .iter()
            .any(|t| refresh_tokens.contains(t)),
        "the refresh tokens were revoked"
    );
    run.admin(&["list"], None, Expect::Success);
    run.admin(&["status"], None, Expect::Success);
    assert!(run.daemon.stop(), "snctld stops cleanly");

    // The run used what it checks for.
    let fake = &run.fake;
    assert!(fake.refresh_tokens_issued().len() >= 4);
    assert!(fake.issued_auth_codes().len() >= 4);
    assert!(fake.issued_access_tokens().len() >= 20);
    assert!(fake.auth_code_exchanges() >= 4);
    let log = run.daemon.log_text();
    assert!(
        log.contains("TRACE") && log.contains("DEBUG"),
        "the daemon logged at trace level"
    );

    let mut seen = std::mem::take(&mut run.seen);
    seen.push(Seen::text("snctld.log".into(), log, false));
    for (path, bytes) in files_under(&run.daemon.state_dir) {
        seen.push(Seen {
            place: format!("the state file {}", path.display()),
            bytes,
            text: false,
            access_allowed: false,
        });
    }
    let canaries = run.canaries();
    let access: Vec<&Canary> = canaries.iter().filter(|c| c.access).collect();
    assert!(
        seen.iter().any(|s| s.access_allowed
            && access
                .iter()
                .any(|c| contains(&s.bytes, c.value.as_bytes()))),
        "the scan finds the access tokens where they belong"
    );
    let found = leaks(&seen, &canaries);
    assert!(
        found.is_empty(),
        "{} times a secret appears where it must not:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn a_leak_is_reported_by_secret_and_place_without_the_secret() {
    let refresh = "rEfReShToKeN-0123456789";
    let access = "aCcEsStOkEn-9876543210";
    let seen = [
        Seen::text("snctld.log".into(), format!("a\nb\nc {refresh} d\n"), false),
        Seen::text("the stdout of `snctl token prod`".into(), access, true),
        Seen::text("the stdout of `snctl show prod`".into(), access, false),
        Seen {
            place: "the state file db".into(),
            bytes: format!("\0\0{refresh}").into_bytes(),
            text: false,
            access_allowed: false,
        },
    ];
    let canaries = [
        Canary::never("the refresh token #1", refresh),
        Canary {
            what: "the access token #1".into(),
            value: access.into(),
            access: true,
        },
    ];
    let found = leaks(&seen, &canaries);
    assert_eq!(
        found,
        [
            "the refresh token #1 (`rEfReS…`) appears in snctld.log line 3",
            "the access token #1 (`aCcEsS…`) appears in the stdout of `snctl show prod` line 1",
            "the refresh token #1 (`rEfReS…`) appears in the state file db at byte 2",
        ]
    );
    assert!(found
        .iter()
        .all(|f| !f.contains(refresh) && !f.contains(access)));
}

/// snctld turns off core files and makes itself non-dumpable before it
/// holds a key: no ptrace and no reads of its memory or environment by
/// other processes of its user. The kernel shows a non-dumpable process's
/// /proc files as root's, which a dumpable process of the same user (the
/// control) is not.
#[test]
fn the_daemon_makes_no_core_files_and_is_not_dumpable() {
    let dir = tempfile::tempdir().unwrap();
    // Root's processes have root's /proc files either way: as root, the
    // daemon runs as nobody, in a directory of its own.
    let user = is_root().then_some((NOBODY, NOBODY));
    let home = match user {
        Some((uid, gid)) => {
            let mode = |m| std::fs::Permissions::from_mode(m);
            std::fs::set_permissions(dir.path(), mode(0o755)).unwrap();
            let home = dir.path().join("nobody");
            std::fs::create_dir(&home).unwrap();
            std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(&home, mode(0o700)).unwrap();
            home
        }
        None => dir.path().to_path_buf(),
    };
    let config = home.join("snctld.toml");
    std::fs::write(&config, "").unwrap();
    let config = config.to_str().unwrap().to_string();
    let daemon = DaemonProcess::start_with(&home, &["--config", &config], "warn", user)
        .expect("snctld starts");
    let pid = daemon.pid().expect("running");

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core limit");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(fields[4..6], ["0", "0"], "soft and hard limits: {core}");

    let owner = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/environ"))
            .expect("the process is there")
            .uid()
    };
    // SAFETY: geteuid cannot fail and touches no memory.
    let uid = user.map_or_else(|| unsafe { libc::geteuid() }, |(uid, _)| uid);
    let mut control = Command::new("sleep");
    control.arg("60").stdin(Stdio::null());
    if let Some((uid, gid)) = user {
        control.uid(uid).gid(gid);
    }
    let mut control = control.spawn().expect("sleep runs");
    let control_owner = owner(control.id());
    let _ = control.kill();
    let _ = control.wait();
    assert_eq!(
        control_owner, uid,
        "a dumpable process's /proc files are its user's"
    );
    assert_eq!(
        owner(pid),
        0,
        "snctld, running as uid {uid}, is not dumpable"
    );
    if user.is_none() {
        let read = std::fs::read(format!("/proc/{pid}/environ"));
        assert_eq!(
            read.map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::PermissionDenied),
            "its own user cannot read its environment"
        );
    }
}
