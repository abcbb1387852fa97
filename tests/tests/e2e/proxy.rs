//! The local authenticating proxy: plain HTTP/1.1 on `DIR/proxy/NAME.sock`,
//! forwarded to the fake instance with the daemon's bearer token.
//!
//! The client here is raw HTTP/1.1 on a std `UnixStream` (keep-alive, so
//! that a run of requests measures the proxy and not connection set-up).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use snctl::protocol::Readers;
use snctl_tests::fake::DOWNLOAD_BYTES;
use snctl_tests::harness::{self, fake, test_config, DaemonProcess, TestDaemon};

use crate::{add_by_secret, add_request, Prod};

/// A daemon with `prod` added and proxied.
fn proxied() -> Prod {
    Prod::with(|_| {}, |config| config.proxy.names = vec!["prod".into()])
}

fn proxy_socket(dir: &Path) -> PathBuf {
    dir.join("proxy").join("prod.sock")
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A keep-alive HTTP/1.1 connection.
struct Http<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Http<S> {
    fn new(stream: S) -> Http<S> {
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut head = format!("{method} {target} HTTP/1.1\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            head.push_str("Host: sn\r\n");
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).unwrap();
        self.stream.write_all(body).unwrap();
        self.answer()
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed mid-answer");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn answer(&mut self) -> Answer {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(n) = parsed.parse(&self.buf).unwrap() {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                break (parsed.code.unwrap(), headers, n);
            }
            self.fill();
        };
        self.buf.drain(..head_len);
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(length) = answer.header("content-length") {
            let length: usize = length.trim().parse().unwrap();
            while self.buf.len() < length {
                self.fill();
            }
            answer.body = self.buf.drain(..length).collect();
        } else if answer
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    self.fill();
                };
                let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    self.fill();
                }
                answer
                    .body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        answer
    }
}

fn connect(socket: &Path) -> Http<UnixStream> {
    let stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    Http::new(stream)
}

const TABLE: &str = "/api/now/table/incident?sysparm_limit=1";

#[test]
fn proxy_forwards_with_the_daemons_token_and_drops_the_callers_authorization() {
    let prod = proxied();
    let mut http = connect(&proxy_socket(prod.dir.path()));
    let answer = http.request(
        "GET",
        TABLE,
        &[
            ("Authorization", "Bearer caller-own-token"),
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "hop"),
            ("Accept", "application/json"),
        ],
        b"",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["result"][0]["number"], "INC0010001");
    assert_eq!(prod.fake.table_requests(), 1);
    let sent = prod.fake.last_table_authorization().unwrap();
    let token = sent.strip_prefix("Bearer ").unwrap();
    assert!(prod.fake.is_access_token_valid(token), "{sent}");
    assert!(!sent.contains("caller-own-token"));
    // The same connection serves the next request.
    let again = http.request("GET", TABLE, &[], b"");
    assert_eq!(again.status, 200);
    assert_eq!(prod.fake.table_requests(), 2);
}

#[test]
fn proxy_streams_a_large_body_both_ways() {
    let prod = proxied();
    let mut http = connect(&proxy_socket(prod.dir.path()));
    let body = vec![b'x'; 8 * 1024 * 1024];
    let answer = http.request(
        "POST",
        "/api/now/attachment/file?table_name=incident&file_name=big.bin",
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(answer.json()["result"]["size_bytes"], "8388608");
    assert_eq!(prod.fake.attachment_requests(), 1);
}

#[test]
fn proxy_refreshes_once_on_a_401_and_retries() {
    // The token need not have been in use for a while first.
    let prod = Prod::with(
        |_| {},
        |config| {
            config.proxy.names = vec!["prod".into()];
            config.refresh.refused_floor = Duration::ZERO;
        },
    );
    let mut http = connect(&proxy_socket(prod.dir.path()));
    assert_eq!(http.request("GET", TABLE, &[], b"").status, 200);
    let issued = prod.fake.tokens_issued();
    prod.fake.revoke_access_tokens();
    let answer = http.request("GET", TABLE, &[], b"");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(prod.fake.tokens_issued(), issued + 1, "one refresh");
    assert_eq!(prod.fake.table_requests(), 3, "one retry");
}

#[test]
fn proxy_answers_429_at_once_while_the_instance_rate_limits() {
    let prod = proxied();
    let mut http = connect(&proxy_socket(prod.dir.path()));
    prod.fake.rate_limit_next_table("30");
    let first = http.request("GET", TABLE, &[], b"");
    assert_eq!(first.status, 429, "{first:?}");
    assert_eq!(prod.fake.table_requests(), 1);
    for _ in 0..3 {
        let held = http.request("GET", TABLE, &[], b"");
        assert_eq!(held.status, 429, "{held:?}");
        assert_eq!(held.json()["error"], "rate_limited");
        let wait: u64 = held.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&wait), "{wait}");
    }
    assert_eq!(
        prod.fake.table_requests(),
        1,
        "held requests never reach the instance"
    );
}

#[test]
fn proxy_refuses_a_caller_outside_the_readers_with_403() {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to call the proxy as another uid");
        return;
    }
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: needs curl");
        return;
    }
    let fake = fake();
    let dir = tempfile::Builder::new()
        .prefix("snctl-proxy-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = test_config(dir.path());
    config.socket_mode = 0o666;
    config.socket_dir_mode = 0o755;
    config.proxy.names = vec!["prod".into()];
    let daemon = TestDaemon::start(config).unwrap();
    let mut request = add_request("prod", &fake.url());
    request.readers = Readers {
        users: vec!["4002".into()],
        ..Readers::default()
    };
    daemon.client().add(request).unwrap();
    let socket = proxy_socket(dir.path());
    let curl_as = |uid: u32| {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&socket)
            .arg(format!("http://sn{TABLE}"))
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = curl_as(4001);
    assert!(refused.ends_with("\n403"), "{refused}");
    assert!(refused.contains(r#""error":"forbidden""#), "{refused}");
    assert!(refused.contains("uid 4001"), "{refused}");
    assert!(
        !refused.contains("users 4002"),
        "a refused caller is not told who the readers are: {refused}"
    );
    assert_eq!(fake.table_requests(), 0);
    let read = curl_as(4002);
    assert!(read.ends_with("\n200"), "{read}");
    assert_eq!(fake.table_requests(), 1);
}

#[test]
fn proxy_audit_line_names_the_request_but_no_query_value_or_token() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("snctld.toml");
    std::fs::write(&config, "[proxy]\nnames = [\"prod\"]\n").unwrap();
    let mut daemon = DaemonProcess::start_with_log_filter(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        "info",
    )
    .unwrap();
    let added = add_by_secret(&daemon.socket, &fake.url(), "prod");
    assert!(added.status.success(), "{added:?}");
    let mut http = connect(&proxy_socket(dir.path()));
    let answer = http.request(
        "GET",
        "/api/now/table/incident?sysparm_query=number%3DSECRETVALUE42&sysparm_limit=1",
        &[],
        b"",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(harness::wait_until(Duration::from_secs(5), || daemon
        .log_text()
        .contains("proxied")));
    daemon.stop();
    let log = daemon.log_text();
    assert_audit_line(
        &log,
        &[
            "name=prod",
            "method=GET",
            "path=/api/now/table/incident",
            "status=200",
            "uid=",
            "duration_ms=",
        ],
    );
    assert!(!log.contains("SECRETVALUE42"), "{log}");
    assert!(!log.contains("sysparm"), "{log}");
    for token in fake.issued_access_tokens() {
        assert!(!log.contains(&token), "token in the log");
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Proxy overhead: the same table GET, through the proxy and straight to
/// the fake with a valid token, each on one keep-alive connection. Printed
/// (`--nocapture`), never asserted.
#[test]
fn proxy_overhead_against_direct_requests() {
    const N: usize = 200;
    let prod = proxied();
    let mut proxy = connect(&proxy_socket(prod.dir.path()));
    let token = prod.client().token("prod").unwrap();
    let bearer = format!("Bearer {}", token.access_token.expose());
    let direct_stream = std::net::TcpStream::connect(("127.0.0.1", prod.fake.port())).unwrap();
    direct_stream.set_nodelay(true).unwrap();
    let mut direct = Http::new(direct_stream);
    // Warm up both: pooled upstream connection, token in memory.
    assert_eq!(proxy.request("GET", TABLE, &[], b"").status, 200);
    assert_eq!(
        direct
            .request("GET", TABLE, &[("Authorization", &bearer)], b"")
            .status,
        200
    );
    let mut through = Vec::with_capacity(N);
    let mut straight = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        assert_eq!(proxy.request("GET", TABLE, &[], b"").status, 200);
        through.push(t.elapsed());
        let t = Instant::now();
        let answer = direct.request("GET", TABLE, &[("Authorization", &bearer)], b"");
        assert_eq!(answer.status, 200);
        straight.push(t.elapsed());
    }
    let (p, d) = (median(through), median(straight));
    println!(
        "proxy overhead, {N} sequential table GETs: median via proxy {:.3} ms, direct {:.3} ms, ratio {:.2}, overhead {:.3} ms",
        p.as_secs_f64() * 1e3,
        d.as_secs_f64() * 1e3,
        p.as_secs_f64() / d.as_secs_f64(),
        (p.as_secs_f64() - d.as_secs_f64()) * 1e3
    );
}

#[test]
fn proxy_with_hold_waits_out_the_rate_limit_then_forwards() {
    let prod = Prod::with(
        |_| {},
        |config| {
            config.proxy.names = vec!["prod".into()];
            config.proxy.on_rate_limit = snctld::config::OnRateLimit::Hold;
        },
    );
    let mut http = connect(&proxy_socket(prod.dir.path()));
    prod.fake.rate_limit_next_table("1");
    let first = http.request("GET", TABLE, &[], b"");
    assert_eq!(first.status, 429, "the instance's own 429: {first:?}");
    assert_eq!(prod.fake.table_requests(), 1);
    let held = http.request("GET", TABLE, &[], b"");
    assert_eq!(held.status, 200, "{held:?}");
    assert_eq!(held.json()["result"][0]["number"], "INC0010001");
    assert_eq!(
        prod.fake.table_requests(),
        2,
        "forwarded once the hold ended"
    );
}

#[test]
fn proxy_with_hold_answers_429_at_once_past_hold_max() {
    let prod = Prod::with(
        |_| {},
        |config| {
            config.proxy.names = vec!["prod".into()];
            config.proxy.on_rate_limit = snctld::config::OnRateLimit::Hold;
            config.proxy.hold_max = Duration::from_secs(1);
        },
    );
    let mut http = connect(&proxy_socket(prod.dir.path()));
    prod.fake.rate_limit_next_table("30");
    assert_eq!(http.request("GET", TABLE, &[], b"").status, 429);
    let held = http.request("GET", TABLE, &[], b"");
    assert_eq!(held.status, 429, "{held:?}");
    assert_eq!(held.json()["error"], "rate_limited");
    assert!(held.header("retry-after").is_some());
    assert_eq!(prod.fake.table_requests(), 1);
}

/// A port on 127.0.0.1 free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Requests on the TCP listener name it as their Host, as curl does.
fn tcp_headers<'a>(host: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![("Host", host)];
    headers.extend_from_slice(more);
    headers
}

fn connect_tcp(port: u16) -> Http<std::net::TcpStream> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    Http::new(stream)
}

const TCP_TABLE: &str = "/prod/api/now/table/incident?sysparm_limit=1";

/// `prod` (no readers) and `team` (read by this uid) proxied, with the TCP
/// listener on `port`.
fn proxied_over_tcp(port: u16) -> Prod {
    let prod = Prod::with(
        |_| {},
        |config| {
            config.proxy.names = vec!["prod".into(), "team".into()];
            config.proxy.tcp_port = Some(port);
        },
    );
    let mut team = add_request("team", &prod.fake.url());
    // SAFETY: geteuid cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    team.readers = Readers {
        users: vec![uid.to_string()],
        ..Readers::default()
    };
    prod.client().add(team).unwrap();
    prod
}

#[test]
fn proxy_over_tcp_forwards_with_the_header_and_no_origin() {
    let port = free_port();
    let prod = proxied_over_tcp(port);
    let mut http = connect_tcp(port);
    let answer = http.request(
        "GET",
        TCP_TABLE,
        &tcp_headers("127.0.0.1", &[("X-Snctl-Proxy", "1")]),
        b"",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["result"][0]["number"], "INC0010001");
    assert_eq!(prod.fake.table_requests(), 1);
    let sent = prod.fake.last_table_authorization().unwrap();
    assert!(prod
        .fake
        .is_access_token_valid(sent.strip_prefix("Bearer ").unwrap()));
}

#[test]
fn proxy_over_tcp_needs_the_header() {
    let port = free_port();
    let prod = proxied_over_tcp(port);
    let answer = connect_tcp(port).request("GET", TCP_TABLE, &tcp_headers("localhost", &[]), b"");
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.json()["message"]
        .as_str()
        .unwrap()
        .contains("X-Snctl-Proxy: 1"));
    assert_eq!(prod.fake.table_requests(), 0);
}

#[test]
fn proxy_over_tcp_refuses_a_request_with_an_origin() {
    let port = free_port();
    let prod = proxied_over_tcp(port);
    let answer = connect_tcp(port).request(
        "GET",
        TCP_TABLE,
        &tcp_headers(
            "127.0.0.1",
            &[("X-Snctl-Proxy", "1"), ("Origin", "https://evil.example")],
        ),
        b"",
    );
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(prod.fake.table_requests(), 0);
}

#[test]
fn proxy_over_tcp_refuses_a_host_other_than_loopback() {
    let port = free_port();
    let prod = proxied_over_tcp(port);
    let answer = connect_tcp(port).request(
        "GET",
        TCP_TABLE,
        &tcp_headers("rebound.example", &[("X-Snctl-Proxy", "1")]),
        b"",
    );
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(prod.fake.table_requests(), 0);
}

#[test]
fn proxy_over_tcp_refuses_an_authentication_with_readers() {
    let port = free_port();
    let prod = proxied_over_tcp(port);
    let answer = connect_tcp(port).request(
        "GET",
        "/team/api/now/table/incident",
        &tcp_headers("127.0.0.1", &[("X-Snctl-Proxy", "1")]),
        b"",
    );
    assert_eq!(answer.status, 403, "{answer:?}");
    let message = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("team has readers"), "{message}");
    assert!(message.contains("Unix socket"), "{message}");
    assert_eq!(prod.fake.table_requests(), 0);
}

#[test]
fn proxy_over_tcp_listens_on_127_0_0_1_only_and_audits_peer_tcp() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("snctld.toml");
    std::fs::write(
        &config,
        format!("[proxy]\nnames = [\"prod\"]\ntcp_port = {port}\n"),
    )
    .unwrap();
    let mut daemon = DaemonProcess::start_with_log_filter(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        "info",
    )
    .unwrap();
    let added = add_by_secret(&daemon.socket, &fake.url(), "prod");
    assert!(added.status.success(), "{added:?}");
    let host = format!("127.0.0.1:{port}");
    let answer = connect_tcp(port).request(
        "GET",
        "/prod/api/now/table/incident?sysparm_query=number%3DSECRETVALUE42",
        &tcp_headers(&host, &[("X-Snctl-Proxy", "1")]),
        b"",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(harness::wait_until(Duration::from_secs(5), || daemon
        .log_text()
        .contains("proxied")));
    daemon.stop();
    let log = daemon.log_text();
    let serving = log
        .lines()
        .find(|l| l.contains("proxy serving on TCP"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        serving.contains(&format!("addr=127.0.0.1:{port}")),
        "{serving}"
    );
    assert_audit_line(
        &log,
        &[
            "name=prod",
            "method=GET",
            "path=/api/now/table/incident",
            "status=200",
            "peer=tcp",
        ],
    );
    let line = log.lines().find(|l| l.contains("proxied")).unwrap();
    assert!(
        !line.contains("path=/prod"),
        "the path as forwarded: {line}"
    );
    assert!(!log.contains("SECRETVALUE42"), "{log}");
}

/// The first `proxied` line of `log` has every one of `parts`.
fn assert_audit_line(log: &str, parts: &[&str]) {
    let line = log
        .lines()
        .find(|l| l.contains("proxied"))
        .expect("an audit line");
    for part in parts {
        assert!(line.contains(part), "{part} missing: {line}");
    }
}

#[test]
fn proxy_serves_an_authentication_whose_tokens_live_seconds() {
    let prod = Prod::with(
        |f| f.set_access_lifetime(3),
        |config| config.proxy.names = vec!["prod".into()],
    );
    let mut http = connect(&proxy_socket(prod.dir.path()));
    for _ in 0..3 {
        let answer = http.request("GET", TABLE, &[], b"");
        assert_eq!(answer.status, 200, "{answer:?}");
        std::thread::sleep(Duration::from_millis(700));
    }
}

/// Reads what the daemon still sends until it ends the connection.
/// Panics when the connection is still open at the stream's read timeout.
fn read_until_closed(stream: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "the daemon kept the connection open ({e}) after sending {} bytes: {:?}",
                got.len(),
                String::from_utf8_lossy(&got[..got.len().min(200)])
            ),
        }
    }
}

/// What a connection whose request the daemon gave up on got: a 408, or
/// nothing when the head itself did not come.
fn assert_timed_out(got: &[u8], head_came: bool) {
    let text = String::from_utf8_lossy(got);
    match head_came {
        true => assert!(got.starts_with(b"HTTP/1.1 408 "), "{text}"),
        false => assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408 "),
            "{text}"
        ),
    }
}

/// `prod` proxied on its Unix socket and on TCP `port`, with short timeouts
/// between a body's bytes (1 s) and few TCP connections (4).
fn proxied_with_short_timeouts(port: u16, request_timeout: Duration) -> Prod {
    Prod::with(
        |_| {},
        |config| {
            config.proxy.names = vec!["prod".into()];
            config.proxy.tcp_port = Some(port);
            config.limits.read_timeout = Duration::from_secs(1);
            config.limits.max_connections = 4;
            config.http.request_timeout = request_timeout;
        },
    )
}

fn raw_tcp(port: u16) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

fn raw_unix(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

const UPLOAD: &str = "api/now/attachment/file?table_name=incident&file_name=x.bin";

#[test]
fn proxy_closes_connections_whose_body_never_comes() {
    let port = free_port();
    let prod = proxied_with_short_timeouts(port, Duration::from_secs(30));
    // Every TCP slot, each with a body announced and never sent (one of
    // them sends a little of it first, one announces a body too large to
    // keep, so that it streams to the instance).
    let head = |length: usize| {
        format!(
            "POST /prod/{UPLOAD} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Snctl-Proxy: 1\r\n\
             Content-Length: {length}\r\n\r\n"
        )
    };
    let mut held: Vec<_> = [1000, 1000, 1000, 8 * 1024 * 1024]
        .into_iter()
        .map(|length| {
            let mut stream = raw_tcp(port);
            stream.write_all(head(length).as_bytes()).unwrap();
            stream
        })
        .collect();
    held[1].write_all(&[b'x'; 10]).unwrap();
    let mut unix = raw_unix(&proxy_socket(prod.dir.path()));
    let unix_head = format!("POST /{UPLOAD} HTTP/1.1\r\nHost: sn\r\nContent-Length: 1000\r\n\r\n");
    unix.write_all(unix_head.as_bytes()).unwrap();

    for stream in &mut held {
        assert_timed_out(&read_until_closed(stream), true);
    }
    assert_timed_out(&read_until_closed(&mut unix), true);
    assert_eq!(prod.fake.attachment_requests(), 0);
    // The slots are free again.
    let answer = connect_tcp(port).request(
        "GET",
        TCP_TABLE,
        &tcp_headers("127.0.0.1", &[("X-Snctl-Proxy", "1")]),
        b"",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn proxy_bounds_the_whole_upload_of_a_trickled_body() {
    let port = free_port();
    let prod = proxied_with_short_timeouts(port, Duration::from_secs(3));
    let mut unix = raw_unix(&proxy_socket(prod.dir.path()));
    let head = format!("POST /{UPLOAD} HTTP/1.1\r\nHost: sn\r\nContent-Length: 1000\r\n\r\n");
    unix.write_all(head.as_bytes()).unwrap();
    // A byte at a time, each well within the gap allowed between bytes.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writer = unix.try_clone().unwrap();
    let trickle = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            while sent < 1000 && !done.load(std::sync::atomic::Ordering::Relaxed) {
                if writer.write_all(b"x").is_err() {
                    break;
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            sent
        })
    };
    let got = read_until_closed(&mut unix);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = trickle.join().unwrap();
    assert_timed_out(&got, true);
    assert!(sent < 1000, "the whole body was read");
    assert_eq!(prod.fake.attachment_requests(), 0);
}

#[test]
fn proxy_bounds_the_time_to_send_a_request_head() {
    let port = free_port();
    let prod = proxied_with_short_timeouts(port, Duration::from_secs(30));
    let mut tcp = raw_tcp(port);
    tcp.write_all(b"GET /prod/api/now/table/incident HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let mut unix = raw_unix(&proxy_socket(prod.dir.path()));
    unix.write_all(b"GET /api/now/table/incident HTTP/1.1\r\n")
        .unwrap();
    assert_timed_out(&read_until_closed(&mut tcp), false);
    assert_timed_out(&read_until_closed(&mut unix), false);
    assert_eq!(prod.fake.table_requests(), 0);
}

/// Sends a download request on `stream`, reads its head, stops reading for
/// a while, then reads what is left: how many bytes of the body came.
fn stall_download(stream: &mut (impl Read + Write), head: &str) -> usize {
    stream.write_all(head.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // A caller that stops reading, well past the 1 s allowed for a write.
    std::thread::sleep(Duration::from_secs(4));
    got.extend(read_until_closed(stream));
    let head_len = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    got.len() - head_len
}

#[test]
fn proxy_drops_a_caller_that_stops_reading_its_response() {
    let port = free_port();
    // The exchange may last long; the caller's stall is what must end it.
    let prod = proxied_with_short_timeouts(port, Duration::from_secs(120));
    let download = "/api/now/attachment/0123abcd/file";
    let body = stall_download(
        &mut raw_unix(&proxy_socket(prod.dir.path())),
        &format!("GET {download} HTTP/1.1\r\nHost: sn\r\n\r\n"),
    );
    assert!(body < DOWNLOAD_BYTES, "the caller got it all: {body}");
    let body = stall_download(
        &mut raw_tcp(port),
        &format!("GET /prod{download} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Snctl-Proxy: 1\r\n\r\n"),
    );
    assert!(body < DOWNLOAD_BYTES, "the caller got it all: {body}");
    // A caller that reads gets it whole.
    let answer = connect(&proxy_socket(prod.dir.path())).request("GET", download, &[], b"");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), DOWNLOAD_BYTES);
}

const FORM: &[u8] = b"grant_type=client_credentials";

/// 30 requests, on TCP and on the Unix socket, that the instance answers
/// 401 whatever the token: how many refreshes they caused.
fn refreshes_for_401s(prod: &Prod, port: u16) -> u64 {
    let issued = prod.fake.tokens_issued();
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let mut tcp = connect_tcp(port);
    let mut unix = connect(&proxy_socket(prod.dir.path()));
    for _ in 0..15 {
        let answer = tcp.request(
            "POST",
            "/prod/oauth_token.do",
            &tcp_headers("127.0.0.1", &[("X-Snctl-Proxy", "1"), form]),
            FORM,
        );
        assert_eq!(answer.status, 401, "{answer:?}");
        let answer = unix.request("POST", "/oauth_token.do", &[form], FORM);
        assert_eq!(answer.status, 401, "{answer:?}");
    }
    // The proxy still serves.
    let answer = tcp.request(
        "GET",
        TCP_TABLE,
        &tcp_headers("127.0.0.1", &[("X-Snctl-Proxy", "1")]),
        b"",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    prod.fake.tokens_issued() - issued
}

#[test]
fn proxy_401s_a_refresh_cannot_cure_cause_at_most_one_refresh() {
    // A token just obtained is not refreshed for a 401.
    let port = free_port();
    let prod = proxied_over_tcp(port);
    assert_eq!(refreshes_for_401s(&prod, port), 0);
    // Nor is one refreshed more than once a minute for them.
    let port = free_port();
    let prod = Prod::with(
        |_| {},
        |config| {
            config.proxy.names = vec!["prod".into()];
            config.proxy.tcp_port = Some(port);
            config.refresh.refused_floor = Duration::ZERO;
        },
    );
    assert_eq!(refreshes_for_401s(&prod, port), 1);
}

#[test]
fn proxy_passes_no_session_cookie_from_the_instance() {
    let port = free_port();
    let prod = proxied_over_tcp(port);
    let answer = connect(&proxy_socket(prod.dir.path())).request("GET", TABLE, &[], b"");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("set-cookie"), None, "{answer:?}");
    let answer = connect_tcp(port).request(
        "GET",
        TCP_TABLE,
        &tcp_headers("127.0.0.1", &[("X-Snctl-Proxy", "1")]),
        b"",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("set-cookie"), None, "{answer:?}");
    assert_eq!(prod.fake.table_requests(), 2);
}

#[test]
fn proxy_refuses_request_targets_that_are_not_paths() {
    let port = free_port();
    let prod = proxied_over_tcp(port);
    let before = prod.fake.requests();
    let mut unix = connect(&proxy_socket(prod.dir.path()));
    for (method, target) in [
        ("OPTIONS", "*"),
        ("GET", "http://evil.example/api/now/table/incident"),
    ] {
        let answer = unix.request(method, target, &[], b"");
        assert_eq!(answer.status, 400, "{method} {target}: {answer:?}");
        assert_eq!(answer.json()["error"], "bad_request");
    }
    let absolute = format!("http://127.0.0.1:{port}{TCP_TABLE}");
    for (method, target) in [("OPTIONS", "*"), ("GET", absolute.as_str())] {
        let answer = connect_tcp(port).request(
            method,
            target,
            &tcp_headers("127.0.0.1", &[("X-Snctl-Proxy", "1")]),
            b"",
        );
        assert_eq!(answer.status, 400, "{method} {target}: {answer:?}");
    }
    assert_eq!(prod.fake.requests(), before, "nothing reached the instance");
}

/// `snctl` against `prod`'s daemon, asserting it exits 0; its stdout.
fn snctl_ok(prod: &Prod, args: &[&str]) -> String {
    let out = harness::snctl(prod.daemon.socket(), args, None);
    assert!(
        out.status.success(),
        "snctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn shown(prod: &Prod) -> serde_json::Value {
    serde_json::from_str(&snctl_ok(prod, &["show", "prod", "--json"])).unwrap()
}

#[test]
fn proxy_turned_on_and_off_by_update_at_once() {
    let prod = Prod::start();
    let socket = proxy_socket(prod.dir.path());
    assert!(!socket.exists());
    assert_eq!(shown(&prod)["proxy"], false);
    assert!(snctl_ok(&prod, &["show", "prod"]).contains("proxy:         off"));

    let out = snctl_ok(&prod, &["update", "prod", "--proxy", "on"]);
    let path = socket.display().to_string();
    assert!(out.contains(&format!("proxy: {path}")), "{out}");
    // Served as soon as the update is answered: no restart.
    let answer = connect(&socket).request("GET", TABLE, &[], b"");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["result"][0]["number"], "INC0010001");
    let json = shown(&prod);
    assert_eq!(json["proxy"], true);
    assert_eq!(json["proxy_socket"]["path"], path.as_str());
    assert_eq!(json["proxy_socket"]["error"], serde_json::Value::Null);
    let text = snctl_ok(&prod, &["show", "prod"]);
    assert!(text.contains(&format!("proxy:         {path}\n")), "{text}");

    let out = snctl_ok(&prod, &["update", "prod", "--proxy", "off"]);
    assert!(out.contains("proxy: off"), "{out}");
    assert!(
        !socket.exists(),
        "the socket file is gone when off is answered"
    );
    assert!(UnixStream::connect(&socket).is_err());
    assert_eq!(shown(&prod)["proxy_socket"], serde_json::Value::Null);
    // On again: the same path serves again.
    snctl_ok(&prod, &["update", "prod", "--proxy", "on"]);
    assert_eq!(connect(&socket).request("GET", TABLE, &[], b"").status, 200);
}

#[test]
fn proxy_of_add_proxy_is_stored_serves_after_a_restart_and_goes_with_remove() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let daemon = TestDaemon::start(config.clone()).unwrap();
    let mut args = vec!["add", "prod", "--instance"];
    let url = fake.url();
    args.extend([url.as_str(), "--client-id", harness::CLIENT_ID]);
    args.extend(["--client-secret-stdin", "--proxy"]);
    let stdin = format!("{}\n", harness::CLIENT_SECRET);
    let out = harness::snctl(daemon.socket(), &args, Some(&stdin));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let socket = proxy_socket(dir.path());
    assert!(
        stdout.contains(&format!("proxy: {}", socket.display())),
        "{stdout}"
    );
    assert_eq!(connect(&socket).request("GET", TABLE, &[], b"").status, 200);

    daemon.stop().unwrap();
    assert!(!socket.exists(), "closed with the daemon");
    let daemon = TestDaemon::start(config).unwrap();
    // Answered once the daemon serves (the proxies are bound before it
    // does): the setting came back from the database.
    let out = harness::snctl(daemon.socket(), &["show", "prod", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["proxy"], true);
    assert_eq!(json["proxy_socket"]["path"], socket.display().to_string());
    assert_eq!(connect(&socket).request("GET", TABLE, &[], b"").status, 200);

    let out = harness::snctl(
        daemon.socket(),
        &["remove", "prod", "--keep-upstream"],
        None,
    );
    assert!(out.status.success());
    assert!(
        !socket.exists(),
        "a removed authentication's proxy is closed"
    );
}

#[test]
fn proxy_socket_that_cannot_be_bound_is_reported_and_the_start_goes_on() {
    let prod = Prod::with(
        |_| {},
        |config| {
            // A file where the proxy directory should be.
            let dir = config.socket.parent().unwrap().join("not-a-dir");
            std::fs::write(&dir, b"").unwrap();
            config.proxy.dir = Some(dir);
        },
    );
    let out = harness::snctl(
        prod.daemon.socket(),
        &["update", "prod", "--proxy", "on"],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("prod's proxy is on but its socket")
            && stderr.contains("--proxy off")
            && stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );
    let json = shown(&prod);
    assert_eq!(json["proxy"], true, "the setting is saved");
    assert!(json["proxy_socket"]["error"].is_string(), "{json}");
    // A restart with the setting on still serves the main socket.
    let config = prod.daemon.config.clone();
    let Prod { daemon, fake, dir } = prod;
    daemon.stop().unwrap();
    let daemon = TestDaemon::start(config).expect("starts although the proxy cannot be bound");
    assert!(daemon.client().token("prod").is_ok());
    let out = harness::snctl(daemon.socket(), &["update", "prod", "--proxy", "off"], None);
    assert!(out.status.success());
    drop((fake, dir));
}

#[test]
fn proxy_names_in_the_configuration_apply_on_sighup() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("snctld.toml");
    std::fs::write(&config_file, "").unwrap();
    let config_arg = config_file.display().to_string();
    let mut daemon = DaemonProcess::start(dir.path(), &["--config", &config_arg]).unwrap();
    assert!(crate::add_by_secret(&daemon.socket, &fake.url(), "prod")
        .status
        .success());
    let socket = dir.path().join("proxy").join("prod.sock");
    assert!(!socket.exists());

    std::fs::write(&config_file, "[proxy]\nnames = [\"prod\"]\n").unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(harness::wait_until(Duration::from_secs(20), || socket.exists()));
    assert_eq!(connect(&socket).request("GET", TABLE, &[], b"").status, 200);
    let out = harness::snctl(&daemon.socket, &["show", "prod"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(named in snctld.toml's [proxy])"), "{text}");

    std::fs::write(&config_file, "").unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(harness::wait_until(Duration::from_secs(20), || !socket.exists()));
    assert!(daemon.stop());
}

#[test]
fn proxy_answers_a_caller_that_half_closes_after_its_request() {
    // socat, `nc -N` and some scripts shut their write side once the
    // request is sent, then read the answer.
    let prod = proxied();
    let mut stream = UnixStream::connect(proxy_socket(prod.dir.path())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = format!("GET {TABLE} HTTP/1.1\r\nHost: sn\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("INC0010001"), "{answer}");
}

/// `desk`, a person's login by the password grant, proxied; requests that
/// get a 401 may refresh at once.
fn proxied_login() -> Prod {
    use snctl::protocol::{Grant, UserLogin};
    let fake = fake();
    fake.add_user("abel.tuter", "proxy-password");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.proxy.names = vec!["desk".into()];
    config.refresh.refused_floor = Duration::ZERO;
    let daemon = TestDaemon::start(config).unwrap();
    let mut request = add_request("desk", &fake.url());
    request.grant = Grant::Password;
    request.user = Some(UserLogin {
        username: "abel.tuter".into(),
        password: snctl::Secret::new("proxy-password".into()),
    });
    daemon.client().add(request).unwrap();
    Prod { daemon, dir, fake }
}

fn assert_needs_login(answer: &Answer) {
    assert_eq!(answer.status, 503, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["error"], "needs_login", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("snctl login desk"), "{message}");
}

#[test]
fn proxy_answers_503_needs_login_not_the_instances_401() {
    let desk = proxied_login();
    let socket = desk.dir.path().join("proxy").join("desk.sock");
    let mut http = connect(&socket);
    assert_eq!(http.request("GET", TABLE, &[], b"").status, 200);

    // An admin deletes the user's tokens in ServiceNow: the proxy learns it
    // from the instance's 401 and a refused refresh, and says so.
    desk.fake.revoke_refresh_tokens();
    desk.fake.revoke_access_tokens();
    assert_needs_login(&http.request("GET", TABLE, &[], b""));

    // From then on nothing reaches the instance until `snctl login`.
    let forwarded = desk.fake.table_requests();
    assert_needs_login(&http.request("GET", TABLE, &[], b""));
    assert_eq!(desk.fake.table_requests(), forwarded);
}

#[test]
fn proxy_on_an_authentication_needing_a_login_does_not_forward() {
    let desk = proxied_login();
    let socket = desk.dir.path().join("proxy").join("desk.sock");
    // The refresh token dies; the access token in hand is still valid.
    desk.fake.revoke_refresh_tokens();
    let err = desk.daemon.client().refresh("desk").unwrap_err();
    assert_eq!(err.kind().exit_code(), 5, "{err}");
    let answer = connect(&socket).request("GET", TABLE, &[], b"");
    assert_needs_login(&answer);
    assert_eq!(desk.fake.table_requests(), 0);
}
