//! The benchmark: how close to the socket's floor a token comes, how rarely
//! the instance is asked, and what 10,000 authentications cost — all in one
//! run, on this machine, as ratios against figures measured in the same run.
//!
//! Run it with `cargo run --release -p snctl-tests --bin snctl-bench`
//! (`-- --quick` for a short smoke run; `-- --part round-trips|herd|steady|stored|idle|proxy`
//! for some parts only; `--clients N` for some round-trip levels only and
//! `--level-secs S` for the time each runs, to profile one; `--floor-timeouts`
//! to give the floors' sockets the timeouts the daemon's and the library's
//! have; `--slices` to print every slice of a row beside the medians;
//! `--slice-count N` for more slices per row).
//! BENCHMARKS.md explains the method.
//!
//! 1. The floor: a Unix-socket server, a blocking thread per connection,
//!    that reads a frame the size of a token request and answers with one
//!    the size of a token reply, both sides reading a frame as the daemon
//!    and the client library do; the same server as tasks on a tokio
//!    runtime (the async floor); and the daemon's token round trip through
//!    the client library on a warm token, the three in alternating slices.
//!    p50, p99 and throughput at 1, 16, 64 and 256 concurrent clients, each
//!    with its own connection.
//! 2. Upstream requests: 1,000 clients asking at once for an expired token,
//!    and a steady run with short token lifetimes.
//! 3. 10,000 authentications stored: time from starting `snctld` to the
//!    first token served, and its resident memory.
//! 4. 1,000 idle connections: what each costs the daemon once parked.
//! 5. The proxy: table GETs through it beside the same GETs straight to
//!    the fake instance, at 1 and 16 clients.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use snctl::protocol::{Hello, MinValid, Reply, Request, Response, TokenReply, TokenRequest};
use snctl_shared::frame::{self, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use snctl_tests::fake::{FakeInstance, Fault};
use snctl_tests::harness::{self, seed_authentications, DaemonProcess, CLIENT_ID, CLIENT_SECRET};

/// Concurrency levels of the round-trip runs.
const LEVELS: [usize; 4] = [1, 16, 64, 256];

struct Options {
    /// How long each round-trip level runs.
    level_time: Duration,
    /// Clients asking at once for an expired token.
    herd: usize,
    /// Length of the steady run.
    steady_time: Duration,
    /// Authentications stored for the start-up figure.
    stored: usize,
    /// The parts to run (`--part NAME`, repeatable): all when empty.
    parts: Vec<String>,
    /// The floor servers run in this process, beside the clients, instead
    /// of each in its own (`--floor-in-process`).
    floor_in_process: bool,
    /// The round-trip levels to run (`--clients N`, repeatable): all when
    /// empty.
    levels: Vec<usize>,
    /// Print every slice of a round-trip row, not only their medians
    /// (`--slices`).
    slices: bool,
    /// Alternating slices per row (`--slice-count N`, at least
    /// [`MIN_SLICES`]; [`SLICES`] unless given).
    slice_count: u32,
}

/// Set in the floor servers' environment by `--floor-timeouts`.
const FLOOR_TIMEOUTS_VAR: &str = "SNCTL_BENCH_FLOOR_TIMEOUTS";

/// `--floor-timeouts`: the floors' sockets wait with the timeouts the
/// daemon's connections (a request's wait and a reply's) and the client
/// library's (an answer's) wait with, so that the ratio shows what the
/// daemon adds beyond the timers those cost in the kernel (each blocking
/// wait under a timeout arms one). Read once: a floor client opening a
/// connection per request does not read the environment each time.
fn floor_timeouts() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(FLOOR_TIMEOUTS_VAR).is_some())
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().collect();
        if args.iter().any(|a| a == "--floor-timeouts") {
            // Inherited by the floors, in this process or their own.
            std::env::set_var(FLOOR_TIMEOUTS_VAR, "1");
        }
        let quick = args.iter().any(|a| a == "--quick");
        let parts = args
            .windows(2)
            .filter(|w| w[0] == "--part")
            .map(|w| w[1].clone())
            .collect();
        let levels = args
            .windows(2)
            .filter(|w| w[0] == "--clients")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        Options {
            level_time: args
                .windows(2)
                .find(|w| w[0] == "--level-secs")
                .and_then(|w| w[1].parse().ok())
                .map(Duration::from_secs_f64)
                .unwrap_or(Duration::from_millis(if quick { 300 } else { 3000 })),
            herd: 1000,
            steady_time: Duration::from_secs(if quick { 6 } else { 24 }),
            stored: 10_000,
            parts,
            levels,
            floor_in_process: args.iter().any(|a| a == "--floor-in-process"),
            slices: args.iter().any(|a| a == "--slices"),
            slice_count: args
                .windows(2)
                .find(|w| w[0] == "--slice-count")
                .and_then(|w| w[1].parse().ok())
                .map_or(SLICES, |n: u32| n.max(MIN_SLICES)),
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.parts.is_empty() || self.parts.iter().any(|p| p == part)
    }
}

/// Latencies, throughput and CPU cost of one run.
#[derive(Clone, Copy)]
struct Run {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
    requests: usize,
    /// CPU time of the clients (this process) per request.
    client_cpu: Duration,
    /// CPU time of the server's process per request, when it is another.
    server_cpu: Option<Duration>,
}

impl Run {
    fn from(mut latencies: Vec<Duration>, wall: Duration) -> Run {
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        Run {
            p50: at(0.50),
            p99: at(0.99),
            per_sec: latencies.len() as f64 / wall.as_secs_f64(),
            requests: latencies.len(),
            client_cpu: Duration::ZERO,
            server_cpu: None,
        }
    }
}

/// The median of `values` (not empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Opens a connection for a client thread.
type Connect<C> = Arc<dyn Fn() -> C + Send + Sync>;
/// One request on a connection.
type Once<C> = Arc<dyn Fn(&mut C) + Send + Sync>;

/// How one server is measured: its clients' connection and request, and
/// the server's process (for its CPU time), when it is not this one.
struct Side<C> {
    connect: Connect<C>,
    once: Once<C>,
    server: Option<u32>,
}

impl<C> Clone for Side<C> {
    fn clone(&self) -> Self {
        Side {
            connect: self.connect.clone(),
            once: self.once.clone(),
            server: self.server,
        }
    }
}

/// A connection to a floor server: kept, or `None` for a new one per request.
type EchoConn = Option<(UnixStream, Vec<u8>)>;

/// CPU time used so far by this process (all its threads, live or gone).
fn own_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time used so far by process `pid` (user and system, its threads
/// live or gone), from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a system setting.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_sec)
}

/// `clients` threads, each with a connection from `connect`, calling `once`
/// back to back for `time`; every call's latency counts.
fn measure<C: 'static>(clients: usize, time: Duration, connect: Connect<C>, once: Once<C>) -> Run {
    sample(
        clients,
        time,
        &Side {
            connect,
            once,
            server: None,
        },
    )
}

/// What [`measure`] measures, with the CPU time each side spent on it.
fn sample<C: 'static>(clients: usize, time: Duration, side: &Side<C>) -> Run {
    let start = Arc::new(Barrier::new(clients + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (connect, once, start, stop) = (
                side.connect.clone(),
                side.once.clone(),
                start.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut conn = connect();
                    // Warm the connection and the daemon's path first.
                    for _ in 0..10 {
                        once(&mut conn);
                    }
                    let mut latencies = Vec::with_capacity(100_000);
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        once(&mut conn);
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
                .expect("client thread")
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let (client_before, server_before) = (own_cpu(), side.server.map(process_cpu));
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for thread in threads {
        all.extend(thread.join().expect("client thread"));
    }
    let wall = began.elapsed();
    let (client_after, server_after) = (own_cpu(), side.server.map(process_cpu));
    let mut run = Run::from(all, wall);
    let per_request = |d: Duration| d / run.requests.max(1) as u32;
    run.client_cpu = per_request(client_after.saturating_sub(client_before));
    run.server_cpu = server_before
        .zip(server_after)
        .map(|(before, after)| per_request(after.saturating_sub(before)));
    run
}

/// Slices per row of [`side_by_side`] unless `--slice-count` says
/// otherwise. Each slice starts its clients and their connections afresh,
/// and on two cores each slice settles in a fast or a slow mode by where
/// the kernel puts each client's and server's threads (BENCHMARKS.md):
/// nine draws make the median the common mode far more surely than five.
const SLICES: u32 = 9;
/// The fewest slices a row may have.
const MIN_SLICES: u32 = 5;

/// The floors and the daemon at the same concurrency, in alternating
/// slices of `time / SLICES` each, so that whatever else the machine does
/// in the meantime (a core waking, a neighbour's burst) falls on all alike.
/// Each side's figures are the median of its slices; the ratios the median
/// of each slice's ratio ([`Row::ratio`]).
fn side_by_side<F: 'static, D: 'static>(
    clients: usize,
    time: Duration,
    count: u32,
    floors: &[Side<F>],
    daemon: &Side<D>,
) -> Row {
    let slice = time / count;
    let mut slices = Vec::new();
    for _ in 0..count {
        let mut runs: Vec<Run> = floors.iter().map(|f| sample(clients, slice, f)).collect();
        runs.push(sample(clients, slice, daemon));
        slices.push(runs);
    }
    Row { slices }
}

/// The runs of one row: per slice, the floors' and then the daemon's.
struct Row {
    slices: Vec<Vec<Run>>,
}

impl Row {
    /// The median over the slices of `figure` of side `i` (the daemon is
    /// the last).
    fn median(&self, i: usize, figure: impl Fn(&Run) -> f64) -> f64 {
        median(self.slices.iter().map(|s| figure(&s[i])).collect())
    }

    /// The median over the slices of `figure` of the daemon's run divided
    /// by that of floor `i`'s run in the same slice.
    fn ratio(&self, i: usize, figure: impl Fn(&Run) -> f64) -> f64 {
        median(
            self.slices
                .iter()
                .map(|s| figure(s.last().expect("the daemon's run")) / figure(&s[i]))
                .collect(),
        )
    }

    /// Each slice's throughput and CPU per round trip, side by side, in
    /// the order they ran (`--slices`).
    fn print_slices(&self) {
        let cpu = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64() * 1e6))
        };
        for (n, slice) in self.slices.iter().enumerate() {
            let sides: Vec<String> = slice
                .iter()
                .map(|r| {
                    format!(
                        "{:>7.0}/s {:>5} + {:>5} µs",
                        r.per_sec,
                        cpu(Some(r.client_cpu)),
                        cpu(r.server_cpu)
                    )
                })
                .collect();
            let token = slice.last().expect("the daemon's run");
            println!(
                "  slice {} | {} | token / floor {:.0} %",
                n + 1,
                sides.join(" | "),
                token.per_sec / slice[0].per_sec * 100.0
            );
        }
    }

    /// Side `i`'s median run, figure by figure.
    fn run(&self, i: usize) -> Run {
        let secs = |f: f64| Duration::from_secs_f64(f);
        Run {
            p50: secs(self.median(i, |r| r.p50.as_secs_f64())),
            p99: secs(self.median(i, |r| r.p99.as_secs_f64())),
            per_sec: self.median(i, |r| r.per_sec),
            requests: self.slices.iter().map(|s| s[i].requests).sum(),
            client_cpu: secs(self.median(i, |r| r.client_cpu.as_secs_f64())),
            server_cpu: self.slices[0][i]
                .server_cpu
                .map(|_| secs(self.median(i, |r| r.server_cpu.unwrap_or_default().as_secs_f64()))),
        }
    }
}

/// The floor: reads request-sized frames and answers each with a frame of
/// `reply_len` bytes, one blocking thread per connection: a round trip
/// with nothing but the socket in it.
fn echo_server(path: &Path, reply_len: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    let mut reply = (reply_len as u32).to_le_bytes().to_vec();
    reply.resize(4 + reply_len, 0x5a);
    let reply: Arc<[u8]> = reply.into();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if floor_timeouts() {
                let limits = snctld::server::Limits::default();
                let set = stream
                    .set_read_timeout(Some(limits.park_after))
                    .and_then(|()| stream.set_write_timeout(Some(limits.read_timeout)));
                if let Err(error) = set {
                    eprintln!("floor: cannot set a connection's timeouts: {error}");
                    continue;
                }
            }
            let reply = reply.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut buf = vec![0u8; frame::HEADER_LEN + MAX_REQUEST_FRAME];
                    while read_frame(&mut stream, &mut buf).is_ok() {
                        if stream.write_all(&reply).is_err() {
                            return;
                        }
                    }
                })
                .expect("echo thread");
        }
    });
    Ok(())
}

/// The same server as tasks on a tokio runtime (a task per connection, one
/// worker per core: how the daemon served connections before it gave each
/// a thread): what the socket costs once an async runtime schedules the
/// server's side.
fn async_echo_server(path: &Path, reply_len: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("echo runtime");
        runtime.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
            let mut reply = (reply_len as u32).to_le_bytes().to_vec();
            reply.resize(4 + reply_len, 0x5a);
            let reply: Arc<[u8]> = reply.into();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; frame::HEADER_LEN + MAX_REQUEST_FRAME];
                    loop {
                        // As `read_frame`, on the runtime.
                        let mut filled = 0;
                        while filled < frame::HEADER_LEN || filled < frame_len(&buf) {
                            match stream.read(&mut buf[filled..]).await {
                                Ok(n) if n > 0 => filled += n,
                                _ => return,
                            }
                            if filled >= frame::HEADER_LEN && frame_len(&buf) > buf.len() {
                                return;
                            }
                        }
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    });
    Ok(())
}

/// A floor server in a process of its own (this program run with
/// `--floor-server`), as the daemon is one: a round trip between two
/// processes switches address spaces, one between two threads of a process
/// does not.
struct FloorProcess(std::process::Child);

impl FloorProcess {
    /// Starts the `kind` (`thread` or `async`) floor on `path`, answering
    /// with `reply_len`-byte frames, and waits for its socket.
    fn start(kind: &str, path: &Path, reply_len: usize) -> anyhow::Result<FloorProcess> {
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["--floor-server", kind])
            .arg(path)
            .arg(reply_len.to_string())
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        let floor = FloorProcess(child);
        wait_for_socket(path, &format!("the {kind} floor server"))?;
        Ok(floor)
    }

    /// The child's side: serves until its standard input closes (the
    /// benchmark ended, however it ended).
    fn serve(kind: &str, path: &Path, reply_len: usize) -> anyhow::Result<()> {
        match kind {
            "thread" => echo_server(path, reply_len)?,
            "async" => async_echo_server(path, reply_len)?,
            _ => anyhow::bail!("unknown floor server {kind}"),
        }
        std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
        Ok(())
    }
}

/// Waits (10 s at most) until `what` accepts connections on `path`.
fn wait_for_socket(path: &Path, what: &str) -> anyhow::Result<()> {
    let began = Instant::now();
    while UnixStream::connect(path).is_err() {
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

impl Drop for FloorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The length of the frame that starts `buf` (its header's length and
/// payload's), once 4 bytes are in.
fn frame_len(buf: &[u8]) -> usize {
    let header: [u8; frame::HEADER_LEN] = buf[..frame::HEADER_LEN].try_into().expect("header");
    frame::HEADER_LEN + u32::from_le_bytes(header) as usize
}

/// Reads one frame into `buf` as the daemon and the client library read
/// one: whatever has come, until the frame is whole (one read when it came
/// whole). One request is in flight per connection, so nothing follows it.
fn read_frame(stream: &mut UnixStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < frame::HEADER_LEN || filled < frame_len(buf) {
        match stream.read(&mut buf[filled..])? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
        if filled >= frame::HEADER_LEN && frame_len(buf) > buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
    Ok(())
}

/// One round trip to the floor server: the request frame written as the
/// client library writes it, the reply read as it reads one.
fn echo_once(stream: &mut UnixStream, request: &[u8], buf: &mut Vec<u8>) {
    stream.write_all(request).expect("echo write");
    buf.resize(1024, 0);
    read_frame(stream, buf).expect("echo read");
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// A target and whether this run met it.
struct Verdict {
    what: String,
    met: bool,
}

fn verdict(what: String, met: bool) -> Verdict {
    Verdict { what, met }
}

fn fake_with_client() -> anyhow::Result<FakeInstance> {
    let fake = harness::runtime().block_on(FakeInstance::start())?;
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    Ok(fake)
}

/// A daemon in `dir` at the production log level, with room for the herd.
fn start_daemon(dir: &Path, max_connections: usize) -> anyhow::Result<DaemonProcess> {
    let config = dir.join("snctld.toml");
    std::fs::write(
        &config,
        format!("[server]\nmax_connections = {max_connections}\nmax_connections_per_user = {max_connections}\n"),
    )?;
    let config = config.to_string_lossy().into_owned();
    DaemonProcess::start_with_log_filter(dir, &["--config", &config], "info")
}

fn add(socket: &Path, fake: &FakeInstance, name: &str) -> anyhow::Result<()> {
    snctl::Client::connect(socket)?.add(harness::add_request(name, &fake.url()))?;
    Ok(())
}

/// Part 1: the floor and the daemon side by side.
fn round_trips(options: &Options, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    println!("\n== token round trip on a warm token, beside the socket floor");
    let fake = fake_with_client()?;
    let dir = tempfile::tempdir()?;
    let daemon = start_daemon(dir.path(), 1024)?;
    add(&daemon.socket, &fake, "prod")?;
    let token: TokenReply = snctl::Client::connect(&daemon.socket)?.token("prod")?;

    // Frames of exactly the sizes the daemon's exchange has.
    let request = frame::encode(
        &Request::Token(TokenRequest {
            name: "prod".into(),
            min_valid: MinValid::Default(60),
        }),
        MAX_REQUEST_FRAME,
    )?;
    let reply: Response = Ok(Reply::Token(token));
    let reply_len = frame::encode(&reply, MAX_RESPONSE_FRAME)?.len() - frame::HEADER_LEN;
    let echo_path = dir.path().join("echo.sock");
    let async_echo_path = dir.path().join("async-echo.sock");
    let floors = if options.floor_in_process {
        echo_server(&echo_path, reply_len)?;
        async_echo_server(&async_echo_path, reply_len)?;
        Vec::new()
    } else {
        vec![
            FloorProcess::start("thread", &echo_path, reply_len)?,
            FloorProcess::start("async", &async_echo_path, reply_len)?,
        ]
    };
    let failures = Arc::new(AtomicU64::new(0));
    let hello = frame::encode(
        &Hello {
            protocol_version: snctl::PROTOCOL_VERSION,
            client_version: "bench".into(),
        },
        MAX_REQUEST_FRAME,
    )?;
    println!(
        "frames: request {} bytes, reply {} bytes (with their 4-byte headers)",
        request.len(),
        reply_len + frame::HEADER_LEN
    );
    println!(
        "floor: a blocking thread per connection (as the daemon serves them); async floor: the same as tasks on a tokio runtime; {}",
        if options.floor_in_process {
            "both in the benchmark's own process (--floor-in-process)"
        } else {
            "each its own process, as the daemon is"
        }
    );
    if floor_timeouts() {
        println!(
            "--floor-timeouts: the floors' sockets wait under the daemon's and the client library's timeouts"
        );
    }
    println!(
        "each row: the median of {} alternating slices; ratios: the median of the slices' ratios",
        options.slice_count
    );
    println!(
        "{:>7} | {:>9} {:>9} {:>7} | {:>9} {:>9} {:>7} | {:>9} {:>9} {:>7} | {:>5} {:>5} {:>4} | {:>5} {:>5} {:>4}",
        "clients", "floor p50", "p99", "req/s", "async p50", "p99", "req/s", "token p50", "p99", "req/s",
        "p50×", "p99×", "thr", "p50×", "p99×", "thr"
    );
    println!("{:>97}{:>20}", "(token / floor)", "(token / async)");
    let floor_pids: Vec<Option<u32>> = match &floors {
        f if f.is_empty() => vec![None, None],
        f => f.iter().map(|p| Some(p.0.id())).collect(),
    };
    let floor_sides = |fresh: bool| -> Vec<Side<EchoConn>> {
        [echo_path.clone(), async_echo_path.clone()]
            .into_iter()
            .zip(&floor_pids)
            .map(|(path, &server)| {
                let (request, hello) = (request.clone(), hello.clone());
                let open = move |path: &Path| {
                    let mut s = UnixStream::connect(path).expect("connect to the floor");
                    if floor_timeouts() {
                        s.set_read_timeout(Some(snctl::DEFAULT_TIMEOUT))
                            .and_then(|()| s.set_write_timeout(Some(snctl::DEFAULT_TIMEOUT)))
                            .expect("the floor connection's timeouts");
                    }
                    let mut buf = Vec::new();
                    // The same handshake the daemon's clients make.
                    echo_once(&mut s, &hello, &mut buf);
                    (s, buf)
                };
                let open_too = open.clone();
                let path_too = path.clone();
                let connect: Connect<EchoConn> = Arc::new(move || (!fresh).then(|| open(&path)));
                let once: Once<EchoConn> = Arc::new(move |conn| match conn {
                    Some((s, buf)) => echo_once(s, &request, buf),
                    None => {
                        let (mut s, mut buf) = open_too(&path_too);
                        echo_once(&mut s, &request, &mut buf);
                    }
                });
                Side {
                    connect,
                    once,
                    server,
                }
            })
            .collect()
    };
    let daemon_side = |fresh: bool| -> Side<Option<snctl::Client>> {
        let socket: PathBuf = daemon.socket.clone();
        let socket_too = socket.clone();
        let failures = failures.clone();
        Side {
            connect: Arc::new(move || {
                (!fresh).then(|| snctl::Client::connect(&socket).expect("connect to snctld"))
            }),
            once: Arc::new(move |conn| {
                let ok = match conn {
                    Some(client) => client.token("prod"),
                    None => snctl::Client::connect(&socket_too).and_then(|mut c| c.token("prod")),
                };
                if ok.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }),
            server: daemon.pid(),
        }
    };
    let mut cpu_rows = Vec::new();
    for clients in LEVELS {
        if !options.levels.is_empty() && !options.levels.contains(&clients) {
            continue;
        }
        let row = side_by_side(
            clients,
            options.level_time,
            options.slice_count,
            &floor_sides(false),
            &daemon_side(false),
        );
        let (floor, async_floor, token) = (row.run(0), row.run(1), row.run(2));
        let ratios = |i| {
            (
                row.ratio(i, |r| r.p50.as_secs_f64()),
                row.ratio(i, |r| r.p99.as_secs_f64()),
                row.ratio(i, |r| r.per_sec) * 100.0,
            )
        };
        let ((p50, p99, thr), (a50, a99, athr)) = (ratios(0), ratios(1));
        println!(
            "{clients:>7} | {:>9} {:>9} {:>7.0} | {:>9} {:>9} {:>7.0} | {:>9} {:>9} {:>7.0} | {p50:>5.2} {p99:>5.2} {thr:>3.0}% | {a50:>5.2} {a99:>5.2} {athr:>3.0}%",
            micros(floor.p50), micros(floor.p99), floor.per_sec,
            micros(async_floor.p50), micros(async_floor.p99), async_floor.per_sec,
            micros(token.p50), micros(token.p99), token.per_sec,
        );
        if options.slices {
            row.print_slices();
        }
        cpu_rows.push((clients, [floor, async_floor, token]));
        match clients {
            1 => verdicts.push(verdict(
                format!("token p50 at 1 client ≤ 1.2× the floor: {p50:.2}× (async floor: {a50:.2}×)"),
                p50 <= 1.2,
            )),
            16 => verdicts.push(verdict(
                format!("throughput at 16 clients ≥ 80 % of the floor's: {thr:.0} % (async floor: {athr:.0} %)"),
                thr >= 80.0,
            )),
            64 => {
                verdicts.push(verdict(
                    format!("throughput at 64 clients ≥ 80 % of the floor's: {thr:.0} % (async floor: {athr:.0} %)"),
                    thr >= 80.0,
                ));
                verdicts.push(verdict(
                    format!("token p99 at 64 clients ≤ 2× the floor: {p99:.2}× (async floor: {a99:.2}×)"),
                    p99 <= 2.0,
                ));
            }
            _ => {}
        }
    }
    // Where the time goes: CPU per round trip on each side, the clients'
    // (this process) and the server's.
    println!("CPU per round trip (µs, medians of the slices): clients + server");
    println!(
        "{:>7} | {:>15} | {:>15} | {:>15}",
        "clients", "floor", "async floor", "token"
    );
    let cpu = |r: &Run| match r.server_cpu {
        Some(server) => format!(
            "{:.2} + {:.2}",
            r.client_cpu.as_secs_f64() * 1e6,
            server.as_secs_f64() * 1e6
        ),
        None => format!("{:.2} (both)", r.client_cpu.as_secs_f64() * 1e6),
    };
    for (clients, [floor, async_floor, token]) in &cpu_rows {
        println!(
            "{clients:>7} | {:>15} | {:>15} | {:>15}",
            cpu(floor),
            cpu(async_floor),
            cpu(token)
        );
    }
    // What a process such as `snctl token` pays: a new connection, the
    // hello and one request.
    let row = side_by_side(
        1,
        options.level_time,
        options.slice_count,
        &floor_sides(true),
        &daemon_side(true),
    );
    println!(
        "new connection + hello + token, 1 client: floor p50 {}, async floor {}, token {} ({:.2}× / {:.2}×)",
        micros(row.run(0).p50),
        micros(row.run(1).p50),
        micros(row.run(2).p50),
        row.ratio(0, |r| r.p50.as_secs_f64()),
        row.ratio(1, |r| r.p50.as_secs_f64()),
    );
    let failed = failures.load(Ordering::Relaxed);
    verdicts.push(verdict(
        format!("token requests that failed: {failed}"),
        failed == 0,
    ));
    println!(
        "upstream token requests during the round trips: {} (the first token only)",
        fake.token_requests()
    );
    Ok(())
}

/// Part 2a: `herd` clients ask at once for an expired token.
fn herd(options: &Options, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    println!(
        "\n== {} clients ask at once for an expired token",
        options.herd
    );
    let fake = fake_with_client()?;
    fake.set_access_lifetime(1);
    let dir = tempfile::tempdir()?;
    let mut daemon = start_daemon(dir.path(), options.herd + 64)?;
    add(&daemon.socket, &fake, "herd")?;
    // Stopped while the token expires; then the instance is slow to answer,
    // so that every client arrives while the refresh is in flight.
    daemon.stop();
    std::thread::sleep(Duration::from_millis(1500));
    fake.set_access_lifetime(1800);
    fake.push_fault(Fault::Delay(Duration::from_millis(500)));
    let before = fake.token_requests();
    let socket = daemon.socket.clone();
    let ready = Arc::new(Barrier::new(options.herd + 1));
    let clients: Vec<_> = (0..options.herd)
        .map(|_| {
            let (socket, ready) = (socket.clone(), ready.clone());
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    ready.wait();
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        match snctl::Client::connect(&socket) {
                            Ok(mut client) => {
                                return client
                                    .token_with("herd", Duration::from_secs(60))
                                    .map(|t| t.access_token.expose().to_string())
                                    .map_err(|e| e.to_string())
                            }
                            Err(_) if Instant::now() < deadline => {
                                std::thread::sleep(Duration::from_millis(2))
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                })
                .expect("client thread")
        })
        .collect();
    ready.wait();
    let dir_path = dir.path().to_path_buf();
    let config = dir_path.join("snctld.toml").to_string_lossy().into_owned();
    let _daemon = DaemonProcess::start_with_log_filter(&dir_path, &["--config", &config], "info")?;
    let mut tokens = std::collections::HashSet::new();
    let mut errors = Vec::new();
    for client in clients {
        match client.join().expect("client thread") {
            Ok(token) => {
                tokens.insert(token);
            }
            Err(e) => errors.push(e),
        }
    }
    let upstream = fake.token_requests() - before;
    println!(
        "{} clients served, {} errors, {} distinct token(s); upstream token requests: {upstream}",
        options.herd - errors.len(),
        errors.len(),
        tokens.len()
    );
    if let Some(e) = errors.first() {
        println!("first error: {e}");
    }
    verdicts.push(verdict(
        format!(
            "1 upstream request for {} callers of an expired token: {upstream}",
            options.herd
        ),
        upstream == 1 && errors.is_empty(),
    ));
    Ok(())
}

/// Part 2b: a steady load on authentications whose tokens live 4 s.
fn steady(options: &Options) -> anyhow::Result<()> {
    const AUTHS: usize = 8;
    const LIFETIME: u64 = 4;
    println!(
        "\n== steady run: {AUTHS} authentications, tokens living {LIFETIME} s, 16 clients, {} s",
        options.steady_time.as_secs()
    );
    let fake = fake_with_client()?;
    fake.set_access_lifetime(LIFETIME);
    let dir = tempfile::tempdir()?;
    let daemon = start_daemon(dir.path(), 1024)?;
    for i in 0..AUTHS {
        add(&daemon.socket, &fake, &format!("steady-{i}"))?;
    }
    let before = fake.token_requests();
    let socket = daemon.socket.clone();
    let failed = Arc::new(AtomicU64::new(0));
    let counted = failed.clone();
    let run = measure(
        16,
        options.steady_time,
        Arc::new(move || (snctl::Client::connect(&socket).expect("connect"), 0usize)),
        Arc::new(move |(client, i): &mut (snctl::Client, usize)| {
            *i += 1;
            if client
                .token_with(&format!("steady-{}", *i % AUTHS), Duration::from_secs(1))
                .is_err()
            {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }),
    );
    let upstream = fake.token_requests() - before;
    let lifetimes = options.steady_time.as_secs_f64() / LIFETIME as f64;
    println!(
        "{} tokens asked for, {} failed; upstream token requests: {upstream} = {:.2} per authentication per token lifetime \
         (the daemon refreshes at 75 % of a lifetime: 1.33 is the design)",
        run.requests,
        failed.load(Ordering::Relaxed),
        upstream as f64 / AUTHS as f64 / lifetimes
    );
    Ok(())
}

/// Part 3: start-up and memory with many authentications stored.
fn stored(options: &Options, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    println!(
        "\n== {} authentications stored: start to first token, memory",
        options.stored
    );
    let fake = fake_with_client()?;
    let dir = tempfile::tempdir()?;
    seed_authentications(&dir.path().join("state"), &fake.url(), options.stored)?;
    let socket = dir.path().join("snctld.sock");
    let started = Instant::now();
    let mut child = std::process::Command::new(harness::bin("snctld"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("snctld.log"))?)
        .spawn()?;
    let last = harness::seeded_name(options.stored - 1);
    let serving = loop {
        if let Ok(mut client) = snctl::Client::connect(&socket) {
            if client.token(&last).is_ok() {
                break started.elapsed();
            }
        }
        if started.elapsed() > Duration::from_secs(30) || child.try_wait()?.is_some() {
            anyhow::bail!(
                "snctld did not serve with {} authentications",
                options.stored
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let pid = child.id();
    let rss = harness::proc_status_kib(pid, "VmRSS:");
    let hwm = harness::proc_status_kib(pid, "VmHWM:");
    // A full listing, and memory again.
    let anon = harness::proc_status_kib(pid, "RssAnon:");
    let listed = snctl::Client::connect(&socket)?.list()?.len();
    // The daemon returns what the listing took once it has sent it.
    std::thread::sleep(Duration::from_millis(200));
    let rss_listed = harness::proc_status_kib(pid, "VmRSS:");
    let anon_listed = harness::proc_status_kib(pid, "RssAnon:");
    // SAFETY: kill with the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    child.wait()?;
    println!(
        "first token {:.0} ms after start; RSS {:.1} MiB ({:.1} MiB of it heap and stacks; peak {:.1} MiB), \
         {:.1} MiB ({:.1} MiB) after listing all {listed}",
        serving.as_secs_f64() * 1e3,
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_listed as f64 / 1024.0,
        anon_listed as f64 / 1024.0,
    );
    verdicts.push(verdict(
        format!(
            "serving {:.0} ms after start with {} authentications (≤ 300 ms)",
            serving.as_secs_f64() * 1e3,
            options.stored
        ),
        serving <= Duration::from_millis(300),
    ));
    verdicts.push(verdict(
        format!(
            "RSS with {} authentications ≤ 32 MiB: {:.1} MiB",
            options.stored,
            rss.max(rss_listed) as f64 / 1024.0
        ),
        rss.max(rss_listed) <= 32 * 1024,
    ));
    Ok(())
}

/// Part 4: what an idle connection costs the daemon: `IDLE` connections
/// opened (each greeted and given a token), then left idle until they are
/// parked and the threads that served them have left the pool.
fn idle(verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    const IDLE: usize = 1000;
    // `park_after` (1 s) and the blocking pool's keep-alive (tokio's 10 s),
    // with a margin.
    const SETTLE: Duration = Duration::from_secs(13);
    println!("\n== {IDLE} idle connections: the daemon's memory");
    let fake = fake_with_client()?;
    let dir = tempfile::tempdir()?;
    let daemon = start_daemon(dir.path(), 2 * IDLE)?;
    add(&daemon.socket, &fake, "prod")?;
    let pid = daemon
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no daemon pid"))?;
    // Warm: a token served, a connection's thread made and gone.
    snctl::Client::connect(&daemon.socket)?.token("prod")?;
    std::thread::sleep(SETTLE);
    let status = |key| harness::proc_status_kib(pid, key);
    let (rss0, anon0, threads0) = (status("VmRSS:"), status("RssAnon:"), status("Threads:"));
    let mut clients = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut client = snctl::Client::connect(&daemon.socket)?;
        client.token("prod")?;
        clients.push(client);
    }
    let threads_busy = status("Threads:");
    std::thread::sleep(SETTLE);
    let (rss1, anon1, threads1) = (status("VmRSS:"), status("RssAnon:"), status("Threads:"));
    // Still served: each connection asks once more.
    let failed = clients
        .iter_mut()
        .map(|c| c.token("prod"))
        .filter(Result::is_err)
        .count();
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 / IDLE as f64;
    println!(
        "before: RSS {:.1} MiB, {threads0} threads; {IDLE} connections open: {threads_busy} threads; \
         idle {:.0} s: RSS {:.1} MiB, {threads1} threads: {:.1} KiB RSS per connection ({:.1} KiB of it heap and stacks); \
         {failed} failed to ask again",
        rss0 as f64 / 1024.0,
        SETTLE.as_secs_f64(),
        rss1 as f64 / 1024.0,
        per(rss0, rss1),
        per(anon0, anon1),
    );
    verdicts.push(verdict(
        format!(
            "an idle connection costs ≤ 8 KiB: {:.1} KiB (RSS over {IDLE})",
            per(rss0, rss1)
        ),
        per(rss0, rss1) <= 8.0 && failed == 0,
    ));
    Ok(())
}

/// A keep-alive HTTP/1.1 connection sending one fixed request: the
/// benchmark's client of the instance and of the proxy.
/// A client's end of a connection, TCP or Unix.
trait Duplex: Read + Write + Send {}

impl<S: Read + Write + Send> Duplex for S {}

/// The relay floor's process ([`relay_floor`]).
struct RelayProcess(std::process::Child);

impl RelayProcess {
    fn start(path: &Path, daemon_socket: &Path, name: &str) -> anyhow::Result<RelayProcess> {
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("--relay-floor")
            .arg(path)
            .arg(daemon_socket)
            .arg(name)
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        let relay = RelayProcess(child);
        wait_for_socket(path, "the relay floor")?;
        Ok(relay)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct HttpConn<S> {
    stream: S,
    request: Arc<[u8]>,
    buf: Vec<u8>,
}

impl<S: Read + Write> HttpConn<S> {
    /// Sends the request and reads the answer whole (its head, then a
    /// `Content-Length` body or a chunked one); its status.
    fn once(&mut self) -> std::io::Result<u16> {
        self.stream.write_all(&self.request)?;
        self.buf.clear();
        let (status, head, length, chunked) = loop {
            self.fill()?;
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut slots);
            if let Ok(httparse::Status::Complete(n)) = parsed.parse(&self.buf) {
                let header = |name: &str| {
                    parsed
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let length: Option<usize> =
                    header("content-length").and_then(|l| l.trim().parse().ok());
                let chunked = header("transfer-encoding").is_some_and(|t| t.contains("chunked"));
                break (parsed.code.unwrap_or(0), n, length, chunked);
            }
        };
        match (length, chunked) {
            (Some(length), _) => {
                while self.buf.len() < head + length {
                    self.fill()?;
                }
            }
            // The chunked body ends with its last (empty) chunk.
            (None, true) => {
                while !self.buf[head..].ends_with(b"0\r\n\r\n") {
                    self.fill()?;
                }
            }
            (None, false) => {}
        }
        Ok(status)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk)? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }
}

/// The relay floor, in a process of its own (this program run with
/// `--relay-floor PATH DAEMON_SOCKET NAME`): plain HTTP/1.1 on a Unix socket,
/// each request forwarded to the instance with the bearer token added and
/// the answer streamed back, on the same HTTP server (hyper), client
/// (reqwest, pooled) and runtime as the daemon's proxy; without what the
/// proxy adds to that: the caller's credentials and readers, the token
/// looked up per request, headers cleaned both ways, a 401's refresh, a
/// 429's hold, the audit line. The token is asked of the daemon, once.
/// Serves until its standard input closes.
fn relay_floor(path: &Path, daemon_socket: &Path, name: &str) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let token = snctl::Client::connect(daemon_socket)?.token(name)?;
    let bearer = format!("Bearer {}", token.access_token.expose());
    let instance = token.instance_url.clone();
    let http = reqwest::Client::builder().build()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime.block_on(async { tokio::net::UnixListener::bind(path) })?;
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (http, bearer, instance) = (http.clone(), bearer.clone(), instance.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (http, bearer, instance) =
                            (http.clone(), bearer.clone(), instance.clone());
                        async move {
                            let target = format!(
                                "{instance}{}",
                                request.uri().path_and_query().map_or("/", |p| p.as_str())
                            );
                            let upstream = http
                                .request(request.method().clone(), target)
                                .header(reqwest::header::AUTHORIZATION, bearer)
                                .send()
                                .await;
                            let response: hyper::Response<_> = match upstream {
                                Ok(upstream) => {
                                    let upstream: hyper::Response<reqwest::Body> = upstream.into();
                                    upstream.map(|b| b.map_err(anyhow::Error::from).boxed_unsync())
                                }
                                Err(error) => {
                                    let mut response = hyper::Response::new(
                                        http_body_util::Full::new(bytes::Bytes::from(
                                            error.to_string(),
                                        ))
                                        .map_err(anyhow::Error::from)
                                        .boxed_unsync(),
                                    );
                                    *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                                    response
                                }
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

/// Part 5: table GETs through the proxy beside the same GETs straight to
/// the (fake) instance with the daemon's token, each client on a
/// keep-alive connection of its own.
fn proxy(options: &Options, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    const TABLE: &str = "/api/now/table/incident?sysparm_limit=1";
    println!("\n== table GETs through the proxy, beside the same GETs straight to the instance");
    let fake = fake_with_client()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("snctld.toml");
    std::fs::write(
        &config,
        "[server]\nmax_connections = 256\nmax_connections_per_user = 256\n[proxy]\nnames = [\"prod\"]\n",
    )?;
    let config = config.to_string_lossy().into_owned();
    let daemon = DaemonProcess::start_with_log_filter(dir.path(), &["--config", &config], "info")?;
    add(&daemon.socket, &fake, "prod")?;
    let socket = daemon
        .socket
        .parent()
        .map(|d| d.join("proxy").join("prod.sock"))
        .ok_or_else(|| anyhow::anyhow!("no socket directory"))?;
    wait_for_socket(&socket, "the proxy")?;
    let token = snctl::Client::connect(&daemon.socket)?.token("prod")?;
    let direct_request: Arc<[u8]> = format!(
        "GET {TABLE} HTTP/1.1\r\nHost: sn\r\nAuthorization: Bearer {}\r\n\r\n",
        token.access_token.expose()
    )
    .into_bytes()
    .into();
    let proxy_request: Arc<[u8]> = format!("GET {TABLE} HTTP/1.1\r\nHost: sn\r\n\r\n")
        .into_bytes()
        .into();
    let relay_socket = dir.path().join("relay.sock");
    let relay = RelayProcess::start(&relay_socket, &daemon.socket, "prod")?;
    let failures = Arc::new(AtomicU64::new(0));
    let port = fake.port();
    let http_side = |connect: Arc<dyn Fn() -> Box<dyn Duplex> + Send + Sync>,
                     request: Arc<[u8]>,
                     server: Option<u32>| {
        let failures = failures.clone();
        Side::<HttpConn<Box<dyn Duplex>>> {
            connect: Arc::new(move || HttpConn {
                stream: connect(),
                request: request.clone(),
                buf: Vec::new(),
            }),
            once: Arc::new(move |c| {
                if c.once().map_or(true, |status| status != 200) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }),
            server,
        }
    };
    let direct = http_side(
        Arc::new(move || {
            let stream =
                std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the instance");
            stream.set_nodelay(true).expect("nodelay");
            Box::new(stream)
        }),
        direct_request,
        None,
    );
    let relayed = http_side(
        Arc::new(move || {
            Box::new(UnixStream::connect(&relay_socket).expect("connect to the relay floor"))
        }),
        proxy_request.clone(),
        Some(relay.0.id()),
    );
    let proxied = http_side(
        Arc::new(move || Box::new(UnixStream::connect(&socket).expect("connect to the proxy"))),
        proxy_request,
        daemon.pid(),
    );
    println!(
        "relay floor: hyper and reqwest on a tokio runtime, as the proxy, forwarding with a fixed token and nothing else; its own process"
    );
    println!(
        "{:>7} | {:>10} {:>10} {:>7} | {:>10} {:>10} {:>7} | {:>10} {:>10} {:>7} | {:>8} {:>5} {:>5} | CPU per request: relay, proxy",
        "clients", "direct p50", "p99", "req/s", "relay p50", "p99", "req/s", "proxy p50", "p99", "req/s", "added", "thr", "/relay"
    );
    for clients in [1, 16] {
        let row = side_by_side(
            clients,
            options.level_time,
            options.slice_count,
            &[direct.clone(), relayed.clone()],
            &proxied,
        );
        let (d, r, p) = (row.run(0), row.run(1), row.run(2));
        // The median over the slices of what the proxy added to a GET.
        let added = median(
            row.slices
                .iter()
                .map(|s| s[2].p50.as_secs_f64() - s[0].p50.as_secs_f64())
                .collect(),
        );
        let thr = row.ratio(0, |r| r.per_sec) * 100.0;
        let relay_thr = row.ratio(1, |r| r.per_sec) * 100.0;
        let cpu = |r: &Run| r.server_cpu.unwrap_or_default().as_secs_f64() * 1e6;
        println!(
            "{clients:>7} | {:>10} {:>10} {:>7.0} | {:>10} {:>10} {:>7.0} | {:>10} {:>10} {:>7.0} | {:>5.3} ms {thr:>4.0}% {relay_thr:>4.0}% | {:.1} µs, {:.1} µs",
            micros(d.p50), micros(d.p99), d.per_sec,
            micros(r.p50), micros(r.p99), r.per_sec,
            micros(p.p50), micros(p.p99), p.per_sec,
            added * 1e3,
            cpu(&r),
            cpu(&p),
        );
        match clients {
            1 => verdicts.push(verdict(
                format!(
                    "the proxy adds ≤ 0.1 ms to a table GET: {:.3} ms",
                    added * 1e3
                ),
                added <= 0.1e-3,
            )),
            _ => verdicts.push(verdict(
                format!(
                    "proxy throughput at 16 clients ≥ 80 % of the relay floor's: {relay_thr:.0} % (of direct: {thr:.0} %)"
                ),
                relay_thr >= 80.0,
            )),
        }
    }
    let failed = failures.load(Ordering::Relaxed);
    verdicts.push(verdict(
        format!("table GETs that failed: {failed}"),
        failed == 0,
    ));
    Ok(())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {model}, Linux {}", kernel.trim())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, kind, path, reply_len] = &args[..] {
        if flag == "--floor-server" {
            return FloorProcess::serve(kind, Path::new(path), reply_len.parse()?);
        }
    }
    if let [_, flag, path, daemon_socket, name] = &args[..] {
        if flag == "--relay-floor" {
            return relay_floor(Path::new(path), Path::new(daemon_socket), name);
        }
    }
    harness::build_binaries()?;
    let options = Options::parse();
    if cfg!(debug_assertions) {
        println!("note: a debug build; the figures that count come from --release");
    }
    println!("machine: {}", machine());
    let mut verdicts = Vec::new();
    if options.runs("round-trips") {
        round_trips(&options, &mut verdicts)?;
    }
    if options.runs("herd") {
        herd(&options, &mut verdicts)?;
    }
    if options.runs("steady") {
        steady(&options)?;
    }
    if options.runs("stored") {
        stored(&options, &mut verdicts)?;
    }
    if options.runs("idle") {
        idle(&mut verdicts)?;
    }
    if options.runs("proxy") {
        proxy(&options, &mut verdicts)?;
    }
    println!("\n== targets");
    for v in &verdicts {
        println!("{} {}", if v.met { "met   " } else { "MISSED" }, v.what);
    }
    Ok(())
}
