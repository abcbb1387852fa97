//! `snctl`: the command line for snctld (DESIGN §7).
//!
//! Every failure prints one line on stderr, `snctl: what happened: what to
//! do`, and exits with the documented code: 0 ok, 1 other, 2 usage,
//! 3 daemon unreachable, 4 not found, 5 needs login, 6 forbidden,
//! 7 upstream error.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};

use snctl::protocol::{AddRequest, AuthSummary, ClientAuth, DaemonStatus, Grant, UpdateRequest};
use snctl::{Client, ClientError, ErrorKind, Secret};

/// Get ServiceNow access tokens from snctld, and manage the saved logins.
#[derive(Parser, Debug)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Socket of the daemon [default: $SNCTL_SOCKET, the user daemon's, or /run/snctld/snctld.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register an OAuth client; it is saved only once it has produced a token.
    Add {
        name: String,
        /// Instance URL, e.g. https://acme.service-now.com.
        #[arg(long)]
        instance: String,
        /// Client ID from System OAuth > Application Registry.
        #[arg(long)]
        client_id: String,
        #[arg(long, value_enum, default_value = "client-credentials")]
        grant: GrantArg,
        /// OAuth scope to request.
        #[arg(long)]
        scope: Option<String>,
        /// How the client authenticates at the token endpoint.
        #[arg(long, value_enum, default_value = "form")]
        client_auth: ClientAuthArg,
        /// Read the client secret from standard input instead of prompting.
        #[arg(long)]
        client_secret_stdin: bool,
    },
    /// List authentications.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one authentication (never its secrets).
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Print an access token (only the token, newline-terminated).
    Token {
        name: String,
        /// Refresh first unless the token stays valid this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        min_valid: u32,
        /// Print token, expiry and instance as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Get a new access token now.
    Refresh { name: String },
    /// Change the OAuth client or instance; the new settings must work first.
    Update {
        name: String,
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        client_id: Option<String>,
        /// Read a new client secret from standard input.
        #[arg(long)]
        client_secret_stdin: bool,
        /// Prompt for a new client secret.
        #[arg(long, conflicts_with = "client_secret_stdin")]
        client_secret_prompt: bool,
        #[arg(long, value_enum)]
        client_auth: Option<ClientAuthArg>,
        /// New scope ("" removes it).
        #[arg(long)]
        scope: Option<String>,
    },
    /// Revoke the tokens at the instance (best effort), then delete.
    Remove {
        name: String,
        /// Do not revoke at the instance.
        #[arg(long)]
        keep_upstream: bool,
    },
    /// Run a command with SN_INSTANCE_URL and SN_ACCESS_TOKEN set.
    Exec {
        name: String,
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        min_valid: u32,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Show the daemon's state.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum GrantArg {
    ClientCredentials,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ClientAuthArg {
    Form,
    Basic,
}

impl From<ClientAuthArg> for ClientAuth {
    fn from(arg: ClientAuthArg) -> Self {
        match arg {
            ClientAuthArg::Form => ClientAuth::Form,
            ClientAuthArg::Basic => ClientAuth::Basic,
        }
    }
}

/// A failure with its exit code.
struct Failure {
    code: i32,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure {
            code: error.kind().exit_code(),
            message: error.to_string(),
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: ErrorKind::Usage.exit_code(),
        message: message.into(),
    }
}

fn other(message: impl Into<String>) -> Failure {
    Failure {
        code: ErrorKind::Other.exit_code(),
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("snctl: {}", failure.message);
            ExitCode::from(failure.code as u8)
        }
    }
}

fn connect(cli_socket: &Option<PathBuf>) -> Result<Client, Failure> {
    let path = snctl_shared::paths::client_socket(cli_socket.as_deref());
    Ok(Client::connect(&path)?)
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Add {
            name,
            instance,
            client_id,
            grant,
            scope,
            client_auth,
            client_secret_stdin,
        } => {
            snctl_shared::name::validate(&name).map_err(usage)?;
            let secret = read_secret(client_secret_stdin, &format!("Client secret for {name}: "))?;
            let mut client = connect(&cli.socket)?;
            let summary = client.add(AddRequest {
                name,
                instance_url: instance,
                grant: match grant {
                    GrantArg::ClientCredentials => Grant::ClientCredentials,
                },
                client_id,
                client_secret: secret,
                client_auth: client_auth.into(),
                scope,
            })?;
            println!(
                "added {}: {} token valid until {}",
                summary.name,
                summary.grant.as_str(),
                summary
                    .access_expires_at
                    .map(describe_time)
                    .unwrap_or_else(|| "-".into())
            );
            Ok(())
        }
        Command::List { json } => {
            let list = connect(&cli.socket)?.list()?;
            if json {
                print_json(&list)
            } else {
                print_list(&list);
                Ok(())
            }
        }
        Command::Show { name, json } => {
            let summary = connect(&cli.socket)?.show(&name)?;
            if json {
                print_json(&summary)
            } else {
                print_show(&summary);
                Ok(())
            }
        }
        Command::Token {
            name,
            min_valid,
            json,
        } => {
            let token =
                connect(&cli.socket)?.token_with(&name, Duration::from_secs(min_valid.into()))?;
            if json {
                print_json(&token)
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", token.access_token.expose())
                    .and_then(|_| out.flush())
                    .map_err(|e| other(format!("cannot write the token: {e}")))
            }
        }
        Command::Refresh { name } => {
            let summary = connect(&cli.socket)?.refresh(&name)?;
            println!(
                "refreshed {}: token valid until {}",
                summary.name,
                summary
                    .access_expires_at
                    .map(describe_time)
                    .unwrap_or_else(|| "-".into())
            );
            Ok(())
        }
        Command::Update {
            name,
            instance,
            client_id,
            client_secret_stdin,
            client_secret_prompt,
            client_auth,
            scope,
        } => {
            let client_secret = if client_secret_stdin || client_secret_prompt {
                Some(read_secret(
                    client_secret_stdin,
                    &format!("New client secret for {name}: "),
                )?)
            } else {
                None
            };
            let summary = connect(&cli.socket)?.update(UpdateRequest {
                name,
                instance_url: instance,
                client_id,
                client_secret,
                client_auth: client_auth.map(Into::into),
                scope,
            })?;
            println!(
                "updated {}: the new settings work; token valid until {}",
                summary.name,
                summary
                    .access_expires_at
                    .map(describe_time)
                    .unwrap_or_else(|| "-".into())
            );
            Ok(())
        }
        Command::Remove {
            name,
            keep_upstream,
        } => {
            let reply = connect(&cli.socket)?.remove(&name, keep_upstream)?;
            match (&reply.revoke_error, keep_upstream) {
                (Some(error), _) => {
                    println!("removed {name}; revoking at the instance failed: {error}")
                }
                (None, true) => {
                    println!("removed {name}; its tokens were left valid at the instance")
                }
                (None, false) => println!(
                    "removed {name}; {} token(s) revoked at the instance",
                    reply.revoked
                ),
            }
            Ok(())
        }
        Command::Exec {
            name,
            min_valid,
            command,
        } => {
            let token =
                connect(&cli.socket)?.token_with(&name, Duration::from_secs(min_valid.into()))?;
            let (program, args) = command
                .split_first()
                .ok_or_else(|| usage("give a command after --"))?;
            let error = std::process::Command::new(program)
                .args(args)
                .env("SN_INSTANCE_URL", &token.instance_url)
                .env("SN_ACCESS_TOKEN", token.access_token.expose())
                .exec();
            Err(Failure {
                code: if error.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                },
                message: format!("cannot run {program}: {error}"),
            })
        }
        Command::Status { json } => {
            let mut client = connect(&cli.socket)?;
            let status = client.status()?;
            if json {
                print_json(&status)
            } else {
                print_status(&status);
                Ok(())
            }
        }
    }
}

/// The secret, from stdin (for scripts) or a no-echo prompt; never argv.
fn read_secret(from_stdin: bool, prompt: &str) -> Result<Secret, Failure> {
    let secret = if from_stdin {
        let mut text = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| other(format!("cannot read the secret from standard input: {e}")))?;
        text.trim_end_matches(['\n', '\r']).to_string()
    } else {
        if !std::io::stdin().is_terminal() {
            return Err(usage(
                "no terminal to prompt for the client secret: pipe it in with --client-secret-stdin",
            ));
        }
        rpassword::prompt_password(prompt)
            .map_err(|e| other(format!("cannot read the secret: {e}")))?
    };
    if secret.is_empty() {
        return Err(usage(
            "the client secret is empty: copy it from the Application Registry record",
        ));
    }
    Ok(Secret::new(secret))
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| other(format!("cannot encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// "in 24m" / "3m ago".
fn relative(at: i64) -> String {
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

/// RFC 3339 UTC, e.g. 2026-11-28T17:30:00Z.
fn utc(at: i64) -> String {
    let days = at.div_euclid(86_400);
    let secs = at.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn describe_time(at: i64) -> String {
    format!("{} ({})", utc(at), relative(at))
}

fn print_list(list: &[AuthSummary]) {
    if list.is_empty() {
        println!("no authentications: add one with `snctl add NAME --instance URL --client-id ID`");
        return;
    }
    let rows: Vec<[String; 6]> = list
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

fn print_show(a: &AuthSummary) {
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
    println!("added:         {}", time(Some(a.created_at)));
}

fn print_status(s: &DaemonStatus) {
    println!(
        "snctld {} (protocol {}), pid {}",
        s.version, s.protocol_version, s.pid
    );
    println!("uptime:          {}s", s.uptime_secs);
    println!("socket:          {}", s.socket);
    println!("state directory: {}", s.state_dir);
    println!(
        "authentications: {} ({} unhealthy)",
        s.authentications, s.unhealthy
    );
    match &s.next_refresh {
        Some((name, at)) => println!("next refresh:    {name} {}", relative(*at)),
        None => println!("next refresh:    -"),
    }
    println!("connections:     {}", s.connections);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
