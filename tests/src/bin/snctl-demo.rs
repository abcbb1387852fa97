//! The whole flow in one command, against the embedded fake instance:
//! start snctld in a temp dir, add an authentication, have several processes
//! fetch tokens, use one on the Table API, watch a refresh, restart the
//! daemon and carry on, log a person in through the browser flow (a
//! stand-in browser consents), ask `snctl doctor`, remove.
//!
//! Run it with `cargo run --release -p snctl-tests --bin snctl-demo`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use snctl_tests::harness::{self, snctl, snctl_env, wait_until, DaemonProcess};

const CLIENT_ID: &str = "demo-client";
const CLIENT_SECRET: &str = "demo-secret-never-shown";

fn step(text: &str) {
    println!("\n== {text}");
}

fn show_cmd(args: &[&str], out: &std::process::Output) {
    println!("$ snctl {}", args.join(" "));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

fn run(socket: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let out = snctl(socket, args, stdin);
    show_cmd(args, &out);
    anyhow::ensure!(
        out.status.success(),
        "snctl {} failed ({})",
        args.join(" "),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn short(token: &str) -> String {
    format!("{}… ({} chars)", &token[..token.len().min(12)], token.len())
}

fn main() -> anyhow::Result<()> {
    harness::build_binaries()?;
    let fake = harness::runtime().block_on(snctl_tests::fake::FakeInstance::start())?;
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    // Short-lived tokens so that a refresh happens during the demo.
    fake.set_access_lifetime(10);
    let dir = tempfile::tempdir()?;
    println!("fake ServiceNow instance: {}", fake.url());
    println!("state and socket under:   {}", dir.path().display());

    step("start snctld");
    let mut daemon = DaemonProcess::start(dir.path(), &[])?;
    let sock = daemon.socket.clone();
    println!(
        "snctld pid {} serving {}",
        daemon.pid().unwrap_or(0),
        sock.display()
    );

    step("register the OAuth client once (the secret is piped in, never on argv)");
    run(
        &sock,
        &[
            "add",
            "demo",
            "--instance",
            &fake.url(),
            "--client-id",
            CLIENT_ID,
            "--client-secret-stdin",
        ],
        Some(CLIENT_SECRET),
    )?;
    run(&sock, &["list"], None)?;

    step(
        "eight processes ask for a token at once (--min-valid: tokens live only 10 s in this demo)",
    );
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(harness::bin("snctl"))
                .args(["token", "demo", "--min-valid", "5"])
                .env("SNCTL_SOCKET", &sock)
                .output()
        })
        .collect();
    let mut tokens = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child?;
        anyhow::ensure!(out.status.success(), "snctl token failed");
        let token = String::from_utf8(out.stdout)?.trim_end().to_string();
        println!("process {i}: {}", short(&token));
        tokens.push(token);
    }
    anyhow::ensure!(
        tokens.iter().all(|t| t == &tokens[0]),
        "processes got different tokens"
    );
    println!(
        "all eight got the same token; the instance saw {} token request(s) in all",
        fake.token_requests()
    );

    step("use it on the Table API");
    let response = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()?
        .get(format!(
            "{}/api/now/table/incident?sysparm_limit=1",
            fake.url()
        ))
        .bearer_auth(&tokens[0])
        .send()?;
    println!(
        "GET /api/now/table/incident -> {} {}",
        response.status(),
        response.text()?
    );

    step("wait for snctld to refresh ahead of expiry (tokens live 10 s here)");
    anyhow::ensure!(
        wait_until(Duration::from_secs(20), || fake.tokens_issued() >= 2),
        "no refresh happened"
    );
    let fresh = run(&sock, &["token", "demo", "--min-valid", "5"], None)?;
    println!("new token: {}", short(fresh.trim_end()));
    run(&sock, &["show", "demo"], None)?;

    step("restart snctld: nothing to add again");
    anyhow::ensure!(daemon.stop(), "snctld did not stop cleanly");
    println!("snctld stopped (SIGTERM)");
    let daemon = DaemonProcess::start(dir.path(), &[])?;
    let after = run(&sock, &["token", "demo", "--min-valid", "5"], None)?;
    println!("token after restart: {}", short(after.trim_end()));
    run(&sock, &["status"], None)?;

    step("a person logs in: authorization code with PKCE, redirected to snctl's loopback listener");
    let port = harness::free_port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    fake.add_user("abel.tuter", "demo-password");
    fake.set_redirect_uri(CLIENT_ID, &redirect);
    println!("(in ServiceNow the admin registers {redirect} as the record's Redirect URL;");
    println!(" here a stand-in browser plays abel.tuter and clicks Allow)");
    let browser = harness::bin("fake-browser");
    let port = port.to_string();
    let args = [
        "add",
        "desk",
        "--grant",
        "authorization-code",
        "--instance",
        &fake.url(),
        "--client-id",
        CLIENT_ID,
        "--redirect-port",
        &port,
        "--client-secret-stdin",
    ];
    let out = snctl_env(
        &sock,
        &args,
        Some(CLIENT_SECRET),
        &[("BROWSER", browser.as_os_str())],
    );
    show_cmd(&args, &out);
    anyhow::ensure!(out.status.success(), "the browser login failed");
    run(&sock, &["list"], None)?;

    step("when something is wrong, doctor tells ServiceNow's one generic 401 apart");
    fake.set_client_credentials_enabled(false);
    let args = ["doctor", "demo"];
    let out = snctl(&sock, &args, None);
    show_cmd(&args, &out);
    fake.set_client_credentials_enabled(true);
    run(&sock, &["doctor", "demo"], None)?;

    step("remove: tokens revoked at the instance, then deleted");
    run(&sock, &["remove", "demo"], None)?;
    run(&sock, &["remove", "desk"], None)?;
    println!(
        "\ndone: the instance saw {} token request(s) in all, for {} handouts of the shared \
         token, two refreshes, a browser login and two doctor runs",
        fake.token_requests(),
        tokens.len() + 2
    );
    println!("snctld's log: {}", daemon.log.display());
    drop(daemon);
    Ok(())
}
