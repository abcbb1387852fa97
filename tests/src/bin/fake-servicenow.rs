//! The fake ServiceNow instance as a program, for trying snctl by hand:
//! `cargo run -p snctl-tests --bin fake-servicenow -- CLIENT_ID [LIFETIME_SECS [USER]]`.
//! The client secret is read from standard input (one line), then, with
//! USER, that user's password (the next line). Prints the URL and serves
//! until interrupted.

use std::io::BufRead;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let client_id = args.next().ok_or_else(|| {
        anyhow::anyhow!(
            "usage: fake-servicenow CLIENT_ID [LIFETIME_SECS [USER]] < secret [password]"
        )
    })?;
    let lifetime: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1800);
    let user = args.next();
    let mut stdin = std::io::stdin().lock();
    let mut secret = String::new();
    stdin.read_line(&mut secret)?;
    let runtime = snctl_tests::harness::runtime();
    let fake = runtime.block_on(snctl_tests::fake::FakeInstance::start())?;
    fake.add_client(&client_id, secret.trim_end());
    if let Some(user) = user {
        let mut password = String::new();
        stdin.read_line(&mut password)?;
        fake.add_user(&user, password.trim_end());
    }
    fake.set_access_lifetime(lifetime);
    println!("{}", fake.url());
    runtime.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    Ok(())
}
