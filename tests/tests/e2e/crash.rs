//! kill -9 around refreshes, with a fake instance that rotates refresh
//! tokens: whatever the moment of the crash, the refresh token on disk is
//! one the instance still accepts, and the login survives the restart.
//!
//! Iterations: `SNCTL_CRASH_ITERATIONS` (default 24, six per kill point).
//!
//! Then kills at random moments while clients hammer the daemon and four
//! authentications refresh every second or two:
//! `SNCTL_SOAK_ITERATIONS` (default 6); `tests/soak` runs it for long.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use snctl_tests::fake::{FakeInstance, Fault};
use snctl_tests::harness::{bin, snctl, wait_until, DaemonProcess, CLIENT_ID, CLIENT_SECRET};

const USER: &str = "abel.tuter";
const PASSWORD: &str = "crash-password";

/// Where the daemon dies relative to one refresh.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Right after asking for the refresh: usually before the request leaves.
    BeforeRequest,
    /// While the instance holds the request, before it processes it.
    DuringRequest,
    /// The instance has rotated and not yet answered: the new refresh token
    /// is lost with the process.
    AfterRotation,
    /// The answer has arrived: before, during or after the commit.
    AroundCommit,
}

const POINTS: [KillPoint; 4] = [
    KillPoint::BeforeRequest,
    KillPoint::DuringRequest,
    KillPoint::AfterRotation,
    KillPoint::AroundCommit,
];

/// The refresh token on disk, after checking the database's integrity, as
/// the crash left it (the daemon is not running).
fn stored_refresh_token(state_dir: &Path) -> String {
    let stored = stored_refresh_tokens(state_dir);
    assert_eq!(stored.len(), 1);
    stored[0].1.clone().expect("a refresh token stored")
}

/// Every authentication's name and refresh token on disk, after checking
/// the database's integrity (the daemon is not running).
fn stored_refresh_tokens(state_dir: &Path) -> Vec<(String, Option<String>)> {
    let mut db = snctl_tests::harness::open_db(state_dir).unwrap();
    assert_eq!(db.integrity_check().unwrap(), "ok");
    db.load_all()
        .unwrap()
        .into_iter()
        .map(|record| {
            let refresh = record
                .tokens
                .and_then(|t| t.refresh_token)
                .map(|r| r.expose().to_string());
            (record.auth.name, refresh)
        })
        .collect()
}

fn refresh_in_background(socket: &Path) -> Child {
    Command::new(bin("snctl"))
        .args(["refresh", "desk"])
        .env("SNCTL_SOCKET", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Starts a refresh and kills the daemon at `point`.
fn crash(daemon: &mut DaemonProcess, fake: &FakeInstance, point: KillPoint) {
    let mut rng = rand::thread_rng();
    let requests = fake.token_requests();
    let issued = fake.refresh_tokens_issued().len();
    match point {
        KillPoint::DuringRequest => fake.push_fault(Fault::Delay(Duration::from_secs(1))),
        KillPoint::AfterRotation => fake.push_fault(Fault::IssueThenDelay(Duration::from_secs(1))),
        _ => {}
    }
    let mut refresh = refresh_in_background(&daemon.socket);
    match point {
        // snctl takes a few milliseconds to start and connect.
        KillPoint::BeforeRequest => {
            std::thread::sleep(Duration::from_micros(rng.gen_range(2000..10_000)))
        }
        KillPoint::DuringRequest => assert!(wait_until(Duration::from_secs(10), || {
            fake.token_requests() > requests
        })),
        KillPoint::AfterRotation | KillPoint::AroundCommit => {
            assert!(wait_until(Duration::from_secs(10), || {
                fake.refresh_tokens_issued().len() > issued
            }));
            if let KillPoint::AroundCommit = point {
                std::thread::sleep(Duration::from_micros(rng.gen_range(0..5000)));
            }
        }
    }
    daemon.kill();
    let _ = refresh.wait();
}

#[test]
fn kill_9_around_refreshes_never_leaves_a_superseded_refresh_token() {
    let iterations: usize = std::env::var("SNCTL_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let runtime = snctl_tests::harness::runtime();
    let fake = runtime.block_on(FakeInstance::start()).unwrap();
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    fake.add_user(USER, PASSWORD);
    fake.set_rotate_refresh_tokens(true);
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
    let url = fake.url();
    let add = crate::add_by_password(&daemon.socket, &url, "desk", Some(USER), PASSWORD, &[]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );

    let mut lost_answers = 0;
    for i in 0..iterations {
        let point = POINTS[i % POINTS.len()];
        crash(&mut daemon, &fake, point);
        let stored = stored_refresh_token(&daemon.state_dir);
        assert!(
            !fake.superseded_refresh_tokens().contains(&stored),
            "iteration {i} ({point:?}): the stored refresh token was superseded"
        );
        assert!(
            fake.is_refresh_token_valid(&stored),
            "iteration {i} ({point:?}): the stored refresh token is not valid"
        );
        if fake.refresh_tokens_issued().last() != Some(&stored) {
            lost_answers += 1;
        }
        daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
        let out = snctl(&daemon.socket, &["refresh", "desk"], None);
        assert!(
            out.status.success(),
            "iteration {i} ({point:?}): the login did not survive: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log_text()
        );
        let out = snctl(&daemon.socket, &["token", "desk"], None);
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(fake.is_access_token_valid(&token), "iteration {i}");
    }
    println!(
        "{iterations} kill -9 iterations; {} refresh tokens issued, {} superseded, {lost_answers} \
         answers lost with the process; every restart refreshed with the stored token",
        fake.refresh_tokens_issued().len(),
        fake.superseded_refresh_tokens().len(),
    );
}

/// The random-kill loop's authentications: client credentials, and three
/// people's logins whose refresh tokens rotate.
const SERVICE: &str = "svc";
const PEOPLE: [(&str, &str); 3] = [
    ("desk-1", "beth.anglin"),
    ("desk-2", "fred.luddy"),
    ("desk-3", "itil.user"),
];

#[derive(Default)]
struct Traffic {
    tokens: AtomicU64,
    refreshes: AtomicU64,
    /// Requests cut off because the daemon was killed or not yet back.
    cut_off: AtomicU64,
    /// Errors the daemon answered with: none expected.
    failures: AtomicU64,
}

/// A client asking for tokens (sometimes most of a lifetime's worth,
/// sometimes a forced refresh) until `stop`, reconnecting after every
/// kill.
fn hammer(
    socket: &Path,
    stop: &AtomicBool,
    traffic: &Traffic,
    first_failure: &Mutex<Option<String>>,
) {
    let mut rng = rand::thread_rng();
    let names: Vec<&str> = std::iter::once(SERVICE)
        .chain(PEOPLE.iter().map(|p| p.0))
        .collect();
    let mut client: Option<snctl::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = snctl::Client::connect(socket).ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        };
        let name = names[rng.gen_range(0..names.len())];
        let result = match rng.gen_range(0..20) {
            0 => c.refresh(name).map(|_| &traffic.refreshes),
            1..=4 => c
                .token_with(name, Duration::from_millis(2500))
                .map(|_| &traffic.tokens),
            _ => c
                .token_with(name, Duration::from_millis(500))
                .map(|_| &traffic.tokens),
        };
        match result {
            Ok(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(snctl::ClientError::Daemon(e)) => {
                traffic.failures.fetch_add(1, Ordering::Relaxed);
                first_failure
                    .lock()
                    .unwrap()
                    .get_or_insert(format!("{name}: {e}"));
            }
            Err(_) => {
                traffic.cut_off.fetch_add(1, Ordering::Relaxed);
                client = None;
            }
        }
    }
}

#[test]
fn random_kills_while_clients_hammer_and_refresh_tokens_rotate() {
    let iterations: usize = std::env::var("SNCTL_SOAK_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let runtime = snctl_tests::harness::runtime();
    let fake = runtime.block_on(FakeInstance::start()).unwrap();
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    for (_, user) in PEOPLE {
        fake.add_user(user, PASSWORD);
    }
    fake.set_rotate_refresh_tokens(true);
    // Refreshed at three quarters of the lifetime: every 2.25 s or sooner.
    fake.set_access_lifetime(3);
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
    let url = fake.url();
    let add = crate::add_by_secret(&daemon.socket, &url, SERVICE);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    for (name, user) in PEOPLE {
        let add = crate::add_by_password(&daemon.socket, &url, name, Some(user), PASSWORD, &[]);
        assert!(
            add.status.success(),
            "{}",
            String::from_utf8_lossy(&add.stderr)
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Arc::new(Traffic::default());
    let first_failure = Arc::new(Mutex::new(None));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let socket = daemon.socket.clone();
            let (stop, traffic, first_failure) =
                (stop.clone(), traffic.clone(), first_failure.clone());
            std::thread::spawn(move || hammer(&socket, &stop, &traffic, &first_failure))
        })
        .collect();

    let mut rng = rand::thread_rng();
    let mut kills_amid_refreshes = 0;
    for i in 0..iterations {
        let issued = fake.tokens_issued();
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..2500)));
        daemon.kill();
        let refreshed_before_kill = fake.tokens_issued() > issued;

        let stored = stored_refresh_tokens(&daemon.state_dir);
        assert_eq!(stored.len(), 1 + PEOPLE.len(), "iteration {i}");
        let superseded = fake.superseded_refresh_tokens();
        for (name, refresh) in &stored {
            let Some(refresh) = refresh else {
                assert_eq!(
                    name, SERVICE,
                    "iteration {i}: {name} lost its refresh token"
                );
                continue;
            };
            assert!(
                !superseded.contains(refresh),
                "iteration {i}: {name}'s stored refresh token was superseded"
            );
            assert!(
                fake.is_refresh_token_valid(refresh),
                "iteration {i}: {name}'s stored refresh token is not valid"
            );
        }
        if refreshed_before_kill {
            kills_amid_refreshes += 1;
        }

        daemon = DaemonProcess::start(dir.path(), &[]).unwrap();
        let mut client = snctl::Client::connect(&daemon.socket).unwrap();
        for name in std::iter::once(SERVICE).chain(PEOPLE.iter().map(|p| p.0)) {
            let token = client
                .token_with(name, Duration::from_secs(2))
                .unwrap_or_else(|e| {
                    panic!(
                        "iteration {i}: {name} does not work after the restart: {e}\n{}",
                        daemon.log_text()
                    )
                });
            assert!(
                fake.is_access_token_valid(token.access_token.expose()),
                "iteration {i}: {name}'s token is not the instance's"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(
        traffic.failures.load(Ordering::Relaxed),
        0,
        "first: {:?}",
        first_failure.lock().unwrap()
    );
    println!(
        "{iterations} random kills under load: 0 failures; {} tokens and {} forced refreshes served \
         to 8 clients, {} requests cut off by the kills; the instance issued {} access tokens and \
         {} refresh tokens ({} superseded); {kills_amid_refreshes} kills came after the instance \
         had issued tokens since the one before; after every restart the database was intact, \
         no stored refresh token was superseded, and all {} authentications worked",
        traffic.tokens.load(Ordering::Relaxed),
        traffic.refreshes.load(Ordering::Relaxed),
        traffic.cut_off.load(Ordering::Relaxed),
        fake.tokens_issued(),
        fake.refresh_tokens_issued().len(),
        fake.superseded_refresh_tokens().len(),
        1 + PEOPLE.len(),
    );
}
