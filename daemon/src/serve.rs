//! The serve/stop sequence: from an opened [`State`] and a bound
//! [`Listener`] to a running daemon, and back down.
//!
//! [`run_with`] goes through it in steps: bind the proxies' listeners
//! (`bind_proxies`), start the token machinery and the dispatcher, spawn
//! the socket server and the proxies' supervisor (`spawn_servers`, see
//! [`crate::proxy::sockets`]), tell systemd
//! (`announce`), serve until the shutdown future completes (reloading on
//! SIGHUP), then stop (`stop`): stop accepting, answer the requests in
//! flight, let running refreshes commit, close the database.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::backup::Backups;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::exporter::{self, MetricsBindError};
use crate::proxy::sockets::{self, AtStart, ProxyParts, SocketSettings, Wanted};
use crate::proxy::{self, Timeouts};
use crate::reload::reload;
use crate::server::{self, BindError, Listener};
use crate::servicenow::{ClientError, ServiceNow};
use crate::state::State;
use crate::store::{Record, Store, StoreThread};
use crate::systemd::Service;
use crate::tokens::Tokens;

/// How long a shutdown waits for requests and refreshes in flight before
/// it stops without them. A refresh still waiting on the instance then has
/// nothing to commit; whatever was sent to the store is written before the
/// database closes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often the `STATUS=` summary is looked at besides after admin
/// requests (failures found by the scheduler change it too).
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Why the daemon could not start serving, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Upstream(#[from] ClientError),
    #[error("cannot listen for SIGHUP: {0}")]
    Hangup(std::io::Error),
    #[error("proxy for {name}: {error}")]
    ProxySocket { name: String, error: BindError },
    #[error("proxy on 127.0.0.1:{port}: {error}")]
    ProxyTcp { port: u16, error: std::io::Error },
    #[error(transparent)]
    Metrics(#[from] MetricsBindError),
    #[error("the store thread did not stop: {0}")]
    StoreThread(#[from] tokio::task::JoinError),
}

/// Serves `listener` until `shutdown` completes, then stops accepting,
/// answers the requests in flight, lets running refreshes commit and
/// closes the database.
pub async fn run(
    config: Config,
    state: State,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    run_with(config, state, listener, shutdown, Service::none()).await
}

/// [`run`], telling `service` how it goes (readiness, status, stopping,
/// watchdog) and, when it [reloads](Service::reloads), reading the
/// configuration again on SIGHUP. The drain at shutdown is bounded by
/// [`SHUTDOWN_GRACE`].
pub async fn run_with(
    config: Config,
    state: State,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
    service: Service,
) -> Result<(), ServeError> {
    let upstream = ServiceNow::new(&config.http)?;
    let State {
        store,
        thread,
        records,
        key_source,
        lock: _lock,
    } = state;
    let hangup = match service.reloads() {
        true => Some(signal(SignalKind::hangup()).map_err(ServeError::Hangup)?),
        false => None,
    };
    let ProxyListeners {
        settings,
        wanted,
        unix,
        tcp,
    } = bind_proxies(&config, &records).await?;
    let metrics = match &config.metrics.listen {
        Some(listen) => Some(
            exporter::bind(
                listen,
                config.socket_mode,
                config.socket_dir_mode,
                config.access.socket_group.as_deref(),
            )
            .await?,
        ),
        None => None,
    };
    let (proxy_sockets, commands) = sockets::channel(settings, &unix);
    let http = upstream.http().clone();
    let count = records.len();
    let tokens = Tokens::start(
        records,
        store.clone(),
        crate::clock::SystemClock,
        upstream,
        config.refresh.clone(),
        config.login.clone(),
    );
    let dispatcher = Arc::new(Dispatcher::new(
        tokens.clone(),
        Access::new(&config.access),
        listener.path().to_path_buf(),
        config.state_dir.clone(),
        Backups::new(store.clone(), &config.state_dir, key_source.path()),
        proxy_sockets,
    ));
    tracing::info!(socket = %listener.path().display(), passed = listener.is_passed(), authentications = count, "serving");
    let stop_serving = CancellationToken::new();
    let (started, accepting) = tokio::sync::oneshot::channel();
    let tasks = spawn_servers(
        &config,
        listener,
        Proxies {
            wanted,
            unix,
            commands,
            tcp,
            metrics,
        },
        &dispatcher,
        http,
        &stop_serving,
        started,
    );
    if accepting.await.is_ok() {
        service.ready(&dispatcher.summary());
    }
    let status = announce(&service, &tokens, &dispatcher, &stop_serving);
    serve_until(shutdown, hangup, config, &dispatcher, &service).await;
    stop(Stopping {
        service,
        stop_serving,
        tasks,
        tokens,
        status,
        store,
        thread,
    })
    .await
}

/// The proxies' listeners, bound before anything starts so that a socket
/// the configuration names that cannot be bound stops the start.
struct ProxyListeners {
    settings: SocketSettings,
    wanted: Wanted,
    unix: AtStart,
    tcp: Option<tokio::net::TcpListener>,
}

/// Binds `DIR/NAME.sock` for each proxied authentication (by its setting,
/// `[proxy] names`, or every one with `all`) and the TCP port when one is
/// set.
async fn bind_proxies(config: &Config, records: &[Record]) -> Result<ProxyListeners, ServeError> {
    let settings = SocketSettings {
        dir: config.proxy.dir_for(&config.socket),
        mode: config.socket_mode,
        dir_mode: config.socket_dir_mode,
        group: config.access.socket_group.clone(),
    };
    let wanted = Wanted::of(&config.proxy);
    let all: Vec<String> = records.iter().map(|r| r.auth.name.clone()).collect();
    let on: Vec<String> = records
        .iter()
        .filter(|r| r.auth.proxy)
        .map(|r| r.auth.name.clone())
        .collect();
    let unix = sockets::bind_at_start(&settings, &wanted, &all, &on).map_err(|e| {
        ServeError::ProxySocket {
            name: e.name,
            error: e.error,
        }
    })?;
    let tcp = match config.proxy.tcp_port {
        Some(port) => Some(
            tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .await
                .map_err(|error| ServeError::ProxyTcp { port, error })?,
        ),
        None => None,
    };
    Ok(ProxyListeners {
        settings,
        wanted,
        unix,
        tcp,
    })
}

/// The tasks serving the socket and the proxies.
struct Servers {
    server: JoinHandle<()>,
    /// The proxy sockets' supervisor, the TCP listener and `/metrics`.
    proxies: Vec<JoinHandle<()>>,
}

/// Spawns the socket server (which says on `started` when it accepts),
/// the proxy sockets' supervisor, the TCP proxy and `/metrics`, all until
/// `stop`.
fn spawn_servers(
    config: &Config,
    listener: Listener,
    proxies: Proxies,
    dispatcher: &Arc<Dispatcher>,
    http: reqwest::Client,
    stop: &CancellationToken,
    started: tokio::sync::oneshot::Sender<()>,
) -> Servers {
    let server = tokio::spawn(server::serve(
        listener,
        dispatcher.clone(),
        config.limits.clone(),
        stop.clone(),
        Some(started),
    ));
    let timeouts = Timeouts {
        read: config.limits.read_timeout,
        request: config.http.request_timeout,
    };
    let routes = proxy::Routes::default();
    let parts = ProxyParts {
        http,
        config: config.proxy.clone(),
        timeouts,
        limits: config.limits.clone(),
    };
    let mut tasks = vec![sockets::supervise(
        dispatcher.clone(),
        parts,
        proxies.wanted,
        proxies.unix,
        proxies.commands,
        routes.clone(),
        stop.clone(),
    )];
    if let Some(listener) = proxies.tcp {
        match listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, "proxy serving on TCP"),
            Err(error) => tracing::warn!(%error, "proxy serving on TCP, address unknown"),
        }
        tasks.push(tokio::spawn(proxy::serve_tcp(
            listener,
            routes,
            config.limits.clone(),
            stop.clone(),
        )));
    }
    if let Some(bound) = proxies.metrics {
        tasks.push(tokio::spawn(exporter::serve(
            bound,
            dispatcher.clone(),
            config.limits.clone(),
            stop.clone(),
        )));
    }
    Servers {
        server,
        proxies: tasks,
    }
}

/// The proxies' listeners and the supervisor's end of the dispatcher's
/// [`ProxySockets`].
struct Proxies {
    wanted: Wanted,
    unix: AtStart,
    commands: sockets::Commands,
    tcp: Option<tokio::net::TcpListener>,
    /// `/metrics`, when `[metrics] listen` is set.
    metrics: Option<exporter::Bound>,
}

/// Starts the watchdog pings and the `STATUS=` reports systemd asked for;
/// the task reporting the status, if any.
fn announce(
    service: &Service,
    tokens: &Tokens,
    dispatcher: &Arc<Dispatcher>,
    stop: &CancellationToken,
) -> Option<JoinHandle<()>> {
    if let Some(period) = service.watchdog_period() {
        let pinger = service.clone();
        tokens.spawn_watchdog(period, move || pinger.ping());
        tracing::info!(
            period_ms = period.as_millis() as u64,
            "sending WATCHDOG=1 to systemd"
        );
    }
    service.notifies().then(|| {
        tokio::spawn(report_status(
            dispatcher.clone(),
            service.clone(),
            stop.clone(),
        ))
    })
}

/// Sends `STATUS=` when the summary changes, until `stop`.
async fn report_status(dispatcher: Arc<Dispatcher>, service: Service, stop: CancellationToken) {
    let mut last = dispatcher.summary();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = dispatcher.changed() => {}
            _ = tokio::time::sleep(STATUS_EVERY) => {}
        }
        let now = dispatcher.summary();
        if now != last {
            service.status(&now);
            last = now;
        }
    }
}

/// Waits for `shutdown`, reloading the configuration on each SIGHUP between
/// `RELOADING=1` and `READY=1`.
async fn serve_until(
    shutdown: impl Future<Output = ()>,
    mut hangup: Option<Signal>,
    mut running: Config,
    dispatcher: &Dispatcher,
    service: &Service,
) {
    tokio::pin!(shutdown);
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = hup => {
                // First, so that the reload is logged in the new file.
                if let Err(error) = crate::logging::reopen_log_file() {
                    tracing::error!("SIGHUP: {error}");
                }
                // The unit shows "reloading" between the two, and a status
                // that says whether the file was taken.
                service.reloading();
                let refused = reload(&mut running, dispatcher, service).err();
                let refused = refused.map(|error| error.to_string());
                service.reloaded(&dispatcher.summary(), refused.as_deref());
            }
        }
    }
}

/// What [`stop`] winds down.
struct Stopping {
    service: Service,
    stop_serving: CancellationToken,
    tasks: Servers,
    tokens: Tokens,
    status: Option<JoinHandle<()>>,
    store: Store,
    thread: StoreThread,
}

/// Stops accepting, waits up to [`SHUTDOWN_GRACE`] for the requests and
/// refreshes in flight, then closes the database.
async fn stop(s: Stopping) -> Result<(), ServeError> {
    tracing::info!("shutting down");
    s.service.stopping();
    s.stop_serving.cancel();
    // Connections first: a request waiting on a refresh needs the
    // schedulers' machinery until it is answered. Past the grace, the
    // schedulers are still told to stop (the first poll cancels them).
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let Servers { server, proxies } = s.tasks;
    let drained = tokio::time::timeout_at(deadline, async {
        if server.await.is_err() {
            tracing::error!("the server task panicked");
        }
        for proxy in proxies {
            if proxy.await.is_err() {
                tracing::error!("a proxy task panicked");
            }
        }
    })
    .await
    .is_ok();
    let stopped = tokio::time::timeout_at(deadline, s.tokens.shutdown())
        .await
        .is_ok();
    if !(drained && stopped) {
        tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "requests or refreshes still waiting on the instance: stopping without them"
        );
    }
    if let Some(status) = s.status {
        status.abort();
    }
    s.store.close();
    drop(s.store);
    let thread = s.thread;
    tokio::task::spawn_blocking(move || thread.join()).await?;
    tracing::info!("stopped");
    Ok(())
}
