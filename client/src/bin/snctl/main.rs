//! `snctl`: the command line for snctld (README, "Commands").
//!
//! Every failure prints one line on stderr, `snctl: what happened: what to
//! do`, and exits with the documented code: 0 ok, 1 other, 2 usage,
//! 3 daemon unreachable, 4 not found, 5 needs login, 6 forbidden,
//! 7 upstream error. `snctl check` alone follows the monitoring-plugins
//! convention instead (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), its verdict
//! on standard output even for errors.
//!
//! The rooms: [`cli`] defines the commands and options, [`commands`] does
//! each, [`output`] prints what comes back, [`prompt`] reads secrets and
//! writes files, [`generate`] the man pages and completions, [`failure`] is the one error and its exit code, [`login`]
//! is the browser login's loopback end, [`jwtkey`] the jwt-bearer key.

mod cli;
mod commands;
mod failure;
mod generate;
mod jwtkey;
mod login;
mod output;
mod prompt;

use std::process::ExitCode;

use clap::Parser as _;

use cli::{Cli, Command, TokenArgs};
use failure::Failure;

fn main() -> ExitCode {
    // `snctl token` is read without clap: it is the path scripts run.
    let outcome = match TokenArgs::quick(std::env::args_os().skip(1)) {
        Some(args) => commands::token(
            args.socket.as_deref(),
            &args.name,
            args.min_valid,
            args.json,
        ),
        // `generate` is for packaging: apart, so that completions and
        // --help do not offer it.
        None if std::env::args_os().nth(1).is_some_and(|a| a == "generate") => {
            generate::run(generate::Generate::parse_from(std::env::args_os().skip(1)))
        }
        None => return run(parse()),
    };
    report(outcome)
}

/// The exit code of `outcome`, its error printed on stderr.
fn report(outcome: Result<(), Failure>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("snctl: {}", failure.message);
            ExitCode::from(failure.code as u8)
        }
    }
}

/// The command line, parsed; on a usage error clap explains and exits 2,
/// except for `snctl check`, whose monitoring system reads one UNKNOWN line
/// on standard output and exit code 3.
fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() && invokes_check(std::env::args_os().skip(1)) => {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let message = first.strip_prefix("error: ").unwrap_or(first);
            std::process::exit(i32::from(commands::unknown(&format!(
                "{message}: see snctl check --help"
            ))));
        }
        Err(error) => error.exit(),
    }
}

/// Whether the command named is `check` (after any `--socket PATH`).
fn invokes_check(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let mut args = args;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--socket") => {
                args.next();
            }
            Some(a) if a.starts_with('-') => {}
            Some(a) => return a == "check",
            None => return false,
        }
    }
    false
}

/// Hands the parsed command to the function that does it.
fn run(cli: Cli) -> ExitCode {
    let socket = cli.socket.as_deref();
    let outcome = match cli.command {
        // Its own exit codes, and its own output even for errors.
        Command::Check(args) => return ExitCode::from(commands::check(socket, &args)),
        Command::Add(args) => commands::add(socket, args),
        Command::Login(args) => commands::login(socket, args),
        Command::Doctor(args) => commands::doctor(socket, args),
        Command::List(args) => commands::list(socket, args),
        Command::Show(args) => commands::show(socket, args),
        Command::Token(args) => commands::token(socket, &args.name, args.min_valid, args.json),
        Command::Refresh(args) => commands::refresh(socket, args),
        Command::Update(args) => commands::update(socket, args),
        Command::Remove(args) => commands::remove(socket, args),
        Command::Exec(args) => commands::exec(socket, args),
        Command::Status(args) => commands::status(socket, args),
        Command::Backup(args) => commands::backup(socket, args),
        Command::Metrics(args) => commands::metrics(socket, args),
    };
    report(outcome)
}
