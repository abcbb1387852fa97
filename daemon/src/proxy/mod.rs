//! The local authenticating proxy: plain HTTP/1.1 on a Unix socket per
//! authentication (`DIR/NAME.sock`), forwarded to the instance with
//! `Authorization: Bearer …` added, so that the caller never holds a token.
//!
//! - Each request is checked like a `token` request: the peer's credentials
//!   against the authentication's readers ([`Access::require_reader`]); a
//!   refusal is a 403 with a JSON body.
//! - Bodies stream both ways over the daemon's pooled client; only a body
//!   small enough to replay (at most [`REPLAY_MAX`] by its Content-Length)
//!   is held in memory.
//! - Hop-by-hop headers (and those named in `Connection`) are dropped both
//!   ways, as are the caller's `Authorization` and `Host`, and the
//!   instance's `Set-Cookie` (a session on the instance, of the daemon's
//!   credentials).
//! - Only request targets that are paths (`/…`) are forwarded; `*` and
//!   absolute URLs get 400.
//! - A caller cannot hold a connection by going quiet: the head must arrive
//!   within `[server] read_timeout_secs`, and so must each piece of a
//!   request body after the last, the whole body within `[http]
//!   request_timeout_secs` (else 408 and the connection closes); a
//!   response the caller stops taking for `read_timeout_secs` ends the
//!   connection.
//! - A 401 from the instance: one refresh and one retry, for replayable
//!   requests, unless the token is too new or such a refresh was made
//!   recently ([`Tokens::replace_refused`]); otherwise the 401 goes back.
//! - A 429 with `Retry-After` or `X-RateLimit-Reset`: until then, every
//!   request for that authentication is answered 429 at once, or, with
//!   `[proxy] on_rate_limit = "hold"`, waits for the end (at most
//!   `hold_max_secs`, else 429 at once) and is then forwarded.
//! - One audit line per request: method, path without the query, status,
//!   peer, time to the response head.
//! - Optionally ([`serve_tcp`], `[proxy] tcp_port`) one listener on
//!   127.0.0.1 for every proxied authentication, by path prefix
//!   `/NAME/…`. No peer credentials there, so: only authentications
//!   without readers; `X-Snctl-Proxy: 1` required (400), any `Origin` and
//!   any `Host` but 127.0.0.1 or localhost refused (403), so that a
//!   browser page cannot use it.
//!
//! [`Access::require_reader`]: crate::access::Access::require_reader
//! [`Tokens::replace_refused`]: crate::tokens::Tokens::replace_refused

pub mod sockets;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use snctl_shared::protocol::{MinValid, TokenReply};
use snctl_shared::Error;

use crate::access::{Peer, ReaderIds};
use crate::dispatch::Dispatcher;
use crate::server::{Gate, Limits, Listener};
use crate::settings::{debug, optional, Applies, Changes, InvalidSetting};

/// Which authentications get a proxy socket, and where: `[proxy]` in the
/// configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub names: Vec<String>,
    /// Every authentication there is, added later ones too.
    pub all: bool,
    /// Where the `NAME.sock` files go; `None`: the socket's directory +
    /// `/proxy`.
    pub dir: Option<PathBuf>,
    /// What a request meets while the instance's 429 holds.
    pub on_rate_limit: OnRateLimit,
    /// The longest [`OnRateLimit::Hold`] makes a request wait.
    pub hold_max: Duration,
    /// A port on 127.0.0.1 serving every proxied authentication by path
    /// prefix (`/NAME/…`); `None`: no TCP listener.
    pub tcp_port: Option<u16>,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            names: Vec::new(),
            all: false,
            dir: None,
            on_rate_limit: OnRateLimit::Reject,
            hold_max: Duration::from_secs(30),
            tcp_port: None,
        }
    }
}

/// `[proxy] on_rate_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRateLimit {
    /// Answer 429 with `Retry-After` at once.
    Reject,
    /// Wait until the hold ends (at most `hold_max`), then forward.
    Hold,
}

/// `[proxy]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    names: Option<Vec<String>>,
    all: Option<bool>,
    dir: Option<PathBuf>,
    on_rate_limit: Option<String>,
    hold_max_secs: Option<u64>,
    tcp_port: Option<u16>,
}

impl ProxyConfig {
    /// The directory of the proxy sockets when the main socket is `socket`.
    pub fn dir_for(&self, socket: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            socket
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("proxy")
        })
    }

    /// Reads `[proxy]` over these settings.
    pub fn apply(&mut self, p: ProxySection) -> Result<(), InvalidSetting> {
        if let Some(names) = p.names {
            // Only an authentication's name can ever be served; anything
            // else (a path, a control character) would only fail later.
            for name in &names {
                if let Err(why) = snctl_shared::name::validate(name) {
                    return Err(InvalidSetting(format!(
                        "proxy.names: {name:?} is not an authentication name ({why})"
                    )));
                }
            }
            self.names = names;
        }
        self.all = p.all.unwrap_or(self.all);
        if p.dir.is_some() {
            self.dir = p.dir;
        }
        if let Some(mode) = p.on_rate_limit {
            self.on_rate_limit = match mode.as_str() {
                "reject" => OnRateLimit::Reject,
                "hold" => OnRateLimit::Hold,
                _ => {
                    return Err(InvalidSetting(format!(
                        "proxy.on_rate_limit: {mode:?} is neither \"reject\" nor \"hold\""
                    )))
                }
            };
        }
        if let Some(secs) = p.hold_max_secs {
            if !(1..=3600).contains(&secs) {
                return Err(InvalidSetting(
                    "proxy.hold_max_secs must be between 1 and 3600".into(),
                ));
            }
            self.hold_max = Duration::from_secs(secs);
        }
        if p.tcp_port.is_some() {
            self.tcp_port = p.tcp_port;
        }
        Ok(())
    }

    /// What differs in `new`: which authentications are proxied applies at
    /// once ([`sockets`]); where and how, at the next start.
    pub fn changes(&self, new: &ProxyConfig) -> Changes {
        let (now, next) = (Applies::Now, Applies::NextStart);
        let mut changes = Changes::default();
        changes
            .compare("proxy.names", now, &self.names, &new.names, debug)
            .compare("proxy.all", now, &self.all, &new.all, debug)
            .compare("proxy.dir", next, &self.dir, &new.dir, optional)
            .compare(
                "proxy.on_rate_limit",
                next,
                &self.on_rate_limit,
                &new.on_rate_limit,
                debug,
            )
            .compare(
                "proxy.hold_max_secs",
                next,
                &self.hold_max,
                &new.hold_max,
                debug,
            )
            .compare(
                "proxy.tcp_port",
                next,
                &self.tcp_port,
                &new.tcp_port,
                optional,
            );
        changes
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The largest request body kept in memory so that it can be sent again
/// after a refresh; larger ones stream and are not retried.
pub const REPLAY_MAX: u64 = 1024 * 1024;

/// How long the token put on a request must still be valid: a default, so
/// an authentication whose tokens live less than a minute is served too.
const MIN_VALID: MinValid = MinValid::Default(60);

/// The header every request on the TCP listener must carry, as `1`.
const PROXY_HEADER: &str = "x-snctl-proxy";

/// The longest a rate limit is believed.
const MAX_HOLD: Duration = Duration::from_secs(3600);

/// How long a proxied request may take on its way in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// The longest gap between two pieces of a request body
    /// (`server.read_timeout_secs`).
    pub read: Duration,
    /// The longest a whole request body may take
    /// (`http.request_timeout_secs`).
    pub request: Duration,
}

/// One authentication's proxy, shared by its Unix socket and the TCP
/// listener.
pub(crate) struct Proxy {
    name: String,
    daemon: Arc<Dispatcher>,
    http: reqwest::Client,
    on_rate_limit: OnRateLimit,
    hold_max: Duration,
    /// The longest gap between two pieces of a request body.
    read_timeout: Duration,
    /// The longest a whole request body may take.
    request_timeout: Duration,
    /// Until when the instance asked to be left alone (429).
    held_until: Mutex<Option<SystemTime>>,
}

#[derive(Clone, Copy)]
/// Who is calling: a peer on the Unix socket, or anyone on 127.0.0.1.
enum Caller<'a> {
    Unix(&'a Peer),
    Tcp,
}

impl Proxy {
    pub(crate) fn new(
        name: String,
        daemon: Arc<Dispatcher>,
        http: reqwest::Client,
        config: &ProxyConfig,
        timeouts: Timeouts,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            name,
            daemon,
            http,
            on_rate_limit: config.on_rate_limit,
            hold_max: config.hold_max,
            read_timeout: timeouts.read,
            request_timeout: timeouts.request,
            held_until: Mutex::new(None),
        })
    }
}

/// Serves `proxy` on its Unix socket `listener` until `stop`, its
/// connections on `connections`. Returns once the listener is closed (its
/// socket file gone); the requests in flight finish on `connections`.
pub(crate) async fn serve(
    listener: Listener,
    proxy: Arc<Proxy>,
    limits: Limits,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let gate = Gate::new(&limits);
    while let Some((stream, peer)) = listener.next(&stop).await {
        // The main socket's limits, per proxy socket.
        let Some(admitted) = gate.admit(&peer, proxy.daemon.access().is_admin(&peer)) else {
            continue;
        };
        let proxy = proxy.clone();
        let peer = Arc::new(peer);
        connections.spawn(connection(
            stream,
            limits.read_timeout,
            stop.clone(),
            admitted,
            move |request| {
                let (proxy, peer) = (proxy.clone(), peer.clone());
                async move { proxy.handle(&peer, request).await }
            },
        ));
    }
    drop(listener);
}

/// The proxies serving now, by authentication name: what the TCP listener
/// routes `/NAME/…` to. Kept by [`sockets`] as they are turned on and off.
pub(crate) type Routes = Arc<std::sync::RwLock<HashMap<String, Arc<Proxy>>>>;

/// Serves every proxy in `routes` on one TCP `listener` (127.0.0.1), the
/// authentication named by the first path segment, until `stop`.
pub(crate) async fn serve_tcp(
    listener: tokio::net::TcpListener,
    proxies: Routes,
    limits: Limits,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    while let Some((stream, permit)) =
        accept_tcp(&listener, &permits, &limits, &stop, "proxy").await
    {
        let proxies = proxies.clone();
        tracker.spawn(connection(
            stream,
            limits.read_timeout,
            stop.clone(),
            permit,
            move |request| {
                let proxies = proxies.clone();
                async move { over_tcp(&proxies, request).await }
            },
        ));
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// The next connection on a TCP `listener` with its permit, until `stop`
/// (`None`). An accept that fails is logged and retried; a connection past
/// `limits.max_connections` is closed at once. `what` names the listener
/// in the log lines.
pub(crate) async fn accept_tcp(
    listener: &tokio::net::TcpListener,
    permits: &Arc<Semaphore>,
    limits: &Limits,
    stop: &CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "{what}: TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => return Some((stream, permit)),
            Err(_) => tracing::warn!(
                limit = limits.max_connections,
                "{what}: TCP connection limit reached; closing a new connection"
            ),
        }
    }
}

/// One HTTP/1.1 connection, each request answered by `handle`, closed
/// gracefully on `stop`; `admitted` is held until it ends. The head of a
/// request must arrive within `read_timeout`, and a write that makes no
/// progress for as long ends the connection.
pub(crate) async fn connection<S, A, F, Fut>(
    stream: S,
    read_timeout: Duration,
    stop: CancellationToken,
    admitted: A,
    handle: F,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<Incoming>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let _admitted = admitted;
    let service = hyper::service::service_fn(move |request| {
        let answer = handle(request);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        // A caller that shuts its write side once the request is sent
        // (socat, `nc -N`) still gets the answer.
        .half_close(true)
        .serve_connection(
            TokioIo::new(WriteBounded::new(stream, read_timeout)),
            service,
        );
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "proxy connection ended");
    }
}

/// A request on the TCP listener: refused when it comes from a browser
/// page (an `Origin`) or lacks `X-Snctl-Proxy: 1`; else `/NAME/rest` goes
/// to `NAME`'s proxy as `/rest`.
async fn over_tcp(proxies: &Routes, mut request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let audit = |name: &str, path: &str, status: StatusCode| {
        tracing::info!(
            name = %name,
            method = %method,
            path = %path,
            status = status.as_u16(),
            peer = %"tcp",
            duration_ms = started.elapsed().as_millis() as u64,
            "proxied"
        );
    };
    let refuse = |status, kind, message: &str| {
        let response = json(status, kind, message);
        audit("-", &path, status);
        response
    };
    if !is_path(request.uri()) {
        return refuse(StatusCode::BAD_REQUEST, "bad_request", NOT_A_PATH);
    }
    if request.headers().contains_key(header::ORIGIN) {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "requests with an Origin header (from a browser page) are refused",
        );
    }
    // A page whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends
    // its own name as Host, and no Origin on a same-origin GET.
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    if !host.is_some_and(|h| matches!(h.host(), "127.0.0.1" | "localhost")) {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the TCP proxy answers only requests for Host 127.0.0.1 or localhost",
        );
    }
    if request.headers().get(PROXY_HEADER).map(|v| v.as_bytes()) != Some(b"1") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the TCP proxy needs the header X-Snctl-Proxy: 1",
        );
    }
    let rest = path.strip_prefix('/').unwrap_or(&path);
    let (name, rest) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let proxy = proxies
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned();
    let Some(proxy) = proxy else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no proxied authentication {name:?}: use http://127.0.0.1:PORT/NAME/…"),
        );
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    let target = match request.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    match target.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the path is not a valid URI",
            )
        }
    }
    let response = proxy.forward(Caller::Tcp, request).await;
    audit(name, rest, response.status());
    proxy.count(response.status());
    response
}

impl Proxy {
    /// Answers one request on the Unix socket and writes its audit line.
    async fn handle(&self, peer: &Peer, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let response = if is_path(request.uri()) {
            self.forward(Caller::Unix(peer), request).await
        } else {
            json(StatusCode::BAD_REQUEST, "bad_request", NOT_A_PATH)
        };
        tracing::info!(
            name = %self.name,
            method = %method,
            path = %path,
            status = response.status().as_u16(),
            uid = peer.uid,
            pid = peer.pid,
            unit = peer.unit.as_deref(),
            duration_ms = started.elapsed().as_millis() as u64,
            "proxied"
        );
        self.count(response.status());
        response
    }

    /// Counts an answer for `snctl metrics`.
    fn count(&self, status: StatusCode) {
        self.daemon
            .tokens()
            .count_proxied(&self.name, status.as_u16());
    }

    async fn forward(&self, caller: Caller<'_>, request: Request<Incoming>) -> Response<Body> {
        let access = self.daemon.access();
        let tokens = self.daemon.tokens();
        let allowed = |readers: &ReaderIds| match caller {
            Caller::Unix(peer) => access.require_reader(peer, &self.name, readers),
            Caller::Tcp if readers.is_empty() => Ok(()),
            Caller::Tcp => Err(Error::Forbidden {
                reason: format!(
                    "{} has readers, and the TCP proxy cannot tell who is calling: use its \
                     Unix socket",
                    self.name
                ),
            }),
        };
        let mut token = match tokens.token(&self.name, MIN_VALID, allowed).await {
            Ok(token) => token,
            Err(error) => return refused(&error),
        };
        // A dead login is answered here (503 needs_login), not with the
        // instance's 401 for the token still in hand: a caller must be able
        // to tell "log in again" from "the instance refused this request".
        if tokens.needs_login(&self.name) {
            return refused(&Error::NeedsLogin {
                name: self.name.clone(),
            });
        }
        if self.held().is_some() {
            if let Err(left) = self.wait_out_hold().await {
                return rate_limited(left);
            }
            // The wait may have outlasted the token's margin.
            token = match tokens.token(&self.name, MIN_VALID, allowed).await {
                Ok(token) => token,
                Err(error) => return refused(&error),
            };
        }
        let (parts, body) = request.into_parts();
        let timed_out = Arc::new(AtomicBool::new(false));
        let body = CallerBody {
            inner: body,
            gap: self.read_timeout,
            whole: self.request_timeout,
            timers: None,
            timed_out: timed_out.clone(),
        };
        let target = format!(
            "{}{}",
            token.instance_url,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        for name in [header::AUTHORIZATION, header::HOST, header::EXPECT] {
            headers.remove(name);
        }
        let small = body.size_hint().exact().is_some_and(|n| n <= REPLAY_MAX);
        let replay = if body.is_end_stream() || small {
            match Limited::new(body, REPLAY_MAX as usize).collect().await {
                Ok(collected) => Some(collected.to_bytes()),
                Err(_) if timed_out.load(Ordering::Relaxed) => return self.body_timed_out(),
                Err(error) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        &format!("cannot read the request body: {error}"),
                    )
                }
            }
        } else {
            // The caller's Content-Length stays, so the instance gets the
            // body as sent rather than chunked.
            let stream = reqwest::Body::wrap_stream(body.into_data_stream());
            let sent = self
                .send(&parts.method, &target, &headers, stream, &token)
                .await;
            if timed_out.load(Ordering::Relaxed) {
                return self.body_timed_out();
            }
            return self.relay(sent);
        };
        let replay = replay.unwrap_or_default();
        let sent = self
            .send(&parts.method, &target, &headers, replay.clone(), &token)
            .await;
        match sent {
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                let renewed = tokens.replace_refused(&self.name, &token.access_token);
                let token = match renewed.await {
                    Ok(Some(token)) => token,
                    Ok(None) => return self.relay(Ok(response)),
                    Err(error @ Error::NeedsLogin { .. }) => return refused(&error),
                    // The instance's 401 says more than why no new token came.
                    Err(error) => {
                        tracing::warn!(name = %self.name, %error, "proxy: no new token after a 401");
                        return self.relay(Ok(response));
                    }
                };
                let again = self
                    .send(&parts.method, &target, &headers, replay, &token)
                    .await;
                self.relay(again)
            }
            sent => self.relay(sent),
        }
    }

    async fn send(
        &self,
        method: &http::Method,
        target: &str,
        headers: &HeaderMap,
        body: impl Into<reqwest::Body>,
        token: &TokenReply,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .request(method.clone(), target)
            .headers(headers.clone())
            .bearer_auth(token.access_token.expose())
            .body(body)
            .send()
            .await
    }

    /// The instance's answer for the caller; a 429 with a time to wait
    /// holds later requests.
    fn relay(&self, sent: reqwest::Result<reqwest::Response>) -> Response<Body> {
        let upstream = match sent {
            Ok(upstream) => upstream,
            Err(error) => {
                let error = error.without_url();
                let status = if error.is_timeout() {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                // The causes say what went wrong (a head too large, a
                // reset), where the error alone says only "error sending".
                let error = crate::servicenow::error_chain(&error);
                tracing::warn!(name = %self.name, %error, "proxy: the instance did not answer");
                return json(
                    status,
                    "upstream",
                    &format!("the instance did not answer: {error}"),
                );
            }
        };
        if upstream.status() == StatusCode::TOO_MANY_REQUESTS {
            if let Some(until) = retry_at(upstream.headers(), SystemTime::now()) {
                tracing::warn!(name = %self.name, wait_secs = until.duration_since(SystemTime::now()).unwrap_or_default().as_secs(), "proxy: the instance is rate limiting; holding requests");
                *self.held_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
            }
        }
        let status = upstream.status();
        let mut headers = upstream.headers().clone();
        strip_hop_by_hop(&mut headers);
        // The instance's session is the daemon's, not the caller's.
        headers.remove(header::SET_COOKIE);
        let upstream: http::Response<reqwest::Body> = upstream.into();
        let mut response =
            Response::new(upstream.into_body().map_err(BoxError::from).boxed_unsync());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        *response.version_mut() = Version::HTTP_11;
        response
    }

    /// The answer to a request whose body stopped coming; the connection
    /// closes after it.
    fn body_timed_out(&self) -> Response<Body> {
        tracing::info!(name = %self.name, "proxy: the request body did not arrive in time");
        let mut response = json(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            &format!(
                "the request body did not arrive in time: at most {} s between its pieces and {} s \
                 in all",
                self.read_timeout.as_secs(),
                self.request_timeout.as_secs()
            ),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }

    /// Waits until the rate limit ends, with `hold`; else, or when it lasts
    /// past `hold_max` from now, the time left.
    async fn wait_out_hold(&self) -> Result<(), Duration> {
        let deadline = Instant::now() + self.hold_max;
        while let Some(left) = self.held() {
            if self.on_rate_limit == OnRateLimit::Reject || Instant::now() + left > deadline {
                return Err(left);
            }
            tokio::time::sleep(left).await;
        }
        Ok(())
    }

    /// How long the rate limit still holds, if it does.
    fn held(&self) -> Option<Duration> {
        let mut held = self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        let left = held.and_then(|until| until.duration_since(SystemTime::now()).ok());
        match left {
            Some(left) if !left.is_zero() => Some(left),
            _ => {
                *held = None;
                None
            }
        }
    }
}

const NOT_A_PATH: &str =
    "the proxy forwards only request targets that are paths (GET /api/…), not * or absolute URLs";

/// Whether the request target is a path (origin form), the only form
/// forwarded.
fn is_path(uri: &http::Uri) -> bool {
    uri.scheme().is_none() && uri.authority().is_none() && uri.path().starts_with('/')
}

/// A caller's request body, read with a bound on the gap between its
/// pieces (`gap`) and on the whole (`whole`), both counted from the first
/// read: a caller that announces a body and then sends it slowly, or not
/// at all, cannot hold its connection. Then it fails, and says so in
/// `timed_out`.
struct CallerBody {
    inner: Incoming,
    gap: Duration,
    whole: Duration,
    /// The gap's and the whole's, from the first read on.
    timers: Option<[Pin<Box<Sleep>>; 2]>,
    timed_out: Arc<AtomicBool>,
}

/// A request body that stopped coming.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl hyper::body::Body for CallerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // Most requests have no body: no timers for them.
        if this.inner.is_end_stream() {
            return Poll::Ready(None);
        }
        let (gap, whole) = (this.gap, this.whole);
        let [gap_timer, whole_timer] = this.timers.get_or_insert_with(|| {
            [
                Box::pin(tokio::time::sleep(gap)),
                Box::pin(tokio::time::sleep(whole)),
            ]
        });
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            gap_timer.as_mut().reset(tokio::time::Instant::now() + gap);
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if gap_timer.as_mut().poll(cx).is_ready() || whole_timer.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A caller's connection on which a write that makes no progress for
/// `stall` fails: a caller that stops taking its response does not hold
/// the connection (nor the instance's) for as long as it likes.
struct WriteBounded<S> {
    inner: S,
    stall: Duration,
    /// Running while a write waits.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteBounded<S> {
    fn new(inner: S, stall: Duration) -> WriteBounded<S> {
        WriteBounded {
            inner,
            stall,
            timer: None,
        }
    }

    /// `polled` as is, unless it has waited for `stall`.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let stall = self.stall;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            self.timer = None;
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the caller stopped taking the response",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteBounded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteBounded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bounded(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bounded(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.bounded(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.bounded(cx, polled)
    }
}

/// When a 429 says to come back: `Retry-After` (seconds or an HTTP date),
/// else `X-RateLimit-Reset` (Unix seconds); at most [`MAX_HOLD`] ahead.
fn retry_at(headers: &HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let at = match headers.get(header::RETRY_AFTER) {
        Some(_) => now + crate::http::retry_after(headers, now)?.min(MAX_HOLD),
        None => {
            let epoch = text("x-ratelimit-reset")?.parse::<u64>().ok()?;
            // Checked: an instance may name a time the clock cannot hold.
            UNIX_EPOCH
                .checked_add(Duration::from_secs(epoch))
                .unwrap_or(now + MAX_HOLD)
        }
    };
    Some(at.min(now + MAX_HOLD))
}

/// Drops the hop-by-hop headers (RFC 9110 §7.6.1) and those `Connection`
/// names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// A one-line JSON error: `{"error":KIND,"message":…}`.
fn json(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": kind, "message": message }).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body + "\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Why no token could be put on the request.
fn refused(error: &Error) -> Response<Body> {
    let (status, kind) = match error {
        Error::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        Error::NeedsLogin { .. } => (StatusCode::SERVICE_UNAVAILABLE, "needs_login"),
        Error::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream"),
        Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    json(status, kind, &error.to_string())
}

fn rate_limited(left: Duration) -> Response<Body> {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    let mut response = json(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!("the instance asked for no requests for {secs} s more"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Access, AccessConfig, ReaderIds};
    use snctl_shared::protocol::Readers;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("accept", "application/json"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn retry_after_takes_seconds_dates_and_reset_epochs() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            retry_at(&headers, now)
        };
        assert_eq!(
            at(&[("retry-after", "30")]),
            Some(now + Duration::from_secs(30))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            at(&[("retry-after", &date)]),
            Some(now + Duration::from_secs(90))
        );
        assert_eq!(
            at(&[("x-ratelimit-reset", "1800000120")]),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(
            at(&[("retry-after", "999999")]),
            Some(now + MAX_HOLD),
            "bounded"
        );
        assert_eq!(at(&[]), None);
        // A reset beyond what the clock can hold is bounded too, not a
        // panic in the proxy.
        assert_eq!(
            at(&[("x-ratelimit-reset", &u64::MAX.to_string())]),
            Some(now + MAX_HOLD)
        );
    }

    #[test]
    fn a_peer_outside_the_readers_is_refused_with_403() {
        let readers = Readers {
            users: vec!["4001".into()],
            groups: vec![],
            units: vec![],
        };
        let readers = ReaderIds::resolve(&readers).unwrap();
        let access = Access::new(&AccessConfig::default());
        let peer = |uid| Peer {
            uid,
            gid: uid,
            pid: Some(1),
            groups: vec![uid],
            unit: None,
        };
        assert!(access.require_reader(&peer(4001), "prod", &readers).is_ok());
        let other = if nix::unistd::geteuid().as_raw() == 4002 {
            4003
        } else {
            4002
        };
        let error = access
            .require_reader(&peer(other), "prod", &readers)
            .unwrap_err();
        let response = refused(&error);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}
