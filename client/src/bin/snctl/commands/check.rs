//! `snctl check`: the authentications' health for a monitoring system.
//!
//! It follows the monitoring-plugins convention that Nagios, Icinga,
//! Zabbix agents and Sensu read, not snctl's own exit codes: exit 0 OK,
//! 1 WARNING, 2 CRITICAL, 3 UNKNOWN, and one line on standard output,
//! `SNCTL STATUS - what is wrong, worst first | perfdata`. The verdict is
//! made here from what `list` / `show` answer (never a token is asked
//! for, so checking hands out nothing and causes no request to the
//! instance); [`evaluate`] is pure so that its rules are unit-tested.

use std::path::Path;

use serde::Serialize;

use snctl::protocol::{AuthState, AuthSummary};
use snctl::{ClientError, ErrorKind};

use crate::cli;
use crate::output::now_secs;

/// One verdict, for an authentication or for the whole check, ordered
/// from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        }
    }

    /// The monitoring-plugins exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
            Status::Unknown => 3,
        }
    }
}

/// One thing found wrong with an authentication.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub status: Status,
    pub message: String,
}

/// One authentication as checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthReport {
    pub name: String,
    /// Its worst finding, or OK.
    pub status: Status,
    /// The daemon's state for it (`ok`, `failing`, `rejected`, `needs-login`).
    pub state: &'static str,
    /// Seconds the access token in hand stays valid (0: expired or none).
    pub access_valid_secs: i64,
    /// Days to the login (refresh-token) deadline, for a person's login.
    pub login_days_left: Option<f64>,
    pub findings: Vec<Finding>,
}

/// The whole check: what is printed, as text or JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub status: Status,
    pub exit_code: i32,
    /// The status line's text between `SNCTL STATUS - ` and the perfdata.
    pub message: String,
    pub authentications: Vec<AuthReport>,
    /// `--warn-days`, the login perfdata's warning threshold.
    #[serde(skip)]
    pub warn_days: u32,
}

impl Verdict {
    /// A verdict without authentications: the daemon could not be asked,
    /// or its answer cannot be used.
    fn alone(status: Status, message: impl Into<String>) -> Verdict {
        Verdict {
            status,
            exit_code: status.exit_code(),
            message: clean(&message.into()),
            authentications: vec![],
            warn_days: 0,
        }
    }

    /// `SNCTL STATUS - message | perfdata`, one line.
    pub fn line(&self) -> String {
        let mut line = format!("SNCTL {} - {}", self.status.label(), self.message);
        let perf = perfdata(&self.authentications, self.warn_days);
        if !perf.is_empty() {
            line += " | ";
            line += &perf;
        }
        line
    }
}

/// A status line holds one line, and `|` starts its perfdata.
fn clean(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('|', "/")
}

/// `15m`, `9d 4h`: how long until something, for the status line.
fn span(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// The findings for one authentication at `now`.
pub fn check_one(summary: &AuthSummary, now: i64, warn_days: u32) -> AuthReport {
    let name = &summary.name;
    let valid = summary.access_expires_at.map_or(0, |at| (at - now).max(0));
    let reason = summary
        .last_error
        .as_deref()
        .map(|e| format!(" ({})", clean(e)))
        .unwrap_or_default();
    let mut findings = vec![];
    let mut say = |status, message: String| findings.push(Finding { status, message });
    match summary.state {
        // Ok with an error: snctld serves tokens it could not save yet.
        AuthState::Ok => {
            if let Some(error) = &summary.last_error {
                say(Status::Warning, format!("{name}: {}", clean(error)));
            }
        }
        AuthState::Failing if valid > 0 => say(
            Status::Warning,
            format!(
                "{name}: refreshes failing{reason}, the token in hand is valid {} more",
                span(valid)
            ),
        ),
        AuthState::Failing => say(
            Status::Critical,
            format!("{name}: no valid token, refreshes failing{reason}"),
        ),
        AuthState::Rejected => say(
            Status::Critical,
            format!(
                "{name}: rejected by the instance{reason}: fix it (snctl doctor {name}), \
                 then `snctl refresh {name}`"
            ),
        ),
        AuthState::NeedsLogin => say(
            Status::Critical,
            format!("{name}: needs a new login: run `snctl login {name}`"),
        ),
    }
    let deadline = summary.login.as_ref().and_then(|l| l.refresh_expires_at);
    if let Some(at) = deadline {
        let left = at - now;
        if summary.state == AuthState::NeedsLogin {
            // Already said, with what to do.
        } else if left <= 0 {
            say(
                Status::Critical,
                format!("{name}: the login has ended: run `snctl login {name}`"),
            );
        } else if left < i64::from(warn_days) * 86_400 {
            say(
                Status::Warning,
                format!(
                    "{name}: login ends in {}: run `snctl login {name}` before",
                    span(left)
                ),
            );
        }
    }
    if let Some(socket) = &summary.proxy_socket {
        if let Some(error) = &socket.error {
            say(
                Status::Warning,
                format!(
                    "{name}: its proxy socket {} does not serve ({})",
                    socket.path,
                    clean(error)
                ),
            );
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.status));
    AuthReport {
        name: name.clone(),
        status: findings.first().map_or(Status::Ok, |f| f.status),
        state: summary.state.as_str(),
        access_valid_secs: valid,
        // Tenths, rounded down: "9.9" days is not yet 10.
        login_days_left: deadline.map(|at| ((at - now) * 10).div_euclid(86_400) as f64 / 10.0),
        findings,
    }
}

/// The verdict over `summaries` at `now`.
pub fn evaluate(summaries: &[AuthSummary], now: i64, warn_days: u32) -> Verdict {
    if summaries.is_empty() {
        return Verdict::alone(
            Status::Unknown,
            "no authentications to check: add one, or let this user read one \
             (snctl list shows what it may read)",
        );
    }
    let reports: Vec<AuthReport> = summaries
        .iter()
        .map(|s| check_one(s, now, warn_days))
        .collect();
    let status = reports.iter().map(|r| r.status).max().unwrap_or(Status::Ok);
    let total = reports.len();
    let fine = reports.iter().filter(|r| r.status == Status::Ok).count();
    let message = if status == Status::Ok {
        let noun = if total == 1 {
            "authentication"
        } else {
            "authentications"
        };
        format!("{total} {noun} ok")
    } else {
        let mut problems: Vec<&Finding> = reports.iter().flat_map(|r| &r.findings).collect();
        problems.sort_by_key(|f| std::cmp::Reverse(f.status));
        let mut parts: Vec<String> = problems.iter().map(|f| f.message.clone()).collect();
        parts.push(format!("{fine} of {total} ok"));
        parts.join("; ")
    };
    Verdict {
        status,
        exit_code: status.exit_code(),
        message,
        authentications: reports,
        warn_days,
    }
}

/// The monitoring-plugins perfdata, `'label'=value[UOM];warn;crit;min;max`
/// space-separated: per authentication the seconds its access token stays
/// valid, and the days to its login deadline (warning below --warn-days,
/// critical below 0, as ranges "N:").
fn perfdata(reports: &[AuthReport], warn_days: u32) -> String {
    let mut parts = vec![];
    for report in reports {
        // Names are [A-Za-z0-9._-]: nothing to quote inside the label.
        parts.push(format!(
            "'{} token'={}s;;;0;",
            report.name, report.access_valid_secs
        ));
        if let Some(days) = report.login_days_left {
            parts.push(format!(
                "'{} login days'={days:.1};{warn_days}:;0:;;",
                report.name
            ));
        }
    }
    parts.join(" ")
}

/// Asks the daemon and makes the verdict; an error is the verdict too
/// (snctl's own exit codes do not apply, so not through `super::connect`).
fn verdict(socket: Option<&Path>, args: &cli::Check) -> Verdict {
    let asked = (|| -> Result<Vec<AuthSummary>, ClientError> {
        let mut client = connect_client(socket)?;
        if args.names.is_empty() {
            return client.list();
        }
        args.names.iter().map(|name| client.show(name)).collect()
    })();
    match asked {
        Ok(summaries) => evaluate(&summaries, now_secs(), args.warn_days),
        // The daemon hands out every token on the host: not reaching it is
        // as bad as every authentication failing.
        Err(e) if e.kind() == ErrorKind::Unreachable => {
            Verdict::alone(Status::Critical, e.to_string())
        }
        Err(e) => Verdict::alone(Status::Unknown, e.to_string()),
    }
}

fn connect_client(socket: Option<&Path>) -> Result<snctl::Client, ClientError> {
    let path = snctl_shared::paths::client_socket(socket);
    snctl::Client::connect_pipelined(&path)
}

/// `snctl check`: prints the verdict; returns its exit code. Everything
/// goes to standard output, where monitoring systems read it, errors
/// included.
pub fn check(socket: Option<&Path>, args: &cli::Check) -> u8 {
    let verdict = verdict(socket, args);
    if args.json {
        match serde_json::to_string_pretty(&verdict) {
            Ok(text) => println!("{text}"),
            Err(e) => return unknown(&format!("cannot encode JSON: {e}")),
        }
    } else {
        println!("{}", verdict.line());
    }
    verdict.status.exit_code() as u8
}

/// The UNKNOWN line for what went wrong before the daemon was asked (a
/// usage error); returns its exit code.
pub fn unknown(message: &str) -> u8 {
    let verdict = Verdict::alone(Status::Unknown, message);
    println!("{}", verdict.line());
    verdict.exit_code as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use snctl::protocol::{ClientAuth, Grant, LoginSummary, Readers};

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    fn auth(name: &str, state: AuthState, expires_in: Option<i64>) -> AuthSummary {
        AuthSummary {
            name: name.into(),
            instance_url: "https://acme.service-now.com".into(),
            grant: Grant::ClientCredentials,
            client_id: "id".into(),
            client_auth: ClientAuth::Form,
            scope: None,
            state,
            last_error: (state != AuthState::Ok).then(|| "instance answered 503 | busy".into()),
            access_expires_at: expires_in.map(|s| NOW + s),
            last_refresh_at: None,
            next_refresh_at: None,
            created_at: NOW - DAY,
            login: None,
            readers: Readers::default(),
            proxy: false,
            proxy_socket: None,
        }
    }

    fn with_deadline(mut summary: AuthSummary, in_secs: i64) -> AuthSummary {
        summary.grant = Grant::Password;
        summary.login = Some(LoginSummary {
            username: Some("abel.tuter".into()),
            refresh_issued_at: Some(NOW - DAY),
            refresh_expires_at: Some(NOW + in_secs),
            refresh_lifespan_secs: 100 * DAY as u64,
            redirect_uri: None,
        });
        summary
    }

    fn status_of(summaries: &[AuthSummary]) -> Status {
        evaluate(summaries, NOW, 14).status
    }

    #[test]
    fn each_state_has_its_verdict() {
        let ok = auth("a", AuthState::Ok, Some(600));
        assert_eq!(status_of(std::slice::from_ref(&ok)), Status::Ok);
        // An ok authentication whose token lapsed gets one on demand.
        assert_eq!(status_of(&[auth("a", AuthState::Ok, None)]), Status::Ok);
        let failing = auth("a", AuthState::Failing, Some(600));
        assert_eq!(status_of(&[failing]), Status::Warning);
        let dry = auth("a", AuthState::Failing, Some(-5));
        assert_eq!(status_of(&[dry]), Status::Critical);
        // Rejected is critical even while the token in hand lasts.
        let rejected = auth("a", AuthState::Rejected, Some(600));
        assert_eq!(status_of(&[ok.clone(), rejected]), Status::Critical);
        let login = auth("a", AuthState::NeedsLogin, Some(600));
        assert_eq!(status_of(&[login]), Status::Critical);
    }

    #[test]
    fn tokens_in_service_but_not_saved_are_a_warning() {
        let mut unsaved = auth("a", AuthState::Ok, Some(600));
        unsaved.last_error = Some(
            "new tokens not yet saved (database error: database or disk is full): \
             served from memory"
                .into(),
        );
        let report = check_one(&unsaved, NOW, 14);
        assert_eq!(report.status, Status::Warning);
        assert!(
            report.findings[0]
                .message
                .starts_with("a: new tokens not yet saved"),
            "{:?}",
            report.findings
        );
    }

    #[test]
    fn login_deadlines_warn_within_the_days_given_and_are_critical_once_past() {
        let near = with_deadline(auth("d", AuthState::Ok, Some(600)), 10 * DAY);
        assert_eq!(
            evaluate(std::slice::from_ref(&near), NOW, 14).status,
            Status::Warning
        );
        assert_eq!(
            evaluate(std::slice::from_ref(&near), NOW, 10).status,
            Status::Ok
        );
        assert_eq!(
            evaluate(std::slice::from_ref(&near), NOW, 0).status,
            Status::Ok
        );
        let report = check_one(&near, NOW, 14);
        assert_eq!(report.login_days_left, Some(10.0));
        assert!(report.findings[0].message.contains("login ends in 10d 0h"));
        let past = with_deadline(auth("d", AuthState::Ok, Some(600)), -1);
        assert_eq!(evaluate(&[past], NOW, 14).status, Status::Critical);
        // A login already needed is said once, not twice.
        let needed = with_deadline(auth("d", AuthState::NeedsLogin, None), -1);
        assert_eq!(check_one(&needed, NOW, 14).findings.len(), 1);
    }

    #[test]
    fn the_line_names_the_worst_first_counts_the_rest_and_keeps_to_one_line() {
        let summaries = [
            with_deadline(auth("desk", AuthState::Ok, Some(600)), 3 * DAY),
            auth("prod", AuthState::Ok, Some(1200)),
            auth("etl", AuthState::NeedsLogin, None),
        ];
        let verdict = evaluate(&summaries, NOW, 14);
        assert_eq!(verdict.exit_code, 2);
        let line = verdict.line();
        assert!(
            line.starts_with("SNCTL CRITICAL - etl: needs a new login"),
            "{line}"
        );
        let (says, perf) = line.split_once(" | ").unwrap();
        assert!(says.contains("; desk: login ends in 3d 0h"), "{says}");
        assert!(says.ends_with("; 1 of 3 ok"), "{says}");
        assert_eq!(
            perf,
            "'desk token'=600s;;;0; 'desk login days'=3.0;14:;0:;; \
             'prod token'=1200s;;;0; 'etl token'=0s;;;0;"
        );
        // The instance's words cannot open the perfdata early.
        let failing = evaluate(&[auth("a", AuthState::Failing, Some(60))], NOW, 14);
        assert_eq!(failing.line().matches('|').count(), 1, "{}", failing.line());
        assert!(!failing.line().contains('\n'));
    }

    #[test]
    fn a_proxy_socket_that_does_not_serve_warns() {
        let mut summary = auth("prod", AuthState::Ok, Some(3600));
        summary.proxy = true;
        summary.proxy_socket = Some(snctl::protocol::ProxySocket {
            path: "/run/snctld/proxy/prod.sock".into(),
            error: Some("unsafe directory".into()),
        });
        let report = check_one(&summary, NOW, 14);
        assert_eq!(report.status, Status::Warning);
        assert!(report.findings[0]
            .message
            .contains("proxy socket /run/snctld/proxy/prod.sock"));
        summary.proxy_socket.as_mut().unwrap().error = None;
        assert_eq!(check_one(&summary, NOW, 14).status, Status::Ok);
    }

    #[test]
    fn all_fine_is_counted() {
        let one = evaluate(&[auth("a", AuthState::Ok, Some(600))], NOW, 14);
        assert!(one.line().starts_with("SNCTL OK - 1 authentication ok | "));
        let two = [
            auth("a", AuthState::Ok, Some(600)),
            auth("b", AuthState::Ok, Some(600)),
        ];
        let line = evaluate(&two, NOW, 14).line();
        assert!(
            line.starts_with("SNCTL OK - 2 authentications ok | "),
            "{line}"
        );
        assert_eq!(evaluate(&[], NOW, 14).exit_code, 3);
    }
}
