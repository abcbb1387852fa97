//! What each command does: connect, ask the daemon, print the answer.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use snctl::protocol::{
    AddRequest, AuthState, AuthSummary, Grant, LoginProof, LoginRequest, StartLoginRequest,
    UpdateRequest,
};
use snctl::{Client, ErrorKind, MinValid};

use crate::callback;
use crate::cli::{Cli, Command, LoginArgs};
use crate::failure::{other, usage, Failure};
use crate::output::*;
use crate::prompt::*;

/// A lifespan under a day is legal but usually a unit mix-up.
pub fn note_short_lifespan(secs: Option<u64>) {
    if let Some(secs) = secs.filter(|s| *s < 86_400) {
        eprintln!(
            "note: a refresh-token lifespan of {secs} s is unusually short; the record's Refresh \
             Token Lifespan is in seconds (ServiceNow's default 8640000 is 100 days)"
        );
    }
}

/// The caller's `--min-valid`, which the daemon may refuse, or a default,
/// which bends to a short token lifetime.
pub fn min_valid_or(asked: Option<u32>, default_secs: u32) -> MinValid {
    asked.map_or(MinValid::Default(default_secs), MinValid::Required)
}

/// `snctl token`: only the token on stdout (or the JSON form).
pub fn print_token(
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

pub fn connect(cli_socket: &Option<PathBuf>) -> Result<Client, Failure> {
    let path = snctl_shared::paths::client_socket(cli_socket.as_deref());
    Ok(Client::connect_pipelined(&path)?)
}

pub fn run(cli: Cli) -> Result<(), Failure> {
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

/// An authorization-code login: the daemon starts it, the browser consents,
/// the loopback listener catches the code, the daemon exchanges it.
pub fn browser_login(
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
