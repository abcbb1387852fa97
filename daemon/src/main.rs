//! `snctld`: parse flags, take a socket systemd passed, fork when asked
//! (`--daemon`), build the configuration, open the state, bind the socket
//! (unless passed), run until SIGTERM or SIGINT, reloading the
//! configuration on SIGHUP. `snctld rekey` moves the stored secrets to a
//! new master key instead; `snctld restore` puts a backup in place;
//! `snctld check-config` only loads the configuration.
//! `snctld generate man DIR` writes the man pages (for packages).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use snctld::config::{Config, Mode, PathOverrides};
use snctld::logging::{LogFilterError, SetLogFilter};
use snctld::systemd::{self, Forked, PassedSocket, Service};

use snctld::VERSION;

/// Keeps ServiceNow OAuth tokens fresh and serves them over a Unix socket.
#[derive(Parser, Debug)]
#[command(version = VERSION, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Stay in the foreground. This is the default (for systemd and
    /// terminals); the flag exists so that unit files can say so.
    #[arg(long, conflicts_with = "daemon")]
    #[allow(dead_code)]
    foreground: bool,
    /// Fork into the background (for hosts without systemd). Returns once
    /// the daemon serves the socket (exit 0), or with its error (exit 1).
    /// Needs --pid-file. Logs go to --log-file, or nowhere without it.
    #[arg(long, requires = "pid_file")]
    daemon: bool,
    /// With --daemon: the daemon's pid, locked while it runs so that a
    /// second daemon with the same file refuses to start.
    #[arg(long, value_name = "PATH", requires = "daemon")]
    pid_file: Option<PathBuf>,
    /// With --daemon: append the log (stderr) to this file, created 0600.
    /// Without it the daemon's log is discarded; errors at start still
    /// reach the starting command.
    #[arg(long, value_name = "PATH", requires = "daemon")]
    log_file: Option<PathBuf>,
    /// Serve the whole host (system paths, the socket and admin groups)
    /// although not run as root: for the systemd unit's `User=snctld`.
    #[arg(long, global = true)]
    system: bool,
    /// Socket path [default: /run/snctld/snctld.sock as root or with
    /// --system, $XDG_RUNTIME_DIR/snctld/snctld.sock otherwise].
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// State directory holding the database and the key [default:
    /// /var/lib/snctld as root or with --system, $XDG_STATE_HOME/snctld
    /// otherwise].
    #[arg(long, value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Configuration file [default: /etc/snctld/snctld.toml as root or
    /// with --system, $XDG_CONFIG_HOME/snctld/snctld.toml otherwise, if
    /// present].
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Re-seal every stored secret under a new master key. Stop snctld
    /// first. The state directory's key is replaced in place; a key from
    /// $CREDENTIALS_DIRECTORY or [master_key] file needs --new-key-file.
    Rekey {
        /// Where to write the new key when the current one is a systemd
        /// credential or a configured key file (not overwritten if it
        /// exists); rekey then prints how to install it.
        #[arg(long, value_name = "PATH")]
        new_key_file: Option<PathBuf>,
    },
    /// Replace the database with a backup made by `snctl backup`. Stop
    /// snctld first. The backup is checked (integrity, schema, no object
    /// snctld did not create, that the master key opens it, and that every
    /// authentication's settings match their MAC under it) before anything
    /// is replaced; the previous database is kept as
    /// snctld.db.before-restore.
    Restore {
        /// Restore FILE although it belongs to another user or group or
        /// others may write it (whoever could write it could have edited
        /// it; check it first).
        #[arg(long)]
        force: bool,
        /// Restore a backup from an snctld that did not sign settings
        /// (schema 4 or older): its instance URLs and readers cannot be
        /// checked against the key and are trusted as they are.
        #[arg(long)]
        trust_old_backup: bool,
        /// The backup file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Read and check the configuration as a start or a SIGHUP would, and
    /// exit: 0 and nothing printed when it is valid, else its error in one
    /// line and 1. The unit runs it before sending SIGHUP, so that
    /// `systemctl reload` fails on a file the daemon would refuse.
    CheckConfig,
    /// Write the man pages, for packages.
    #[command(hide = true, subcommand)]
    Generate(Generate),
}

#[derive(Subcommand, Debug)]
enum Generate {
    /// Write snctld.8 and a page per command into DIR/man8, snctld.toml.5
    /// into DIR/man5.
    Man {
        /// The man page root, e.g. /usr/share/man (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Lines that may wait for the log writer. The queue's slots are allocated
/// up front: tracing-appender's default of 128k takes 4 MiB.
const LOG_LINES_QUEUED: usize = 4096;

/// The buffer the log thread gathers stderr lines in between flushes.
const LOG_BATCH_BYTES: usize = 64 * 1024;

/// Logs go to stderr, or straight to the journal when stderr is the
/// journal stream systemd connected (`JOURNAL_STREAM`), with priorities and
/// fields of their own ([`snctld::logging::JournalLayer`]).
/// The filter is `RUST_LOG`, else `-v`, else the configuration's `[log]
/// filter` (applied later through the returned setter, also on SIGHUP),
/// else `info`.
///
/// Lines are written by a thread of their own (the returned guard flushes
/// it when dropped): a request never waits for the disk or for a journal
/// that is slow to read, and an audit line costs the request path a
/// queue push. Nothing is dropped: once
/// [`LOG_LINES_QUEUED`] lines wait, writers wait too. The thread takes
/// what has queued, writes it (stderr lines in one write), and waits
/// [`snctld::logging::LOG_PACE`] before taking more
/// ([`snctld::logging::Paced`]).
fn init_logging(verbose: u8) -> (SetLogFilter, tracing_appender::non_blocking::WorkerGuard) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let fixed = from_env.is_some() || verbose > 0;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // Through `parse_filter`: see it and `tidy_filter` for why.
    let filter = from_env
        .as_deref()
        .and_then(|text| snctld::logging::parse_filter(text).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let journal = snctld::logging::stderr_is_journal();
    let non_blocking = || {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(LOG_LINES_QUEUED)
            .thread_name("snctld-log")
    };
    let socket = journal
        .then(|| {
            snctld::logging::JournalSocket::connect(std::path::Path::new(
                snctld::logging::JOURNAL_SOCKET,
            ))
            .ok()
        })
        .flatten();
    let guard = match socket {
        Some(socket) => {
            // One datagram per entry: paced, never merged.
            let (writer, guard) = non_blocking().finish(snctld::logging::Paced(socket));
            tracing_subscriber::registry()
                .with(filter)
                .with(snctld::logging::JournalLayer::new(writer))
                .init();
            guard
        }
        None => {
            // A batch of lines in one write.
            let (writer, guard) = non_blocking().finish(snctld::logging::Paced(
                std::io::BufWriter::with_capacity(LOG_BATCH_BYTES, std::io::stderr()),
            ));
            // Colours for a terminal only; journald stamps lines itself.
            let ansi = snctld::logging::colours(
                std::io::stderr().is_terminal(),
                journal,
                std::env::var_os("NO_COLOR").as_deref(),
            );
            let lines = tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi);
            let registry = tracing_subscriber::registry().with(filter);
            if journal {
                registry.with(lines.without_time()).init();
            } else {
                registry.with(lines).init();
            }
            guard
        }
    };
    let set_filter = Box::new(move |configured: Option<&str>| {
        if fixed {
            return Ok(false);
        }
        let text = configured.unwrap_or("info");
        let filter = snctld::logging::parse_filter(text)
            .map_err(|e| LogFilterError::Parse(text.to_string(), e.to_string()))?;
        handle
            .reload(filter)
            .map_err(|e| LogFilterError::Reload(e.to_string()))?;
        Ok(true)
    });
    (set_filter, guard)
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Command::Generate(Generate::Man { dir })) = &args.command {
        return match snctld::manual::write(Args::command(), dir) {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!(
                "cannot write the man pages into {}: {e}: check that it is a writable directory",
                dir.display()
            )),
        };
    }
    // `--daemon` runs in `/`: relative paths mean the starting directory.
    if let Err(error) = absolute_paths(&mut args) {
        return fail(&format!("{error:#}"));
    }
    if let Some(Command::CheckConfig) = args.command {
        return check_config(args);
    }
    // Before anything else, and before any thread: it edits the environment.
    let passed = match systemd::take_passed_socket() {
        Ok(passed) => passed,
        Err(error) => return fail(&format!("{error:#}")),
    };
    let ready_pipe = match daemon_mode(&args) {
        Ok(None) => None,
        Ok(Some(Forked::Daemon(pipe))) => Some(pipe),
        Ok(Some(Forked::Exit(code))) => return code,
        Err(error) => return fail(&format!("{error:#}")),
    };
    let (set_log_filter, log_guard) = init_logging(args.verbose);
    let service = Service::from_env(ready_pipe, Some(set_log_filter));
    let pid_file = args.pid_file.clone();
    let result = start(args, passed, &service);
    if let Some(path) = pid_file {
        systemd::remove_pid_file(&path);
    }
    // Every line logged so far is written before the last words below.
    drop(log_guard);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let line = format!("{error:#}");
            service.failed(&line);
            fail(&line)
        }
    }
}

/// One line on stderr, which journald also collects; not through tracing,
/// so that it shows whatever the log level.
fn fail(line: &str) -> ExitCode {
    eprintln!("snctld: {line}");
    ExitCode::FAILURE
}

/// `snctld check-config`: the configuration loaded as [`start`] and SIGHUP
/// load it ([`Config::load`]), nothing else opened; no notification to a
/// service manager, whose `NOTIFY_SOCKET` this process may have inherited.
fn check_config(args: Args) -> ExitCode {
    let mode = if args.system {
        Mode::System
    } else {
        Mode::detect()
    };
    let overrides = PathOverrides {
        socket: args.socket,
        state_dir: args.state_dir,
        config: args.config,
    };
    match Config::load(mode, overrides) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            let text = format!("{error:#}");
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            fail(&lines.join(" "))
        }
    }
}

/// `--daemon`: forks (see [`systemd::daemonize`]); paths made absolute
/// first, since the daemon runs in `/`.
fn daemon_mode(args: &Args) -> anyhow::Result<Option<Forked>> {
    if !args.daemon {
        return Ok(None);
    }
    if args.command.is_some() {
        anyhow::bail!("--daemon is for serving, not for a subcommand");
    }
    let pid_file = args
        .pid_file
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--daemon needs --pid-file PATH"))?;
    // The log file is created 0600, like everything the daemon makes.
    private_umask();
    Ok(Some(systemd::daemonize(
        pid_file,
        args.log_file.as_deref(),
    )?))
}

/// Files created from here on are for snctld's user only (umask 077).
fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Makes every path flag absolute, as the starting directory means them.
fn absolute_paths(args: &mut Args) -> anyhow::Result<()> {
    for path in [
        &mut args.socket,
        &mut args.state_dir,
        &mut args.config,
        &mut args.pid_file,
        &mut args.log_file,
    ]
    .into_iter()
    .flatten()
    {
        *path = std::path::absolute(&*path)
            .map_err(|e| anyhow::anyhow!("cannot make {} absolute: {e}", path.display()))?;
    }
    if let Some(
        Command::Rekey {
            new_key_file: Some(path),
        }
        | Command::Restore { file: path, .. },
    ) = &mut args.command
    {
        *path = std::path::absolute(&*path)?;
    }
    Ok(())
}

fn start(args: Args, passed: Option<PassedSocket>, service: &Service) -> anyhow::Result<()> {
    // Files the daemon creates are private unless it says otherwise.
    private_umask();
    // Before any key or secret is in memory.
    snctld::process::harden()
        .map_err(|e| anyhow::anyhow!("cannot turn off core dumps and ptrace access: {e}"))?;
    snctld::process::tune_allocator();
    let overrides = PathOverrides {
        socket: args.socket,
        state_dir: args.state_dir,
        config: args.config,
    };
    let mode = if args.system {
        Mode::System
    } else {
        Mode::detect()
    };
    let config = Config::load(mode, overrides)?;
    if let Some(Command::Rekey { new_key_file }) = args.command {
        let mut say = |text: &str| println!("{text}");
        let done = snctld::rekey::rekey(&config, new_key_file.as_deref(), &mut say)?;
        println!("{}", done.summary());
        return Ok(());
    }
    if let Some(Command::Restore {
        file,
        force,
        trust_old_backup,
    }) = args.command
    {
        let options = snctld::restore::Options {
            force,
            trust_old_backup,
        };
        let done = snctld::restore::restore(&config, &file, options)?;
        println!("{}", done.summary(&file));
        return Ok(());
    }
    match service.set_log_filter(config.log.filter.as_deref()) {
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot use log.filter"),
    }
    if let Some(passed) = &passed {
        if passed.path != config.socket {
            tracing::warn!(passed = %passed.path.display(), configured = %config.socket.display(),
                "systemd passed a socket at another path than the configured one: serving the passed one");
        }
    }
    let state = snctld::open_state(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let listener = match passed {
            Some(passed) => {
                tracing::info!(socket = %passed.path.display(), name = %passed.name, "using the socket systemd passed");
                snctld::server::Listener::adopt(passed.fd, passed.path)?
            }
            None => snctld::server::bind(
                &config.socket,
                config.socket_mode,
                config.socket_dir_mode,
                config.access.socket_group.as_deref(),
            )?,
        };
        snctld::run_with(config, state, listener, shutdown, service.clone()).await?;
        anyhow::Ok(())
    });
    // Tasks left after the grace (a request stuck upstream) are dropped,
    // not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Completes on SIGTERM or SIGINT. The handlers are installed here, at
/// once, so call it before the socket is served: a signal that came before
/// would kill the process instead of stopping it.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| anyhow::anyhow!("cannot listen for {name}: {e}"))
    };
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut int = listen(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argument_of_every_command_is_described() {
        let mut cmd = Args::command();
        cmd.build();
        let mut missing = vec![];
        for sub in std::iter::once(&cmd)
            .chain(cmd.get_subcommands())
            .chain(cmd.get_subcommands().flat_map(|s| s.get_subcommands()))
        {
            for arg in sub.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} {}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
