//! The request dispatcher: one handler per request kind, the access rules
//! checked before any of them runs. The server ([`crate::server`]) and the
//! proxies ([`crate::proxy`]) share one [`Dispatcher`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use snctl_shared::frame::{self, MAX_RESPONSE_FRAME};
use snctl_shared::protocol::{
    AuthSummary, BackupRequest, DaemonStatus, NameRequest, Reply, Request, Response, TokenRequest,
    TokenRequestRef, TokenResponseRef,
};
use snctl_shared::PROTOCOL_VERSION;

use crate::access::{Access, Peer, ReaderIds};
use crate::backup::Backups;
use crate::metrics::DaemonSample;
use crate::proxy::sockets::ProxySockets;
use crate::server::{Gauge, Handler};
use crate::tokens::{Tokens, Warm};

/// What request handlers share.
pub struct Dispatcher {
    tokens: Tokens,
    /// Replaced when SIGHUP changes the admin group.
    access: RwLock<Arc<Access>>,
    /// Moves on (under `access`'s lock) when the rules are replaced: the
    /// connections' warm copies made under the old rules are out of date.
    access_generation: AtomicU64,
    started: Instant,
    socket: PathBuf,
    state_dir: PathBuf,
    connections: Gauge,
    /// Woken after admin requests, which may change the status summary.
    changed: tokio::sync::Notify,
    backups: Backups,
    proxies: ProxySockets,
}

impl Dispatcher {
    pub fn new(
        tokens: Tokens,
        access: Access,
        socket: PathBuf,
        state_dir: PathBuf,
        backups: Backups,
        proxies: ProxySockets,
    ) -> Dispatcher {
        Dispatcher {
            tokens,
            access: RwLock::new(Arc::new(access)),
            access_generation: AtomicU64::new(0),
            started: Instant::now(),
            socket,
            state_dir,
            connections: Gauge::default(),
            changed: tokio::sync::Notify::new(),
            backups,
            proxies,
        }
    }

    /// The access rules in force.
    pub fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts new access rules in force (SIGHUP).
    pub fn set_access(&self, access: Access) {
        let mut rules = self.access.write().unwrap_or_else(|p| p.into_inner());
        *rules = Arc::new(access);
        self.access_generation.fetch_add(1, Ordering::Release);
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The proxy sockets.
    pub fn proxies(&self) -> &ProxySockets {
        &self.proxies
    }

    /// Completes after the next admin request (which may have changed
    /// [`Dispatcher::summary`]).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// One line for systemd's `STATUS=`.
    pub fn summary(&self) -> String {
        let o = self.tokens.overview();
        let plural = if o.authentications == 1 { "" } else { "s" };
        let mut line = format!(
            "serving {} authentication{plural} on {}",
            o.authentications,
            self.socket.display()
        );
        if o.unhealthy > 0 {
            line.push_str(&format!("; {} unhealthy", o.unhealthy));
            if o.needs_login > 0 {
                line.push_str(&format!(" ({} need login)", o.needs_login));
            }
        }
        line
    }

    /// Answers one request from `peer`, if the access rules allow it.
    pub async fn handle(&self, peer: &Peer, request: Request) -> Response {
        let access = &*self.access();
        let admin = is_admin_request(&request);
        if admin {
            access.require_admin(peer, request.kind())?;
        }
        let response = match request {
            Request::Token(r) => self.token(access, peer, r).await,
            Request::List => self.list(access, peer),
            Request::Show(r) => self.show(access, peer, r),
            Request::Status => Ok(Reply::Status(self.status(access.is_admin(peer)))),
            Request::Add(r) => self.tokens.add(r).await.map(auth),
            Request::Update(r) => self.tokens.update(r).await.map(auth),
            Request::Remove(r) => self.tokens.remove(r).await.map(Reply::Removed),
            Request::Refresh(r) => self.tokens.refresh(&r.name).await.map(auth),
            Request::StartLogin(r) => self.tokens.start_login(r).await.map(Reply::LoginChallenge),
            Request::Login(r) => self.tokens.login(r).await.map(auth),
            Request::Doctor(r) => self.tokens.doctor(&r.name).await.map(Reply::Diagnosis),
            Request::Backup(r) => self.backup(r).await,
            Request::Metrics => Ok(Reply::Metrics(
                self.metrics(|readers| access.may_read(peer, readers)),
            )),
        };
        if admin {
            if changes_proxies(&response) {
                // A proxy turned on answers once this reply is read; one
                // turned off (or removed) is gone.
                self.proxies.reconcile().await;
            }
            self.changed.notify_one();
        }
        response.map(|reply| self.with_proxy_sockets(reply))
    }

    /// `reply` with the proxy socket of each authentication in it.
    fn with_proxy_sockets(&self, reply: Reply) -> Reply {
        match reply {
            Reply::Auth(mut auth) => {
                auth.proxy_socket = self.proxies.socket_of(&auth.name);
                Reply::Auth(auth)
            }
            Reply::List(mut list) => {
                for auth in &mut list {
                    auth.proxy_socket = self.proxies.socket_of(&auth.name);
                }
                Reply::List(list)
            }
            other => other,
        }
    }

    async fn token(&self, access: &Access, peer: &Peer, r: TokenRequest) -> Response {
        let reader = |readers: &_| access.require_reader(peer, &r.name, readers);
        let token = self.tokens.token(&r.name, r.min_valid, reader).await?;
        Ok(Reply::Token(token))
    }

    fn list(&self, access: &Access, peer: &Peer) -> Response {
        Ok(Reply::List(
            self.tokens.list(|readers| access.may_read(peer, readers)),
        ))
    }

    fn show(&self, access: &Access, peer: &Peer, r: NameRequest) -> Response {
        self.tokens
            .show(&r.name, |readers| {
                access.require_reader(peer, &r.name, readers)
            })
            .map(auth)
    }

    async fn backup(&self, r: BackupRequest) -> Response {
        self.backups.chunk(r).await.map(Reply::Backup)
    }

    /// The OpenMetrics text: the daemon's own metrics, and those of the
    /// authentications whose readers `visible` accepts.
    pub fn metrics(&self, visible: impl Fn(&ReaderIds) -> bool) -> String {
        let daemon = DaemonSample {
            version: crate::VERSION,
            protocol: PROTOCOL_VERSION,
            uptime: self.started.elapsed(),
            connections_open: u64::from(self.connections.get()),
            connections_total: self.connections.total(),
        };
        self.tokens.metrics(&daemon, visible)
    }

    /// How the daemon is doing; authentication names only for admins.
    fn status(&self, admin: bool) -> DaemonStatus {
        let overview = self.tokens.overview();
        let named = |pair: Option<(String, i64)>| pair.filter(|_| admin);
        DaemonStatus {
            version: crate::VERSION.to_string(),
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.display().to_string(),
            state_dir: self.state_dir.display().to_string(),
            authentications: overview.authentications,
            unhealthy: overview.unhealthy,
            next_refresh: named(overview.next_refresh),
            connections: self.connections.get(),
            needs_login: overview.needs_login,
            next_login_deadline: named(overview.next_login_deadline),
        }
    }
}

fn auth(summary: AuthSummary) -> Reply {
    Reply::Auth(Box::new(summary))
}

/// Whether a successful admin request may have changed which
/// authentications have a proxy socket (one added, removed, or its
/// setting changed).
fn changes_proxies(response: &Response) -> bool {
    matches!(response, Ok(Reply::Auth(_) | Reply::Removed(_)))
}

/// The requests only admins may make: all but reading tokens, the
/// authentications one may read, the status and the metrics (of the
/// authentications one may read).
fn is_admin_request(request: &Request) -> bool {
    match request {
        Request::Token(_)
        | Request::List
        | Request::Show(_)
        | Request::Status
        | Request::Metrics => false,
        Request::Add(_)
        | Request::Update(_)
        | Request::Remove(_)
        | Request::Refresh(_)
        | Request::StartLogin(_)
        | Request::Login(_)
        | Request::Doctor(_)
        | Request::Backup(_) => true,
    }
}

impl Handler for Dispatcher {
    fn is_admin(&self, peer: &Peer) -> bool {
        self.access().is_admin(peer)
    }

    fn connections(&self) -> &Gauge {
        &self.connections
    }

    async fn handle(&self, peer: &Peer, request: Request) -> Response {
        Dispatcher::handle(self, peer, request).await
    }

    fn token_now(
        &self,
        peer: &Peer,
        request: &TokenRequestRef<'_>,
        warm: &mut Warm,
        out: &mut Vec<u8>,
    ) -> Option<i64> {
        // Read before the rules: see Tokens::token_now.
        let rules = self.access_generation.load(Ordering::Acquire);
        let (reply, expires_at) = self.tokens.token_now(
            request.name,
            request.min_valid,
            rules,
            warm,
            |readers| {
                // Read in place: no reference taken on them.
                let access = self.access.read().unwrap_or_else(|p| p.into_inner());
                access.may_read(peer, readers)
            },
            |token, reply| {
                frame::encode_into(&TokenResponseRef::token(token), MAX_RESPONSE_FRAME, reply)
                    .is_ok()
            },
        )?;
        out.clear();
        out.extend_from_slice(reply);
        Some(expires_at)
    }
}
