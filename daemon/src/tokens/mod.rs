//! The token cache and the refresh scheduler.
//!
//! The hot path ([`Tokens::token`]) reads a token from memory: one read lock
//! on the name map and one short mutex on the entry, no disk, no network.
//! Everything that talks to the instance for an authentication holds that
//! authentication's `flight` lock, so however many callers wait there is one
//! upstream request at a time, and callers that queued behind a refresh
//! find its token when they get the lock.
//!
//! Each authentication has a scheduler task that refreshes ahead of expiry
//! (at a jittered fraction of the lifetime) and retries failures with
//! exponential backoff, honouring `Retry-After`. Validity and plans count on
//! the boot clock, so that a suspend or a wall-clock step neither hands out
//! an expired token nor oversleeps a refresh ([`crate::clock`]). A
//! credential the instance refuses is not retried until an admin acts; a
//! refresh token it refuses makes the authentication "needs login" until a
//! person logs in again. New
//! tokens (and any refresh token that comes with them) are committed to the
//! store before anyone receives them.
//!
//! When that commit fails (a full disk, an I/O error, a read-only remount, a
//! state directory gone), the tokens are served from memory all the same
//! and their save is retried with backoff ([`Unsaved`]): an instance that
//! rotates refresh tokens has already superseded the one on disk, so the
//! one in memory is the only one left, and presenting the old one again
//! could end the login. Refreshes due meanwhile present the one in memory.
//! A stop tries the save once more ([`Tokens::shutdown`]); a kill, or a stop
//! while the disk still fails, loses it: the instance then refuses the one
//! on disk and the authentication needs a login.
//!
//! Refresh tokens keep the expiry of their first issue on ServiceNow: the
//! scheduler logs a warning 14, 7 and 1 days before the recorded deadline.
//!
//! Admin requests (add, update, remove, logins) live in [`admin`], the
//! probes of `snctl doctor` in [`doctor`], the `[refresh]` and `[login]`
//! sections of the configuration file in [`sections`].

mod admin;
mod doctor;
mod sections;
#[cfg(test)]
mod transitions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use snctl_shared::protocol::{
    AuthState, AuthSummary, Grant, LoginSummary, MinValid, TokenReply, TokenReplyRef,
    UpstreamError, UpstreamKind,
};
use snctl_shared::time::span;
use snctl_shared::{Error, Secret};

use crate::access::ReaderIds;
use crate::clock::Clock;
use crate::metrics::{AuthCounters, AuthSample, DaemonSample, FailureKind};
use crate::servicenow::{Failure, Proof, Step, Upstream};
use crate::store::{Authentication, BootStamp, Record, Store, StoreError, TokenSet};

pub use admin::LoginPolicy;
pub use sections::{LoginSection, RefreshSection};

/// How long before a refresh token's deadline the scheduler warns (the
/// last one when it is reached).
const WARN_BEFORE_DAYS: [i64; 4] = [14, 7, 1, 0];
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// How often the clock watch compares the clocks ([`Tokens::watch_clocks`]):
/// the longest a schedule runs late after a resume.
const CLOCK_WATCH_PERIOD: Duration = Duration::from_secs(5);
/// How far the clocks may drift apart over one period before it counts as
/// a suspend or a step (a loaded host runs the watch late, but all the
/// clocks run on meanwhile).
const CLOCK_JUMP_MS: i64 = 2_000;

/// When to refresh and how to back off.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// Refresh once this fraction of a token's lifetime has passed.
    pub ahead: f64,
    /// Spread refreshes by up to this fraction of the lifetime either way,
    /// so that authentications added together do not refresh together.
    pub jitter: f64,
    /// First retry delay after a failure; doubles per failure.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured.
    pub retry_after_max: Duration,
    /// Upstream token requests in flight at once, all authentications together.
    pub max_concurrent_upstream: usize,
    /// A token refused (401) on a request the proxy forwarded is refreshed
    /// only once it is at least this old ([`Tokens::replace_refused`]).
    pub refused_floor: Duration,
    /// At most one refresh for such a 401 per authentication in this long.
    pub refused_every: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            ahead: 0.75,
            jitter: 0.05,
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            retry_after_max: Duration::from_secs(3600),
            max_concurrent_upstream: 16,
            refused_floor: Duration::from_secs(10),
            refused_every: Duration::from_secs(60),
        }
    }
}

/// An access token in hand. Its validity is counted on the boot clock
/// from when it was asked for (see [`crate::clock`]): the instance decides
/// expiry, and all it told is "expires in so many seconds".
struct Token {
    access: Secret,
    expires_boot_ms: i64,
    obtained_boot_ms: i64,
}

impl Token {
    fn lifetime_ms(&self) -> i64 {
        self.expires_boot_ms - self.obtained_boot_ms
    }
}

/// A login's refresh token, and when it was first issued.
#[derive(Clone)]
struct HeldRefresh {
    token: Secret,
    issued_ms: i64,
}

impl HeldRefresh {
    /// The refresh token that came with `tokens`, if one did.
    fn of(tokens: &TokenSet) -> Option<HeldRefresh> {
        Some(HeldRefresh {
            token: tokens.refresh_token.clone()?,
            issued_ms: tokens.refresh_issued_ms.unwrap_or(tokens.obtained_at_ms),
        })
    }
}

/// Tokens in service whose commit failed: saved by a later try.
struct Unsaved {
    /// What to commit: the newest tokens, with the refresh token in hand.
    tokens: TokenSet,
    /// Why the last try failed.
    reason: String,
    /// Failed tries so far.
    tries: u32,
    /// On the boot clock.
    retry_at_boot_ms: i64,
}

impl Unsaved {
    /// For `snctl show` and `snctl check`.
    fn describe(&self) -> String {
        format!(
            "new tokens not yet saved ({}): served from memory, saving tried {} times so far \
             and again shortly; make room in or repair the state directory's filesystem \
             (a restart before then loses them and may need a new login)",
            self.reason, self.tries
        )
    }
}

/// `tokens`, with the refresh token of `unsaved` when they came without
/// one, so that committing them saves the refresh token in hand.
fn with_unsaved_refresh(mut tokens: TokenSet, unsaved: Option<&Unsaved>) -> TokenSet {
    if let (None, Some(unsaved)) = (&tokens.refresh_token, unsaved) {
        tokens.refresh_token = unsaved.tokens.refresh_token.clone();
        tokens.refresh_issued_ms = unsaved.tokens.refresh_issued_ms;
    }
    tokens
}

struct Shared {
    auth: Arc<Authentication>,
    token: Option<Token>,
    /// The refresh token of a login by a person.
    refresh: Option<HeldRefresh>,
    state: AuthState,
    last_error: Option<UpstreamError>,
    failures: u32,
    /// The schedule, on the boot clock: it neither stops in a suspend nor
    /// steps with the wall clock.
    retry_at_boot_ms: Option<i64>,
    next_refresh_boot_ms: Option<i64>,
    /// Wall-clock, for display.
    last_refresh_ms: Option<i64>,
    /// When a 401 on a proxied request last caused a refresh (boot clock).
    refused_refresh_boot_ms: Option<i64>,
    /// How many of [`WARN_BEFORE_DAYS`] have been logged for this refresh token.
    warned: usize,
    /// Tokens in service that the store could not commit yet (boxed: rare,
    /// and every authentication carries the field).
    unsaved: Option<Box<Unsaved>>,
}

impl Shared {
    /// When the refresh token dies, by its issue time and recorded lifespan.
    fn refresh_deadline_ms(&self) -> Option<i64> {
        let issued = self.refresh.as_ref()?.issued_ms;
        let lifespan = i64::try_from(self.auth.refresh_lifespan_secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        Some(issued.saturating_add(lifespan))
    }

    /// When the next deadline warning is due, if one is left.
    fn warning_due_ms(&self) -> Option<i64> {
        if self.state == AuthState::NeedsLogin {
            return None;
        }
        let days = WARN_BEFORE_DAYS.get(self.warned)?;
        Some(self.refresh_deadline_ms()? - days * DAY_MS)
    }
}

struct Entry {
    shared: Mutex<Shared>,
    clock: Arc<dyn Clock>,
    /// Held by whoever talks to the instance for this authentication.
    flight: tokio::sync::Mutex<()>,
    /// Tells the scheduler that its plan changed, or that the
    /// authentication is gone ([`Entry::removed`]).
    wake: Notify,
    /// Set (under the flight lock) once the authentication is removed: its
    /// scheduler ends, and work queued behind the removal does not run. A
    /// flag and a wake-up rather than a child cancellation token: 112 bytes
    /// less for each of thousands of authentications.
    removed: std::sync::atomic::AtomicBool,
    /// For `snctl metrics`: atomics, so the token path takes no lock more.
    counters: AuthCounters,
    /// Moves on whenever [`Entry::lock`] is taken: a connection's [`Warm`]
    /// copy made at another generation is out of date.
    generation: AtomicU64,
}

/// [`Entry::lock_to_read`]'s guard: the state, not to be changed.
struct ReadGuard<'a>(std::sync::MutexGuard<'a, Shared>);

impl std::ops::Deref for ReadGuard<'_> {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A connection's copy of the last token it was answered, and of what
/// that answer was made from ([`Tokens::token_now`]): a service asking for
/// the same token per API call is answered from it without a lock. It
/// holds the token only as the encoded answer the connection sends anyway.
#[derive(Default)]
pub struct Warm {
    copy: Option<WarmCopy>,
    /// The encoded answer: kept for the connection's life.
    reply: Vec<u8>,
}

impl Warm {
    /// Forgets the copy and gives back its buffer (a connection parked
    /// between requests).
    pub fn release(&mut self) {
        *self = Warm::default();
    }
}

struct WarmCopy {
    name: Box<str>,
    entry: Arc<Entry>,
    /// The generations it was made at: [`Inner::entries_generation`],
    /// [`Entry::generation`] and the caller's access rules.
    entries: u64,
    generation: u64,
    rules: u64,
    /// Whether the connection's caller may read the token.
    allowed: bool,
    /// The expiry in the answer: seconds since the epoch.
    expires_at: i64,
    /// The token's life on the boot clock.
    expires_boot_ms: i64,
    obtained_boot_ms: i64,
    /// When it was made, on the boot clock, and the wall clock's lead
    /// over the boot clock then.
    made_boot_ms: i64,
    wall_minus_boot_ms: i64,
}

impl Entry {
    /// Whether the authentication was removed ([`Entry::remove`]).
    fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks the authentication removed and wakes its scheduler, which
    /// ends. The caller holds the flight lock.
    fn remove(&self) {
        self.removed
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// The authentication's state, to read or change. Every taking counts
    /// as a change for the connections' [`Warm`] copies (taken here, under
    /// the lock, before the holder can change anything): whatever changes
    /// what a token request is answered (the token, the readers, the
    /// instance) is done under this lock, and no path has to remember to
    /// say so.
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        let shared = self.locked();
        self.generation.fetch_add(1, Ordering::Release);
        shared
    }

    /// The state, only to read (the guard gives no `&mut`): the
    /// connections' copies stay valid.
    fn lock_to_read(&self) -> ReadGuard<'_> {
        ReadGuard(self.locked())
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn boot_ms(&self) -> i64 {
        self.clock.boot_ms()
    }

    /// The wall-clock time of `boot_ms`, by the wall clock as it is now.
    fn wall_of(&self, boot_ms: i64) -> i64 {
        self.clock.wall_of(boot_ms)
    }

    fn reply(&self, shared: &Shared, token: &Token) -> TokenReply {
        TokenReply {
            access_token: token.access.clone(),
            expires_at: self.wall_of(token.expires_boot_ms) / 1000,
            instance_url: shared.auth.instance_url.clone(),
        }
    }

    /// A token valid for at least `min_valid_ms` more.
    fn fresh(&self, min_valid_ms: i64) -> Option<TokenReply> {
        let shared = self.lock_to_read();
        let token = shared.token.as_ref()?;
        (token.expires_boot_ms - self.boot_ms() > min_valid_ms).then(|| self.reply(&shared, token))
    }

    /// Why no upstream call should be made now, if there is a reason.
    fn holdoff(&self, name: &str) -> Option<Error> {
        let shared = self.lock_to_read();
        let waiting =
            shared.failures > 0 && shared.retry_at_boot_ms.is_some_and(|t| t > self.boot_ms());
        match (shared.state, shared.last_error.clone()) {
            (AuthState::NeedsLogin, _) => Some(Error::NeedsLogin {
                name: name.to_string(),
            }),
            (AuthState::Rejected, Some(error)) => Some(Error::Upstream(UpstreamError {
                message: format!("{}; then run `snctl refresh {name}`", error.message),
                ..error
            })),
            (AuthState::Failing, Some(error)) if waiting => Some(Error::Upstream(error)),
            _ => None,
        }
    }

    /// Whether the token in hand is valid and less than a tenth of its
    /// lifetime old.
    fn just_obtained(&self) -> bool {
        let shared = self.lock_to_read();
        let now = self.boot_ms();
        shared.token.as_ref().is_some_and(|t| {
            now < t.expires_boot_ms && now - t.obtained_boot_ms < t.lifetime_ms() / 10
        })
    }

    fn lifetime_ms(&self) -> Option<i64> {
        let shared = self.lock_to_read();
        shared.token.as_ref().map(Token::lifetime_ms)
    }

    /// When the next refresh is due, on the boot clock; `None` means wait
    /// to be woken.
    fn due_boot_ms(&self) -> Option<i64> {
        let shared = self.lock();
        match shared.state {
            AuthState::Rejected | AuthState::NeedsLogin => None,
            AuthState::Failing => shared.retry_at_boot_ms.or(Some(self.boot_ms())),
            AuthState::Ok => shared.next_refresh_boot_ms.or(Some(self.boot_ms())),
        }
    }

    /// Logs the deadline warnings that are due.
    fn warn_if_due(&self) {
        let mut shared = self.lock();
        let (Some(due), Some(deadline)) = (shared.warning_due_ms(), shared.refresh_deadline_ms())
        else {
            return;
        };
        let now = self.now_ms();
        if due > now {
            return;
        }
        // One line for the tightest threshold passed, however many were.
        while shared.warning_due_ms().is_some_and(|due| due <= now) {
            shared.warned += 1;
        }
        let name = &shared.auth.name;
        let left_ms = deadline - now;
        if left_ms > 0 {
            tracing::warn!(
                %name,
                deadline = deadline / 1000,
                "the refresh token of {name} dies in {}: run `snctl login {name}` before then, \
                 or the authentication stops working",
                span(left_ms),
            );
        } else {
            tracing::warn!(
                %name,
                deadline = deadline / 1000,
                "the refresh token of {name} has reached its recorded lifespan: run `snctl login \
                 {name}`; if refreshes still work, the record's Refresh Token Lifespan is longer \
                 than recorded (`snctl update {name} --refresh-token-lifespan`)",
            );
        }
    }

    /// When the next try to save unsaved tokens is due (boot clock).
    fn save_due_boot_ms(&self) -> Option<i64> {
        self.lock().unsaved.as_deref().map(|u| u.retry_at_boot_ms)
    }

    /// When the next deadline warning is due, on the boot clock as the
    /// wall clock says now (the deadline is the instance's, wall-clock).
    fn warning_due_boot_ms(&self) -> Option<i64> {
        let due = self.lock().warning_due_ms()?;
        Some(
            self.boot_ms()
                .saturating_add(due.saturating_sub(self.now_ms())),
        )
    }

    fn summary(&self) -> AuthSummary {
        let shared = self.lock_to_read();
        let auth = &shared.auth;
        let unsaved = shared.unsaved.as_deref().map(Unsaved::describe);
        AuthSummary {
            name: auth.name.clone(),
            instance_url: auth.instance_url.clone(),
            grant: auth.grant,
            client_id: auth.client_id.clone(),
            client_auth: auth.client_auth,
            scope: auth.scope.clone(),
            state: shared.state,
            last_error: match (shared.last_error.as_ref(), unsaved) {
                (Some(error), Some(unsaved)) => Some(format!("{}; {unsaved}", error.message)),
                (Some(error), None) => Some(error.message.clone()),
                (None, unsaved) => unsaved,
            },
            access_expires_at: shared
                .token
                .as_ref()
                .map(|t| self.wall_of(t.expires_boot_ms) / 1000),
            last_refresh_at: shared.last_refresh_ms.map(|t| t / 1000),
            next_refresh_at: match shared.state {
                AuthState::Ok => shared.next_refresh_boot_ms,
                AuthState::Failing => shared.retry_at_boot_ms,
                AuthState::Rejected | AuthState::NeedsLogin => None,
            }
            .map(|t| self.wall_of(t) / 1000),
            created_at: auth.created_at_ms / 1000,
            login: auth.grant.needs_person().then(|| LoginSummary {
                username: auth.username.clone(),
                refresh_issued_at: shared.refresh.as_ref().map(|r| r.issued_ms / 1000),
                refresh_expires_at: shared.refresh_deadline_ms().map(|t| t / 1000),
                refresh_lifespan_secs: auth.refresh_lifespan_secs,
                redirect_uri: (auth.grant == Grant::AuthorizationCode)
                    .then(|| auth.redirect_port.map(redirect_uri))
                    .flatten(),
            }),
            readers: auth.readers.names(),
            proxy: auth.proxy,
            // Known to the proxies, which fill it in (crate::dispatch).
            proxy_socket: None,
        }
    }
}

/// What gets a token without a person: the JWT-bearer grant's assertion,
/// or the client credentials.
fn unattended(auth: &Authentication) -> Proof<'static> {
    match auth.grant {
        Grant::JwtBearer => Proof::JwtBearer,
        _ => Proof::ClientCredentials,
    }
}

/// The Redirect URL of a login whose loopback listener is on `port`.
pub fn redirect_uri(port: u16) -> String {
    format!("http://127.0.0.1:{port}/callback")
}

/// ServiceNow sends the same refresh token back until it dies, and it keeps
/// the expiry of its first issue: an unchanged token keeps its issue time;
/// only a new one (a server that rotates, or a new login) restarts the clock.
fn carry_issue_time(tokens: &mut TokenSet, held: Option<&HeldRefresh>) {
    if let (Some(new), Some(held)) = (&tokens.refresh_token, held) {
        if *new == held.token {
            tokens.refresh_issued_ms = Some(held.issued_ms);
        }
    }
}

struct Inner {
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    /// Moves on whenever `entries` is taken to write ([`Warm`]).
    entries_generation: AtomicU64,
    store: Store,
    clock: Arc<dyn Clock>,
    upstream: Box<dyn Upstream>,
    /// Both may change on SIGHUP ([`Tokens::set_policies`]).
    policy: RwLock<RefreshPolicy>,
    login: RwLock<LoginPolicy>,
    /// Authorization-code logins started and not yet finished, by name.
    pending: Mutex<HashMap<String, admin::Pending>>,
    permits: Semaphore,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The cache of every authentication's tokens. Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

/// Counts for `snctl status`.
pub struct Overview {
    pub authentications: u32,
    pub unhealthy: u32,
    pub needs_login: u32,
    pub next_refresh: Option<(String, i64)>,
    pub next_login_deadline: Option<(String, i64)>,
}

fn internal(error: StoreError) -> Error {
    tracing::error!(%error, "store failure");
    Error::Internal {
        message: format!("the database failed: {error}"),
    }
}

/// One line when unsaved tokens are saved at last.
fn saved_at_last(name: &str, earlier: &Unsaved) {
    tracing::info!(%name, failed_tries = earlier.tries,
        "saved {name}'s new tokens after {} failed tries", earlier.tries);
}

fn shutting_down() -> Error {
    Error::Unavailable {
        message: "snctld is shutting down".into(),
    }
}

fn vanished() -> Error {
    Error::Internal {
        message: "a new token vanished".into(),
    }
}

fn too_long(name: &str, lifetime_ms: i64, min_valid_ms: i64) -> Error {
    Error::invalid(format!(
        "{name}'s tokens live {} s, so a token valid for {} s more cannot be had: ask for less",
        lifetime_ms / 1000,
        min_valid_ms / 1000
    ))
}

/// How long, in milliseconds, a token handed out for `min_valid` must still
/// be valid, given the lifetime of the authentication's tokens if known.
///
/// A default bends to a short lifetime: a quarter of it is about what is
/// left when the scheduler refreshes ahead on its own, so default callers
/// neither fail nor refresh earlier than the schedule would.
fn wanted_ms(min_valid: MinValid, lifetime_ms: Option<i64>) -> i64 {
    match min_valid {
        MinValid::Required(secs) => i64::from(secs) * 1000,
        MinValid::Default(secs) => {
            let wanted = i64::from(secs) * 1000;
            lifetime_ms.map_or(wanted, |lifetime| wanted.min(lifetime / 4))
        }
    }
}

fn upstream_error(failure: &Failure, instance: &str, retry_at_ms: Option<i64>) -> UpstreamError {
    UpstreamError {
        kind: failure.kind,
        status: failure.status,
        message: failure.explain(instance),
        retry_at: retry_at_ms.map(|t| t / 1000),
    }
}

impl Tokens {
    /// Builds the cache from the stored records and starts a scheduler for
    /// each authentication.
    pub fn start(
        records: Vec<Record>,
        store: Store,
        clock: impl Clock,
        upstream: impl Upstream,
        policy: RefreshPolicy,
        login: LoginPolicy,
    ) -> Tokens {
        let tokens = Tokens {
            inner: Arc::new(Inner {
                entries: RwLock::new(HashMap::with_capacity(records.len())),
                entries_generation: AtomicU64::new(0),
                store,
                clock: Arc::new(clock),
                upstream: Box::new(upstream),
                permits: Semaphore::new(policy.max_concurrent_upstream.max(1)),
                policy: RwLock::new(policy),
                login: RwLock::new(login),
                pending: Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        for record in records {
            let last_error = record.last_error.map(|message| UpstreamError {
                kind: match record.state {
                    AuthState::Rejected | AuthState::NeedsLogin => UpstreamKind::AccessDenied,
                    _ => UpstreamKind::Connection,
                },
                status: None,
                message,
                retry_at: None,
            });
            let name = record.auth.name.clone();
            let entry = tokens.new_entry(record.auth, record.tokens, record.state, last_error);
            tokens.write_entries().insert(name, entry.clone());
            tokens.spawn_scheduler(entry);
        }
        tokens.watch_clocks();
        tokens
    }

    /// Wakes every scheduler when the clocks jump apart: the boot clock
    /// ahead of tokio's timer (the host was suspended, and every sleep
    /// begun before stood still) or the wall clock apart from the boot
    /// clock (a step, which moves the deadline warnings). One line says
    /// which; each scheduler then plans again from the clocks as they are.
    fn watch_clocks(&self) {
        let tokens = self.clone();
        self.inner.tasks.spawn(async move {
            let clock = &tokens.inner.clock;
            let read = || (tokio::time::Instant::now(), clock.boot_ms(), clock.now_ms());
            let mut last = read();
            loop {
                tokio::select! {
                    biased;
                    _ = tokens.inner.stop.cancelled() => break,
                    _ = tokio::time::sleep(CLOCK_WATCH_PERIOD) => {}
                }
                let now = read();
                let timer_ms = now.0.duration_since(last.0).as_millis() as i64;
                let (boot_ms, wall_ms) = (now.1 - last.1, now.2 - last.2);
                last = now;
                let suspended_ms = boot_ms - timer_ms;
                let stepped_ms = wall_ms - boot_ms;
                if suspended_ms > CLOCK_JUMP_MS {
                    tracing::info!(
                        suspended_secs = suspended_ms / 1000,
                        "the host was suspended for about {}: planning every refresh again",
                        span(suspended_ms)
                    );
                }
                if stepped_ms.abs() > CLOCK_JUMP_MS {
                    tracing::info!(
                        stepped_secs = stepped_ms / 1000,
                        "the wall clock stepped {} by {}: token lifetimes count on the boot \
                         clock and stand; planning every refresh again",
                        if stepped_ms > 0 { "forward" } else { "back" },
                        span(stepped_ms.abs())
                    );
                }
                if suspended_ms > CLOCK_JUMP_MS || stepped_ms.abs() > CLOCK_JUMP_MS {
                    for entry in tokens.read_entries().values() {
                        entry.wake.notify_one();
                    }
                }
            }
        });
    }

    fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    fn boot_ms(&self) -> i64 {
        self.inner.clock.boot_ms()
    }

    fn policy(&self) -> RefreshPolicy {
        self.inner
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn login_policy(&self) -> LoginPolicy {
        self.inner
            .login
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New refresh and login policies (SIGHUP), for every later refresh,
    /// backoff and login. The cap on concurrent upstream requests stays.
    pub fn set_policies(&self, refresh: RefreshPolicy, login: LoginPolicy) {
        *self.inner.policy.write().unwrap_or_else(|p| p.into_inner()) = refresh;
        *self.inner.login.write().unwrap_or_else(|p| p.into_inner()) = login;
    }

    fn read_entries(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        self.inner.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_entries(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Entry>>> {
        let entries = self
            .inner
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner());
        // Under the lock: a copy made after this sees the change.
        self.inner
            .entries_generation
            .fetch_add(1, Ordering::Release);
        entries
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, Error> {
        self.read_entries()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                name: name.to_string(),
            })
    }

    fn new_entry(
        &self,
        auth: Authentication,
        tokens: Option<TokenSet>,
        state: AuthState,
        last_error: Option<UpstreamError>,
    ) -> Arc<Entry> {
        let mut shared = Shared {
            auth: Arc::new(auth),
            token: None,
            refresh: None,
            state,
            last_error: last_error.clone(),
            failures: 0,
            retry_at_boot_ms: None,
            next_refresh_boot_ms: None,
            last_refresh_ms: None,
            refused_refresh_boot_ms: None,
            warned: 0,
            unsaved: None,
        };
        if let Some(tokens) = tokens {
            self.install(&mut shared, tokens);
            // A stored failure outlives the restart; install() reset it.
            shared.state = state;
            shared.last_error = last_error;
        }
        Arc::new(Entry {
            shared: Mutex::new(shared),
            clock: self.inner.clock.clone(),
            flight: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            removed: std::sync::atomic::AtomicBool::new(false),
            counters: AuthCounters::default(),
            generation: AtomicU64::new(0),
        })
    }

    /// Puts new tokens in place and plans the next refresh. A refresh
    /// token in `tokens` replaces the one in hand. When they were obtained
    /// on the boot clock is unknown (stored ones, say): only wall-clock
    /// times say, as of now.
    fn install(&self, shared: &mut Shared, tokens: TokenSet) {
        let obtained_boot_ms = self.inner.clock.boot_of_obtained(&tokens);
        self.install_at(shared, tokens, obtained_boot_ms);
    }

    /// [`Tokens::install`] of tokens asked for at `obtained_boot_ms` on the
    /// boot clock.
    fn install_at(&self, shared: &mut Shared, tokens: TokenSet, obtained_boot_ms: i64) {
        if let Some(refresh) = HeldRefresh::of(&tokens) {
            if shared
                .refresh
                .as_ref()
                .is_none_or(|held| held.issued_ms != refresh.issued_ms)
            {
                shared.warned = 0;
            }
            shared.refresh = Some(refresh);
        }
        let lifetime = (tokens.expires_at_ms - tokens.obtained_at_ms).max(0) as f64;
        let policy = self.policy();
        let jitter = if policy.jitter > 0.0 {
            rand::thread_rng().gen_range(-policy.jitter..policy.jitter)
        } else {
            0.0
        };
        let expires_boot_ms = obtained_boot_ms + lifetime as i64;
        let at = obtained_boot_ms + (lifetime * (policy.ahead + jitter)).round() as i64;
        // Never plan sooner than a second after the last token, whatever
        // lifetime the instance claims, so a bogus `expires_in` cannot turn
        // the scheduler into a loop.
        shared.next_refresh_boot_ms = Some(at.min(expires_boot_ms).max(obtained_boot_ms + 1000));
        shared.last_refresh_ms = Some(tokens.obtained_at_ms);
        shared.token = Some(Token {
            access: tokens.access_token,
            expires_boot_ms,
            obtained_boot_ms,
        });
        shared.state = AuthState::Ok;
        shared.last_error = None;
        shared.failures = 0;
        shared.retry_at_boot_ms = None;
    }

    fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let policy = self.policy();
        let exp = policy
            .backoff_min
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(policy.backoff_max);
        // Full jitter over the upper half: spread, but never much sooner.
        let half = exp / 2;
        let delay = half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0));
        match retry_after {
            Some(asked) => delay.max(asked.min(policy.retry_after_max)),
            None => delay,
        }
    }

    /// Holds `entry`'s flight lock: the one upstream conversation at a time.
    /// Fails once the authentication has been removed, so that work queued
    /// behind `remove` does not run after it.
    async fn lock_flight<'e>(
        &self,
        entry: &'e Entry,
    ) -> Result<tokio::sync::MutexGuard<'e, ()>, Error> {
        let guard = entry.flight.lock().await;
        if entry.is_removed() {
            return Err(Error::NotFound {
                name: entry.lock_to_read().auth.name.clone(),
            });
        }
        Ok(guard)
    }

    /// Asks the instance for a new token (client credentials, or the
    /// refresh token of a login) and commits it. The caller holds the
    /// entry's flight lock.
    async fn fetch(&self, entry: &Entry) -> Result<(), Error> {
        let (auth, refresh) = {
            let shared = entry.lock();
            (shared.auth.clone(), shared.refresh.clone())
        };
        if auth.grant.needs_person() && refresh.is_none() {
            return self.lost_login(entry, &auth).await;
        }
        let proof = match &refresh {
            Some(held) => Proof::Refresh(&held.token),
            None => unattended(&auth),
        };
        let asked = std::time::Instant::now();
        let (asked_boot_ms, answer) = self.ask_at(&auth, proof).await?;
        entry.counters.refresh_attempted(asked.elapsed());
        match answer {
            Ok(mut tokens) => {
                carry_issue_time(&mut tokens, refresh.as_ref());
                let tokens = with_unsaved_refresh(tokens, entry.lock().unsaved.as_deref());
                let name = auth.name.clone();
                let to_store = tokens.clone();
                let saved = self
                    .inner
                    .store
                    .call(move |db| db.save_tokens(&name, &to_store))
                    .await;
                let expires_in =
                    (asked_boot_ms + tokens.expires_at_ms - tokens.obtained_at_ms - self.boot_ms())
                        / 1000;
                match saved {
                    Ok(true) => {
                        let earlier = {
                            let mut shared = entry.lock();
                            self.install_at(&mut shared, tokens, asked_boot_ms);
                            shared.unsaved.take()
                        };
                        if let Some(earlier) = earlier {
                            saved_at_last(&auth.name, &earlier);
                        }
                        tracing::info!(name = %auth.name, expires_in, "access token refreshed");
                    }
                    Ok(false) => {
                        return Err(Error::NotFound {
                            name: auth.name.clone(),
                        })
                    }
                    Err(error) => {
                        self.keep_unsaved(entry, tokens, asked_boot_ms, error);
                        tracing::info!(name = %auth.name, expires_in,
                            "access token refreshed, not yet saved");
                    }
                }
                entry.wake.notify_one();
                Ok(())
            }
            Err(failure) => {
                entry
                    .counters
                    .refresh_failed(FailureKind::Upstream(failure.kind));
                // The new state is persisted only when it changes, so a long
                // outage does not write on every retry.
                let (error, state, changed) = {
                    let mut shared = entry.lock();
                    shared.failures += 1;
                    let before = shared.state;
                    if failure.is_transient() {
                        shared.state = AuthState::Failing;
                        shared.retry_at_boot_ms = Some(
                            self.boot_ms()
                                + self
                                    .backoff(shared.failures, failure.retry_after)
                                    .as_millis() as i64,
                        );
                    } else if failure.step == Step::Refresh {
                        shared.state = AuthState::NeedsLogin;
                        shared.retry_at_boot_ms = None;
                        // Its refresh token is dead: nothing left worth saving.
                        shared.unsaved = None;
                    } else {
                        shared.state = AuthState::Rejected;
                        shared.retry_at_boot_ms = None;
                    }
                    let retry_at_ms = shared.retry_at_boot_ms.map(|t| entry.wall_of(t));
                    let error = upstream_error(&failure, &auth.instance_url, retry_at_ms);
                    shared.last_error = Some(error.clone());
                    let changed = before != shared.state || shared.failures == 1;
                    (error, shared.state, changed)
                };
                entry.wake.notify_one();
                tracing::warn!(name = %auth.name, kind = ?failure.kind, status = ?failure.status,
                    retry_at = ?error.retry_at, "refresh failed: {}", error.message);
                if changed {
                    self.record_health(&auth.name, state, &error.message).await;
                }
                if state == AuthState::NeedsLogin {
                    return Err(Error::NeedsLogin {
                        name: auth.name.clone(),
                    });
                }
                Err(Error::Upstream(error))
            }
        }
    }

    /// Asks the instance for a token, within the global cap on upstream
    /// requests. `Err` only when snctld is shutting down.
    async fn ask(
        &self,
        auth: &Authentication,
        proof: Proof<'_>,
    ) -> Result<Result<TokenSet, Failure>, Error> {
        Ok(self.ask_at(auth, proof).await?.1)
    }

    /// [`Tokens::ask`], saying also when it asked, on the boot clock: the
    /// token's life counts from then, and the tokens carry it to the
    /// store ([`TokenSet::obtained_boot`]).
    async fn ask_at(
        &self,
        auth: &Authentication,
        proof: Proof<'_>,
    ) -> Result<(i64, Result<TokenSet, Failure>), Error> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| shutting_down())?;
        let asked_boot_ms = self.boot_ms();
        let answer = self.inner.upstream.request_token(auth, proof).await;
        let stamped = answer.map(|mut tokens| {
            tokens.obtained_boot = Some(BootStamp {
                boot_id: self.inner.clock.boot_id().to_string(),
                boot_ms: asked_boot_ms,
            });
            tokens
        });
        Ok((asked_boot_ms, stamped))
    }

    /// New tokens the store could not commit: they go into service all the
    /// same (the instance may have superseded the refresh token on disk
    /// already) and their save is retried with backoff. One error line
    /// when saving starts failing; each later failure only at debug level.
    fn keep_unsaved(
        &self,
        entry: &Entry,
        tokens: TokenSet,
        obtained_boot_ms: i64,
        error: StoreError,
    ) {
        entry.counters.refresh_failed(FailureKind::Database);
        let mut shared = entry.lock();
        let earlier = shared.unsaved.take();
        let tries = earlier.as_ref().map_or(0, |u| u.tries) + 1;
        self.install_at(&mut shared, tokens.clone(), obtained_boot_ms);
        shared.unsaved = Some(Box::new(Unsaved {
            tokens,
            reason: error.to_string(),
            tries,
            retry_at_boot_ms: self.boot_ms() + self.backoff(tries, None).as_millis() as i64,
        }));
        let name = shared.auth.name.clone();
        drop(shared);
        if earlier.is_none() {
            tracing::error!(%name, %error,
                "cannot save {name}'s new tokens ({error}): serving them from memory and retrying \
                 the save; a restart before it works loses them");
        } else {
            tracing::debug!(%name, %error, tries, "the newer tokens of {name} are not saved either");
        }
    }

    /// Tries again to commit `entry`'s unsaved tokens. The caller holds the
    /// entry's flight lock, so no refresh replaces them meanwhile.
    async fn retry_save(&self, entry: &Entry) {
        let (name, tokens) = {
            let shared = entry.lock();
            let Some(unsaved) = shared.unsaved.as_ref() else {
                return;
            };
            (shared.auth.name.clone(), unsaved.tokens.clone())
        };
        let to_store = name.clone();
        let saved = self
            .inner
            .store
            .call(move |db| db.save_tokens(&to_store, &tokens))
            .await;
        let health = {
            let mut shared = entry.lock();
            match saved {
                Ok(_) => {
                    if let Some(earlier) = shared.unsaved.take() {
                        saved_at_last(&name, &earlier);
                    }
                    // The commit marked the row healthy; a refresh failing
                    // since says otherwise.
                    let message = shared.last_error.as_ref().map(|e| e.message.clone());
                    message.map(|m| (shared.state, m))
                }
                Err(error) => {
                    entry.counters.refresh_failed(FailureKind::Database);
                    if let Some(unsaved) = shared.unsaved.as_mut() {
                        unsaved.tries += 1;
                        unsaved.retry_at_boot_ms =
                            self.boot_ms() + self.backoff(unsaved.tries, None).as_millis() as i64;
                        unsaved.reason = error.to_string();
                        tracing::debug!(%name, %error, tries = unsaved.tries,
                            "the tokens of {name} are still not saved");
                    }
                    None
                }
            }
        };
        if let Some((state, message)) = health.filter(|(s, _)| *s != AuthState::Ok) {
            self.record_health(&name, state, &message).await;
        }
        entry.wake.notify_one();
    }

    /// A login by a person without a refresh token (the instance gave none,
    /// e.g. to a public client): nothing can be done until a new login.
    async fn lost_login(&self, entry: &Entry, auth: &Authentication) -> Result<(), Error> {
        let message = format!(
            "{} gave no refresh token at the last login, so the login ends with the access token",
            auth.instance_url
        );
        let changed = {
            let mut shared = entry.lock();
            let changed = shared.state != AuthState::NeedsLogin;
            shared.state = AuthState::NeedsLogin;
            shared.retry_at_boot_ms = None;
            shared.last_error = Some(UpstreamError {
                kind: UpstreamKind::AccessDenied,
                status: None,
                message: message.clone(),
                retry_at: None,
            });
            changed
        };
        if changed {
            tracing::warn!(name = %auth.name, "{message}: run `snctl login {}`", auth.name);
            self.record_health(&auth.name, AuthState::NeedsLogin, &message)
                .await;
        }
        Err(Error::NeedsLogin {
            name: auth.name.clone(),
        })
    }

    async fn record_health(&self, name: &str, state: AuthState, message: &str) {
        let (name, message) = (name.to_string(), message.to_string());
        if let Err(e) = self
            .inner
            .store
            .call(move |db| db.set_health(&name, state, Some(&message)))
            .await
        {
            tracing::error!(error = %e, "cannot record the failure");
        }
    }

    /// A token valid for at least `min_valid` more. Served from memory when
    /// possible; otherwise refreshed first (one upstream request however
    /// many callers wait). When the refresh fails, a token that is still
    /// valid is served anyway.
    ///
    /// `allowed` sees the authentication's readers first and may refuse.
    pub async fn token(
        &self,
        name: &str,
        min_valid: MinValid,
        allowed: impl FnOnce(&ReaderIds) -> Result<(), Error>,
    ) -> Result<TokenReply, Error> {
        let entry = self.entry(name)?;
        let token = self.token_of(&entry, name, min_valid, allowed).await;
        if token.is_ok() {
            entry.counters.handed_out();
        }
        token
    }

    /// [`Tokens::token`]'s answer when it needs nothing but what is in
    /// memory: a token valid for at least `min_valid` more, which `allowed`
    /// (seeing the readers) lets the caller have, encoded by `encode` and
    /// counted as handed out; with its expiry in seconds since the epoch.
    /// `None` when a refresh, a wait or a refusal is due: [`Tokens::token`]
    /// then does what is due.
    ///
    /// `warm` is the asking connection's copy of its last answer. While
    /// nothing it was made from has changed (the authentication's state,
    /// the set of authentications, and the access rules as `rules` counts
    /// them), it is answered from that copy and no lock is taken: the
    /// connections of a busy host then share no cache line that is written
    /// per token but the counter's. `allowed` and `encode` run only to make
    /// a new copy. The caller's `rules` must be read before the rules
    /// `allowed` reads, and move on (under their lock) when they change.
    pub fn token_now<'w>(
        &self,
        name: &str,
        min_valid: MinValid,
        rules: u64,
        warm: &'w mut Warm,
        allowed: impl FnOnce(&ReaderIds) -> bool,
        encode: impl FnOnce(TokenReplyRef<'_>, &mut Vec<u8>) -> bool,
    ) -> Option<(&'w [u8], i64)> {
        let entries = self.inner.entries_generation.load(Ordering::Acquire);
        let mut current = warm.copy.as_ref().is_some_and(|copy| {
            *copy.name == *name
                && copy.rules == rules
                && copy.entries == entries
                && copy.generation == copy.entry.generation.load(Ordering::Acquire)
        });
        // The expiry in the copy's answer is by the wall clock when it was
        // made: a wall clock stepped since (more than the second the
        // answer counts in) makes it wrong.
        let mut boot_ms = 0;
        if let Some(copy) = warm.copy.as_ref().filter(|_| current) {
            boot_ms = copy.entry.boot_ms();
            let offset_ms = copy.entry.now_ms() - boot_ms;
            current = (offset_ms - copy.wall_minus_boot_ms).abs() < 1000;
        }
        if !current {
            warm.copy = self.copy(name, rules, &mut warm.reply, allowed, encode);
            boot_ms = warm.copy.as_ref().map_or(0, |copy| copy.made_boot_ms);
        }
        let copy = warm.copy.as_ref()?;
        let min_valid_ms = wanted_ms(
            min_valid,
            Some(copy.expires_boot_ms - copy.obtained_boot_ms),
        );
        if !copy.allowed || copy.expires_boot_ms - boot_ms <= min_valid_ms {
            return None;
        }
        copy.entry.counters.handed_out();
        Some((&warm.reply, copy.expires_at))
    }

    /// A new [`Warm`] copy of `name`'s token, its answer encoded into
    /// `reply`; `None` when there is no token to copy.
    fn copy(
        &self,
        name: &str,
        rules: u64,
        reply: &mut Vec<u8>,
        allowed: impl FnOnce(&ReaderIds) -> bool,
        encode: impl FnOnce(TokenReplyRef<'_>, &mut Vec<u8>) -> bool,
    ) -> Option<WarmCopy> {
        let entries = self.read_entries();
        // Read under the lock its writers hold when they move it on.
        let entries_generation = self.inner.entries_generation.load(Ordering::Acquire);
        let entry = entries.get(name)?.clone();
        drop(entries);
        let shared = entry.lock_to_read();
        let generation = entry.generation.load(Ordering::Acquire);
        let token = shared.token.as_ref()?;
        let allowed = allowed(&shared.auth.readers);
        let (boot_ms, wall_ms) = (entry.boot_ms(), entry.now_ms());
        // By the wall clock as it is now, however it stepped since.
        let expires_at = (wall_ms + token.expires_boot_ms - boot_ms) / 1000;
        reply.clear();
        if allowed {
            let encoded = encode(
                TokenReplyRef {
                    access_token: token.access.expose(),
                    expires_at,
                    instance_url: &shared.auth.instance_url,
                },
                reply,
            );
            if !encoded {
                return None;
            }
        }
        let (expires_boot_ms, obtained_boot_ms) = (token.expires_boot_ms, token.obtained_boot_ms);
        drop(shared);
        Some(WarmCopy {
            name: name.into(),
            entry,
            entries: entries_generation,
            generation,
            rules,
            allowed,
            expires_at,
            expires_boot_ms,
            obtained_boot_ms,
            made_boot_ms: boot_ms,
            wall_minus_boot_ms: wall_ms - boot_ms,
        })
    }

    /// [`Tokens::token`] of `entry`, uncounted.
    async fn token_of(
        &self,
        entry: &Arc<Entry>,
        name: &str,
        min_valid: MinValid,
        allowed: impl FnOnce(&ReaderIds) -> Result<(), Error>,
    ) -> Result<TokenReply, Error> {
        let auth = entry.lock_to_read().auth.clone();
        allowed(&auth.readers)?;
        let min_valid_ms = wanted_ms(min_valid, entry.lifetime_ms());
        if let Some(reply) = entry.fresh(min_valid_ms) {
            return Ok(reply);
        }
        // A valid token whose whole lifetime is shorter than the ask: the
        // next one will be no longer, so refreshing would only hammer the
        // instance.
        if let Some(lifetime) = entry
            .lifetime_ms()
            .filter(|l| min_valid_ms >= *l && entry.fresh(0).is_some())
        {
            return Err(too_long(name, lifetime, min_valid_ms));
        }
        let _flight = self.lock_flight(entry).await?;
        if let Some(reply) = entry.fresh(min_valid_ms) {
            return Ok(reply);
        }
        let outcome = match entry.holdoff(name) {
            Some(error) => Err(error),
            // A token this fresh that is still not enough: an ask just under
            // the lifetime would otherwise make every call an upstream
            // request. The freshest token there is will have to do.
            None if entry.just_obtained() => return entry.fresh(0).ok_or_else(vanished),
            None => self.fetch(entry).await,
        };
        match outcome {
            // The new token tells the lifetime a default bends to.
            Ok(()) => {
                let lifetime = entry.lifetime_ms();
                let min_valid_ms = wanted_ms(min_valid, lifetime);
                match (entry.fresh(min_valid_ms), lifetime) {
                    (Some(reply), _) => Ok(reply),
                    (None, Some(lifetime)) => Err(too_long(name, lifetime, min_valid_ms)),
                    (None, None) => Err(vanished()),
                }
            }
            Err(error) => entry.fresh(0).ok_or(error),
        }
    }

    /// A token to use instead of `refused`, which the instance refused
    /// (401) on a request the proxy forwarded: the current one when another
    /// request already replaced it, else a refreshed one.
    ///
    /// Any caller can have the instance answer 401 (a path that wants other
    /// credentials, `/oauth_token.do` itself), and a new token cures none
    /// of those. So there is no refresh (`Ok(None)`: the 401 stands) when
    /// `refused` is younger than `refused_floor`, when such a refresh was
    /// made for this authentication less than `refused_every` ago, or
    /// during a backoff.
    pub async fn replace_refused(
        &self,
        name: &str,
        refused: &Secret,
    ) -> Result<Option<TokenReply>, Error> {
        let entry = self.entry(name)?;
        let _flight = self.lock_flight(&entry).await?;
        let policy = self.policy();
        let now = self.boot_ms();
        {
            let mut shared = entry.lock();
            let Some(token) = shared.token.as_ref() else {
                return Ok(None);
            };
            if token.access.expose() != refused.expose() {
                let valid = token.expires_boot_ms > now;
                return Ok(valid.then(|| entry.reply(&shared, token)));
            }
            let young = now - token.obtained_boot_ms < policy.refused_floor.as_millis() as i64;
            let recent = shared
                .refused_refresh_boot_ms
                .is_some_and(|at| now - at < policy.refused_every.as_millis() as i64);
            if young || recent {
                return Ok(None);
            }
            shared.refused_refresh_boot_ms = Some(now);
        }
        if let Some(error) = entry.holdoff(name) {
            return Err(error);
        }
        tracing::info!(name = %name, "the instance refused the token (401) on a proxied request; refreshing");
        self.fetch(&entry).await?;
        Ok(entry.fresh(0))
    }

    /// Refreshes now, whatever the plan or the backoff (`snctl refresh`).
    pub async fn refresh(&self, name: &str) -> Result<AuthSummary, Error> {
        let entry = self.entry(name)?;
        let _flight = self.lock_flight(&entry).await?;
        self.fetch(&entry).await?;
        Ok(entry.summary())
    }

    /// One authentication, if `allowed` by its readers.
    pub fn show(
        &self,
        name: &str,
        allowed: impl FnOnce(&ReaderIds) -> Result<(), Error>,
    ) -> Result<AuthSummary, Error> {
        let entry = self.entry(name)?;
        let auth = entry.lock_to_read().auth.clone();
        allowed(&auth.readers)?;
        Ok(entry.summary())
    }

    /// Whether `name`'s login has ended (`false` when there is no such
    /// authentication): what the proxy asks before each request, without
    /// the whole [`Tokens::show`].
    pub fn needs_login(&self, name: &str) -> bool {
        self.entry(name)
            .is_ok_and(|entry| entry.lock_to_read().state == AuthState::NeedsLogin)
    }

    /// The authentications whose readers `visible` accepts, by name.
    pub fn list(&self, visible: impl Fn(&ReaderIds) -> bool) -> Vec<AuthSummary> {
        let entries: Vec<Arc<Entry>> = self.read_entries().values().cloned().collect();
        let mut list: Vec<AuthSummary> = entries
            .iter()
            .filter(|e| visible(&e.lock_to_read().auth.readers))
            .map(|e| e.summary())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The names of the authentications `which` picks, by name: the ones
    /// whose own setting turns their proxy on, say.
    pub fn names(&self, which: impl Fn(&Authentication) -> bool) -> Vec<String> {
        let entries: Vec<Arc<Entry>> = self.read_entries().values().cloned().collect();
        let mut names: Vec<String> = entries
            .iter()
            .filter_map(|e| {
                let auth = e.lock_to_read().auth.clone();
                which(&auth).then(|| auth.name.clone())
            })
            .collect();
        names.sort();
        names
    }

    /// The OpenMetrics text of `daemon` and of the authentications whose
    /// readers `visible` accepts, by name.
    pub fn metrics(
        &self,
        daemon: &DaemonSample<'_>,
        visible: impl Fn(&ReaderIds) -> bool,
    ) -> String {
        let mut entries: Vec<Arc<Entry>> = self.read_entries().values().cloned().collect();
        entries.retain(|e| visible(&e.lock_to_read().auth.readers));
        let seen: Vec<(Arc<Authentication>, AuthState, [Option<i64>; 3])> = entries
            .iter()
            .map(|e| {
                let shared = e.lock_to_read();
                let times = [
                    shared
                        .token
                        .as_ref()
                        .map(|t| e.wall_of(t.expires_boot_ms) / 1000),
                    shared.refresh_deadline_ms().map(|t| t / 1000),
                    shared.last_refresh_ms.map(|t| t / 1000),
                ];
                (shared.auth.clone(), shared.state, times)
            })
            .collect();
        let mut samples: Vec<AuthSample<'_>> = entries
            .iter()
            .zip(&seen)
            .map(|(entry, (auth, state, times))| AuthSample {
                name: &auth.name,
                state: *state,
                access_expires_at: times[0],
                login_deadline: times[1],
                last_refresh_at: times[2],
                counters: &entry.counters,
            })
            .collect();
        samples.sort_by(|a, b| a.name.cmp(b.name));
        crate::metrics::render(daemon, &samples)
    }

    /// Counts a request `name`'s proxy answered with `status`.
    pub fn count_proxied(&self, name: &str, status: u16) {
        if let Some(entry) = self.read_entries().get(name) {
            entry.counters.proxied(status);
        }
    }

    pub fn overview(&self) -> Overview {
        let entries = self.read_entries();
        let mut overview = Overview {
            authentications: entries.len() as u32,
            unhealthy: 0,
            needs_login: 0,
            next_refresh: None,
            next_login_deadline: None,
        };
        let earliest = |slot: &mut Option<(String, i64)>, name: &str, at_ms: i64| {
            if slot.as_ref().is_none_or(|(_, t)| at_ms / 1000 < *t) {
                *slot = Some((name.to_string(), at_ms / 1000));
            }
        };
        for (name, entry) in entries.iter() {
            {
                let shared = entry.lock();
                match shared.state {
                    AuthState::Ok if shared.unsaved.is_some() => overview.unhealthy += 1,
                    AuthState::Ok => {}
                    AuthState::NeedsLogin => {
                        overview.unhealthy += 1;
                        overview.needs_login += 1;
                    }
                    _ => overview.unhealthy += 1,
                }
                if let Some(deadline) = shared
                    .refresh_deadline_ms()
                    .filter(|_| shared.state != AuthState::NeedsLogin)
                {
                    earliest(&mut overview.next_login_deadline, name, deadline);
                }
            }
            if let Some(due) = entry.due_boot_ms() {
                earliest(&mut overview.next_refresh, name, entry.wall_of(due));
            }
        }
        overview
    }

    fn spawn_scheduler(&self, entry: Arc<Entry>) {
        let tokens = self.clone();
        self.inner
            .tasks
            .spawn(async move { tokens.schedule(entry).await });
    }

    async fn schedule(&self, entry: Arc<Entry>) {
        let stop = &self.inner.stop;
        loop {
            if entry.is_removed() {
                break;
            }
            entry.warn_if_due();
            let warning = entry.warning_due_boot_ms();
            let refresh = entry.due_boot_ms();
            let save = entry.save_due_boot_ms();
            // On the boot clock, slept on tokio's timer, which stands still
            // in a suspend: the clock watch (`Tokens::watch_clocks`) wakes
            // every scheduler after one, and after a wall-clock step.
            let due = [refresh, warning, save].into_iter().flatten().min();
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep(entry.clock.until(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = entry.wake.notified() => continue,
                _ = sleep => {
                    let _flight = tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        guard = self.lock_flight(&entry) => match guard {
                            Ok(guard) => guard,
                            Err(_) => break,
                        },
                    };
                    // Someone may have refreshed while we waited for the lock,
                    // or only a warning was due.
                    if entry.due_boot_ms().is_some_and(|at| at <= self.boot_ms()) {
                        // The outcome is recorded on the entry and logged.
                        // Boxed: the upstream request's state is large, and
                        // an idle scheduler (one per authentication) should
                        // not carry room for it.
                        let _ = Box::pin(self.fetch(&entry)).await;
                    } else if entry.save_due_boot_ms().is_some_and(|at| at <= self.boot_ms()) {
                        // A refresh would save its tokens too; none is due.
                        // Boxed as the fetch is: rare, and large.
                        Box::pin(self.retry_save(&entry)).await;
                    }
                }
            }
        }
    }

    /// Calls `ping` (systemd's `WATCHDOG=1`) every `period` for as long as
    /// the token machinery is alive, and only then.
    ///
    /// The task lives with the schedulers: it is spawned on their tracker
    /// and stops with them, so pings end when [`Tokens::shutdown`] begins
    /// or the runtime dies. Each period it makes a round trip through the
    /// store thread, which every refresh needs to commit; a store that does
    /// not answer within the period, or is gone, means no ping, and systemd
    /// restarts the daemon once `WatchdogSec=` passes. That the task runs
    /// at all shows the runtime still schedules timers and tasks: a wedged
    /// runtime (every worker blocked) pings nothing either. A slow or hung
    /// instance does not stop the pings: upstream calls have their own
    /// timeouts, and restarting would not make ServiceNow answer sooner.
    pub fn spawn_watchdog(&self, period: Duration, ping: impl Fn() + Send + 'static) {
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = inner.stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match tokio::time::timeout(period, inner.store.call(|_| Ok(()))).await {
                    Ok(Ok(())) => ping(),
                    Ok(Err(error)) => tracing::error!(%error, "watchdog: the store is gone; not pinging systemd"),
                    Err(_) => tracing::error!(
                        period_ms = period.as_millis() as u64,
                        "watchdog: the store thread did not answer within a period; not pinging systemd"
                    ),
                }
            }
        });
    }

    /// Stops every scheduler and waits for in-flight refreshes to finish.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.save_unsaved_at_stop().await;
    }

    /// The last try to save tokens the store refused earlier: the disk may
    /// have come back since the last retry (an admin who frees the space
    /// and restarts at once), and a stop that skipped it would lose them.
    /// What still does not save is named in one error line each, with what
    /// to do: a person's login loses its newest refresh token with the
    /// process, and the instance has superseded the one on disk.
    async fn save_unsaved_at_stop(&self) {
        let entries: Vec<Arc<Entry>> = self.read_entries().values().cloned().collect();
        for entry in entries {
            if entry.lock_to_read().unsaved.is_none() {
                continue;
            }
            let _flight = entry.flight.lock().await;
            self.retry_save(&entry).await;
            let shared = entry.lock_to_read();
            let Some(unsaved) = shared.unsaved.as_deref() else {
                continue;
            };
            let name = &shared.auth.name;
            let reason = &unsaved.reason;
            if shared.auth.grant.needs_person() {
                tracing::error!(%name, %reason,
                    "stopping with {name}'s newest tokens unsaved ({reason}): if the instance \
                     rotates refresh tokens, the one on disk no longer works; once the disk is \
                     repaired, run `snctl login {name}`");
            } else {
                tracing::warn!(%name, %reason,
                    "stopping with {name}'s newest token unsaved ({reason}): the next start \
                     asks the instance for a new one");
            }
        }
    }
}
