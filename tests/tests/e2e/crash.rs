//! kill -9 around refreshes, with a fake instance that rotates refresh
//! tokens: whatever the moment of the crash, the refresh token on disk is
//! one the instance still accepts, and the login survives the restart.
//!
//! Iterations: `SNCTL_CRASH_ITERATIONS` (default 24, six per kill point).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use snctl_tests::fake::{FakeInstance, Fault};
use snctl_tests::harness::{bin, snctl, wait_until, DaemonProcess, CLIENT_ID, CLIENT_SECRET};
use snctld::store::{UncheckedDb, DB_FILE};

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
    let unchecked = UncheckedDb::open(&state_dir.join(DB_FILE)).unwrap();
    let check = unchecked.key_check().unwrap();
    let (key, _) = snctld::crypto::load_master_key(
        &snctld::crypto::KeySources::state_dir(state_dir),
        check.as_deref(),
    )
    .unwrap();
    let mut db = unchecked.prepare(Arc::new(key)).unwrap();
    assert_eq!(db.integrity_check().unwrap(), "ok");
    let records = db.load_all().unwrap();
    assert_eq!(records.len(), 1);
    let tokens = records[0].tokens.as_ref().expect("tokens stored");
    tokens
        .refresh_token
        .as_ref()
        .expect("a refresh token stored")
        .expose()
        .to_string()
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
