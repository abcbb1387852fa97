//! `snctld`: parse flags, build the configuration, open the state, bind the
//! socket, run until SIGTERM or SIGINT. `snctld rekey` moves the stored
//! secrets to a new master key instead.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use snctld::config::{Config, Mode, PathOverrides};

/// Keeps ServiceNow OAuth tokens fresh and serves them over a Unix socket.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Stay in the foreground. This is the default (for systemd and
    /// terminals); the flag exists so that unit files can say so.
    #[arg(long)]
    #[allow(dead_code)]
    foreground: bool,
    /// Socket path [default: /run/snctld/snctld.sock as root,
    /// $XDG_RUNTIME_DIR/snctld/snctld.sock otherwise].
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// State directory holding the database and the key [default:
    /// /var/lib/snctld as root, $XDG_STATE_HOME/snctld otherwise].
    #[arg(long, value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Configuration file [default: /etc/snctld/snctld.toml as root,
    /// $XDG_CONFIG_HOME/snctld/snctld.toml otherwise, if present].
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
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only, not for files and journald.
        .with_ansi(std::io::stderr().is_terminal());
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line on stderr, which journald also collects; not through
            // tracing, so that it shows whatever the log level.
            eprintln!("snctld: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    // Files the daemon creates are private unless it says otherwise.
    // SAFETY: umask only sets the process file mode mask.
    unsafe { libc::umask(0o077) };
    // Before any key or secret is in memory.
    snctld::hygiene::harden()
        .map_err(|e| anyhow::anyhow!("cannot turn off core dumps and ptrace access: {e}"))?;
    let overrides = PathOverrides {
        socket: args.socket,
        state_dir: args.state_dir,
        config: args.config,
    };
    let config = Config::load(Mode::detect(), overrides)?;
    if let Some(Command::Rekey { new_key_file }) = args.command {
        let mut say = |text: &str| println!("{text}");
        let done = snctld::rekey::rekey(&config, new_key_file.as_deref(), &mut say)?;
        println!("{}", done.summary());
        return Ok(());
    }
    let state = snctld::open_state(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener =
            snctld::server::bind(&config.socket, config.socket_mode, config.socket_dir_mode)?;
        snctld::run(config, state, listener, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
