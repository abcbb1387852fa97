//! Many authentications and many clients for a bounded time: every request
//! answered, nothing asked of the instance for warm tokens, and the
//! daemon's memory and file descriptors flat.
//!
//! Size: `SNCTL_LOAD_AUTHS` (default 10000), `SNCTL_LOAD_CLIENTS` (default
//! 64, half of them reconnecting for every request), `SNCTL_LOAD_SECS`
//! (default 4).
//!
//! And admins at work meanwhile: authentications added, updated and removed,
//! people logging in, backups taken, while 64 clients fetch tokens; no
//! error for anyone, an upstream request held at the instance holds up
//! nobody else, and memory flat. `SNCTL_CHURN_SECS` (default: 30 rounds of
//! add, update, remove, a few seconds).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use snctl_tests::harness::{
    add_request, fake, proc_status_kib, seed_authentications, seeded_name, wait_until,
    DaemonProcess,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size in KiB and open file descriptors of process `pid`.
fn footprint(pid: u32) -> (u64, usize) {
    let rss = proc_status_kib(pid, "VmRSS:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

#[derive(Default)]
struct Counts {
    tokens: AtomicU64,
    connections: AtomicU64,
    errors: AtomicU64,
}

/// One client: a connection kept for the whole run, or (`churn`) a new one
/// for every request. Asks for random authentications' tokens until `stop`.
fn client_loop(
    socket: &std::path::Path,
    auths: usize,
    churn: bool,
    stop: &AtomicBool,
    counts: &Counts,
    first_error: &Mutex<Option<String>>,
) {
    let mut rng = rand::thread_rng();
    let mut client: Option<snctl::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            match snctl::Client::connect(socket) {
                Ok(c) => {
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    client = Some(c)
                }
                Err(e) => {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert(e.to_string());
                    continue;
                }
            }
        }
        let name = seeded_name(rng.gen_range(0..auths));
        match client.as_mut().unwrap().token(&name) {
            Ok(token)
                if token
                    .access_token
                    .expose()
                    .starts_with("seeded-access-token-") =>
            {
                counts.tokens.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                first_error
                    .lock()
                    .unwrap()
                    .get_or_insert(format!("{name}: not the stored token"));
            }
            Err(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                first_error
                    .lock()
                    .unwrap()
                    .get_or_insert(format!("{name}: {e}"));
                client = None;
            }
        }
        if churn {
            client = None;
        }
    }
}

#[test]
fn ten_thousand_authentications_and_many_clients_stay_flat() {
    let auths = env_or("SNCTL_LOAD_AUTHS", 10_000);
    let clients = env_or("SNCTL_LOAD_CLIENTS", 64);
    let secs = env_or("SNCTL_LOAD_SECS", 4) as u64;

    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    seed_authentications(&dir.path().join("state"), &fake.url(), auths).unwrap();
    let daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
    let pid = daemon.pid().unwrap();
    assert_eq!(
        snctl::Client::connect(&daemon.socket)
            .unwrap()
            .list()
            .unwrap()
            .len(),
        auths
    );
    let (rss_idle, fds_idle) = footprint(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let first_error = Arc::new(Mutex::new(None));
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let socket = daemon.socket.clone();
            let (stop, counts, first_error) = (stop.clone(), counts.clone(), first_error.clone());
            std::thread::spawn(move || {
                client_loop(&socket, auths, i % 2 == 1, &stop, &counts, &first_error)
            })
        })
        .collect();

    // Sample the daemon's footprint while the clients run.
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100));
        samples.push(footprint(pid));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let elapsed = started.elapsed();

    assert_eq!(
        counts.errors.load(Ordering::Relaxed),
        0,
        "first error: {:?}",
        first_error.lock().unwrap()
    );
    let tokens = counts.tokens.load(Ordering::Relaxed);
    assert!(tokens > 0);
    assert_eq!(
        fake.token_requests(),
        0,
        "warm tokens are served without asking the instance"
    );

    // File descriptors: one per open connection (a reconnecting client's
    // old one may not be closed yet), and back to the idle count once the
    // clients are gone.
    let fds_max = samples.iter().map(|s| s.1).max().unwrap();
    assert!(
        fds_max <= fds_idle + 2 * clients + 8,
        "{fds_max} descriptors open with {clients} clients (idle: {fds_idle})"
    );
    let mut fds_after = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            fds_after = footprint(pid).1;
            fds_after <= fds_idle
        }),
        "descriptors after the clients left: {fds_after} (idle: {fds_idle})"
    );

    // Memory: no growth per request. A leak lifts every later sample, so
    // the lowest of the second half would pass the highest of the first;
    // a connection thread's stack comes and goes with the machine's load
    // and only makes spikes (seen: +7 MiB at one sample on a busy machine).
    let half = samples.len() / 2;
    let first_half = samples[..half].iter().map(|s| s.0).max().unwrap();
    let second_half = samples[half..].iter().map(|s| s.0).max().unwrap();
    let second_low = samples[half..].iter().map(|s| s.0).min().unwrap();
    assert!(
        second_low <= first_half + first_half / 10 + 2048,
        "RSS grew from {first_half} KiB to at least {second_low} KiB under a steady load"
    );
    let (rss_after, _) = footprint(pid);
    println!(
        "load: {auths} authentications, {clients} clients ({} reconnecting per request), {:.1} s: \
         {tokens} tokens ({:.0}/s), {} connections, 0 errors, 0 upstream requests; \
         RSS idle {rss_idle} KiB, max first half {first_half} KiB, max second half {second_half} KiB, \
         after {rss_after} KiB; descriptors idle {fds_idle}, max {fds_max}, after {fds_after}",
        clients / 2,
        elapsed.as_secs_f64(),
        tokens as f64 / elapsed.as_secs_f64(),
        counts.connections.load(Ordering::Relaxed),
    );
}

/// Warm authentications the 64 clients ask for during the churn.
const WARM: usize = 16;
/// A client of its own at the fake, whose token requests the test holds.
const HELD_CLIENT: &str = "held-client-5a0e";
/// The user of the password logins.
const USER: &str = "churn.user";
const PASSWORD: &str = "churn-password-CANARY-0b3f";
/// The user JWT assertions act as.
const SUBJECT: &str = "svc.churn";

fn update_of(name: &str) -> snctl::protocol::UpdateRequest {
    snctl::protocol::UpdateRequest {
        name: name.to_string(),
        instance_url: None,
        client_id: None,
        client_secret: None,
        client_auth: None,
        scope: None,
        redirect_port: None,
        refresh_lifespan_secs: None,
        readers: None,
        proxy: None,
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What a fetching client counted.
#[derive(Default)]
struct Fetcher {
    tokens: AtomicU64,
    /// Longest wait for one token, in microseconds.
    longest_us: AtomicU64,
    /// Waits longer than 50 ms.
    slow: AtomicU64,
}

/// What the admins did, and what went wrong for anyone.
#[derive(Default)]
struct Churned {
    adds: AtomicU64,
    removes: AtomicU64,
    updates: AtomicU64,
    logins: AtomicU64,
    backups: AtomicU64,
    reloads: AtomicU64,
    client_errors: AtomicU64,
    admin_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Churned {
    fn client_error(&self, what: String) {
        self.client_errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(what);
    }

    fn admin_error(&self, what: String) {
        self.admin_errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(what);
    }

    /// Counts `result` as an admin request that must work.
    fn admin<T>(&self, what: &str, result: Result<T, snctl::ClientError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.admin_error(format!("{what}: {e}"));
                None
            }
        }
    }
}

/// One client on one connection, asking for the warm authentications'
/// tokens (and the one whose refresh the test holds) until `stop`.
fn fetch_loop(
    socket: &std::path::Path,
    names: &[String],
    stop: &AtomicBool,
    me: &Fetcher,
    all: &Churned,
) {
    let mut client = match snctl::Client::connect(socket) {
        Ok(client) => client,
        Err(e) => return all.client_error(format!("connect: {e}")),
    };
    let mut rng = rand::thread_rng();
    while !stop.load(Ordering::Relaxed) {
        let i = rng.gen_range(0..names.len());
        let asked = Instant::now();
        let answer = client.token(&names[i]);
        let waited = asked.elapsed().as_micros() as u64;
        me.longest_us.fetch_max(waited, Ordering::Relaxed);
        if waited > 50_000 {
            me.slow.fetch_add(1, Ordering::Relaxed);
        }
        match answer {
            // The seeded ones are served as stored; the held one's is the
            // instance's.
            Ok(token)
                if i < WARM
                    && token.access_token.expose() != format!("seeded-access-token-{i:05}") =>
            {
                all.client_error(format!("{}: not the stored token", names[i]))
            }
            Ok(_) => {
                me.tokens.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                all.client_error(format!("{}: {e}", names[i]));
                match snctl::Client::connect(socket) {
                    Ok(c) => client = c,
                    Err(e) => return all.client_error(format!("reconnect: {e}")),
                }
            }
        }
    }
}

/// The browser's part of an authorization-code login: the fake's consent
/// redirect is read rather than followed; its code and state go to the
/// daemon as the CLI's loopback listener would send them.
fn browser_login(
    client: &mut snctl::Client,
    name: &str,
    add: Option<snctl::protocol::AddRequest>,
) -> Result<(), String> {
    use snctl::protocol::{LoginProof, LoginRequest, StartLoginRequest};
    let start = StartLoginRequest {
        name: name.to_string(),
        add,
        client_secret: None,
    };
    let challenge = client
        .start_login(start)
        .map_err(|e| format!("start login: {e}"))?;
    let browser = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let response = browser
        .get(&challenge.authorize_url)
        .send()
        .map_err(|e| format!("authorize: {e}"))?;
    let code = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.split_once('?'))
        .and_then(|(_, query)| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned())
        })
        .ok_or_else(|| format!("authorize answered {} without a code", response.status()))?;
    let login = LoginRequest {
        name: name.to_string(),
        proof: LoginProof::AuthorizationCode {
            code: snctl::Secret::new(code),
            state: challenge.state,
        },
        client_secret: None,
    };
    client
        .login(login)
        .map(|_| ())
        .map_err(|e| format!("login: {e}"))
}

/// The daemon's RSS in KiB: the lowest of a few samples, so that a
/// connection thread's stack that comes and goes does not count.
fn settled_rss(pid: u32) -> u64 {
    (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            proc_status_kib(pid, "VmRSS:")
        })
        .min()
        .unwrap()
}

/// Admins at work while 64 clients fetch tokens: authentications added
/// (client credentials, JWT bearer, password, browser logins), updated,
/// removed with their tokens revoked, people logging in again, backups
/// taken, the configuration reloaded. No client sees an error, no admin
/// request fails, an upstream request held at the instance (an `add`, a
/// `refresh`) holds up neither the clients nor list, status and the other
/// admins, and the daemon's memory after the last quarter of the churn is
/// what it was after the first.
///
/// Length: 30 cycles of add, update, remove by default;
/// `SNCTL_CHURN_SECS` for a run of that many seconds.
#[test]
fn admins_at_work_under_load_stop_no_client_and_leave_memory_flat() {
    use snctl::protocol::{Grant, JwtSettings, LoginProof, LoginRequest, Readers, UserLogin};

    let secs = std::env::var("SNCTL_CHURN_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let cycles = 30u64;
    let clients = env_or("SNCTL_LOAD_CLIENTS", 64);

    let fake = fake();
    fake.add_client(HELD_CLIENT, snctl_tests::harness::CLIENT_SECRET);
    fake.add_user(USER, PASSWORD);
    fake.add_user(SUBJECT, "unused-password");
    let jwt_key = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    fake.add_jwt_key(snctl_tests::harness::CLIENT_ID, jwt_key.as_ref());
    let jwt_key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(jwt_key.as_ref())
    };
    let redirect_port = snctl_tests::harness::free_port();
    fake.set_redirect_uri(
        snctl_tests::harness::CLIENT_ID,
        &format!("http://127.0.0.1:{redirect_port}/callback"),
    );

    let dir = tempfile::tempdir().unwrap();
    seed_authentications(&dir.path().join("state"), &fake.url(), WARM).unwrap();
    let config = dir.path().join("snctld.toml");
    std::fs::write(&config, "").unwrap();
    let daemon = DaemonProcess::start(dir.path(), &["--config", config.to_str().unwrap()]).unwrap();
    let pid = daemon.pid().unwrap();
    let socket = daemon.socket.clone();
    let instance = fake.url();
    let admin = || snctl::Client::connect(&socket).unwrap();

    // The one whose refresh the test holds, and the people who log in.
    let mut slow = add_request("slow", &instance);
    slow.client_id = HELD_CLIENT.into();
    admin().add(slow).unwrap();
    let mut person = add_request("person", &instance);
    person.grant = Grant::Password;
    person.user = Some(UserLogin {
        username: USER.into(),
        password: snctl::Secret::new(PASSWORD.into()),
    });
    admin().add(person).unwrap();
    let mut web = add_request("web", &instance);
    web.grant = Grant::AuthorizationCode;
    web.redirect_port = Some(redirect_port);
    browser_login(&mut admin(), "web", Some(web)).unwrap();

    let names: Arc<Vec<String>> = Arc::new(
        (0..WARM)
            .map(seeded_name)
            .chain(["slow".to_string()])
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    // A failed check stops every thread too.
    let _stop_on_panic = StopOnDrop(stop.clone());
    let churned = Arc::new(Churned::default());
    let fetchers: Arc<Vec<Fetcher>> = Arc::new((0..clients).map(|_| Fetcher::default()).collect());
    let started = Instant::now();
    let mut threads = Vec::new();
    for i in 0..clients {
        let (socket, names, stop, fetchers, churned) = (
            socket.clone(),
            names.clone(),
            stop.clone(),
            fetchers.clone(),
            churned.clone(),
        );
        threads.push(std::thread::spawn(move || {
            fetch_loop(&socket, &names, &stop, &fetchers[i], &churned)
        }));
    }

    // Logins by people, again and again: a password, a browser.
    {
        let (socket, stop, churned) = (socket.clone(), stop.clone(), churned.clone());
        threads.push(std::thread::spawn(move || {
            let mut client = snctl::Client::connect(&socket).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let login = LoginRequest {
                    name: "person".into(),
                    proof: LoginProof::Password(UserLogin {
                        username: USER.into(),
                        password: snctl::Secret::new(PASSWORD.into()),
                    }),
                    client_secret: None,
                };
                if churned.admin("login person", client.login(login)).is_some() {
                    churned.logins.fetch_add(1, Ordering::Relaxed);
                }
                churned.admin("refresh person", client.refresh("person"));
                match browser_login(&mut client, "web", None) {
                    Ok(()) => {
                        churned.logins.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => churned.admin_error(format!("web: {e}")),
                }
            }
        }));
    }

    // Backups, listings, settings of the warm authentications changed
    // (their tokens stay), the configuration reloaded.
    {
        let (socket, stop, churned) = (socket.clone(), stop.clone(), churned.clone());
        threads.push(std::thread::spawn(move || {
            let mut client = snctl::Client::connect(&socket).unwrap();
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                if let Some(backup) = churned.admin("backup", client.backup()) {
                    if backup.bytes.starts_with(b"SQLite format 3\0") {
                        churned.backups.fetch_add(1, Ordering::Relaxed);
                    } else {
                        churned.admin_error("backup: not an SQLite database".into());
                    }
                }
                churned.admin("list", client.list());
                churned.admin("status", client.status());
                churned.admin("metrics", client.metrics());
                if round.is_multiple_of(4) {
                    churned.admin("doctor", client.doctor("person"));
                }
                let mut update = update_of(&seeded_name(round % WARM));
                update.readers = Some(Readers {
                    users: if round.is_multiple_of(2) {
                        vec!["root".into()]
                    } else {
                        vec![]
                    },
                    ..Readers::default()
                });
                update.refresh_lifespan_secs = Some(86_400 + round as u64);
                if churned
                    .admin("update warm", client.update(update))
                    .is_some()
                {
                    churned.updates.fetch_add(1, Ordering::Relaxed);
                }
                if round.is_multiple_of(8) {
                    // SAFETY: kill with the daemon's pid, which the test holds.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
                    churned.reloads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // Add, use, update (new credentials, proven upstream), remove (tokens
    // revoked upstream): client credentials, and every third a JWT bearer.
    let progress = {
        let churned = churned.clone();
        move || match secs {
            Some(secs) => started.elapsed().as_secs_f64() / secs as f64,
            None => churned.removes.load(Ordering::Relaxed) as f64 / cycles as f64,
        }
    };
    // The churn goes on at least until the hold below is over.
    let holding = Arc::new(AtomicBool::new(true));
    let churner = {
        let (holding, stop) = (holding.clone(), stop.clone());
        let (socket, churned, instance, progress) = (
            socket.clone(),
            churned.clone(),
            instance.clone(),
            progress.clone(),
        );
        std::thread::spawn(move || {
            let mut client = snctl::Client::connect(&socket).unwrap();
            let mut i = 0u64;
            let mut rss_first = None;
            while !stop.load(Ordering::Relaxed)
                && (progress() < 1.0 || holding.load(Ordering::Relaxed))
            {
                i += 1;
                let name = format!("churn-{i}");
                let mut add = add_request(&name, &instance);
                if i.is_multiple_of(3) {
                    add.grant = Grant::JwtBearer;
                    add.jwt = Some(JwtSettings {
                        key: snctl::Secret::new(jwt_key.clone()),
                        subject: SUBJECT.into(),
                        kid: None,
                    });
                }
                // Every fourth with its proxy socket, which goes with it.
                add.proxy = i % 4 == 1;
                let mut proxy_socket = None;
                if let Some(added) = churned.admin("add", client.add(add)) {
                    churned.adds.fetch_add(1, Ordering::Relaxed);
                    proxy_socket = added.proxy_socket.map(|p| std::path::PathBuf::from(p.path));
                    if (i % 4 == 1) != proxy_socket.as_ref().is_some_and(|p| p.exists()) {
                        churned.admin_error(format!("{name}: proxy socket {proxy_socket:?}"));
                    }
                }
                churned.admin("token of an added one", client.token(&name));
                let mut update = update_of(&name);
                update.client_secret = Some(snctl::Secret::new(
                    snctl_tests::harness::CLIENT_SECRET.into(),
                ));
                update.scope = Some(if i.is_multiple_of(2) {
                    "useraccount".into()
                } else {
                    String::new()
                });
                if churned.admin("update", client.update(update)).is_some() {
                    churned.updates.fetch_add(1, Ordering::Relaxed);
                }
                match churned.admin("remove", client.remove(&name, false)) {
                    Some(reply) if reply.revoke_error.is_none() => {
                        churned.removes.fetch_add(1, Ordering::Relaxed);
                        if let Some(socket) = proxy_socket.filter(|p| p.exists()) {
                            churned
                                .admin_error(format!("{name} removed, its proxy {socket:?} not"));
                        }
                    }
                    Some(reply) => churned.admin_error(format!("remove {name}: {reply:?}")),
                    None => {}
                }
                if rss_first.is_none() && progress() >= 0.25 {
                    rss_first = Some(settled_rss(pid));
                }
            }
            rss_first
        })
    };

    // Once the churn runs: hold the instance's answer to an add and to a
    // refresh. The clients (one of them asking for the held one's token),
    // list, status and the other admins carry on; counted, not timed.
    assert!(
        wait_until(Duration::from_secs(120), || progress() >= 0.1),
        "the churn does not get going"
    );
    fake.hold_token_requests(HELD_CLIENT);
    let held_add = {
        let (socket, instance) = (socket.clone(), instance.clone());
        std::thread::spawn(move || {
            let mut add = add_request("held", &instance);
            add.client_id = HELD_CLIENT.into();
            snctl::Client::connect(&socket).unwrap().add(add)
        })
    };
    let held_refresh = {
        let socket = socket.clone();
        std::thread::spawn(move || snctl::Client::connect(&socket).unwrap().refresh("slow"))
    };
    assert!(
        wait_until(Duration::from_secs(60), || fake.held_token_requests() == 2),
        "the add and the refresh reach the instance"
    );
    let counts = |f: &Vec<Fetcher>| -> Vec<u64> {
        f.iter().map(|f| f.tokens.load(Ordering::Relaxed)).collect()
    };
    let before = counts(&fetchers);
    let (adds_before, logins_before, backups_before) = (
        churned.adds.load(Ordering::Relaxed),
        churned.logins.load(Ordering::Relaxed),
        churned.backups.load(Ordering::Relaxed),
    );
    let mut admin_client = admin();
    let listed = admin_client.list().unwrap();
    assert!(listed.iter().any(|a| a.name == "slow"));
    assert!(
        !listed.iter().any(|a| a.name == "held"),
        "not added before the instance answers"
    );
    assert!(admin_client.status().unwrap().authentications as usize >= WARM + 3);
    assert!(
        wait_until(Duration::from_secs(120), || {
            let now = counts(&fetchers);
            now.iter().zip(&before).all(|(n, b)| n > &(b + 10))
                && churned.adds.load(Ordering::Relaxed) > adds_before + 2
                && churned.logins.load(Ordering::Relaxed) > logins_before
                && churned.backups.load(Ordering::Relaxed) > backups_before
        }),
        "while the instance holds an add and a refresh, every client, the churn, the logins and \
         the backups go on: clients {:?} -> {:?}",
        before,
        counts(&fetchers)
    );
    assert_eq!(fake.held_token_requests(), 2, "still held meanwhile");
    fake.release_token_requests(HELD_CLIENT);
    held_add
        .join()
        .unwrap()
        .expect("the held add completes once answered");
    held_refresh
        .join()
        .unwrap()
        .expect("the held refresh completes once answered");
    admin_client.remove("held", false).unwrap();
    holding.store(false, Ordering::Relaxed);

    let rss_first = churner.join().unwrap();
    let rss_last = settled_rss(pid);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let elapsed = started.elapsed();

    let tokens: u64 = counts(&fetchers).iter().sum();
    let longest_ms = fetchers
        .iter()
        .map(|f| f.longest_us.load(Ordering::Relaxed))
        .max()
        .unwrap() as f64
        / 1000.0;
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let slow: u64 = fetchers.iter().map(|f| count(&f.slow)).sum();
    assert_eq!(
        (count(&churned.client_errors), count(&churned.admin_errors)),
        (0, 0),
        "client and admin errors; the first: {:?}",
        churned.first_error.lock().unwrap()
    );
    let names_left: Vec<String> = admin()
        .list()
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(
        names_left.len(),
        WARM + 3,
        "only the churned ones are gone: {names_left:?}"
    );

    // Memory: hundreds of authentications come and go; what they held
    // goes with them. Generous: an allocator keeps some of what it was
    // given back, and a leak of a few KiB per authentication shows over
    // the long form.
    let rss_first = rss_first.expect("sampled after the first quarter");
    println!(
        "churn: {clients} clients, {:.1} s: {tokens} tokens ({:.0}/s), longest wait {longest_ms:.1} ms, \
         {slow} waits over 50 ms, 0 client errors; {} adds, {} removes, {} updates, {} logins, {} backups, {} reloads, \
         0 admin errors; RSS after the first quarter {rss_first} KiB, after the last {rss_last} KiB",
        elapsed.as_secs_f64(),
        tokens as f64 / elapsed.as_secs_f64(),
        count(&churned.adds),
        count(&churned.removes),
        count(&churned.updates),
        count(&churned.logins),
        count(&churned.backups),
        count(&churned.reloads),
    );
    assert!(
        rss_last <= rss_first + rss_first / 4 + 8 * 1024,
        "RSS grew from {rss_first} KiB after the first quarter of the churn to {rss_last} KiB \
         after the last"
    );
    drop(daemon);
}
