//! A stand-in browser for the end-to-end tests, run by snctl as
//! `BROWSER=fake-browser` → `fake-browser URL`: GETs the URL following
//! redirects (the fake instance's authorize endpoint answers 302 to snctl's
//! loopback callback) and exits 0 when the last answer is 2xx; otherwise it
//! prints the status and body on stderr and exits 1. Every request is
//! bounded in time, so it returns quickly.

use std::process::ExitCode;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::redirect::Policy;

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: fake-browser URL");
        return ExitCode::from(2);
    };
    match visit(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-browser: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Follows `url` to its last answer, which must be 2xx.
fn visit(url: &str) -> anyhow::Result<()> {
    let client = Client::builder()
        .redirect(Policy::limited(10))
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    let response = client.get(url).send()?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // The query may carry an authorization code: leave it out.
    let mut last = response.url().clone();
    last.set_query(None);
    let body = response.text().unwrap_or_default();
    anyhow::bail!("{last} answered {status}: {body}")
}
