//! `snctl metrics` and `/metrics`: the text passes a real OpenMetrics
//! parser (Python's prometheus_client), carries what `snctl show --json`
//! says, counts tokens handed out and failed refreshes, is the same over
//! TCP and a Unix socket, and never holds a secret. The file `--output`
//! writes passes `promtool check metrics` and the shipped alert rules
//! `promtool check rules`, where promtool is installed.
//!
//! Without prometheus_client (or promtool) a test says so and passes,
//! unless `SNCTL_TEST_REQUIRE_CLIENTS` is set (CI sets it, after
//! installing prometheus_client into the venv `SNCTL_TEST_PYTHON` names).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use snctl_tests::fake::{FakeInstance, Fault};
use snctl_tests::harness::{fake, free_port, snctl, test_config, TestDaemon, CLIENT_SECRET};
use snctld::config::MetricsListen;

use crate::{add_by_password, add_request};

const USER: &str = "abel.tuter";
const PASSWORD: &str = "password-canary-M3t";

/// Reads OpenMetrics text on stdin with prometheus_client's parser and
/// prints every family as JSON: name → {type, samples: [[name, labels,
/// value]]}. A text the parser refuses makes it exit non-zero.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    families[f.name] = {"type": f.type,
                        "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(families))
"#;

fn python() -> PathBuf {
    snctl_tests::harness::python()
}

fn required() -> bool {
    std::env::var_os("SNCTL_TEST_REQUIRE_CLIENTS").is_some()
}

/// Whether `program args` runs; else the skip (or, when CI requires the
/// tools, the failure) with `why`.
fn available(program: &Path, args: &[&str], why: &str) -> bool {
    let ran = Command::new(program).args(args).output();
    if ran.as_ref().is_ok_and(|out| out.status.success()) {
        return true;
    }
    assert!(
        !required(),
        "{why}: {} {args:?} failed; .ci/run installs it",
        program.display()
    );
    eprintln!("skipped: {why}: {} {args:?} failed", program.display());
    false
}

fn has_parser(test: &str) -> bool {
    available(
        &python(),
        &["-c", "import prometheus_client.openmetrics.parser"],
        &format!("{test} needs Python's prometheus_client"),
    )
}

/// The families of `text`, as prometheus_client's OpenMetrics parser reads
/// them; panics when it refuses the text.
fn parse(text: &str) -> BTreeMap<String, Value> {
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

/// The value of `sample` in `family` whose labels include `labels`.
fn value(
    families: &BTreeMap<String, Value>,
    family: &str,
    sample: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let samples = families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}"));
    samples
        .iter()
        .find(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v)))
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no {sample}{labels:?} in {family}: {samples:?}"))
}

/// Each family's name and type.
fn shape(families: &BTreeMap<String, Value>) -> Vec<(String, String)> {
    families
        .iter()
        .map(|(name, f)| (name.clone(), f["type"].as_str().unwrap().to_string()))
        .collect()
}

fn run_ok(socket: &Path, args: &[&str]) -> String {
    let out = snctl(socket, args, None);
    assert!(out.status.success(), "snctl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `GET path` over `stream` with these extra headers; the status code and
/// the body.
fn get(mut stream: impl Read + Write, path: &str, headers: &str) -> (u16, String) {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status.expect("a status line"), body.to_string())
}

fn get_tcp(port: u16, path: &str, headers: &str) -> (u16, String) {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    get(stream, path, headers)
}

/// A fake instance and a daemon serving `/metrics` on `listen`, with
/// `prod` (client credentials) and `desk` (a person's password login).
fn world(
    listen: impl FnOnce(&Path) -> MetricsListen,
) -> (FakeInstance, tempfile::TempDir, TestDaemon) {
    let fake = fake();
    fake.add_user(USER, PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics.listen = Some(listen(dir.path()));
    let daemon = TestDaemon::start(config).unwrap();
    daemon
        .client()
        .add(add_request("prod", &fake.url()))
        .unwrap();
    let out = add_by_password(
        daemon.socket(),
        &fake.url(),
        "desk",
        Some(USER),
        PASSWORD,
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    (fake, dir, daemon)
}

#[test]
fn metrics_parse_carry_what_show_says_and_count_tokens_and_failures() {
    if !has_parser("metrics_parse_carry_what_show_says_and_count_tokens_and_failures") {
        return;
    }
    let port = free_port();
    let (fake, _dir, daemon) = world(|_| MetricsListen::Tcp(([127, 0, 0, 1], port).into()));
    let socket = daemon.socket();
    for _ in 0..3 {
        run_ok(socket, &["token", "prod"]);
    }
    // Every refresh fails from now on, so the state stays `failing`.
    fake.set_standing_fault(Some(Fault::Status {
        code: 503,
        body: "busy".into(),
        content_type: "text/plain",
        retry_after: None,
    }));
    let out = snctl(socket, &["refresh", "prod"], None);
    assert_eq!(out.status.code(), Some(7), "{out:?}");

    let text = run_ok(socket, &["metrics"]);
    assert!(text.ends_with("# EOF\n"), "{text}");
    let families = parse(&text);
    for family in [
        "snctl_build_info",
        "snctl_uptime_seconds",
        "snctl_connections_open",
        "snctl_connections",
        "snctl_auth_state",
        "snctl_auth_access_expiry_timestamp_seconds",
        "snctl_auth_login_deadline_timestamp_seconds",
        "snctl_auth_last_refresh_timestamp_seconds",
        "snctl_auth_refresh_attempts",
        "snctl_auth_refresh_failures",
        "snctl_auth_tokens_handed_out",
        "snctl_auth_proxied_requests",
        "snctl_auth_token_request_duration_seconds",
    ] {
        assert!(families.contains_key(family), "no {family} in\n{text}");
    }
    let build = &families["snctl_build_info"]["samples"][0][1];
    assert_eq!(build["version"], snctld::VERSION);
    assert_eq!(
        build["protocol"],
        snctl::protocol::PROTOCOL_VERSION.to_string()
    );
    assert!(
        value(
            &families,
            "snctl_connections",
            "snctl_connections_total",
            &[]
        ) >= 6.0
    );

    // The times are those `snctl show --json` gives.
    let show = |name: &str| -> Value {
        serde_json::from_str(&run_ok(socket, &["show", name, "--json"])).unwrap()
    };
    let (prod, desk) = (show("prod"), show("desk"));
    assert_eq!(prod["state"], "failing");
    let of = |family: &str, name: &str| value(&families, family, family, &[("name", name)]);
    for (name, shown) in [("prod", &prod), ("desk", &desk)] {
        assert_eq!(
            of("snctl_auth_access_expiry_timestamp_seconds", name),
            shown["access_expires_at"].as_f64().unwrap(),
            "{name}"
        );
        assert_eq!(
            of("snctl_auth_last_refresh_timestamp_seconds", name),
            shown["last_refresh_at"].as_f64().unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        of("snctl_auth_login_deadline_timestamp_seconds", "desk"),
        desk["login"]["refresh_expires_at"].as_f64().unwrap()
    );
    // Client credentials have no login deadline.
    assert!(
        families["snctl_auth_login_deadline_timestamp_seconds"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s[1]["name"] == "desk")
    );
    let state = |name: &str, state: &str| {
        value(
            &families,
            "snctl_auth_state",
            "snctl_auth_state",
            &[("name", name), ("state", state)],
        )
    };
    assert_eq!(state("prod", "failing"), 1.0);
    assert_eq!(state("prod", "ok"), 0.0);
    assert_eq!(state("desk", "ok"), 1.0);

    // The counts.
    let counter = |family: &str, labels: &[(&str, &str)]| {
        value(&families, family, &format!("{family}_total"), labels)
    };
    assert_eq!(
        counter("snctl_auth_tokens_handed_out", &[("name", "prod")]),
        3.0
    );
    assert_eq!(
        counter("snctl_auth_tokens_handed_out", &[("name", "desk")]),
        0.0
    );
    let failed = counter(
        "snctl_auth_refresh_failures",
        &[("name", "prod"), ("kind", "server-error")],
    );
    assert!(failed >= 1.0, "{text}");
    assert_eq!(
        counter(
            "snctl_auth_refresh_failures",
            &[("name", "prod"), ("kind", "access-denied")]
        ),
        0.0
    );
    let attempts = counter("snctl_auth_refresh_attempts", &[("name", "prod")]);
    assert!(attempts >= failed, "{text}");
    let histogram = "snctl_auth_token_request_duration_seconds";
    let timed = value(
        &families,
        histogram,
        &format!("{histogram}_count"),
        &[("name", "prod")],
    );
    assert_eq!(timed, attempts, "{text}");

    // Later asks count on.
    fake.set_standing_fault(None);
    run_ok(socket, &["refresh", "prod"]);
    run_ok(socket, &["token", "prod"]);
    let again = parse(&run_ok(socket, &["metrics"]));
    let count = |families: &BTreeMap<String, Value>, family: &str| {
        value(
            families,
            family,
            &format!("{family}_total"),
            &[("name", "prod")],
        )
    };
    assert_eq!(count(&again, "snctl_auth_tokens_handed_out"), 4.0);
    assert!(count(&again, "snctl_auth_refresh_attempts") > attempts);
    assert_eq!(
        value(
            &again,
            "snctl_auth_state",
            "snctl_auth_state",
            &[("name", "prod"), ("state", "ok")]
        ),
        1.0
    );

    // /metrics on TCP: the same families.
    let (status, served) = get_tcp(port, "/metrics", "Host: 127.0.0.1\r\n");
    assert_eq!(status, 200, "{served}");
    assert_eq!(shape(&parse(&served)), shape(&families));
    // Not for a browser page, nor for anything but /metrics.
    let (status, _) = get_tcp(port, "/metrics", "Host: evil.example\r\n");
    assert_eq!(status, 403);
    let (status, _) = get_tcp(
        port,
        "/metrics",
        "Host: 127.0.0.1\r\nOrigin: http://evil.example\r\n",
    );
    assert_eq!(status, 403);
    let (status, _) = get_tcp(port, "/", "Host: 127.0.0.1\r\n");
    assert_eq!(status, 404);

    // Never a secret.
    let mut secrets = fake.issued_access_tokens();
    assert!(!secrets.is_empty());
    secrets.extend([CLIENT_SECRET.to_string(), PASSWORD.to_string()]);
    for secret in &secrets {
        for text in [&text, &served] {
            assert!(!text.contains(secret.as_str()), "a secret in\n{text}");
        }
    }
}

#[test]
fn metrics_on_a_unix_socket_have_the_families_of_tcp() {
    if !has_parser("metrics_on_a_unix_socket_have_the_families_of_tcp") {
        return;
    }
    let port = free_port();
    let (_fake, _dir, tcp) = world(|_| MetricsListen::Tcp(([127, 0, 0, 1], port).into()));
    let (_fake2, dir, unix) = world(|dir| MetricsListen::Unix(dir.join("metrics.sock")));
    for daemon in [&tcp, &unix] {
        run_ok(daemon.socket(), &["token", "prod"]);
    }
    // Requests through prod's proxy are counted by status class (and the
    // token the proxy puts on one, as handed out).
    let printed = run_ok(unix.socket(), &["update", "prod", "--proxy", "on"]);
    let proxy = dir.path().join("proxy/prod.sock");
    assert!(printed.contains(&proxy.display().to_string()), "{printed}");
    let table = "/api/now/table/incident?sysparm_limit=1";
    let stream = std::os::unix::net::UnixStream::connect(&proxy).unwrap();
    let (status, body) = get(stream, table, "Host: localhost\r\n");
    assert_eq!(status, 200, "{body}");
    let stream = std::os::unix::net::UnixStream::connect(&proxy).unwrap();
    let (status, _) = get(stream, "http://elsewhere/", "Host: localhost\r\n");
    assert_eq!(status, 400);
    let (status, over_tcp) = get_tcp(port, "/metrics", "Host: 127.0.0.1\r\n");
    assert_eq!(status, 200, "{over_tcp}");
    let path = dir.path().join("metrics.sock");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the main socket's mode");
    let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let (status, over_unix) = get(stream, "/metrics", "Host: localhost\r\n");
    assert_eq!(status, 200, "{over_unix}");
    let (over_tcp, over_unix) = (parse(&over_tcp), parse(&over_unix));
    assert_eq!(shape(&over_unix), shape(&over_tcp));
    let counted = |families: &BTreeMap<String, Value>, family: &str, labels: &[(&str, &str)]| {
        value(families, family, &format!("{family}_total"), labels)
    };
    let handed = |families| {
        counted(
            families,
            "snctl_auth_tokens_handed_out",
            &[("name", "prod")],
        )
    };
    assert_eq!(handed(&over_tcp), 1.0);
    assert_eq!(handed(&over_unix), 2.0);
    let proxied = |class| {
        counted(
            &over_unix,
            "snctl_auth_proxied_requests",
            &[("name", "prod"), ("code", class)],
        )
    };
    assert_eq!(
        [proxied("2xx"), proxied("4xx"), proxied("5xx")],
        [1.0, 1.0, 0.0]
    );
}

/// promtool, when it is installed; else the skip (or the failure in CI).
fn promtool(test: &str) -> Option<PathBuf> {
    let found = Command::new("promtool").arg("--version").output();
    if found.is_ok_and(|out| out.status.success()) {
        return Some("promtool".into());
    }
    // promtool comes with Debian's prometheus package, which CI does not
    // install: it is optional there too.
    eprintln!("skipped: {test} needs promtool (apt-get install prometheus)");
    None
}

#[test]
fn the_textfile_is_written_whole_and_passes_promtool() {
    let (_fake, dir, daemon) = world(|_| MetricsListen::Tcp(([127, 0, 0, 1], free_port()).into()));
    run_ok(daemon.socket(), &["token", "prod"]);
    let textfiles = dir.path().join("node-exporter");
    std::fs::create_dir(&textfiles).unwrap();
    let file = textfiles.join("snctl.prom");
    for _ in 0..2 {
        let printed = run_ok(
            daemon.socket(),
            &["metrics", "--output", file.to_str().unwrap()],
        );
        assert_eq!(printed, "");
    }
    // Only the file: no temporary one left beside it.
    let names: Vec<_> = std::fs::read_dir(&textfiles)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["snctl.prom"]);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter's user reads it");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("# TYPE snctl_auth_tokens_handed_out_total counter\n"));
    assert!(text.contains("snctl_auth_tokens_handed_out_total{name=\"prod\"} 1\n"));
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );

    let Some(promtool) = promtool("the_textfile_is_written_whole_and_passes_promtool") else {
        return;
    };
    let checked = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn the_shipped_alert_rules_pass_promtool() {
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus/snctl-alerts.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    for alert in [
        "SnctlLoginDeadlineNear",
        "SnctlRefreshesFailing",
        "SnctlMetricsAbsent",
    ] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert}");
    }
    let Some(promtool) = promtool("the_shipped_alert_rules_pass_promtool") else {
        return;
    };
    let checked = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
