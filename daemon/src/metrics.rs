//! The daemon's counters and their OpenMetrics text, for `snctl metrics`
//! and the `/metrics` listener ([`crate::exporter`]).
//!
//! Counting is on hot paths (a token handed out, a proxied request), so
//! the counters are relaxed atomics: no lock, no allocation. Everything
//! else the text carries (states, expiry times) is read from the token
//! cache when the text is made, which happens once per scrape.
//!
//! Never a secret: authentication names, states, times and counts only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use snctl_shared::protocol::{AuthState, UpstreamKind};

/// Why a refresh failed, as counted: the instance's answer
/// ([`UpstreamKind`]), or the database that could not keep the new tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Upstream(UpstreamKind),
    Database,
}

/// The `kind` label of each [`FailureKind`], in counter order.
const FAILURE_KINDS: [&str; 10] = [
    "access-denied",
    "rate-limited",
    "server-error",
    "http-status",
    "not-json",
    "bad-response",
    "timeout",
    "connection",
    "tls",
    "database",
];

impl FailureKind {
    fn index(self) -> usize {
        match self {
            FailureKind::Upstream(kind) => match kind {
                UpstreamKind::AccessDenied => 0,
                UpstreamKind::RateLimited => 1,
                UpstreamKind::ServerError => 2,
                UpstreamKind::HttpStatus => 3,
                UpstreamKind::NotJson => 4,
                UpstreamKind::BadResponse => 5,
                UpstreamKind::Timeout => 6,
                UpstreamKind::Connection => 7,
                UpstreamKind::Tls => 8,
            },
            FailureKind::Database => 9,
        }
    }
}

/// Upper bounds (seconds) of the token-request latency buckets: a loopback
/// answer lands in the first, an instance waking from hibernation or a
/// request timing out in the last ones.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram: a count per bucket (not cumulative; the text sums
/// them) and the sum in microseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound of [`LATENCY_BUCKETS`], then `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// What is counted for one authentication, from when the daemon started
/// (or the authentication was added).
#[derive(Debug, Default)]
pub struct AuthCounters {
    handed_out: AtomicU64,
    refresh_attempts: AtomicU64,
    refresh_failures: [AtomicU64; FAILURE_KINDS.len()],
    /// By status class: 1xx … 5xx.
    proxied: [AtomicU64; 5],
    token_requests: Histogram,
}

impl AuthCounters {
    /// An access token was handed out (to a caller or the proxy).
    pub fn handed_out(&self) {
        self.handed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// A refresh asked the instance, and took `took` to be answered.
    pub fn refresh_attempted(&self, took: Duration) {
        self.refresh_attempts.fetch_add(1, Ordering::Relaxed);
        self.token_requests.observe(took);
    }

    pub fn refresh_failed(&self, kind: FailureKind) {
        self.refresh_failures[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The proxy answered a request with `status`.
    pub fn proxied(&self, status: u16) {
        if let Some(class) = (status / 100).checked_sub(1).map(usize::from) {
            if let Some(counter) = self.proxied.get(class) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One authentication as the text shows it.
pub struct AuthSample<'a> {
    pub name: &'a str,
    pub state: AuthState,
    /// Unix seconds.
    pub access_expires_at: Option<i64>,
    /// When a person must log in again (Unix seconds).
    pub login_deadline: Option<i64>,
    /// Unix seconds.
    pub last_refresh_at: Option<i64>,
    pub counters: &'a AuthCounters,
}

/// The daemon itself as the text shows it.
pub struct DaemonSample<'a> {
    pub version: &'a str,
    pub protocol: u32,
    pub uptime: Duration,
    pub connections_open: u64,
    pub connections_total: u64,
}

/// The OpenMetrics text of `daemon` and `auths` (in the order given),
/// ending with `# EOF`.
pub fn render(daemon: &DaemonSample<'_>, auths: &[AuthSample<'_>]) -> String {
    let mut out = Text(String::with_capacity(1024 + auths.len() * 2048));
    out.family(
        "snctl_build_info",
        "gauge",
        None,
        "Version of snctld and of its socket protocol.",
    );
    out.sample(
        "snctl_build_info",
        &[
            ("version", daemon.version),
            ("protocol", &daemon.protocol.to_string()),
        ],
        1,
    );
    out.family(
        "snctl_uptime_seconds",
        "gauge",
        Some("seconds"),
        "Seconds since snctld started.",
    );
    out.sample_f64("snctl_uptime_seconds", &[], daemon.uptime.as_secs_f64());
    out.family(
        "snctl_connections_open",
        "gauge",
        None,
        "Connections to the main socket open now.",
    );
    out.sample("snctl_connections_open", &[], daemon.connections_open);
    out.family(
        "snctl_connections",
        "counter",
        None,
        "Connections accepted on the main socket.",
    );
    out.sample("snctl_connections_total", &[], daemon.connections_total);

    out.family(
        "snctl_auth_state",
        "gauge",
        None,
        "1 for the state each authentication is in (ok, failing, rejected, needs-login), 0 for the others.",
    );
    for auth in auths {
        for state in AuthState::ALL {
            out.sample(
                "snctl_auth_state",
                &[("name", auth.name), ("state", state.as_str())],
                u64::from(auth.state == state),
            );
        }
    }
    type Time = fn(&AuthSample<'_>) -> Option<i64>;
    let times: [(&str, &str, Time); 3] = [
        (
            "snctl_auth_access_expiry_timestamp_seconds",
            "When the access token in hand expires (Unix time).",
            |a| a.access_expires_at,
        ),
        (
            "snctl_auth_login_deadline_timestamp_seconds",
            "When the refresh token of a person's login dies and a new login is needed (Unix time).",
            |a| a.login_deadline,
        ),
        (
            "snctl_auth_last_refresh_timestamp_seconds",
            "When the last token was obtained (Unix time).",
            |a| a.last_refresh_at,
        ),
    ];
    for (name, help, value) in times {
        out.family(name, "gauge", Some("seconds"), help);
        for auth in auths {
            if let Some(at) = value(auth) {
                out.sample_i64(name, &[("name", auth.name)], at);
            }
        }
    }
    out.family(
        "snctl_auth_refresh_attempts",
        "counter",
        None,
        "Refreshes that asked the instance's token endpoint.",
    );
    for auth in auths {
        out.sample(
            "snctl_auth_refresh_attempts_total",
            &[("name", auth.name)],
            load(&auth.counters.refresh_attempts),
        );
    }
    out.family(
        "snctl_auth_refresh_failures",
        "counter",
        None,
        "Refreshes that failed, by kind (access-denied, rate-limited, server-error, http-status, not-json, bad-response, timeout, connection, tls, database).",
    );
    for auth in auths {
        for (kind, counter) in FAILURE_KINDS.iter().zip(&auth.counters.refresh_failures) {
            out.sample(
                "snctl_auth_refresh_failures_total",
                &[("name", auth.name), ("kind", kind)],
                load(counter),
            );
        }
    }
    out.family(
        "snctl_auth_tokens_handed_out",
        "counter",
        None,
        "Access tokens handed out, to callers on the socket and to the proxy.",
    );
    for auth in auths {
        out.sample(
            "snctl_auth_tokens_handed_out_total",
            &[("name", auth.name)],
            load(&auth.counters.handed_out),
        );
    }
    out.family(
        "snctl_auth_proxied_requests",
        "counter",
        None,
        "Requests the proxy answered, by status class.",
    );
    const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    for auth in auths {
        for (class, counter) in CLASSES.iter().zip(&auth.counters.proxied) {
            out.sample(
                "snctl_auth_proxied_requests_total",
                &[("name", auth.name), ("code", class)],
                load(counter),
            );
        }
    }
    let histogram = "snctl_auth_token_request_duration_seconds";
    out.family(
        histogram,
        "histogram",
        Some("seconds"),
        "How long the instance's token endpoint took to answer a refresh.",
    );
    for auth in auths {
        let h = &auth.counters.token_requests;
        let mut cumulative = 0;
        let bucket = format!("{histogram}_bucket");
        for (i, counter) in h.buckets.iter().enumerate() {
            cumulative += load(counter);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format!("{b:?}"));
            out.sample(&bucket, &[("name", auth.name), ("le", &le)], cumulative);
        }
        out.sample(
            &format!("{histogram}_count"),
            &[("name", auth.name)],
            cumulative,
        );
        let sum = load(&h.sum_micros) as f64 / 1e6;
        out.sample_f64(&format!("{histogram}_sum"), &[("name", auth.name)], sum);
    }
    out.0.push_str("# EOF\n");
    out.0
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The text being written; writing to a `String` cannot fail.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, unit: Option<&str>, help: &str) {
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        if let Some(unit) = unit {
            let _ = writeln!(self.0, "# UNIT {name} {unit}");
        }
        let _ = writeln!(self.0, "# HELP {name} {}", escape(help, false));
    }

    fn labels(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.0.push_str(name);
        if labels.is_empty() {
            return;
        }
        self.0.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let _ = write!(self.0, "{key}=\"{}\"", escape(value, true));
        }
        self.0.push('}');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.labels(name, labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn sample_i64(&mut self, name: &str, labels: &[(&str, &str)], value: i64) {
        self.labels(name, labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.labels(name, labels);
        // `{:?}` keeps a decimal point (1.0, not 1) and round-trips.
        let _ = writeln!(self.0, " {value:?}");
    }
}

/// `text` with backslash, newline (and in label values the double quote)
/// escaped as the format wants.
fn escape(text: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\\', '\n', '"']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon() -> DaemonSample<'static> {
        DaemonSample {
            version: "1.2.3",
            protocol: 5,
            uptime: Duration::from_millis(1500),
            connections_open: 1,
            connections_total: 7,
        }
    }

    #[test]
    fn counts_land_in_the_text() {
        let counters = AuthCounters::default();
        counters.handed_out();
        counters.handed_out();
        counters.refresh_attempted(Duration::from_millis(30));
        counters.refresh_attempted(Duration::from_secs(60));
        counters.refresh_failed(FailureKind::Upstream(UpstreamKind::ServerError));
        counters.refresh_failed(FailureKind::Database);
        counters.proxied(200);
        counters.proxied(503);
        counters.proxied(42);
        let auth = AuthSample {
            name: "prod",
            state: AuthState::Failing,
            access_expires_at: Some(1_700_000_000),
            login_deadline: None,
            last_refresh_at: Some(1_699_999_000),
            counters: &counters,
        };
        let text = render(&daemon(), &[auth]);
        for line in [
            "snctl_build_info{version=\"1.2.3\",protocol=\"5\"} 1",
            "snctl_uptime_seconds 1.5",
            "snctl_connections_total 7",
            "snctl_auth_state{name=\"prod\",state=\"failing\"} 1",
            "snctl_auth_state{name=\"prod\",state=\"ok\"} 0",
            "snctl_auth_access_expiry_timestamp_seconds{name=\"prod\"} 1700000000",
            "snctl_auth_tokens_handed_out_total{name=\"prod\"} 2",
            "snctl_auth_refresh_attempts_total{name=\"prod\"} 2",
            "snctl_auth_refresh_failures_total{name=\"prod\",kind=\"server-error\"} 1",
            "snctl_auth_refresh_failures_total{name=\"prod\",kind=\"database\"} 1",
            "snctl_auth_refresh_failures_total{name=\"prod\",kind=\"tls\"} 0",
            "snctl_auth_proxied_requests_total{name=\"prod\",code=\"2xx\"} 1",
            "snctl_auth_proxied_requests_total{name=\"prod\",code=\"5xx\"} 1",
            "snctl_auth_token_request_duration_seconds_bucket{name=\"prod\",le=\"0.05\"} 1",
            "snctl_auth_token_request_duration_seconds_bucket{name=\"prod\",le=\"30.0\"} 1",
            "snctl_auth_token_request_duration_seconds_bucket{name=\"prod\",le=\"+Inf\"} 2",
            "snctl_auth_token_request_duration_seconds_count{name=\"prod\"} 2",
            "snctl_auth_token_request_duration_seconds_sum{name=\"prod\"} 60.03",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("login_deadline_timestamp_seconds{"));
        assert!(text.ends_with("\n# EOF\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd", true), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("plain", true), "plain");
    }
}
