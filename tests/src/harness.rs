//! Fixtures: a fake instance on a shared runtime, the daemon in-process on
//! a runtime of its own, and the built `snctl` / `snctld` binaries.
//!
//! Every fixture stops what it started when dropped: [`TestDaemon`] asks the
//! daemon to shut down and joins its thread; [`DaemonProcess`] sends SIGTERM
//! and waits (SIGKILL after a bound).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use snctld::config::Config;

use crate::fake::FakeInstance;

/// Client ID registered on every fake made by [`fake`].
pub const CLIENT_ID: &str = "3f1c0ffee0ddba11";
/// Its secret. Distinctive, so leak scans can look for it.
pub const CLIENT_SECRET: &str = "client-secret-CANARY-7d1e";

/// The runtime fakes run on.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// A fake instance with [`CLIENT_ID`] registered.
pub fn fake() -> FakeInstance {
    let fake = runtime()
        .block_on(FakeInstance::start())
        .expect("fake instance starts");
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    fake
}

/// A daemon configuration for tests: everything under `dir`, short
/// upstream timeouts, quick backoff.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::under(dir);
    config.http.connect_timeout = Duration::from_secs(5);
    config.http.request_timeout = Duration::from_secs(5);
    config.refresh.backoff_min = Duration::from_millis(500);
    config.refresh.backoff_max = Duration::from_secs(5);
    config
}

/// The daemon, in-process, on a runtime thread of its own.
pub struct TestDaemon {
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestDaemon {
    /// Starts a daemon with `config`; returns once it serves the socket, or
    /// the start-up error.
    pub fn start(config: Config) -> anyhow::Result<TestDaemon> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread_config = config.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let config = thread_config;
            let state = match snctld::open_state(&config) {
                Ok(state) => state,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{:#}", anyhow::Error::from(e))));
                    return Ok(());
                }
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = match snctld::server::bind(
                    &config.socket,
                    config.socket_mode,
                    config.socket_dir_mode,
                    config.access.socket_group.as_deref(),
                ) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(()));
                snctld::run(config, state, listener, async {
                    let _ = stop_rx.await;
                })
                .await?;
                Ok(())
            })
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(TestDaemon {
                config,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(message)) => {
                let _ = thread.join();
                Err(anyhow::anyhow!(message))
            }
            Err(_) => match thread.join() {
                Ok(result) => Err(result
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("daemon thread ended"))),
                Err(_) => Err(anyhow::anyhow!("daemon thread panicked")),
            },
        }
    }

    /// Starts a daemon in a new directory under `dir`.
    pub fn in_dir(dir: &Path) -> TestDaemon {
        TestDaemon::start(test_config(dir)).expect("daemon starts")
    }

    pub fn socket(&self) -> &Path {
        &self.config.socket
    }

    /// The names `list` shows to this process, in order.
    pub fn names(&self) -> Vec<String> {
        let list = self.client().list().expect("list");
        list.into_iter().map(|a| a.name).collect()
    }

    /// A connected client.
    pub fn client(&self) -> snctl::Client {
        snctl::Client::connect(&self.config.socket).expect("client connects")
    }

    /// Shuts down gracefully and returns how `run` ended.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("daemon thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Path of a binary built from this workspace (`snctl`, `snctld`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/e2e-xxxx or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace, or run the tests with cargo test --workspace)",
        path.display()
    );
    path
}

/// Runs `snctl ARGS` against `socket`, with `stdin` piped in.
pub fn snctl(socket: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    snctl_env(socket, args, stdin, &[])
}

/// [`snctl()`] with extra environment variables (e.g. `BROWSER`).
pub fn snctl_env(
    socket: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &std::ffi::OsStr)],
) -> Output {
    let mut child = Command::new(bin("snctl"))
        .args(args)
        .env("SNCTL_SOCKET", socket)
        .envs(env.iter().copied())
        .stdin(stdin_for(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("snctl runs");
    feed(&mut child, stdin);
    child.wait_with_output().expect("snctl finishes")
}

/// A piped standard input when there is `stdin` to give, else none.
pub fn stdin_for(stdin: Option<&str>) -> Stdio {
    if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    }
}

/// Writes `stdin` to a child spawned with [`stdin_for`] and closes it. A
/// child may exit (a usage error) before it reads: not a harness failure.
pub fn feed(child: &mut Child, stdin: Option<&str>) {
    use std::io::Write;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        if let Err(e) = pipe.write_all(input.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
    }
}

/// `snctld` as a child process.
pub struct DaemonProcess {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Where its stderr goes (appended to across restarts).
    pub log: PathBuf,
}

impl DaemonProcess {
    /// Starts `snctld --socket DIR/snctld.sock --state-dir DIR/state` and
    /// waits until the socket answers. Its log goes to `DIR/snctld.log`, at
    /// the level of the test's `RUST_LOG` (default warn).
    pub fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<DaemonProcess> {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        DaemonProcess::start_with(dir, extra, &filter, None)
    }

    /// [`DaemonProcess::start`] with `RUST_LOG` set to `filter` whatever the
    /// test's environment says, e.g. `"trace"` for a run whose log is
    /// searched for secrets.
    pub fn start_with_log_filter(
        dir: &Path,
        extra: &[&str],
        filter: &str,
    ) -> anyhow::Result<DaemonProcess> {
        DaemonProcess::start_with(dir, extra, filter, None)
    }

    /// [`DaemonProcess::start_with_log_filter`], and as `user` (uid, gid)
    /// when given, which takes root.
    pub fn start_with(
        dir: &Path,
        extra: &[&str],
        filter: &str,
        user: Option<(u32, u32)>,
    ) -> anyhow::Result<DaemonProcess> {
        use std::os::unix::process::CommandExt;
        DaemonProcess::start_configured(dir, extra, filter, |command| {
            if let Some((uid, gid)) = user {
                command.uid(uid).gid(gid);
            }
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no flush, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait; SIGKILL after 20 s. Returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl DaemonProcess {
    /// [`DaemonProcess::start_with_log_filter`], with `configure` adjusting
    /// the command before it is spawned (environment such as
    /// `NOTIFY_SOCKET`, or `env_remove("RUST_LOG")` so that the
    /// configuration's `[log] filter` counts).
    pub fn start_configured(
        dir: &Path,
        extra: &[&str],
        filter: &str,
        configure: impl FnOnce(&mut Command),
    ) -> anyhow::Result<DaemonProcess> {
        let socket = dir.join("snctld.sock");
        let state_dir = dir.join("state");
        let log = dir.join("snctld.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = Command::new(bin("snctld"));
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stderr(stderr);
        configure(&mut command);
        let child = command.spawn()?;
        let mut process = DaemonProcess {
            child: Some(child),
            socket,
            state_dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if snctl::Client::connect(&process.socket).is_ok() {
                return Ok(process);
            }
            if let Some(status) = process
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                process.child = None;
                anyhow::bail!(
                    "snctld exited with {status} before serving: {}",
                    process.log_text().trim_end()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!("snctld did not serve {} in time", process.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon, if it runs.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill with a pid we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }
}

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`), so that a test can [`wait_pid`] a daemon
/// that `snctld --daemon` left behind. Affects the whole test process:
/// orphans of other tests become its (harmless) zombies.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let done = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        done,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits up to `limit` for process `pid` (a child, or an orphan after
/// [`become_subreaper`]) to end; its exit code, `-signal` when a signal
/// killed it, `None` when it still runs (or is not ours to wait for).
pub fn wait_pid(pid: i32, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got == pid {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -libc::WTERMSIG(status)
            });
        }
        if got < 0 || Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago, for a Redirect URL.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    condition()
}

/// Every regular file under `dir`, read whole.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Stores `count` client-credentials authentications named
/// `load-00000`… for the fake's client at `instance_url`, each with an
/// access token valid for an hour, straight into the database under
/// `state_dir` (made, with its key, if missing) in one transaction. The
/// daemon must not be running. The tokens are not the instance's: they are
/// served, not used.
pub fn seed_authentications(
    state_dir: &Path,
    instance_url: &str,
    count: usize,
) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;

    use snctl::protocol::{ClientAuth, Grant};
    use snctl::Secret;
    use snctld::store::{Authentication, TokenSet};

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)?;
    let mut db = open_db(state_dir)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let items: Vec<(Authentication, TokenSet)> = (0..count)
        .map(|i| {
            let auth = Authentication {
                name: seeded_name(i),
                instance_url: instance_url.to_string(),
                grant: Grant::ClientCredentials,
                client_id: CLIENT_ID.to_string(),
                client_auth: ClientAuth::Form,
                scope: None,
                client_secret: Secret::new(CLIENT_SECRET.to_string()),
                created_at_ms: now_ms,
                username: None,
                redirect_port: None,
                refresh_lifespan_secs: 100 * 86_400,
                readers: Default::default(),
                jwt: None,
                proxy: false,
            };
            let tokens = TokenSet {
                access_token: Secret::new(format!("seeded-access-token-{i:05}")),
                expires_at_ms: now_ms + 3_600_000,
                obtained_at_ms: now_ms,
                refresh_token: None,
                refresh_issued_ms: None,
                obtained_boot: None,
            };
            (auth, tokens)
        })
        .collect();
    db.insert_all(items.iter().map(|(a, t)| (a, t)))?;
    Ok(())
}

/// The name of the `i`th authentication [`seed_authentications`] stores.
pub fn seeded_name(i: usize) -> String {
    format!("load-{i:05}")
}

/// Builds `snctl`, `snctld` and `fake-browser` beside the running program
/// (`cargo run` builds only the program itself), in its profile. Does
/// nothing outside `cargo run`.
pub fn build_binaries() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let exe = std::env::current_exe()?;
    let release = exe.parent().is_some_and(|d| d.ends_with("release"));
    println!(
        "building snctl and snctld ({})…",
        if release { "release" } else { "debug" }
    );
    // Two runs: `--bin` would filter the binaries of every package named.
    for targets in [
        &["-p", "snctl", "-p", "snctld"][..],
        &["-p", "snctl-tests", "--bin", "fake-browser"],
    ] {
        let mut cmd = Command::new(&cargo);
        cmd.args(["build", "--quiet"]).args(targets);
        if release {
            cmd.arg("--release");
        }
        anyhow::ensure!(cmd.status()?.success(), "building the binaries failed");
    }
    Ok(())
}

/// A `kB` field of `/proc/PID/status` (`"VmRSS:"`, `"RssAnon:"`,
/// `"VmHWM:"`), in KiB; 0 if the process or the field is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `dir/state` holding the database and master key of schema `version` as
/// kept in `tests/data/schema-N/` (see tests/data/README.md), with the
/// modes snctld expects (0700, 0600). Returns the state directory.
pub fn state_of_schema(dir: &Path, version: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("data/schema-{version}"));
    for file in ["snctld.db", "snctld.key"] {
        std::fs::copy(data.join(file), state.join(file)).unwrap();
        std::fs::set_permissions(state.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    state
}

/// The database under `state_dir` opened with the state directory's master
/// key (made if missing), as the daemon opens it. The daemon must not be
/// running.
pub fn open_db(state_dir: &Path) -> anyhow::Result<snctld::store::Db> {
    use snctld::store::{UncheckedDb, DB_FILE};
    let unchecked = UncheckedDb::open(&state_dir.join(DB_FILE))?;
    let check = unchecked.key_check()?;
    let (key, _) = snctld::crypto::load_master_key(
        &snctld::crypto::KeySources::state_dir(state_dir),
        check.as_deref(),
    )?;
    Ok(unchecked.prepare(std::sync::Arc::new(key))?)
}

/// An add request (client credentials) for the fake's registered client.
pub fn add_request(name: &str, instance: &str) -> snctl::protocol::AddRequest {
    use snctl::protocol::{AddRequest, ClientAuth, Grant};
    AddRequest {
        name: name.to_string(),
        instance_url: instance.to_string(),
        grant: Grant::ClientCredentials,
        client_id: CLIENT_ID.to_string(),
        client_secret: snctl::Secret::new(CLIENT_SECRET.to_string()),
        client_auth: ClientAuth::Form,
        scope: None,
        user: None,
        redirect_port: None,
        refresh_lifespan_secs: None,
        readers: Default::default(),
        jwt: None,
        proxy: false,
    }
}

/// The Python the client tests run: `SNCTL_TEST_PYTHON`, else the venv
/// `.ci/run` makes under target/, else `python3` from PATH.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("SNCTL_TEST_PYTHON") {
        return python.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}
