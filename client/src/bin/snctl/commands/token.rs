//! `snctl token` and `snctl exec`: an access token, printed or handed to a
//! command. `token` is the path scripts run once per API call, so it does
//! no more than connect, ask and print.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;

use snctl::MinValid;

use super::connect;
use crate::cli;
use crate::failure::{other, usage, Failure};
use crate::output::print_json;

/// The caller's `--min-valid`, which the daemon may refuse, or a default,
/// which bends to a short token lifetime.
fn min_valid_or(asked: Option<u32>, default_secs: u32) -> MinValid {
    asked.map_or(MinValid::Default(default_secs), MinValid::Required)
}

/// `snctl token`: only the token on stdout (or the JSON form).
pub fn token(
    socket: Option<&Path>,
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

/// `snctl exec`: replaces this process with the command, the token in its
/// environment; returns only when the command cannot be run.
pub fn exec(socket: Option<&Path>, args: cli::Exec) -> Result<(), Failure> {
    let cli::Exec {
        name,
        min_valid,
        command,
    } = args;
    let token = connect(socket)?.token_valid(&name, min_valid_or(min_valid, 300))?;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| usage("give a command after --"))?;
    let error = std::process::Command::new(program)
        .args(args)
        .env("SN_INSTANCE_URL", &token.instance_url)
        .env("SN_ACCESS_TOKEN", token.access_token.expose())
        // Ansible's servicenow.itsm reads its instance from SN_HOST (a URL
        // with its scheme) and its token from SN_ACCESS_TOKEN.
        .env("SN_HOST", &token.instance_url)
        .exec();
    // What a shell answers for a command it cannot find (127) or run (126).
    Err(match error.kind() {
        std::io::ErrorKind::NotFound => Failure {
            code: 127,
            message: format!("cannot run {program}: {error}: check its name, or give its path or fix PATH"),
        },
        std::io::ErrorKind::PermissionDenied => Failure {
            code: 126,
            message: format!("cannot run {program}: {error}: make it executable (chmod +x) or run it through its interpreter"),
        },
        _ => Failure {
            code: 126,
            message: format!("cannot run {program}: {error}"),
        },
    })
}
