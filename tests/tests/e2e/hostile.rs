//! The daemon facing a hostile (or broken) instance: headers that never
//! end, a body that never ends (a slow drip, an endless fast stream), a
//! 100 MB JSON error page through the proxy, and a 100 MB error body from
//! the token endpoint. Each must end in a clear answer for the local client
//! (a 502 with a one-line reason, or the streamed body cut off), never a
//! hang, while other requests go on being served; and the daemon's memory
//! stays bounded: its peak resident size (`VmHWM`) grows by less than
//! [`MAX_GROWTH_KIB`] while 100 MB pass. Memory is asserted, not time.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use snctl_tests::fake::{FakeInstance, Fault, Hostile};
use snctl_tests::harness::{fake, proc_status_kib, snctl, wait_until, DaemonProcess};

use crate::add_by_secret;

/// 100 MB, the size of the hostile error pages.
const HUGE: u64 = 100 * 1000 * 1000;

/// How much the daemon's peak resident size may grow while a hostile
/// instance is served: 32 MiB, a third of one of its answers.
const MAX_GROWTH_KIB: u64 = 32 * 1024;

/// The longest a test waits on one answer before calling it a hang.
const HANG: Duration = Duration::from_secs(120);

const TABLE: &str = "/api/now/table/incident?sysparm_limit=1";

/// A daemon process proxying `prod` (added) at `fake`, its upstream
/// requests cut after `request_timeout_secs`.
fn daemon(dir: &Path, fake: &FakeInstance, request_timeout_secs: u64) -> DaemonProcess {
    let config = dir.join("snctld.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nnames = [\"prod\"]\n[http]\nrequest_timeout_secs = {request_timeout_secs}\n"
        ),
    )
    .unwrap();
    let daemon = DaemonProcess::start(dir, &["--config", config.to_str().unwrap()]).unwrap();
    let added = add_by_secret(&daemon.socket, &fake.url(), "prod");
    assert!(added.status.success(), "{added:?}");
    daemon
}

fn proxy_socket(dir: &Path) -> PathBuf {
    dir.join("proxy").join("prod.sock")
}

/// What came back for one request, its body counted rather than kept.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The first bytes of the body.
    start: String,
    body_bytes: u64,
    /// Whether the body ended as its head said it would (its length, or
    /// the last chunk); false when the connection closed before.
    complete: bool,
}

/// `GET target` through the proxy socket at `socket`, the answer read to
/// its end (or the connection's).
fn get(socket: &Path, target: &str) -> Answer {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(HANG)).unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: sn\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut buf = vec![0; 64 * 1024];
    let mut head = Vec::new();
    let (status, length, chunked, mut body) = loop {
        let n = stream.read(&mut buf).expect("an answer, not a hang");
        assert!(n > 0, "closed before an answer head: {head:?}");
        head.extend_from_slice(&buf[..n]);
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(at) = parsed.parse(&head).unwrap() {
            let header = |name: &str| {
                parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let length = header("content-length").map(|l| l.parse::<u64>().unwrap());
            let chunked = header("transfer-encoding").is_some_and(|t| t.contains("chunked"));
            break (parsed.code.unwrap(), length, chunked, head[at..].to_vec());
        }
    };
    // The first bytes of the body, however the reads cut it.
    let mut start = body[..body.len().min(4096)].to_vec();
    let mut body_bytes = body.len() as u64;
    let mut tail = body.split_off(body.len().saturating_sub(5));
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = 4096usize.saturating_sub(start.len()).min(n);
                start.extend_from_slice(&buf[..room]);
                body_bytes += n as u64;
                tail.extend_from_slice(&buf[..n]);
                tail.drain(..tail.len().saturating_sub(5));
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e} (a hang?)"),
        }
    }
    let complete = match (length, chunked) {
        (Some(length), _) => body_bytes == length,
        (None, true) => tail.ends_with(b"0\r\n\r\n"),
        (None, false) => true,
    };
    Answer {
        status,
        start: String::from_utf8_lossy(&start).into_owned(),
        body_bytes,
        complete,
    }
}

/// A normal proxied request and `snctl token` are answered (called while a
/// hostile answer is under way, too).
fn others_are_served(daemon: &DaemonProcess, dir: &Path) {
    assert_eq!(get(&proxy_socket(dir), TABLE).status, 200);
    let out = snctl(&daemon.socket, &["token", "prod"], None);
    assert!(out.status.success(), "{out:?}");
}

/// The daemon's peak resident size so far, in KiB.
fn peak_kib(daemon: &DaemonProcess) -> u64 {
    proc_status_kib(daemon.pid().unwrap(), "VmHWM:")
}

fn assert_bounded(daemon: &DaemonProcess, before_kib: u64, what: &str) {
    let after = peak_kib(daemon);
    let grown = after.saturating_sub(before_kib);
    println!("{what}: peak RSS {before_kib} KiB -> {after} KiB (+{grown} KiB)");
    assert!(
        grown < MAX_GROWTH_KIB,
        "{what}: the daemon's peak resident size grew by {grown} KiB"
    );
}

/// Starts `GET path` in a thread and waits until the instance has it.
fn start_hostile(
    dir: &Path,
    fake: &FakeInstance,
    path: &'static str,
) -> thread::JoinHandle<Answer> {
    let before = fake.requests();
    let socket = proxy_socket(dir);
    let request = thread::spawn(move || get(&socket, path));
    assert!(wait_until(HANG, || fake.requests() > before));
    request
}

/// The JSON error body of a proxy answer: one line, saying why.
fn one_line_reason(answer: &Answer) -> String {
    let body: serde_json::Value = serde_json::from_str(&answer.start)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"));
    let message = body["message"].as_str().unwrap().to_owned();
    assert!(!message.contains('\n'), "{message:?}");
    message
}

#[test]
fn proxy_answers_502_to_headers_that_never_end() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon(dir.path(), &fake, 30);
    others_are_served(&daemon, dir.path());
    let before = peak_kib(&daemon);

    let path = "/api/now/table/endless_headers";
    fake.set_hostile(path, Some(Hostile::EndlessHeaders));
    let answer = get(&proxy_socket(dir.path()), path);
    assert_eq!(answer.status, 502, "{answer:?}");
    let reason = one_line_reason(&answer);
    println!("endless headers: 502 {reason}");
    assert!(
        reason.starts_with("the instance did not answer"),
        "{reason}"
    );
    assert!(reason.contains("message head is too large"), "{reason}");
    others_are_served(&daemon, dir.path());
    assert_bounded(&daemon, before, "endless headers");
}

#[test]
fn proxy_cuts_off_a_body_that_never_ends_and_serves_others_meanwhile() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon(dir.path(), &fake, 5);
    others_are_served(&daemon, dir.path());
    let before = peak_kib(&daemon);

    let (drip, endless) = ("/api/now/table/drip", "/api/now/table/endless");
    fake.set_hostile(drip, Some(Hostile::DripBody(Duration::from_millis(50))));
    fake.set_hostile(endless, Some(Hostile::EndlessBody));
    let dripping = start_hostile(dir.path(), &fake, drip);
    let streaming = start_hostile(dir.path(), &fake, endless);
    others_are_served(&daemon, dir.path());

    for (what, answer) in [("drip", dripping), ("endless", streaming)] {
        let answer = answer.join().unwrap();
        println!("{what}: {} bytes, then cut off", answer.body_bytes);
        assert_eq!(answer.status, 200, "{what}: {answer:?}");
        assert!(
            !answer.complete,
            "{what}: an endless body ended: {answer:?}"
        );
    }
    others_are_served(&daemon, dir.path());
    assert_bounded(&daemon, before, "endless bodies");
}

#[test]
fn proxy_streams_a_100_mb_error_page_in_bounded_memory() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon(dir.path(), &fake, 60);
    others_are_served(&daemon, dir.path());
    let before = peak_kib(&daemon);

    let path = "/api/now/table/huge";
    fake.set_hostile(
        path,
        Some(Hostile::HugeError {
            status: 500,
            bytes: HUGE,
        }),
    );
    let huge = start_hostile(dir.path(), &fake, path);
    others_are_served(&daemon, dir.path());
    let answer = huge.join().unwrap();
    assert_eq!(answer.status, 500, "{answer:?}");
    assert!(answer.start.starts_with(r#"{"error":{"message":"xxx"#));
    assert!(answer.body_bytes <= HUGE, "{answer:?}");
    println!("huge error page: {} bytes relayed", answer.body_bytes);
    assert_bounded(&daemon, before, "a 100 MB error page");
}

#[test]
fn a_hostile_token_endpoint_keeps_the_old_token_in_bounded_memory() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon(dir.path(), &fake, 10);
    let token = |daemon: &DaemonProcess| {
        let out = snctl(&daemon.socket, &["token", "prod"], None);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let old = token(&daemon);
    let before = peak_kib(&daemon);

    // What the one line must say: the instance answered, with what.
    let too_large = "more than 262144 bytes";
    for (hostile, says) in [
        (
            Hostile::HugeError {
                status: 500,
                bytes: HUGE,
            },
            ["HTTP 500", too_large],
        ),
        (
            Hostile::HugeError {
                status: 400,
                bytes: HUGE,
            },
            ["HTTP 400", too_large],
        ),
        (
            Hostile::EndlessBody,
            ["not a valid token response", too_large],
        ),
        (
            Hostile::EndlessHeaders,
            ["broke", "message head is too large"],
        ),
    ] {
        fake.push_fault(Fault::Hostile(hostile));
        let out = snctl(&daemon.socket, &["refresh", "prod"], None);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        println!("{hostile:?}: {stderr}");
        assert_eq!(out.status.code(), Some(7), "{hostile:?}: an upstream error");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{hostile:?}: {stderr:?}"
        );
        for said in says {
            assert!(stderr.contains(said), "{hostile:?}: {stderr}");
        }
        assert!(
            !stderr.contains("xxxxxxxx"),
            "{hostile:?}: the page is not echoed"
        );
        assert_eq!(token(&daemon), old, "{hostile:?}: the old token stays");
        others_are_served(&daemon, dir.path());
    }
    assert_bounded(&daemon, before, "a hostile token endpoint");
}
