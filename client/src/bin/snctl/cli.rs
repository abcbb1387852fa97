//! The command line: clap's definitions of every command and option, and
//! the quick reader of `snctl token`'s arguments that spares that path
//! building clap's parser.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use snctl::protocol::{ClientAuth, Grant, JwtSettings, Readers};

use crate::failure::{usage, Failure};
use crate::jwtkey;

/// `snctl --version`: the crate's version and, when built from a git
/// checkout, the revision (build.rs), so that a bug report names the build.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("SNCTL_BUILD_REVISION"));

/// What each exit code means; `snctl --help` and snctl(1) list them.
pub const EXIT_CODES: [(u8, &str); 8] = [
    (0, "ok"),
    (1, "other error"),
    (2, "usage"),
    (3, "daemon unreachable"),
    (4, "not found"),
    (5, "needs login"),
    (6, "forbidden"),
    (7, "upstream error"),
];

/// `snctl exec --help`: once the command runs, its status is snctl's.
const EXEC_EXIT_CODES: &str = "Exit codes: the command's own status once it runs; 126 when it \
     cannot be run (not executable), 127 when it is not found, as a shell does; before it runs \
     (no token, say), those of snctl --help.";

/// The example of `snctl --help` and snctl(1): a command line each.
pub const EXAMPLES: [&str; 2] = [
    "snctl add prod --instance https://acme.service-now.com --client-id ID",
    "curl -H \"Authorization: Bearer $(snctl token prod)\" https://acme.service-now.com/api/now/table/incident",
];

/// What `snctl --help` shows below the commands and options.
fn after_help() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, meaning) in EXIT_CODES {
        text += &format!("  {code}  {meaning}\n");
    }
    text += "  (snctl check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; see snctl check --help)\n";
    text += "  (snctl exec: the command's own status; 126 cannot run it, 127 not found)\n";
    text += "\nExample (the client secret is prompted for):\n";
    for line in EXAMPLES {
        text += &format!("  {line}\n");
    }
    text
}

/// Get ServiceNow access tokens from snctld, and manage the saved logins.
#[derive(Parser, Debug)]
#[command(version = VERSION, about, propagate_version = true, after_help = after_help())]
pub struct Cli {
    /// Socket of the daemon [default: $SNCTL_SOCKET, the user daemon's, or /run/snctld/snctld.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Register an OAuth client; it is saved only once it has produced a token.
    Add(Add),
    /// Log in again (password or authorization-code grants).
    Login(Login),
    /// Tell why an authentication fails, and what to do about it.
    Doctor(Doctor),
    /// List authentications.
    List(List),
    /// Show one authentication (never its secrets).
    Show(Show),
    /// Print an access token (only the token, newline-terminated).
    Token(Token),
    /// Get a new access token now.
    Refresh(Refresh),
    /// Change the OAuth client or instance; the new settings must work first.
    Update(Update),
    /// Revoke the tokens at the instance (best effort), then delete.
    Remove(Remove),
    /// Run a command with SN_INSTANCE_URL (and SN_HOST, as Ansible's servicenow.itsm
    /// reads it) and SN_ACCESS_TOKEN set.
    #[command(after_help = EXEC_EXIT_CODES)]
    Exec(Exec),
    /// Show the daemon's state.
    Status(Status),
    /// Check the authentications for a monitoring system (Nagios, Icinga,
    /// Zabbix, Sensu): one status line with perfdata, exit 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN.
    #[command(after_help = check_after_help())]
    Check(Check),
    /// Write a consistent copy of the daemon's database to FILE (mode 0600):
    /// sealed secrets only; the master key is not in it.
    Backup(Backup),
    /// Print the daemon's metrics (OpenMetrics text), or write them for
    /// node_exporter's textfile collector.
    #[command(after_help = METRICS_AFTER_HELP)]
    Metrics(Metrics),
}

/// The arguments of `snctl add`.
#[derive(clap::Args, Debug)]
pub struct Add {
    /// The authentication's name.
    pub name: String,
    /// Instance URL, e.g. https://acme.service-now.com.
    #[arg(long)]
    pub instance: String,
    /// Client ID from System OAuth > Application Registry.
    #[arg(long)]
    pub client_id: String,
    /// How tokens are had: client-credentials (services), jwt-bearer (services,
    /// signed assertions), authorization-code (a person, in a browser) or password
    /// (deprecated).
    #[arg(long, value_enum, default_value = "client-credentials")]
    pub grant: GrantArg,
    /// OAuth scope to request.
    #[arg(long)]
    pub scope: Option<String>,
    /// How the client authenticates at the token endpoint: form (client ID
    /// and secret in the request body) or basic (HTTP Basic).
    #[arg(long, value_enum, default_value = "form")]
    pub client_auth: ClientAuthArg,
    /// Read the client secret from standard input (its first line) instead of prompting.
    #[arg(long)]
    pub client_secret_stdin: bool,
    #[command(flatten)]
    pub login: LoginArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Port of the Redirect URL http://127.0.0.1:PORT/callback (authorization-code)
    /// [default: snctld's login.redirect_port, 8751].
    #[arg(long, value_name = "PORT")]
    pub redirect_port: Option<u16>,
    /// Refresh Token Lifespan of the Application Registry record: seconds as
    /// shown there, or with a unit (100d, 36h) [default: 100d].
    #[arg(long, value_name = "DURATION", value_parser = parse_lifespan)]
    pub refresh_token_lifespan: Option<u64>,
    #[command(flatten)]
    pub readers: ReaderArgs,
    /// Serve it on a proxy socket of its own as well (DIR/NAME.sock, see `snctl
    /// show NAME`): plain HTTP there reaches the instance with its token added.
    #[arg(long)]
    pub proxy: bool,
}

/// The arguments of `snctl login`.
#[derive(clap::Args, Debug)]
pub struct Login {
    /// The authentication's name.
    pub name: String,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Log in with a new client secret read from standard input (first line);
    /// it is saved once the login works.
    #[arg(long)]
    pub client_secret_stdin: bool,
    /// Log in with a new client secret, prompted for.
    #[arg(long, conflicts_with = "client_secret_stdin")]
    pub client_secret_prompt: bool,
}

/// The arguments of `snctl doctor`.
#[derive(clap::Args, Debug)]
pub struct Doctor {
    /// The authentication's name.
    pub name: String,
    /// Print the diagnosis as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `snctl list`.
#[derive(clap::Args, Debug)]
pub struct List {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print only the names, one a line (for scripts and completion).
    #[arg(long, conflicts_with = "json")]
    pub names: bool,
}

/// The arguments of `snctl show`.
#[derive(clap::Args, Debug)]
pub struct Show {
    /// The authentication's name.
    pub name: String,
    /// Print the authentication as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `snctl token`.
#[derive(clap::Args, Debug)]
pub struct Token {
    /// The authentication's name.
    pub name: String,
    /// Refresh first unless the token stays valid this many seconds;
    /// refused when the tokens do not live that long. Without it: 60 s,
    /// or a quarter of the tokens' lifetime if that is shorter.
    #[arg(long, value_name = "SECS")]
    pub min_valid: Option<u32>,
    /// Print token, expiry and instance as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `snctl refresh`.
#[derive(clap::Args, Debug)]
pub struct Refresh {
    /// The authentication's name.
    pub name: String,
}

/// The arguments of `snctl update`.
#[derive(clap::Args, Debug)]
pub struct Update {
    /// The authentication's name.
    pub name: String,
    /// New instance URL, e.g. https://acme.service-now.com.
    #[arg(long)]
    pub instance: Option<String>,
    /// New client ID (from System OAuth > Application Registry).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Read a new client secret from standard input.
    #[arg(long)]
    pub client_secret_stdin: bool,
    /// Prompt for a new client secret.
    #[arg(long, conflicts_with = "client_secret_stdin")]
    pub client_secret_prompt: bool,
    /// New way the client authenticates at the token endpoint: form or basic.
    #[arg(long, value_enum)]
    pub client_auth: Option<ClientAuthArg>,
    /// New scope ("" removes it).
    #[arg(long)]
    pub scope: Option<String>,
    /// New port of the Redirect URL (authorization-code); register the new URL too.
    #[arg(long, value_name = "PORT")]
    pub redirect_port: Option<u16>,
    /// Refresh Token Lifespan of the Application Registry record (seconds, or 100d, 36h).
    #[arg(long, value_name = "DURATION", value_parser = parse_lifespan)]
    pub refresh_token_lifespan: Option<u64>,
    /// New readers, replacing the old list.
    #[command(flatten)]
    pub readers: ReaderArgs,
    /// Let anyone who can open the socket read its tokens (clears the readers).
    #[arg(long, conflicts_with_all = ["allow_user", "allow_group", "allow_unit"])]
    pub allow_anyone: bool,
    /// Turn its proxy socket on or off, at once (no restart); `snctl show NAME`
    /// says where it is.
    #[arg(long, value_enum, value_name = "on|off")]
    pub proxy: Option<Switch>,
}

/// `on` or `off`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

/// The arguments of `snctl remove`.
#[derive(clap::Args, Debug)]
pub struct Remove {
    /// The authentication's name.
    pub name: String,
    /// Do not revoke at the instance.
    #[arg(long)]
    pub keep_upstream: bool,
}

/// The arguments of `snctl exec`.
#[derive(clap::Args, Debug)]
pub struct Exec {
    /// The authentication's name.
    pub name: String,
    /// The token must stay valid this many seconds; refused when the
    /// tokens do not live that long. Without it: 300 s, or a quarter
    /// of the tokens' lifetime if that is shorter.
    #[arg(long, value_name = "SECS")]
    pub min_valid: Option<u32>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The arguments of `snctl metrics`.
#[derive(clap::Args, Debug)]
pub struct Metrics {
    /// Write them to FILE instead, in the Prometheus text format that
    /// node_exporter's textfile collector reads, replacing it atomically
    /// (a temporary file in the same directory, then a rename; mode 0644).
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

const METRICS_AFTER_HELP: &str = "\
Per authentication (label name): state, access-token expiry, login deadline, last \
refresh, refresh attempts and failures by kind, tokens handed out, proxied requests \
by status class, token-endpoint latency; the daemon's connections, uptime and \
build. Admins see every authentication, others those they may read.

Example:
  snctl metrics --output /var/lib/prometheus/node-exporter/snctl.prom";

/// The arguments of `snctl status`.
#[derive(clap::Args, Debug)]
pub struct Status {
    /// Print the state as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `snctl check`'s exit codes mean: the monitoring-plugins
/// convention, not snctl's own.
pub const CHECK_EXIT_CODES: [(u8, &str); 4] = [
    (0, "OK: every authentication checked is healthy"),
    (
        1,
        "WARNING: refreshes failing while a valid token is still in hand, \
         or a login deadline within --warn-days",
    ),
    (
        2,
        "CRITICAL: an authentication rejected or needing a login, no valid token to be had, \
         or the daemon unreachable (CRITICAL, not UNKNOWN: no process on the host gets a token then)",
    ),
    (
        3,
        "UNKNOWN: a usage error, a name that does not exist or may not be read, \
         no authentication to check, or an answer check cannot read",
    ),
];

/// What `snctl check --help` shows below the options.
fn check_after_help() -> String {
    let mut text = String::from(
        "Exit codes (the monitoring-plugins convention, unlike snctl's other commands):\n",
    );
    for (code, meaning) in CHECK_EXIT_CODES {
        text += &format!("  {code}  {meaning}\n");
    }
    text += "\nOutput: one line, e.g. `SNCTL WARNING - desk: login ends in 9d ...; 2 of 3 ok | \
             'prod token'=1740s;;;0; ...`: per authentication the seconds its access token \
             stays valid and, for a person's login, the days to its deadline.\n\
             \nExample (a systemd timer, Nagios' check_by_ssh or a Zabbix UserParameter runs):\n  \
             snctl check --warn-days 14\n";
    text
}

/// The arguments of `snctl check`.
#[derive(clap::Args, Debug)]
pub struct Check {
    /// Authentications to check [default: every one this user may read].
    #[arg(id = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Warn when a login (refresh-token) deadline is this many days away or less.
    #[arg(long, value_name = "DAYS", default_value_t = 14)]
    pub warn_days: u32,
    /// Print the verdict as JSON (status, exit_code, message, each authentication's findings).
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `snctl backup`.
#[derive(clap::Args, Debug)]
pub struct Backup {
    /// Where to write the copy (not replaced unless --force).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Who may get an authentication's tokens, besides admins. None given:
/// anyone who can open the socket.
#[derive(clap::Args, Debug)]
pub struct ReaderArgs {
    /// A user who may get its tokens (name or uid); repeatable.
    #[arg(long, value_name = "USER")]
    pub allow_user: Vec<String>,
    /// A group whose members may get its tokens (name or gid); repeatable.
    #[arg(long, value_name = "GROUP")]
    pub allow_group: Vec<String>,
    /// A systemd unit whose processes may get its tokens (e.g. sync.service); repeatable.
    #[arg(long, value_name = "UNIT")]
    pub allow_unit: Vec<String>,
}

impl ReaderArgs {
    pub fn readers(self) -> Readers {
        Readers {
            users: self.allow_user,
            groups: self.allow_group,
            units: self.allow_unit,
        }
    }
}

/// The signing key of the jwt-bearer grant.
#[derive(clap::Args, Debug)]
pub struct JwtArgs {
    /// Private key that signs the assertions (jwt-bearer): PKCS#8, PEM or DER; a P-256
    /// EC key signs ES256, an RSA key RS256.
    #[arg(long, value_name = "FILE")]
    pub jwt_key: Option<PathBuf>,
    /// ServiceNow user the tokens act as (jwt-bearer).
    #[arg(long, value_name = "USER")]
    pub jwt_subject: Option<String>,
    /// Key id (`kid`) the JWT Verifier Map expects (jwt-bearer).
    #[arg(long, value_name = "KID")]
    pub jwt_kid: Option<String>,
}

impl JwtArgs {
    /// The JWT settings for `grant`, with the key read and checked; the
    /// flags are refused for other grants.
    pub fn settings(self, grant: Grant) -> Result<Option<(JwtSettings, jwtkey::JwtKey)>, Failure> {
        if grant != Grant::JwtBearer {
            let given = [
                ("--jwt-key", self.jwt_key.is_some()),
                ("--jwt-subject", self.jwt_subject.is_some()),
                ("--jwt-kid", self.jwt_kid.is_some()),
            ];
            return match given.iter().find(|(_, set)| *set) {
                Some((flag, _)) => Err(usage(format!(
                    "{flag} only applies to the jwt-bearer grant"
                ))),
                None => Ok(None),
            };
        }
        let (Some(path), Some(subject)) = (self.jwt_key, self.jwt_subject) else {
            return Err(usage(
                "the jwt-bearer grant needs --jwt-key FILE and --jwt-subject USER",
            ));
        };
        let key = jwtkey::read(&path).map_err(|e| usage(e.to_string()))?;
        let settings = JwtSettings {
            key: key.pkcs8.clone(),
            subject,
            kid: self.jwt_kid,
        };
        Ok(Some((settings, key)))
    }
}

/// How a person logs in (`add` of a password or authorization-code
/// authentication, and `login`).
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// ServiceNow user name (password grant) [default: prompt, or the last one used].
    #[arg(long)]
    pub username: Option<String>,
    /// Read the password from standard input (the line after the client secret,
    /// if that is read too) instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    /// Do not open a browser: print the URL and take the address the browser
    /// ends on, pasted back (headless hosts).
    #[arg(long)]
    pub no_browser: bool,
    /// How long to wait for the browser [default: 300].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

impl LoginArgs {
    /// Options that do not apply to `grant` are refused rather than ignored.
    pub fn check(&self, grant: Grant) -> Result<(), Failure> {
        let person = [
            ("--username", self.username.is_some()),
            ("--password-stdin", self.password_stdin),
        ];
        let browser = [
            ("--no-browser", self.no_browser),
            ("--timeout", self.timeout.is_some()),
        ];
        let misplaced = match grant {
            Grant::ClientCredentials | Grant::JwtBearer => {
                person.iter().chain(&browser).find(|(_, set)| *set)
            }
            Grant::Password => browser.iter().find(|(_, set)| *set),
            Grant::AuthorizationCode => person.iter().find(|(_, set)| *set),
        };
        match misplaced {
            Some((flag, _)) => Err(usage(format!(
                "{flag} does not apply to the {} grant",
                grant.as_str()
            ))),
            None => Ok(()),
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum GrantArg {
    ClientCredentials,
    Password,
    AuthorizationCode,
    JwtBearer,
}

impl From<GrantArg> for Grant {
    fn from(arg: GrantArg) -> Self {
        match arg {
            GrantArg::ClientCredentials => Grant::ClientCredentials,
            GrantArg::Password => Grant::Password,
            GrantArg::AuthorizationCode => Grant::AuthorizationCode,
            GrantArg::JwtBearer => Grant::JwtBearer,
        }
    }
}

/// Why a `--refresh-token-lifespan` cannot be read.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum LifespanError {
    /// No number first.
    #[error("{0:?} is not a duration: give seconds, or e.g. 100d or 36h")]
    NotANumber(String),
    /// A unit other than s, m, h or d.
    #[error("unknown unit {0:?}: use s, m, h or d")]
    UnknownUnit(String),
    /// More seconds than fit.
    #[error("{0:?} is too long")]
    TooLong(String),
}

/// Seconds, or a number with a unit: s, m, h, d.
pub fn parse_lifespan(text: &str) -> Result<u64, LifespanError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| LifespanError::NotANumber(text.to_owned()))?;
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(LifespanError::UnknownUnit(other.to_owned())),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| LifespanError::TooLong(text.to_owned()))
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ClientAuthArg {
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

/// The arguments of `snctl token`, read without clap.
#[derive(Debug, PartialEq)]
pub struct TokenArgs {
    pub socket: Option<PathBuf>,
    pub name: String,
    pub min_valid: Option<u32>,
    pub json: bool,
}

impl TokenArgs {
    /// `snctl token` is what scripts run, often once per API call, and
    /// building clap's parser for every subcommand was a fifth of its
    /// start-up (BENCHMARKS.md). The plain forms — `[--socket PATH] token
    /// NAME [--min-valid SECS] [--json]`, options as `--opt VALUE` or
    /// `--opt=VALUE` — are read here; anything else (help, an unknown,
    /// repeated or empty option, a value that is not a number, a name
    /// starting with `-`) gives None and goes to clap, which reads it the
    /// same way or explains what is wrong. A test holds the two to the same
    /// answers.
    pub fn quick(args: impl IntoIterator<Item = OsString>) -> Option<TokenArgs> {
        let mut args = args.into_iter();
        let (mut socket, mut name, mut min_valid, mut json) = (None, None, None, false);
        let mut in_token = false;
        while let Some(arg) = args.next() {
            let arg = arg.into_string().ok()?;
            let Some(option) = arg.strip_prefix("--") else {
                if arg.starts_with('-') || arg.is_empty() {
                    return None;
                }
                match (in_token, &name) {
                    (false, _) if arg == "token" => in_token = true,
                    (true, None) => name = Some(arg),
                    _ => return None,
                }
                continue;
            };
            let (key, inline) = match option.split_once('=') {
                Some((key, value)) => (key, Some(value.to_string())),
                None => (option, None),
            };
            let mut value = || {
                let value = match &inline {
                    Some(value) => value.clone(),
                    None => args.next()?.into_string().ok()?,
                };
                (!value.is_empty() && !value.starts_with('-')).then_some(value)
            };
            match key {
                "socket" if socket.is_none() => socket = Some(PathBuf::from(value()?)),
                "min-valid" if in_token && min_valid.is_none() => {
                    min_valid = Some(value()?.parse().ok()?)
                }
                "json" if in_token && !json && inline.is_none() => json = true,
                _ => return None,
            }
        }
        Some(TokenArgs {
            socket,
            name: name?,
            min_valid,
            json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What clap makes of `args`, as `snctl token`'s arguments.
    fn clap_token(args: &[&str]) -> Option<TokenArgs> {
        let cli = Cli::try_parse_from(std::iter::once("snctl").chain(args.iter().copied())).ok()?;
        match cli.command {
            Command::Token(Token {
                name,
                min_valid,
                json,
            }) => Some(TokenArgs {
                socket: cli.socket,
                name,
                min_valid,
                json,
            }),
            _ => None,
        }
    }

    #[test]
    fn the_quick_token_parser_agrees_with_clap() {
        let words = [
            "token",
            "prod",
            "x",
            "--socket",
            "/s",
            "--socket=/t",
            "--min-valid",
            "30",
            "--min-valid=5",
            "--json",
            "--json=1",
            "--help",
            "-h",
            "--",
            "-5",
            "+7",
            "list",
            "",
            "--min-valid=",
            "--socket=",
            "--min-valid=99999999999",
        ];
        let mut args = vec![];
        let (mut quick, mut total) = (0, 0);
        // Every sequence of up to four words.
        fn each(
            words: &[&'static str],
            args: &mut Vec<&'static str>,
            depth: usize,
            f: &mut dyn FnMut(&[&str]),
        ) {
            f(args);
            if depth == 0 {
                return;
            }
            for word in words {
                args.push(word);
                each(words, args, depth - 1, f);
                args.pop();
            }
        }
        each(&words, &mut args, 4, &mut |args| {
            total += 1;
            let os: Vec<OsString> = args.iter().map(OsString::from).collect();
            if let Some(parsed) = TokenArgs::quick(os) {
                quick += 1;
                assert_eq!(Some(parsed), clap_token(args), "{args:?}");
            }
        });
        assert!(quick > 100, "{quick} of {total} read quickly");
        for common in [
            &["token", "prod"][..],
            &[
                "--socket",
                "/s",
                "token",
                "prod",
                "--min-valid",
                "300",
                "--json",
            ],
            &["token", "--json", "prod", "--socket=/t"],
        ] {
            let os: Vec<OsString> = common.iter().map(OsString::from).collect();
            assert!(TokenArgs::quick(os).is_some(), "{common:?}");
        }
    }

    /// Every argument of `cmd` and its subcommands, as "snctl add --scope".
    fn undescribed(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            undescribed(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }

    #[test]
    fn every_argument_of_every_command_is_described() {
        use clap::CommandFactory as _;
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = vec![];
        undescribed(&cmd, "snctl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn help_gives_the_exit_codes_and_an_example() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_long_help().to_string();
        for code in [
            "0  ok",
            "2  usage",
            "3  daemon unreachable",
            "4  not found",
            "5  needs login",
            "6  forbidden",
            "7  upstream error",
        ] {
            assert!(help.contains(code), "{code:?} missing from:\n{help}");
        }
        assert!(help.contains("snctl add prod"), "no example in:\n{help}");
        assert!(help.contains("snctl token prod"), "no example in:\n{help}");
    }

    #[test]
    fn lifespans_read_as_on_the_record_or_with_a_unit() {
        assert_eq!(parse_lifespan("8640000"), Ok(8_640_000));
        assert_eq!(parse_lifespan("100d"), Ok(8_640_000));
        assert_eq!(parse_lifespan("36h"), Ok(129_600));
        assert_eq!(parse_lifespan(" 90m "), Ok(5_400));
        assert!(parse_lifespan("100 days").is_err());
        assert!(parse_lifespan("d").is_err());
        assert!(parse_lifespan("99999999999999999999d").is_err());
    }

    #[test]
    fn login_options_must_fit_the_grant() {
        let args = |username: Option<&str>, no_browser: bool| LoginArgs {
            username: username.map(str::to_string),
            password_stdin: false,
            no_browser,
            timeout: None,
        };
        assert!(args(None, false).check(Grant::ClientCredentials).is_ok());
        assert!(args(Some("u"), false).check(Grant::Password).is_ok());
        assert!(args(None, true).check(Grant::AuthorizationCode).is_ok());
        let err = args(Some("u"), false)
            .check(Grant::AuthorizationCode)
            .err()
            .unwrap();
        assert_eq!(err.code, 2);
        assert!(err.message.contains("--username"));
        assert!(args(None, true).check(Grant::Password).is_err());
        assert!(args(None, true).check(Grant::ClientCredentials).is_err());
    }
}
