//! `snctl login`, and the browser login that it and `snctl add` of an
//! authorization-code authentication share.

use std::io::BufReader;
use std::path::Path;
use std::time::Duration;

use snctl::protocol::{AuthSummary, Grant, LoginProof, LoginRequest, StartLoginRequest};

use super::connect;
use crate::cli::{self, LoginArgs};
use crate::failure::{usage, Failure};
use crate::login::{wait_for_code, Authorize};
use crate::output::{now_secs, print_login_deadline, print_login_user, time_or_dash};
use crate::prompt::{new_client_secret, read_user, StdinLines};

/// `snctl login`: a new password, or a new browser login, as the
/// authentication's grant wants.
pub fn login(socket: Option<&Path>, args: cli::Login) -> Result<(), Failure> {
    let cli::Login {
        name,
        login,
        client_secret_stdin,
        client_secret_prompt,
    } = args;
    let current = connect(socket)?.show(&name)?;
    login.check(current.grant)?;
    let mut stdin = StdinLines;
    let client_secret =
        new_client_secret(&mut stdin, &name, client_secret_stdin, client_secret_prompt)?;
    let summary = match current.grant {
        Grant::Password => {
            let known = current.login.as_ref().and_then(|l| l.username.as_deref());
            let user = read_user(&mut stdin, &login, known)?;
            connect(socket)?.login(LoginRequest {
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
            browser_login(socket, start, &login)?
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

/// An authorization-code login: the daemon starts it, the browser consents,
/// the loopback listener catches the code, the daemon exchanges it.
pub(super) fn browser_login(
    socket: Option<&Path>,
    start: StartLoginRequest,
    login: &LoginArgs,
) -> Result<AuthSummary, Failure> {
    let name = start.name.clone();
    let adding = start.add.is_some();
    let challenge = connect(socket)?.start_login(start)?;
    let left = u64::try_from(challenge.expires_at - now_secs()).unwrap_or(0);
    let request = Authorize {
        name: &name,
        authorize_url: &challenge.authorize_url,
        redirect_uri: &challenge.redirect_uri,
        state: &challenge.state,
        timeout: Duration::from_secs(login.timeout.unwrap_or(300).min(left)),
        open_browser: !login.no_browser,
        adding,
    };
    // A browser on another machine: the person pastes the redirect address.
    let pasted = BufReader::new(std::io::stdin());
    let code = wait_for_code(&request, pasted).map_err(|e| Failure {
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
