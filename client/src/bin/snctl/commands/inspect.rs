//! The commands that only look: `list`, `show`, `status`, `metrics` and
//! `doctor`.

use std::path::Path;

use snctl::ErrorKind;

use super::connect;
use crate::cli;
use crate::failure::{other, Failure};
use crate::output::{
    print_diagnosis, print_json, print_list, print_show, print_status, prometheus_text,
};
use crate::prompt::write_file;

/// `snctl list`: the table, or JSON.
pub fn list(socket: Option<&Path>, args: cli::List) -> Result<(), Failure> {
    let list = connect(socket)?.list()?;
    if args.json {
        print_json(&list)
    } else if args.names {
        for summary in &list {
            println!("{}", summary.name);
        }
        Ok(())
    } else {
        print_list(&list);
        Ok(())
    }
}

/// `snctl show`: one authentication, never its secrets.
pub fn show(socket: Option<&Path>, args: cli::Show) -> Result<(), Failure> {
    let summary = connect(socket)?.show(&args.name)?;
    if args.json {
        print_json(&summary)
    } else {
        print_show(&summary);
        Ok(())
    }
}

/// `snctl metrics`: the OpenMetrics text on standard output, or the
/// Prometheus text format written atomically to `--output`.
pub fn metrics(socket: Option<&Path>, args: cli::Metrics) -> Result<(), Failure> {
    let text = connect(socket)?.metrics()?;
    match args.output {
        None => {
            print!("{text}");
            Ok(())
        }
        // node_exporter reads the file whenever it is scraped: never half
        // of one, and readable by its user.
        Some(file) => write_file(&file, prometheus_text(&text).as_bytes(), true, 0o644)
            .map_err(|e| other(format!("cannot write {}: {e}", file.display()))),
    }
}

/// `snctl status`: the daemon's state.
pub fn status(socket: Option<&Path>, args: cli::Status) -> Result<(), Failure> {
    let status = connect(socket)?.status()?;
    if args.json {
        print_json(&status)
    } else {
        print_status(&status);
        Ok(())
    }
}

/// `snctl doctor`: the checks, then an exit code that says whether it
/// works, needs a login, or fails at the instance.
pub fn doctor(socket: Option<&Path>, args: cli::Doctor) -> Result<(), Failure> {
    let cli::Doctor { name, json } = args;
    let diagnosis = connect(socket)?.doctor(&name)?;
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
