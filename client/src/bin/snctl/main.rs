//! `snctl`: the command line for snctld (DESIGN §7).
//!
//! Every failure prints one line on stderr, `snctl: what happened: what to
//! do`, and exits with the documented code: 0 ok, 1 other, 2 usage,
//! 3 daemon unreachable, 4 not found, 5 needs login, 6 forbidden,
//! 7 upstream error.

mod callback;
mod jwtkey;

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};

use snctl::protocol::{
    AddRequest, AuthState, AuthSummary, CheckOutcome, ClientAuth, DaemonStatus, Diagnosis, Grant,
    JwtSettings, LoginProof, LoginRequest, Readers, StartLoginRequest, UpdateRequest, UserLogin,
};
use snctl::{Client, ClientError, ErrorKind, MinValid, Secret};

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
        /// How tokens are had: client-credentials (services), jwt-bearer (services,
        /// signed assertions), authorization-code (a person, in a browser) or password
        /// (deprecated).
        #[arg(long, value_enum, default_value = "client-credentials")]
        grant: GrantArg,
        /// OAuth scope to request.
        #[arg(long)]
        scope: Option<String>,
        /// How the client authenticates at the token endpoint.
        #[arg(long, value_enum, default_value = "form")]
        client_auth: ClientAuthArg,
        /// Read the client secret from standard input (its first line) instead of prompting.
        #[arg(long)]
        client_secret_stdin: bool,
        #[command(flatten)]
        login: LoginArgs,
        #[command(flatten)]
        jwt: JwtArgs,
        /// Port of the Redirect URL http://127.0.0.1:PORT/callback (authorization-code)
        /// [default: snctld's login.redirect_port, 8751].
        #[arg(long, value_name = "PORT")]
        redirect_port: Option<u16>,
        /// Refresh Token Lifespan of the Application Registry record: seconds as
        /// shown there, or with a unit (100d, 36h) [default: 100d].
        #[arg(long, value_name = "DURATION", value_parser = parse_lifespan)]
        refresh_token_lifespan: Option<u64>,
        #[command(flatten)]
        readers: ReaderArgs,
    },
    /// Log in again (password or authorization-code grants).
    Login {
        name: String,
        #[command(flatten)]
        login: LoginArgs,
        /// Log in with a new client secret read from standard input (first line);
        /// it is saved once the login works.
        #[arg(long)]
        client_secret_stdin: bool,
        /// Log in with a new client secret, prompted for.
        #[arg(long, conflicts_with = "client_secret_stdin")]
        client_secret_prompt: bool,
    },
    /// Tell why an authentication fails, and what to do about it.
    Doctor {
        name: String,
        #[arg(long)]
        json: bool,
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
        /// Refresh first unless the token stays valid this many seconds;
        /// refused when the tokens do not live that long. Without it: 60 s,
        /// or a quarter of the tokens' lifetime if that is shorter.
        #[arg(long, value_name = "SECS")]
        min_valid: Option<u32>,
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
        /// New port of the Redirect URL (authorization-code); register the new URL too.
        #[arg(long, value_name = "PORT")]
        redirect_port: Option<u16>,
        /// Refresh Token Lifespan of the Application Registry record (seconds, or 100d, 36h).
        #[arg(long, value_name = "DURATION", value_parser = parse_lifespan)]
        refresh_token_lifespan: Option<u64>,
        /// New readers, replacing the old list.
        #[command(flatten)]
        readers: ReaderArgs,
        /// Let anyone who can open the socket read its tokens (clears the readers).
        #[arg(long, conflicts_with_all = ["allow_user", "allow_group", "allow_unit"])]
        allow_anyone: bool,
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
        /// The token must stay valid this many seconds; refused when the
        /// tokens do not live that long. Without it: 300 s, or a quarter
        /// of the tokens' lifetime if that is shorter.
        #[arg(long, value_name = "SECS")]
        min_valid: Option<u32>,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Show the daemon's state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the daemon's database to FILE (mode 0600):
    /// sealed secrets only; the master key is not in it.
    Backup {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// Who may get an authentication's tokens, besides admins. None given:
/// anyone who can open the socket.
#[derive(clap::Args, Debug)]
struct ReaderArgs {
    /// A user who may get its tokens (name or uid); repeatable.
    #[arg(long, value_name = "USER")]
    allow_user: Vec<String>,
    /// A group whose members may get its tokens (name or gid); repeatable.
    #[arg(long, value_name = "GROUP")]
    allow_group: Vec<String>,
    /// A systemd unit whose processes may get its tokens (e.g. sync.service); repeatable.
    #[arg(long, value_name = "UNIT")]
    allow_unit: Vec<String>,
}

impl ReaderArgs {
    fn readers(self) -> Readers {
        Readers {
            users: self.allow_user,
            groups: self.allow_group,
            units: self.allow_unit,
        }
    }
}

/// The signing key of the jwt-bearer grant.
#[derive(clap::Args, Debug)]
struct JwtArgs {
    /// Private key that signs the assertions (jwt-bearer): PKCS#8, PEM or DER; a P-256
    /// EC key signs ES256, an RSA key RS256.
    #[arg(long, value_name = "FILE")]
    jwt_key: Option<PathBuf>,
    /// ServiceNow user the tokens act as (jwt-bearer).
    #[arg(long, value_name = "USER")]
    jwt_subject: Option<String>,
    /// Key id (`kid`) the JWT Verifier Map expects (jwt-bearer).
    #[arg(long, value_name = "KID")]
    jwt_kid: Option<String>,
}

impl JwtArgs {
    /// The JWT settings for `grant`, with the key read and checked; the
    /// flags are refused for other grants.
    fn settings(self, grant: Grant) -> Result<Option<(JwtSettings, jwtkey::JwtKey)>, Failure> {
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
        let key = jwtkey::read(&path).map_err(usage)?;
        let settings = JwtSettings {
            key: key.pkcs8.clone(),
            subject,
            kid: self.jwt_kid,
        };
        Ok(Some((settings, key)))
    }
}

/// What to paste into ServiceNow for a jwt-bearer authentication.
fn print_verifier_help(key: &jwtkey::JwtKey, path_hint: &str) {
    println!(
        "The JWT Verifier Map of the Application Registry record must hold a certificate for \
         this key ({}), uploaded to System Definition > Certificates; make one with:\n  \
         openssl req -new -x509 -key {path_hint} -subj /CN=snctl -days 825 -out snctl.crt\n\
         Public key:\n{}",
        key.alg,
        jwtkey::public_pem(&key.spki)
    );
}

/// How a person logs in (`add` of a password or authorization-code
/// authentication, and `login`).
#[derive(clap::Args, Debug)]
struct LoginArgs {
    /// ServiceNow user name (password grant) [default: prompt, or the last one used].
    #[arg(long)]
    username: Option<String>,
    /// Read the password from standard input (the line after the client secret,
    /// if that is read too) instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    /// Do not open a browser: print the URL and take the address the browser
    /// ends on, pasted back (headless hosts).
    #[arg(long)]
    no_browser: bool,
    /// How long to wait for the browser [default: 300].
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
}

impl LoginArgs {
    /// Options that do not apply to `grant` are refused rather than ignored.
    fn check(&self, grant: Grant) -> Result<(), Failure> {
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
enum GrantArg {
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

/// A lifespan under a day is legal but usually a unit mix-up.
fn note_short_lifespan(secs: Option<u64>) {
    if let Some(secs) = secs.filter(|s| *s < 86_400) {
        eprintln!(
            "note: a refresh-token lifespan of {secs} s is unusually short; the record's Refresh \
             Token Lifespan is in seconds (ServiceNow's default 8640000 is 100 days)"
        );
    }
}

/// Seconds, or a number with a unit: s, m, h, d.
fn parse_lifespan(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: give seconds, or e.g. 100d or 36h"))?;
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}: use s, m, h or d")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
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
    let outcome = match TokenArgs::quick(std::env::args_os().skip(1)) {
        Some(args) => print_token(&args.socket, &args.name, args.min_valid, args.json),
        None => run(Cli::parse()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("snctl: {}", failure.message);
            ExitCode::from(failure.code as u8)
        }
    }
}

/// The arguments of `snctl token`, read without clap.
#[derive(Debug, PartialEq)]
struct TokenArgs {
    socket: Option<PathBuf>,
    name: String,
    min_valid: Option<u32>,
    json: bool,
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
    fn quick(args: impl IntoIterator<Item = OsString>) -> Option<TokenArgs> {
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

/// The caller's `--min-valid`, which the daemon may refuse, or a default,
/// which bends to a short token lifetime.
fn min_valid_or(asked: Option<u32>, default_secs: u32) -> MinValid {
    asked.map_or(MinValid::Default(default_secs), MinValid::Required)
}

/// `snctl token`: only the token on stdout (or the JSON form).
fn print_token(
    socket: &Option<PathBuf>,
    name: &str,
    min_valid: Option<u32>,
    json: bool,
) -> Result<(), Failure> {
    let token = connect(socket)?.token_valid(name, min_valid_or(min_valid, 60))?;
    if json {
        print_json(&token)
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", token.access_token.expose())
            .and_then(|_| out.flush())
            .map_err(|e| other(format!("cannot write the token: {e}")))
    }
}

fn connect(cli_socket: &Option<PathBuf>) -> Result<Client, Failure> {
    let path = snctl_shared::paths::client_socket(cli_socket.as_deref());
    Ok(Client::connect_pipelined(&path)?)
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
            login,
            jwt,
            redirect_port,
            refresh_token_lifespan,
            readers,
        } => {
            snctl_shared::name::validate(&name).map_err(usage)?;
            note_short_lifespan(refresh_token_lifespan);
            let grant = Grant::from(grant);
            login.check(grant)?;
            let key_path = jwt
                .jwt_key
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let jwt = jwt.settings(grant)?;
            if let Some((_, key)) = &jwt {
                print_verifier_help(key, &key_path);
            }
            let mut stdin = StdinLines;
            let secret = read_secret(
                &mut stdin,
                client_secret_stdin,
                &format!("Client secret for {name}: "),
                "client secret",
            )?;
            let mut request = AddRequest {
                name: name.clone(),
                instance_url: instance,
                grant,
                client_id,
                client_secret: secret,
                client_auth: client_auth.into(),
                scope,
                user: None,
                redirect_port,
                refresh_lifespan_secs: refresh_token_lifespan,
                readers: readers.readers(),
                jwt: jwt.map(|(settings, _)| settings),
            };
            let summary = match grant {
                Grant::ClientCredentials | Grant::JwtBearer => {
                    connect(&cli.socket)?.add(request)?
                }
                Grant::Password => {
                    eprintln!(
                        "note: the password grant is deprecated by the OAuth security BCP (RFC 9700); \
                         prefer authorization-code for people, client-credentials for services"
                    );
                    request.user = Some(read_user(&mut stdin, &login, None)?);
                    connect(&cli.socket)?.add(request)?
                }
                Grant::AuthorizationCode => {
                    let start = StartLoginRequest {
                        name: name.clone(),
                        add: Some(request),
                        client_secret: None,
                    };
                    browser_login(&cli.socket, start, &login)?
                }
            };
            println!(
                "added {}: {} token valid until {}",
                summary.name,
                summary.grant.as_str(),
                time_or_dash(summary.access_expires_at)
            );
            print_login_user(&summary);
            print_login_deadline(&summary);
            Ok(())
        }
        Command::Login {
            name,
            login,
            client_secret_stdin,
            client_secret_prompt,
        } => {
            let current = connect(&cli.socket)?.show(&name)?;
            login.check(current.grant)?;
            let mut stdin = StdinLines;
            let client_secret =
                new_client_secret(&mut stdin, &name, client_secret_stdin, client_secret_prompt)?;
            let summary = match current.grant {
                Grant::Password => {
                    let known = current.login.as_ref().and_then(|l| l.username.as_deref());
                    let user = read_user(&mut stdin, &login, known)?;
                    connect(&cli.socket)?.login(LoginRequest {
                        name: name.clone(),
                        proof: LoginProof::Password(user),
                        client_secret,
                    })?
                }
                Grant::AuthorizationCode => {
                    let start = StartLoginRequest {
                        name: name.clone(),
                        add: None,
                        client_secret,
                    };
                    browser_login(&cli.socket, start, &login)?
                }
                Grant::ClientCredentials | Grant::JwtBearer => {
                    return Err(usage(format!(
                        "{name} uses the {} grant: no person logs in; use `snctl refresh {name}`",
                        current.grant.as_str()
                    )))
                }
            };
            println!(
                "logged in to {}: token valid until {}",
                summary.name,
                time_or_dash(summary.access_expires_at)
            );
            print_login_user(&summary);
            print_login_deadline(&summary);
            Ok(())
        }
        Command::Doctor { name, json } => {
            let diagnosis = connect(&cli.socket)?.doctor(&name)?;
            if json {
                print_json(&diagnosis)?;
            } else {
                print_diagnosis(&diagnosis);
            }
            match (diagnosis.works, diagnosis.needs_login) {
                (true, _) => Ok(()),
                (false, true) => Err(Failure {
                    code: ErrorKind::NeedsLogin.exit_code(),
                    message: format!("{name} needs a new login: run `snctl login {name}`"),
                }),
                (false, false) => Err(Failure {
                    code: ErrorKind::Upstream.exit_code(),
                    message: format!(
                        "{name} does not work: {}",
                        if json {
                            "see \"cause\" and \"fix\" in the diagnosis"
                        } else {
                            "see the likely cause above"
                        }
                    ),
                }),
            }
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
        } => print_token(&cli.socket, &name, min_valid, json),
        Command::Refresh { name } => {
            let summary = connect(&cli.socket)?.refresh(&name)?;
            println!(
                "refreshed {}: token valid until {}",
                summary.name,
                time_or_dash(summary.access_expires_at)
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
            redirect_port,
            refresh_token_lifespan,
            readers,
            allow_anyone,
        } => {
            note_short_lifespan(refresh_token_lifespan);
            let readers = readers.readers();
            let readers = (allow_anyone || !readers.is_empty()).then_some(readers);
            let client_secret = new_client_secret(
                &mut StdinLines,
                &name,
                client_secret_stdin,
                client_secret_prompt,
            )?;
            let summary = connect(&cli.socket)?.update(UpdateRequest {
                name,
                instance_url: instance,
                client_id,
                client_secret,
                client_auth: client_auth.map(Into::into),
                scope,
                redirect_port,
                refresh_lifespan_secs: refresh_token_lifespan,
                readers,
            })?;
            if summary.state == AuthState::NeedsLogin {
                println!(
                    "updated {0}; it still needs a new login: run `snctl login {0}`",
                    summary.name
                );
            } else {
                println!(
                    "updated {}: token valid until {}",
                    summary.name,
                    time_or_dash(summary.access_expires_at)
                );
            }
            if let Some(uri) = summary
                .login
                .as_ref()
                .and_then(|l| l.redirect_uri.as_ref())
                .filter(|_| redirect_port.is_some())
            {
                println!("register this Redirect URL on the Application Registry record: {uri}");
            }
            print_login_deadline(&summary);
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
            let token = connect(&cli.socket)?.token_valid(&name, min_valid_or(min_valid, 300))?;
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
        Command::Backup { file, force } => {
            if !force && file.symlink_metadata().is_ok() {
                return Err(other(format!(
                    "{} exists: give --force to replace it",
                    file.display()
                )));
            }
            let backup = connect(&cli.socket)?.backup()?;
            write_new_file(&file, &backup.bytes, force)
                .map_err(|e| other(format!("cannot write {}: {e}", file.display())))?;
            println!(
                "wrote a backup of {} bytes to {}: sealed secrets only",
                backup.bytes.len(),
                file.display()
            );
            println!(
                "the master key is not in it: it is {} on snctld's host; keep a copy of that key apart from the backup (whoever has both can read every secret)",
                backup.key.display()
            );
            Ok(())
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

/// Writes `bytes` to `path` (mode 0600) through a synced temporary file in
/// the same directory, so that `path` is never half written; an existing
/// `path` is replaced only when `replace`.
fn write_new_file(path: &std::path::Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if replace {
            std::fs::rename(&tmp, path)
        } else {
            // Fails when `path` appeared meanwhile: never overwritten.
            std::fs::hard_link(&tmp, path).and_then(|()| std::fs::remove_file(&tmp))
        }
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

/// Standard input read one line at a time, so that a script can pipe the
/// client secret and a password in one stream.
struct StdinLines;

impl StdinLines {
    fn next(&mut self, what: &str) -> Result<zeroize::Zeroizing<String>, Failure> {
        let mut line = zeroize::Zeroizing::new(String::new());
        let read = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| other(format!("cannot read the {what} from standard input: {e}")))?;
        if read == 0 {
            return Err(usage(format!(
                "standard input ended before the {what}: give one per line"
            )));
        }
        let trimmed = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(trimmed);
        Ok(line)
    }
}

/// A secret from standard input (for scripts) or a no-echo prompt; never argv.
fn read_secret(
    stdin: &mut StdinLines,
    from_stdin: bool,
    prompt: &str,
    what: &str,
) -> Result<Secret, Failure> {
    let secret = if from_stdin {
        stdin.next(what)?.to_string()
    } else {
        if !std::io::stdin().is_terminal() {
            return Err(usage(format!(
                "no terminal to prompt for the {what}: pipe it in with --{}-stdin",
                what.replace(' ', "-")
            )));
        }
        rpassword::prompt_password(prompt)
            .map_err(|e| other(format!("cannot read the {what}: {e}")))?
    };
    if secret.is_empty() {
        return Err(usage(format!("the {what} is empty")));
    }
    Ok(Secret::new(secret))
}

/// A new client secret, when asked for with `--client-secret-stdin` or
/// `--client-secret-prompt`.
fn new_client_secret(
    stdin: &mut StdinLines,
    name: &str,
    from_stdin: bool,
    prompt: bool,
) -> Result<Option<Secret>, Failure> {
    if !(from_stdin || prompt) {
        return Ok(None);
    }
    let prompt = format!("New client secret for {name}: ");
    read_secret(stdin, from_stdin, &prompt, "client secret").map(Some)
}

/// The user name (argument, prompt, or the one used last) and password.
fn read_user(
    stdin: &mut StdinLines,
    login: &LoginArgs,
    known: Option<&str>,
) -> Result<UserLogin, Failure> {
    let username = match (&login.username, known) {
        (Some(name), _) => name.trim().to_string(),
        (None, Some(name)) => name.to_string(),
        (None, None) if std::io::stdin().is_terminal() => {
            eprint!("ServiceNow user name: ");
            let mut name = String::new();
            std::io::stdin()
                .read_line(&mut name)
                .map_err(|e| other(format!("cannot read the user name: {e}")))?;
            name.trim().to_string()
        }
        (None, None) => return Err(usage("give the ServiceNow user with --username")),
    };
    if username.is_empty() {
        return Err(usage("the user name is empty: give --username"));
    }
    let password = read_secret(
        stdin,
        login.password_stdin,
        &format!("Password for {username}: "),
        "password",
    )?;
    Ok(UserLogin { username, password })
}

/// An authorization-code login: the daemon starts it, the browser consents,
/// the loopback listener catches the code, the daemon exchanges it.
fn browser_login(
    socket: &Option<PathBuf>,
    start: StartLoginRequest,
    login: &LoginArgs,
) -> Result<AuthSummary, Failure> {
    let name = start.name.clone();
    let adding = start.add.is_some();
    let challenge = connect(socket)?.start_login(start)?;
    let left = u64::try_from(challenge.expires_at - now_secs()).unwrap_or(0);
    let code = callback::wait_for_code(&callback::Authorize {
        name: &name,
        authorize_url: &challenge.authorize_url,
        redirect_uri: &challenge.redirect_uri,
        state: &challenge.state,
        timeout: Duration::from_secs(login.timeout.unwrap_or(300).min(left)),
        open_browser: !login.no_browser,
        adding,
    })
    .map_err(|e| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    })?;
    // A fresh connection: the first one sat idle while the person logged in.
    Ok(connect(socket)?.login(LoginRequest {
        name,
        proof: LoginProof::AuthorizationCode {
            code,
            state: challenge.state,
        },
        client_secret: None,
    })?)
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

fn describe_time(at: i64) -> String {
    format!("{} ({})", snctl_shared::time::utc(at), relative(at))
}

fn time_or_dash(at: Option<i64>) -> String {
    at.map(describe_time).unwrap_or_else(|| "-".into())
}

/// For a login by a person: who logged in. In a browser that is whoever
/// held it, so it is worth a look.
fn print_login_user(summary: &AuthSummary) {
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
fn print_login_deadline(summary: &AuthSummary) {
    if let Some(deadline) = summary.login.as_ref().and_then(|l| l.refresh_expires_at) {
        println!(
            "the login lasts until {}, the refresh-token lifespan: run `snctl login {}` before then",
            describe_time(deadline),
            summary.name
        );
    }
}

fn print_diagnosis(d: &Diagnosis) {
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

fn print_list(list: &[AuthSummary]) {
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
    println!("added:         {}", time(Some(a.created_at)));
}

fn describe_readers(r: &Readers) -> String {
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

fn print_status(s: &DaemonStatus) {
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

    /// What clap makes of `args`, as `snctl token`'s arguments.
    fn clap_token(args: &[&str]) -> Option<TokenArgs> {
        let cli = Cli::try_parse_from(std::iter::once("snctl").chain(args.iter().copied())).ok()?;
        match cli.command {
            Command::Token {
                name,
                min_valid,
                json,
            } => Some(TokenArgs {
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
