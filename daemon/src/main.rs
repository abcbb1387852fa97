//! `snctld`: parse flags, build the configuration, open the state, bind the
//! socket, run until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use snctld::config::{Config, Mode, PathOverrides};

/// Keeps ServiceNow OAuth tokens fresh and serves them over a Unix socket.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Stay in the foreground. This is the default (for systemd and
    /// terminals); the flag exists so that unit files can say so.
    #[arg(long)]
    #[allow(dead_code)]
    foreground: bool,
    /// Socket path [default: /run/snctld/snctld.sock as root,
    /// $XDG_RUNTIME_DIR/snctld/snctld.sock otherwise].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory holding the database and the key [default:
    /// /var/lib/snctld as root, $XDG_STATE_HOME/snctld otherwise].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Configuration file [default: /etc/snctld/snctld.toml as root,
    /// $XDG_CONFIG_HOME/snctld/snctld.toml otherwise, if present].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
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
        .with_writer(std::io::stderr);
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
    let overrides = PathOverrides {
        socket: args.socket,
        state_dir: args.state_dir,
        config: args.config,
    };
    let config = Config::load(Mode::detect(), overrides)?;
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
