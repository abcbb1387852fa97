//! End-to-end tests: the daemon (in-process or the built binary), real Unix
//! sockets, a real SQLite file in a temp dir, and the fake ServiceNow
//! instance over real HTTP on loopback.

mod access;
mod backup;
mod canary;
mod cli;
mod clocks;
mod crash;
mod disk;
mod doctor;
mod faults;
mod hostile;
mod jwt;
mod load;
mod logins;
mod metrics;
mod monitor;
mod proxy;
mod pyclient;
mod recipes;
mod refresh;
mod service;
mod socket;
mod storage;
mod upgrade;

use snctl_tests::harness::{CLIENT_ID, CLIENT_SECRET};

pub use snctl_tests::harness::add_request;

/// `snctl add NAME` (client credentials) for the fake's client against
/// `instance`, the client secret piped in.
pub fn add_by_secret(socket: &std::path::Path, instance: &str, name: &str) -> std::process::Output {
    let args = [
        "add",
        name,
        "--instance",
        instance,
        "--client-id",
        CLIENT_ID,
        "--client-secret-stdin",
    ];
    let stdin = format!("{CLIENT_SECRET}\n");
    snctl_tests::harness::snctl(socket, &args, Some(&stdin))
}

/// `snctl add NAME --grant password` against `instance`: the client secret
/// and `password` piped in, `--username` when `user` is given, then `extra`.
pub fn add_by_password(
    socket: &std::path::Path,
    instance: &str,
    name: &str,
    user: Option<&str>,
    password: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "add",
        name,
        "--grant",
        "password",
        "--instance",
        instance,
        "--client-id",
        CLIENT_ID,
        "--client-secret-stdin",
        "--password-stdin",
    ];
    if let Some(user) = user {
        args.extend(["--username", user]);
    }
    args.extend_from_slice(extra);
    let stdin = format!("{CLIENT_SECRET}\n{password}\n");
    snctl_tests::harness::snctl(socket, &args, Some(&stdin))
}

/// A fake instance, a daemon in a temp dir of its own, and `prod` added.
/// Fields drop in order: the daemon stops before its directory goes.
pub struct Prod {
    pub daemon: snctl_tests::harness::TestDaemon,
    pub dir: tempfile::TempDir,
    pub fake: snctl_tests::fake::FakeInstance,
}

impl Prod {
    /// With the default test configuration and fake.
    pub fn start() -> Prod {
        Prod::with(|_| {}, |_| {})
    }

    /// `prepare` sets the fake up before `prod` is added; `tune` adjusts the
    /// daemon's configuration.
    pub fn with(
        prepare: impl FnOnce(&snctl_tests::fake::FakeInstance),
        tune: impl FnOnce(&mut snctld::Config),
    ) -> Prod {
        let fake = snctl_tests::harness::fake();
        prepare(&fake);
        let dir = tempfile::tempdir().unwrap();
        let mut config = snctl_tests::harness::test_config(dir.path());
        tune(&mut config);
        let daemon = snctl_tests::harness::TestDaemon::start(config).unwrap();
        daemon
            .client()
            .add(add_request("prod", &fake.url()))
            .unwrap();
        Prod { daemon, dir, fake }
    }

    pub fn client(&self) -> snctl::Client {
        self.daemon.client()
    }
}
