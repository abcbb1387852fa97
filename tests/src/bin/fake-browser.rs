//! A stand-in browser for the end-to-end tests, run by snctl as
//! `BROWSER=fake-browser` → `fake-browser URL`: GETs the URL following
//! redirects (the fake instance's authorize endpoint answers 302 to snctl's
//! loopback callback) and exits 0 when the last answer is 2xx; otherwise it
//! prints the status and body on stderr and exits 1. Every request is
//! bounded in time, so it returns quickly.
//!
//! Two hostile neighbours can come along, set by the environment:
//! - `FAKE_BROWSER_INTRUDER_UID=UID`: before the real visit, another local
//!   user who read the authorize URL (it is on the browser's command line)
//!   gets a code of their own with its `state` and delivers it to snctl's
//!   callback from a process running as UID (`fake-browser --deliver URL`,
//!   which needs root to switch users). That delivery must be answered 403,
//!   or the browser fails.
//! - `FAKE_BROWSER_IDLE_CONNECTIONS=N`: N connections to the callback port
//!   that send nothing stay open during the visit.
//!
//! snctl does not wait for its browser, so with `FAKE_BROWSER_REPORT=FILE`
//! the outcome is also written to FILE: `ok`, or the error.

use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context as _;
use reqwest::blocking::Client;
use reqwest::redirect::Policy;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, url] if flag == "--deliver" => deliver(url),
        [url] => visit(url),
        _ => {
            eprintln!("usage: fake-browser URL | fake-browser --deliver URL");
            return ExitCode::from(2);
        }
    };
    if let Ok(report) = std::env::var("FAKE_BROWSER_REPORT") {
        let outcome = match &result {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        // Whole or not at all: the test reads it as soon as it exists.
        let partial = format!("{report}.partial");
        let _ = std::fs::write(&partial, outcome).and_then(|()| std::fs::rename(&partial, &report));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-browser: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(policy: Policy) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .redirect(policy)
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?)
}

/// Follows `url` to its last answer, which must be 2xx.
fn visit(url: &str) -> anyhow::Result<()> {
    if let Ok(uid) = std::env::var("FAKE_BROWSER_INTRUDER_UID") {
        intrude(url, uid.parse().context("FAKE_BROWSER_INTRUDER_UID")?)?;
    }
    let _idle = idle_connections(url)?;
    let response = client(Policy::limited(10))?.get(url).send()?;
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

/// Gets a code of its own for the authorize URL and has a process running
/// as `uid` deliver it to the callback; the callback must refuse it.
fn intrude(url: &str, uid: u32) -> anyhow::Result<()> {
    let answer = client(Policy::none())?.get(url).send()?;
    let location = answer
        .headers()
        .get("location")
        .context("the authorize endpoint did not redirect")?
        .to_str()?
        .to_owned();
    let out = Command::new(std::env::current_exe()?)
        .args(["--deliver", &location])
        .gid(uid)
        .uid(uid)
        .output()
        .context("cannot run the intruder")?;
    let said = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        said.starts_with("403"),
        "the callback answered the intruder (uid {uid}) with {said:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// GETs `url` without following redirects and prints the status code.
fn deliver(url: &str) -> anyhow::Result<()> {
    let response = client(Policy::none())?.get(url).send()?;
    println!("{}", response.status().as_u16());
    Ok(())
}

/// The idle connections `FAKE_BROWSER_IDLE_CONNECTIONS` asks for, to the
/// port of the authorize URL's `redirect_uri`.
fn idle_connections(url: &str) -> anyhow::Result<Vec<TcpStream>> {
    let Ok(count) = std::env::var("FAKE_BROWSER_IDLE_CONNECTIONS") else {
        return Ok(Vec::new());
    };
    let url = reqwest::Url::parse(url)?;
    let redirect = url
        .query_pairs()
        .find(|(key, _)| key == "redirect_uri")
        .context("no redirect_uri in the authorize URL")?
        .1
        .into_owned();
    let redirect = reqwest::Url::parse(&redirect)?;
    let port = redirect.port().context("no port in the redirect_uri")?;
    (0..count.parse::<usize>()?)
        .map(|_| Ok(TcpStream::connect(("127.0.0.1", port))?))
        .collect()
}
