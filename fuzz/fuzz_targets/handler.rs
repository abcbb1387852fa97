//! Decoded requests from an admin (this process's uid) to a real daemon
//! running in-process on a temporary state directory, over its real
//! socket: `snctld::open_state`, `snctld::server::bind` and `snctld::run`,
//! as the end-to-end tests start it, with the `snctl` client library.
//!
//! Nothing may leave the machine: every instance URL the daemon would
//! accept is replaced by `http://127.0.0.1:9` (nothing listens there, so
//! adds, updates and logins fail upstream, and no authentication is ever
//! stored for later requests to refresh), and the environment's HTTP
//! proxies are removed before the daemon starts.
//!
//! Checked for every request: the daemon answers (the connection survives),
//! a success is the reply kind that request expects, and no secret of the
//! request comes back in the response.

#![no_main]

use std::path::PathBuf;
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use snctl::{Client, ClientError};
use snctl_shared::frame::decode_request;
use snctl_shared::protocol::{AddRequest, LoginProof, Reply, Request};
use snctl_shared::Secret;
use snctld::config::Config;
use snctld::servicenow::normalize_instance_url;

/// Where every instance URL points: the discard port, closed.
const NOWHERE: &str = "http://127.0.0.1:9";

struct Harness {
    socket: PathBuf,
    client: Mutex<Option<Client>>,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            std::env::remove_var(var);
        }
        std::env::set_var("NO_PROXY", "*");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = Config::under(dir.path());
        config.http.connect_timeout = Duration::from_secs(1);
        config.http.request_timeout = Duration::from_secs(2);
        let socket = config.socket.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let state = snctld::open_state(&config).expect("the state directory opens");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = snctld::server::bind(
                    &config.socket,
                    config.socket_mode,
                    config.socket_dir_mode,
                    None,
                )
                .expect("the socket binds");
                ready_tx.send(()).unwrap();
                snctld::run(config, state, listener, std::future::pending())
                    .await
                    .expect("the daemon runs");
            });
        });
        ready_rx.recv().expect("the daemon starts");
        Harness {
            socket,
            client: Mutex::new(None),
            _dir: dir,
        }
    })
}

/// Points any URL the daemon would accept at [`NOWHERE`]; leaves the ones
/// it refuses, so that its refusals are exercised.
fn confine(url: &mut String) {
    if normalize_instance_url(url).is_ok_and(|u| u != NOWHERE) {
        *url = NOWHERE.to_string();
    }
}

fn confine_add(add: &mut AddRequest) {
    confine(&mut add.instance_url);
}

/// The secrets a request carries.
fn secrets(request: &Request) -> Vec<&Secret> {
    fn of_add(add: &AddRequest) -> Vec<&Secret> {
        let mut s = vec![&add.client_secret];
        s.extend(add.user.as_ref().map(|u| &u.password));
        s.extend(add.jwt.as_ref().map(|j| &j.key));
        s
    }
    match request {
        Request::Add(r) => of_add(r),
        Request::Update(r) => r.client_secret.iter().collect(),
        Request::StartLogin(r) => {
            let mut s: Vec<_> = r.client_secret.iter().collect();
            s.extend(r.add.iter().flat_map(of_add));
            s
        }
        Request::Login(r) => {
            let mut s: Vec<_> = r.client_secret.iter().collect();
            s.push(match &r.proof {
                LoginProof::Password(user) => &user.password,
                LoginProof::AuthorizationCode { code, .. } => code,
            });
            s
        }
        _ => Vec::new(),
    }
}

/// Whether `reply` is what a success of `request` looks like.
fn expected(request: &Request, reply: &Reply) -> bool {
    matches!(
        (request, reply),
        (Request::Token(_), Reply::Token(_))
            | (Request::List, Reply::List(_))
            | (
                Request::Show(_)
                    | Request::Add(_)
                    | Request::Update(_)
                    | Request::Refresh(_)
                    | Request::Login(_),
                Reply::Auth(_)
            )
            | (Request::Remove(_), Reply::Removed(_))
            | (Request::Status, Reply::Status(_))
            | (Request::StartLogin(_), Reply::LoginChallenge(_))
            | (Request::Doctor(_), Reply::Diagnosis(_))
            | (Request::Backup(_), Reply::Backup(_))
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut request) = decode_request::<Request>(data) else {
        return;
    };
    match &mut request {
        Request::Add(r) => confine_add(r),
        Request::StartLogin(r) => r.add.iter_mut().for_each(confine_add),
        Request::Update(r) => r.instance_url.iter_mut().for_each(confine),
        _ => {}
    }
    let harness = harness();
    let mut slot = harness.client.lock().unwrap_or_else(|p| p.into_inner());
    let client = match slot.as_mut() {
        Some(client) => client,
        None => slot.insert(Client::connect(&harness.socket).expect("the daemon accepts")),
    };
    let answer = client.request(&request);

    // What the daemon said, as text a careless message could leak into.
    let said = match &answer {
        Ok(reply) => {
            assert!(
                expected(&request, reply),
                "{} answered with {reply:?}",
                request.kind()
            );
            format!("{reply:?}")
        }
        Err(ClientError::Daemon(error)) => format!("{error} {error:?}"),
        Err(other) => {
            *slot = None;
            panic!("{} lost the connection: {other}", request.kind());
        }
    };
    // A secret the request shows nowhere else (its Debug redacts secrets)
    // must not come back.
    let shown = format!("{request:?}");
    for secret in secrets(&request) {
        let s = secret.expose();
        if s.len() >= 8 && !shown.contains(s) {
            assert!(!said.contains(s), "{} echoed a secret", request.kind());
        }
    }
});
