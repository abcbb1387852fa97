//! `snctl`: the command line for snctld (DESIGN §7).
//!
//! Every failure prints one line on stderr, `snctl: what happened: what to
//! do`, and exits with the documented code: 0 ok, 1 other, 2 usage,
//! 3 daemon unreachable, 4 not found, 5 needs login, 6 forbidden,
//! 7 upstream error.

mod callback;
mod cli;
mod commands;
mod failure;
mod jwtkey;
mod output;
mod prompt;

use std::process::ExitCode;

use clap::Parser as _;

use cli::{Cli, TokenArgs};

fn main() -> ExitCode {
    let outcome = match TokenArgs::quick(std::env::args_os().skip(1)) {
        Some(args) => commands::print_token(&args.socket, &args.name, args.min_valid, args.json),
        None => commands::run(Cli::parse()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("snctl: {}", failure.message);
            ExitCode::from(failure.code as u8)
        }
    }
}
