//! `/metrics` over HTTP for Prometheus: `[metrics] listen`, off by
//! default, on a loopback TCP address or a Unix socket. The same text as
//! `snctl metrics` ([`Dispatcher::metrics`]).
//!
//! - Only loopback addresses are accepted: the text names every
//!   authentication, and there is no authentication on it.
//! - On the Unix socket (the main socket's mode and group) the caller's
//!   peer credentials pick the authentications shown, as for `snctl
//!   metrics`. On TCP nobody can be told apart, so every local user sees
//!   every authentication; a request with an `Origin` or a `Host` other
//!   than a loopback name (a browser page, DNS rebinding) is refused.
//! - Connections are bounded and timed out like the proxy's
//!   (`[server] max_connections`, `read_timeout_secs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Peer;
use crate::dispatch::Dispatcher;
use crate::proxy::{accept_tcp, connection, Body};
use crate::server::{self, BindError, Gate, Limits, Listener};
use crate::settings::{optional, Applies, Changes, InvalidSetting};

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where `/metrics` is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// A loopback address and port.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// `[metrics]`: where `/metrics` is served, if anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: Option<MetricsListen>,
}

/// `[metrics]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    listen: Option<String>,
}

impl MetricsConfig {
    /// Reads `[metrics]` over these settings.
    pub fn apply(&mut self, m: MetricsSection) -> Result<(), InvalidSetting> {
        if let Some(listen) = m.listen {
            self.listen = Some(parse_listen(&listen)?);
        }
        Ok(())
    }

    /// What differs in `new`: everything applies at the next start.
    pub fn changes(&self, new: &MetricsConfig) -> Changes {
        let mut changes = Changes::default();
        changes.compare(
            "metrics.listen",
            Applies::NextStart,
            &self.listen,
            &new.listen,
            optional,
        );
        changes
    }
}

/// `listen`: an absolute path is a Unix socket, anything else a loopback
/// address with its port.
fn parse_listen(listen: &str) -> Result<MetricsListen, InvalidSetting> {
    if listen.starts_with('/') {
        return Ok(MetricsListen::Unix(PathBuf::from(listen)));
    }
    let addr: SocketAddr = listen.parse().map_err(|_| {
        InvalidSetting(format!(
            "metrics.listen: {listen:?} is neither an absolute socket path nor an address with \
             a port, e.g. \"127.0.0.1:9474\" or \"/run/snctld/metrics/metrics.sock\""
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(InvalidSetting(format!(
            "metrics.listen: {listen:?} is not a loopback address; the metrics name every \
             authentication, so only 127.0.0.1, ::1 (or a Unix socket) are accepted"
        )));
    }
    Ok(MetricsListen::Tcp(addr))
}

/// The bound listener of `/metrics`.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(Listener),
}

/// Why `/metrics` could not be bound: the start stops.
#[derive(Debug, thiserror::Error)]
pub enum MetricsBindError {
    #[error("metrics on {addr}: {error}")]
    Tcp {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("metrics: {0}")]
    Unix(#[from] BindError),
}

/// Binds `listen`; a Unix socket with the main socket's `mode`,
/// `dir_mode` and `group`.
pub async fn bind(
    listen: &MetricsListen,
    mode: u32,
    dir_mode: u32,
    group: Option<&str>,
) -> Result<Bound, MetricsBindError> {
    match listen {
        MetricsListen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(Bound::Tcp)
            .map_err(|error| MetricsBindError::Tcp { addr: *addr, error }),
        MetricsListen::Unix(path) => Ok(Bound::Unix(server::bind(path, mode, dir_mode, group)?)),
    }
}

/// Serves `/metrics` on `bound` until `stop`, then waits for the
/// connections open.
pub async fn serve(bound: Bound, daemon: Arc<Dispatcher>, limits: Limits, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    match bound {
        Bound::Unix(listener) => {
            tracing::info!(socket = %listener.path().display(), "metrics served on /metrics");
            let gate = Gate::new(&limits);
            while let Some((stream, peer)) = listener.next(&stop).await {
                let Some(admitted) = gate.admit(&peer, daemon.access().is_admin(&peer)) else {
                    continue;
                };
                let (daemon, peer) = (daemon.clone(), Arc::new(peer));
                tracker.spawn(connection(
                    stream,
                    limits.read_timeout,
                    stop.clone(),
                    admitted,
                    move |request| {
                        let answer = answer(&daemon, Some(&peer), &request);
                        async move { answer }
                    },
                ));
            }
        }
        Bound::Tcp(listener) => {
            match listener.local_addr() {
                Ok(addr) => tracing::info!(%addr, "metrics served on /metrics"),
                Err(error) => tracing::warn!(%error, "metrics served, address unknown"),
            }
            let permits = Arc::new(Semaphore::new(limits.max_connections));
            while let Some((stream, permit)) =
                accept_tcp(&listener, &permits, &limits, &stop, "metrics").await
            {
                let daemon = daemon.clone();
                tracker.spawn(connection(
                    stream,
                    limits.read_timeout,
                    stop.clone(),
                    permit,
                    move |request| {
                        let answer = answer(&daemon, None, &request);
                        async move { answer }
                    },
                ));
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// The answer to one request: the text for `GET /metrics`; `peer` picks
/// the authentications shown (`None`, TCP: all of them).
fn answer(daemon: &Dispatcher, peer: Option<&Peer>, request: &Request<Incoming>) -> Response<Body> {
    if peer.is_none() {
        if let Err(why) = from_loopback_client(request) {
            return plain(StatusCode::FORBIDDEN, why);
        }
    }
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "only /metrics is served here\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let access = daemon.access();
    let text = match peer {
        Some(peer) => daemon.metrics(|readers| access.may_read(peer, readers)),
        None => daemon.metrics(|_| true),
    };
    let mut response = Response::new(full(text));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Refuses a browser page: any `Origin`, or a `Host` that is not a
/// loopback name (a page whose name was re-pointed at 127.0.0.1).
fn from_loopback_client(request: &Request<Incoming>) -> Result<(), &'static str> {
    if request.headers().contains_key(header::ORIGIN) {
        return Err("requests with an Origin header (from a browser page) are refused\n");
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    match host.as_ref().map(|h| h.host()) {
        Some("127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        _ => Err("only requests for Host 127.0.0.1, [::1] or localhost are answered\n"),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_and_socket_paths_are_accepted() {
        assert_eq!(
            parse_listen("127.0.0.1:9474"),
            Ok(MetricsListen::Tcp("127.0.0.1:9474".parse().unwrap()))
        );
        assert!(matches!(
            parse_listen("[::1]:9474"),
            Ok(MetricsListen::Tcp(_))
        ));
        assert_eq!(
            parse_listen("/run/snctld/metrics/metrics.sock"),
            Ok(MetricsListen::Unix(
                "/run/snctld/metrics/metrics.sock".into()
            ))
        );
        for bad in ["0.0.0.0:9474", "192.168.1.5:9474", "[::]:9474"] {
            let e = parse_listen(bad).unwrap_err().0;
            assert!(e.contains("not a loopback address"), "{e}");
        }
        for bad in ["localhost:9474", "9474", "metrics.sock"] {
            let e = parse_listen(bad).unwrap_err().0;
            assert!(e.contains("absolute socket path"), "{e}");
        }
    }
}
