//! How the CLI shows what the daemon answers: JSON, the `list` table, the
//! `show`, `status` and `doctor` reports; and how times and durations
//! read everywhere in the CLI: "in 24m" / "3m ago" beside a date, "4m 32s"
//! for a wait.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snctl::protocol::{AuthSummary, CheckOutcome, DaemonStatus, Diagnosis, Readers};

use crate::failure::{other, Failure};
use crate::jwtkey;

/// What to paste into ServiceNow for a jwt-bearer authentication.
pub fn print_verifier_help(key: &jwtkey::JwtKey, path_hint: &str) {
    println!(
        "The JWT Verifier Map of the Application Registry record must hold a certificate for \
         this key ({}), uploaded to System Definition > Certificates; make one with:\n  \
         openssl req -new -x509 -key {path_hint} -subj /CN=snctl -days 825 -out snctl.crt\n\
         Public key:\n{}",
        key.alg,
        jwtkey::public_pem(&key.spki)
    );
}

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| other(format!("cannot encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// "in 24m" / "3m ago".
pub fn relative(at: i64) -> String {
    let delta = at - now_secs();
    let span = delta.unsigned_abs();
    if span == 0 {
        return "now".into();
    }
    let text = match span {
        0..=59 => format!("{span}s"),
        60..=3599 => format!("{}m", span / 60),
        3600..=172_799 => format!("{}h{:02}m", span / 3600, span % 3600 / 60),
        _ => format!("{}d", span / 86_400),
    };
    if delta >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A duration as `4m 32s`, `5m` or `9s`, rounded up to the second.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m {s}s"),
    }
}

pub fn describe_time(at: i64) -> String {
    format!("{} ({})", snctl_shared::time::utc(at), relative(at))
}

pub fn time_or_dash(at: Option<i64>) -> String {
    at.map(describe_time).unwrap_or_else(|| "-".into())
}

/// For a login by a person: who logged in. In a browser that is whoever
/// held it, so it is worth a look.
pub fn print_login_user(summary: &AuthSummary) {
    let Some(login) = &summary.login else {
        return;
    };
    match &login.username {
        Some(user) => println!("logged in as {user}"),
        None => println!(
            "could not determine which ServiceNow user logged in (snctld's log says why); \
             the login is saved all the same"
        ),
    }
}

/// For a login by a person: until when it lasts.
pub fn print_login_deadline(summary: &AuthSummary) {
    if let Some(deadline) = summary.login.as_ref().and_then(|l| l.refresh_expires_at) {
        println!(
            "the login lasts until {}, the refresh-token lifespan: run `snctl login {}` before then",
            describe_time(deadline),
            summary.name
        );
    }
}

pub fn print_diagnosis(d: &Diagnosis) {
    for check in &d.checks {
        let mark = match check.outcome {
            CheckOutcome::Pass => "ok  ",
            CheckOutcome::Fail => "FAIL",
            CheckOutcome::Unknown => "??  ",
            CheckOutcome::Skipped => "--  ",
        };
        println!("{mark} {}: {}", check.what, check.detail);
    }
    if d.works {
        println!("{} works", d.name);
    }
    if let Some(cause) = &d.cause {
        println!("likely cause: {cause}");
    }
    if let Some(fix) = &d.fix {
        println!("fix: {fix}");
    }
}

pub fn print_list(list: &[AuthSummary]) {
    if list.is_empty() {
        println!("no authentications: add one with `snctl add NAME --instance URL --client-id ID`");
        return;
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|a| {
            [
                a.name.clone(),
                a.instance_url.clone(),
                a.grant.as_str().to_string(),
                a.state.as_str().to_string(),
                a.access_expires_at
                    .map(relative)
                    .unwrap_or_else(|| "-".into()),
                a.last_refresh_at
                    .map(relative)
                    .unwrap_or_else(|| "-".into()),
                a.login
                    .as_ref()
                    .and_then(|l| l.refresh_expires_at)
                    .map(relative)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "INSTANCE",
        "GRANT",
        "STATUS",
        "EXPIRES",
        "LAST REFRESH",
        "LOGIN UNTIL",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{out}");
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    for a in list.iter().filter(|a| a.last_error.is_some()) {
        println!(
            "{}: {}",
            a.name,
            a.last_error.as_deref().unwrap_or_default()
        );
    }
}

pub fn print_show(a: &AuthSummary) {
    let time = |t: Option<i64>| t.map(describe_time).unwrap_or_else(|| "-".into());
    println!("name:          {}", a.name);
    println!("instance:      {}", a.instance_url);
    println!("grant:         {}", a.grant.as_str());
    println!("client id:     {}", a.client_id);
    println!("client auth:   {}", a.client_auth.as_str());
    println!("scope:         {}", a.scope.as_deref().unwrap_or("-"));
    println!("status:        {}", a.state.as_str());
    if let Some(error) = &a.last_error {
        println!("last error:    {error}");
    }
    println!("token expires: {}", time(a.access_expires_at));
    println!("last refresh:  {}", time(a.last_refresh_at));
    println!("next refresh:  {}", time(a.next_refresh_at));
    if let Some(login) = &a.login {
        if let Some(user) = &login.username {
            println!("user:          {user}");
        }
        println!("logged in:     {}", time(login.refresh_issued_at));
        println!(
            "login until:   {} (lifespan {}d)",
            time(login.refresh_expires_at),
            login.refresh_lifespan_secs / 86_400
        );
        if let Some(uri) = &login.redirect_uri {
            println!("redirect URL:  {uri}");
        }
    }
    println!("readers:       {}", describe_readers(&a.readers));
    println!("proxy:         {}", describe_proxy(a));
    println!("added:         {}", time(Some(a.created_at)));
}

/// Where an authentication's proxy socket is, and why it does not serve
/// when it does not.
pub fn describe_proxy(a: &AuthSummary) -> String {
    let Some(socket) = &a.proxy_socket else {
        return match a.proxy {
            true => "on (the daemon reports no socket)".into(),
            false => "off".into(),
        };
    };
    let by = match a.proxy {
        true => "",
        false => " (named in snctld.toml's [proxy])",
    };
    match &socket.error {
        None => format!("{}{by}", socket.path),
        Some(error) => format!("{}{by}, not serving: {error}", socket.path),
    }
}

/// After `add --proxy` or `update --proxy`: where the proxy is and how to
/// use it, or off. A socket that could not be bound is an error (the
/// setting is saved all the same).
pub fn print_proxy(a: &AuthSummary) -> Result<(), Failure> {
    let name = &a.name;
    match &a.proxy_socket {
        Some(socket) if socket.error.is_none() => {
            println!(
                "proxy: {}{}; e.g. curl --unix-socket {} http://localhost/api/now/table/sys_user?sysparm_limit=1",
                socket.path,
                if a.proxy { "" } else { " (named in snctld.toml's [proxy], which keeps it on)" },
                socket.path
            );
            Ok(())
        }
        Some(socket) => Err(other(format!(
            "{name}'s proxy is on but its socket {} does not serve: {}; snctld tries again at              the next change or start (`snctl update {name} --proxy off` turns it off)",
            socket.path,
            socket.error.as_deref().unwrap_or_default()
        ))),
        None => {
            println!("proxy: off");
            Ok(())
        }
    }
}

pub fn describe_readers(r: &Readers) -> String {
    if r.is_empty() {
        return "anyone who can open the socket".into();
    }
    let mut parts = Vec::new();
    for (what, names) in [
        ("users", &r.users),
        ("groups", &r.groups),
        ("units", &r.units),
    ] {
        if !names.is_empty() {
            parts.push(format!("{what} {}", names.join(", ")));
        }
    }
    format!("{}; and admins", parts.join("; "))
}

/// OpenMetrics text as the Prometheus text format that node_exporter's
/// textfile collector reads: a counter's `TYPE` and `HELP` name its
/// samples (`…_total`), and there is no `UNIT` or `# EOF`.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counter: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let mut words = line.splitn(4, ' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name), Some("counter")) => {
                counter = Some(name);
                out.push_str(&format!("# TYPE {name}_total counter"));
            }
            (Some("#"), Some("HELP"), Some(name), help) if counter == Some(name) => {
                out.push_str(&format!("# HELP {name}_total {}", help.unwrap_or("")));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

pub fn print_status(s: &DaemonStatus) {
    println!(
        "snctld {} (protocol {}), pid {}",
        s.version, s.protocol_version, s.pid
    );
    println!("uptime:          {}s", s.uptime_secs);
    println!("socket:          {}", s.socket);
    println!("state directory: {}", s.state_dir);
    println!(
        "authentications: {} ({} unhealthy, {} need a login)",
        s.authentications, s.unhealthy, s.needs_login
    );
    match &s.next_refresh {
        Some((name, at)) => println!("next refresh:    {name} {}", relative(*at)),
        None => println!("next refresh:    -"),
    }
    match &s.next_login_deadline {
        Some((name, at)) => println!("next login due:  {name} {}", describe_time(*at)),
        None => println!("next login due:  -"),
    }
    println!("connections:     {}", s.connections);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_4m_32s() {
        assert_eq!(human(Duration::from_secs(272)), "4m 32s");
        assert_eq!(human(Duration::from_secs(300)), "5m");
        assert_eq!(human(Duration::from_millis(8_100)), "9s");
    }

    #[test]
    fn the_textfile_format_names_counters_by_their_samples() {
        let openmetrics = "# TYPE up_seconds gauge\n# UNIT up_seconds seconds\n\
                           # HELP up_seconds Up.\nup_seconds 1.5\n\
                           # TYPE hits counter\n# HELP hits Hits so far.\nhits_total{a=\"b\"} 2\n\
                           # EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# TYPE up_seconds gauge\n# HELP up_seconds Up.\nup_seconds 1.5\n\
             # TYPE hits_total counter\n# HELP hits_total Hits so far.\nhits_total{a=\"b\"} 2\n"
        );
    }
}
