//! Many authentications and many clients for a bounded time: every request
//! answered, nothing asked of the instance for warm tokens, and the
//! daemon's memory and file descriptors flat.
//!
//! Size: `SNCTL_LOAD_AUTHS` (default 10000), `SNCTL_LOAD_CLIENTS` (default
//! 64, half of them reconnecting for every request), `SNCTL_LOAD_SECS`
//! (default 4).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use snctl_tests::harness::{
    fake, proc_status_kib, seed_authentications, seeded_name, wait_until, DaemonProcess,
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
