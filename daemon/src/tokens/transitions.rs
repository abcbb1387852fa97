//! The refresh machine, one state transition per test, on tokio's paused
//! time with a scripted instance and a real store in a temporary directory.
//!
//! Time moves only when a test moves it ([`Bench::advance_to`]): a blocking
//! task held for the whole test keeps tokio from jumping to the next timer
//! while the store thread works, so what a test sees after a step is what
//! the daemon does at that instant. Nothing here waits real seconds.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snctl_shared::protocol::{AuthState, AuthSummary, ClientAuth, Grant, MinValid, UpstreamKind};
use snctl_shared::{Error, Secret};
use tokio::sync::Semaphore;

use super::{LoginPolicy, RefreshPolicy, Tokens};
use crate::access::ReaderIds;
use crate::clock::Clock;
use crate::crypto::MasterKey;
use crate::servicenow::{Call, Failure, Proof, Seen, Step, Unnamed, Upstream};
use crate::store::{Authentication, BootStamp, Store, TokenSet, UncheckedDb, DB_FILE};

/// Where the tests' wall clock starts (a whole second).
const EPOCH_MS: i64 = 1_700_000_000_000;
const SEC: i64 = 1000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// Clocks that follow tokio's timer from [`EPOCH_MS`], each moved on by
/// its own offset: a suspend moves the wall and boot clocks while tokio's
/// timer (CLOCK_MONOTONIC) stands still ([`TestClock::suspend`]); a step
/// moves the wall clock alone ([`TestClock::step_wall`]).
#[derive(Clone)]
struct TestClock {
    start: tokio::time::Instant,
    wall_offset: Arc<AtomicI64>,
    boot_offset: Arc<AtomicI64>,
}

impl TestClock {
    fn new() -> TestClock {
        TestClock {
            start: tokio::time::Instant::now(),
            wall_offset: Arc::default(),
            boot_offset: Arc::default(),
        }
    }

    /// Milliseconds on tokio's timer since the test began.
    fn timer_ms(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    /// A suspend of `ms`: the wall and boot clocks move on, tokio's timer
    /// does not.
    fn suspend(&self, ms: i64) {
        self.wall_offset.fetch_add(ms, Ordering::SeqCst);
        self.boot_offset.fetch_add(ms, Ordering::SeqCst);
    }

    /// The wall clock stepped by `ms` (back when negative), as NTP does.
    fn step_wall(&self, ms: i64) {
        self.wall_offset.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        EPOCH_MS + self.timer_ms() + self.wall_offset.load(Ordering::SeqCst)
    }

    fn boot_ms(&self) -> i64 {
        self.timer_ms() + self.boot_offset.load(Ordering::SeqCst)
    }

    fn boot_id(&self) -> &str {
        TEST_BOOT
    }
}

/// The boot the test clock counts in.
const TEST_BOOT: &str = "test-boot";

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the scripted instance answers to a token request.
enum Answer {
    /// A token that lives this long (and the refresh token of the request
    /// back, as ServiceNow sends it).
    Token { lifetime_ms: i64 },
    /// A failure; its step is that of the request.
    Fail(Failure),
}

fn failure(kind: UpstreamKind, status: u16, retry_after: Option<Duration>) -> Answer {
    Answer::Fail(Failure {
        kind,
        status: Some(status),
        detail: format!("HTTP {status}"),
        retry_after,
        step: Step::ClientCredentials,
        midway: false,
    })
}

/// A token request the scripted instance received.
#[derive(Debug, Clone)]
struct Asked {
    at_ms: i64,
    /// When, on the boot clock.
    boot_ms: i64,
    step: Step,
    /// The refresh token presented, if any.
    refresh: Option<String>,
}

/// An instance that answers token requests from a script, then with
/// tokens of `lifetime_ms`, and records what it was asked.
struct Script {
    clock: TestClock,
    answers: Mutex<VecDeque<Answer>>,
    lifetime_ms: i64,
    asked: Mutex<Vec<Asked>>,
    /// When set, each request waits for a permit before it is answered.
    gate: Option<Semaphore>,
    /// Answer a refresh with a new refresh token (`refresh-N`), as an
    /// instance that rotates them does, instead of the one presented.
    rotate: bool,
}

impl Script {
    fn new(clock: TestClock, lifetime_ms: i64, answers: Vec<Answer>) -> Script {
        Script {
            clock,
            answers: Mutex::new(answers.into()),
            lifetime_ms,
            asked: Mutex::new(Vec::new()),
            gate: None,
            rotate: false,
        }
    }

    fn asked(&self) -> Vec<Asked> {
        lock(&self.asked).clone()
    }

    /// The next answer of the script, or a token once it has run out.
    fn answer(&self) -> Answer {
        lock(&self.answers).pop_front().unwrap_or(Answer::Token {
            lifetime_ms: self.lifetime_ms,
        })
    }
}

impl Upstream for Arc<Script> {
    fn request_token<'a>(
        &'a self,
        _auth: &'a Authentication,
        proof: Proof<'a>,
    ) -> Call<'a, Result<TokenSet, Failure>> {
        let (step, refresh) = match proof {
            Proof::ClientCredentials => (Step::ClientCredentials, None),
            Proof::Refresh(token) => (Step::Refresh, Some(token.clone())),
            Proof::Password { .. } => (Step::Password, None),
            Proof::Code { .. } => (Step::Code, None),
            Proof::JwtBearer => (Step::JwtBearer, None),
        };
        Box::pin(async move {
            let at_ms = self.clock.now_ms();
            let n = {
                let mut asked = lock(&self.asked);
                asked.push(Asked {
                    at_ms,
                    boot_ms: self.clock.boot_ms(),
                    step,
                    refresh: refresh.as_ref().map(|r| r.expose().to_string()),
                });
                asked.len()
            };
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            match self.answer() {
                Answer::Fail(failure) => Err(Failure { step, ..failure }),
                Answer::Token { lifetime_ms } => Ok(TokenSet {
                    access_token: Secret::new(format!("access-{n}")),
                    expires_at_ms: at_ms + lifetime_ms,
                    obtained_at_ms: at_ms,
                    refresh_token: match refresh {
                        Some(_) if self.rotate => Some(Secret::new(format!("refresh-{n}"))),
                        presented => presented,
                    },
                    refresh_issued_ms: None,
                    obtained_boot: None,
                }),
            }
        })
    }

    fn revoke<'a>(
        &'a self,
        _auth: &'a Authentication,
        _token: &'a Secret,
    ) -> Call<'a, Result<(), Failure>> {
        Box::pin(async { Ok(()) })
    }

    fn current_user<'a>(
        &'a self,
        _instance: &'a str,
        _access: &'a Secret,
    ) -> Call<'a, Result<String, Unnamed>> {
        Box::pin(async { Err(Unnamed::NoUser) })
    }

    fn probe_api<'a>(
        &'a self,
        _instance: &'a str,
        _bearer: Option<&'a Secret>,
    ) -> Call<'a, Result<Seen, Failure>> {
        Box::pin(async { unreachable!("no test here probes the instance") })
    }

    fn probe_token_endpoint<'a>(
        &'a self,
        _auth: &'a Authentication,
    ) -> Call<'a, Result<Seen, Failure>> {
        Box::pin(async { unreachable!("no test here probes the instance") })
    }
}

/// The log lines written while a test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&lock(&self.0))
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// A blocking task that runs until dropped: while it runs, tokio's paused
/// clock does not jump ahead on its own when every task waits (for the
/// store thread, say), so time moves only by [`tokio::time::advance`].
struct Hold(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

fn hold() -> Hold {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        let _ = rx.recv();
    });
    Hold(tx)
}

/// The token machinery over a real store, a scripted instance and a clock
/// that moves only when the test moves it.
struct Bench {
    tokens: Tokens,
    script: Arc<Script>,
    clock: TestClock,
    log: Captured,
    _log_guard: tracing::subscriber::DefaultGuard,
    _dir: tempfile::TempDir,
    _hold: Hold,
}

fn client_credentials(name: &str) -> Authentication {
    Authentication {
        name: name.into(),
        instance_url: "https://acme.service-now.com".into(),
        grant: Grant::ClientCredentials,
        client_id: "cid".into(),
        client_auth: ClientAuth::Form,
        scope: None,
        client_secret: Secret::new("client-secret".into()),
        created_at_ms: EPOCH_MS,
        username: None,
        redirect_port: None,
        refresh_lifespan_secs: 100 * 86_400,
        readers: ReaderIds::default(),
        jwt: None,
        proxy: false,
    }
}

/// A login by a person (the password grant) whose refresh token lives
/// `lifespan_ms`.
fn password_login(name: &str, lifespan_ms: i64) -> Authentication {
    Authentication {
        grant: Grant::Password,
        username: Some("svc.user".into()),
        refresh_lifespan_secs: (lifespan_ms / SEC) as u64,
        ..client_credentials(name)
    }
}

/// Tokens obtained at `at_ms` that live `lifetime_ms`, with a refresh token
/// issued at `refresh_issued_ms` when given.
fn held(at_ms: i64, lifetime_ms: i64, refresh_issued_ms: Option<i64>) -> TokenSet {
    TokenSet {
        access_token: Secret::new("access-0".into()),
        expires_at_ms: at_ms + lifetime_ms,
        obtained_at_ms: at_ms,
        refresh_token: refresh_issued_ms.map(|_| Secret::new("refresh-0".into())),
        refresh_issued_ms,
        obtained_boot: None,
    }
}

fn policy() -> RefreshPolicy {
    RefreshPolicy {
        jitter: 0.0,
        ..RefreshPolicy::default()
    }
}

impl Bench {
    /// Stores `auths` and starts the token machinery on them.
    fn start(
        auths: Vec<(Authentication, TokenSet)>,
        policy: RefreshPolicy,
        script: impl FnOnce(TestClock) -> Script,
    ) -> Bench {
        let hold = hold();
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        let log_guard = tracing::subscriber::set_default(subscriber);
        let clock = TestClock::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let key = Arc::new(MasterKey::generate().expect("key").0);
        let mut db = UncheckedDb::open(&dir.path().join(DB_FILE))
            .and_then(|db| db.prepare(key))
            .expect("database");
        for (auth, tokens) in &auths {
            db.insert(auth, tokens).expect("insert");
        }
        let records = db.load_all().expect("load");
        // The thread ends once the last handle to the store is dropped.
        let (store, thread): (Store, _) = Store::spawn(db).expect("store thread");
        thread.detach();
        let script = Arc::new(script(clock.clone()));
        let tokens = Tokens::start(
            records,
            store,
            clock.clone(),
            script.clone(),
            policy,
            LoginPolicy::default(),
        );
        Bench {
            tokens,
            script,
            clock,
            log,
            _log_guard: log_guard,
            _dir: dir,
            _hold: hold,
        }
    }

    /// One client-credentials authentication `a`, its token obtained now
    /// and living `lifetime_ms`; the instance answers from `answers`.
    fn one(lifetime_ms: i64, policy: RefreshPolicy, answers: Vec<Answer>) -> Bench {
        Bench::start(
            vec![(client_credentials("a"), held(EPOCH_MS, lifetime_ms, None))],
            policy,
            |clock| Script::new(clock, lifetime_ms, answers),
        )
    }

    /// Milliseconds since the test began.
    fn elapsed(&self) -> i64 {
        self.clock.timer_ms()
    }

    /// Moves time to `at` (ms since the test began) and lets what is due run.
    async fn advance_to(&self, at: i64) {
        let step = at - self.elapsed();
        assert!(step >= 0, "time does not go back");
        tokio::time::advance(Duration::from_millis(step as u64)).await;
        self.settle().await;
    }

    /// Lets every task that can run, run (nothing here waits for the store).
    async fn settle(&self) {
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
    }

    /// Waits (without moving time) until `done` holds, e.g. for the store
    /// thread to commit what a task is waiting on.
    async fn until(&self, what: &str, done: impl Fn(&Bench) -> bool) {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done(self) {
            assert!(
                std::time::Instant::now() < give_up,
                "never happened: {what}"
            );
            tokio::task::yield_now().await;
        }
    }

    /// When the next try to save `name`'s unsaved tokens is due, in ms
    /// since the test began.
    fn save_due(&self, name: &str) -> Option<i64> {
        let due = self.tokens.entry(name).ok()?.save_due_boot_ms()?;
        Some(due - self.clock.boot_ms() + self.elapsed())
    }

    fn asked(&self) -> Vec<Asked> {
        self.script.asked()
    }

    fn show(&self, name: &str) -> AuthSummary {
        self.tokens.show(name, |_| Ok(())).expect("shown")
    }

    /// The planned next refresh of `name`, in ms since the test began
    /// (whole seconds, as `snctl show` says it).
    fn plan(&self, name: &str) -> Option<i64> {
        self.show(name).next_refresh_at.map(|t| t * 1000 - EPOCH_MS)
    }

    async fn token(&self, name: &str, min_valid: MinValid) -> Result<String, Error> {
        self.tokens
            .token(name, min_valid, |_| Ok(()))
            .await
            .map(|reply| reply.access_token.expose().to_string())
    }

    /// Makes the database refuse every write from now on (as a full,
    /// broken or read-only disk would), or accept them again.
    async fn refuse_writes(&self, refuse: bool) {
        self.tokens
            .inner
            .store
            .call(move |db| db.refuse_writes(refuse))
            .await
            .expect("the store answers");
    }

    /// The tokens the database holds for `name`.
    async fn stored_set(&self, name: &str) -> TokenSet {
        let name = name.to_string();
        let records = self
            .tokens
            .inner
            .store
            .call(|db| db.load_all())
            .await
            .expect("the store answers");
        records
            .into_iter()
            .find(|r| r.auth.name == name)
            .and_then(|r| r.tokens)
            .expect("tokens are stored")
    }

    /// The access and refresh tokens the database holds for `name`.
    async fn stored(&self, name: &str) -> (String, Option<String>) {
        let tokens = self.stored_set(name).await;
        (
            tokens.access_token.expose().to_string(),
            tokens.refresh_token.map(|r| r.expose().to_string()),
        )
    }

    /// Moves to the first refresh of a token of `lifetime_ms` planned at
    /// 75% and waits until its outcome is recorded.
    async fn first_refresh(&self, lifetime_ms: i64) {
        self.advance_to(lifetime_ms * 3 / 4).await;
        self.until("the first refresh is asked", |b| b.asked().len() == 1)
            .await;
        self.until("its outcome is recorded", |b| {
            b.show("a").state != AuthState::Ok
                || b.show("a").last_refresh_at != Some(EPOCH_MS / SEC)
        })
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_is_refreshed_once_the_planned_fraction_of_its_lifetime_has_passed() {
    let b = Bench::one(1000 * SEC, policy(), vec![]);
    assert_eq!(b.plan("a"), Some(750 * SEC));

    b.advance_to(750 * SEC - 1).await;
    assert!(b.asked().is_empty(), "nothing is asked before the plan");

    b.advance_to(750 * SEC).await;
    b.until("the refresh is committed", |b| {
        b.show("a").last_refresh_at == Some((EPOCH_MS + 750 * SEC) / SEC)
    })
    .await;
    let asked = b.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].step, Step::ClientCredentials);
    assert_eq!(asked[0].at_ms - EPOCH_MS, 750 * SEC);
    // The new token is served from memory, and the next plan counts from it.
    assert_eq!(
        b.token("a", MinValid::Default(60)).await.unwrap(),
        "access-1"
    );
    assert_eq!(b.asked().len(), 1);
    assert_eq!(b.plan("a"), Some(1500 * SEC));
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_plans_within_its_bounds_around_the_fraction() {
    let auths = (0..40)
        .map(|i| {
            (
                client_credentials(&format!("a{i}")),
                held(EPOCH_MS, 1000 * SEC, None),
            )
        })
        .collect();
    let policy = RefreshPolicy {
        jitter: 0.05,
        ..RefreshPolicy::default()
    };
    let b = Bench::start(auths, policy, |clock| {
        Script::new(clock, 1000 * SEC, vec![])
    });
    let plans: Vec<i64> = (0..40).map(|i| b.plan(&format!("a{i}")).unwrap()).collect();
    for plan in &plans {
        assert!(
            (700 * SEC..=800 * SEC).contains(plan),
            "planned at {plan} ms, outside 75% ± 5% of 1000 s"
        );
    }
    let first = plans[0];
    assert!(
        plans.iter().any(|p| *p != first),
        "40 plans, all at {first} ms"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_with_each_failure_up_to_its_ceiling() {
    let policy = RefreshPolicy {
        backoff_min: Duration::from_secs(2),
        backoff_max: Duration::from_secs(60),
        ..policy()
    };
    let failures = (0..8)
        .map(|_| failure(UpstreamKind::ServerError, 503, None))
        .collect();
    let b = Bench::one(1000 * SEC, policy, failures);
    b.first_refresh(1000 * SEC).await;
    let ceilings = [2, 4, 8, 16, 32, 60, 60, 60];
    for (n, ceiling) in ceilings.iter().enumerate() {
        let failed_at = b.asked()[n].at_ms - EPOCH_MS;
        b.until("the failure is planned for", |b| {
            b.show("a").state == AuthState::Failing && b.plan("a").is_some_and(|p| p > failed_at)
        })
        .await;
        let retry = b.plan("a").unwrap();
        let (low, high) = (ceiling * SEC / 2, ceiling * SEC);
        // The plan shows whole seconds: up to one second early.
        assert!(
            (low - SEC..=high).contains(&(retry - failed_at)),
            "failure {}: retry {} ms later, not within [{low}, {high}]",
            n + 1,
            retry - failed_at
        );
        b.advance_to(retry - 1).await;
        assert_eq!(b.asked().len(), n + 1, "no retry before the plan");
        b.advance_to(retry + SEC).await;
        b.until("the retry is asked", |b| b.asked().len() == n + 2)
            .await;
    }
    b.until("the refresh after the outage is committed", |b| {
        b.show("a").state == AuthState::Ok
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_holds_the_retry_back_longer_than_the_backoff() {
    let answers = vec![failure(
        UpstreamKind::RateLimited,
        429,
        Some(Duration::from_secs(120)),
    )];
    let b = Bench::one(1000 * SEC, policy(), answers);
    b.first_refresh(1000 * SEC).await;
    let failed_at = b.asked()[0].at_ms - EPOCH_MS;
    let retry = b.plan("a").unwrap();
    assert_eq!(retry - failed_at, 120 * SEC);
    b.advance_to(retry - 1).await;
    assert_eq!(b.asked().len(), 1);
    b.advance_to(retry).await;
    b.until("the retry is asked", |b| b.asked().len() == 2)
        .await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_only_up_to_its_cap() {
    let answers = vec![failure(
        UpstreamKind::RateLimited,
        429,
        Some(Duration::from_secs(7200)),
    )];
    let policy = RefreshPolicy {
        retry_after_max: Duration::from_secs(600),
        ..policy()
    };
    let b = Bench::one(1000 * SEC, policy, answers);
    b.first_refresh(1000 * SEC).await;
    let failed_at = b.asked()[0].at_ms - EPOCH_MS;
    assert_eq!(b.plan("a").unwrap() - failed_at, 600 * SEC);
}

#[tokio::test(start_paused = true)]
async fn during_a_backoff_callers_get_the_failure_without_asking_the_instance() {
    let policy = RefreshPolicy {
        backoff_min: Duration::from_secs(120),
        ..policy()
    };
    let answers = vec![failure(UpstreamKind::ServerError, 503, None)];
    let b = Bench::one(100 * SEC, policy, answers);
    b.first_refresh(100 * SEC).await;
    assert_eq!(b.show("a").state, AuthState::Failing);
    // The retry is 60..120 s after the failure at 75 s; the token died at 100 s.
    b.advance_to(101 * SEC).await;
    match b.token("a", MinValid::Default(60)).await {
        Err(Error::Upstream(error)) => {
            assert_eq!(error.kind, UpstreamKind::ServerError);
            assert!(error.retry_at.is_some(), "says when snctld tries again");
        }
        other => panic!("expected the upstream failure, got {other:?}"),
    }
    assert_eq!(b.asked().len(), 1, "the hold-off asks nothing");
}

#[tokio::test(start_paused = true)]
async fn during_a_backoff_a_token_still_valid_is_served() {
    let policy = RefreshPolicy {
        backoff_min: Duration::from_secs(120),
        ..policy()
    };
    let answers = vec![failure(UpstreamKind::ServerError, 503, None)];
    let b = Bench::one(100 * SEC, policy, answers);
    b.first_refresh(100 * SEC).await;
    b.advance_to(80 * SEC).await;
    // 20 s left: less than the quarter of the lifetime a default asks for.
    assert_eq!(
        b.token("a", MinValid::Default(60)).await.unwrap(),
        "access-0"
    );
    assert_eq!(b.asked().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_upstream_request() {
    let b = Bench::start(
        vec![(client_credentials("a"), held(EPOCH_MS, 1000 * SEC, None))],
        policy(),
        |clock| Script {
            gate: Some(Semaphore::new(0)),
            ..Script::new(clock, 1000 * SEC, vec![])
        },
    );
    b.advance_to(200 * SEC).await;
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let tokens = b.tokens.clone();
            tokio::spawn(async move {
                tokens
                    .token("a", MinValid::Required(900), |_| Ok(()))
                    .await
                    .map(|reply| reply.access_token.expose().to_string())
            })
        })
        .collect();
    b.until("one request is asked", |b| b.asked().len() == 1)
        .await;
    b.settle().await;
    assert_eq!(b.asked().len(), 1, "the others wait for it");
    b.script.gate.as_ref().unwrap().add_permits(1);
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), "access-1");
    }
    assert_eq!(b.asked().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_stop_the_schedule_until_an_admin_refreshes() {
    let answers = vec![failure(UpstreamKind::AccessDenied, 401, None)];
    let b = Bench::one(1000 * SEC, policy(), answers);
    b.first_refresh(1000 * SEC).await;
    let shown = b.show("a");
    assert_eq!(shown.state, AuthState::Rejected);
    assert_eq!(shown.next_refresh_at, None);

    b.advance_to(30 * DAY).await;
    assert_eq!(b.asked().len(), 1, "a refused credential is not retried");
    match b.token("a", MinValid::Default(60)).await {
        Err(Error::Upstream(error)) => {
            assert_eq!(error.kind, UpstreamKind::AccessDenied);
            assert!(
                error.message.contains("snctl refresh a"),
                "{}",
                error.message
            );
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert_eq!(b.asked().len(), 1);

    b.tokens
        .refresh("a")
        .await
        .expect("the admin's refresh works");
    assert_eq!(b.show("a").state, AuthState::Ok);
    assert_eq!(
        b.token("a", MinValid::Default(60)).await.unwrap(),
        "access-2"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_refresh_token_needs_a_login_and_stops_the_schedule() {
    let b = Bench::start(
        vec![(
            password_login("a", 100 * DAY),
            held(EPOCH_MS, 1000 * SEC, Some(EPOCH_MS)),
        )],
        policy(),
        |clock| {
            Script::new(
                clock,
                1000 * SEC,
                vec![failure(UpstreamKind::AccessDenied, 401, None)],
            )
        },
    );
    b.first_refresh(1000 * SEC).await;
    assert_eq!(b.asked()[0].step, Step::Refresh);
    assert_eq!(b.show("a").state, AuthState::NeedsLogin);

    b.advance_to(30 * DAY).await;
    assert_eq!(b.asked().len(), 1, "a dead login is not retried");
    assert_eq!(
        b.token("a", MinValid::Default(60)).await,
        Err(Error::NeedsLogin { name: "a".into() })
    );
    assert_eq!(b.asked().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_of_a_refresh_token_is_retried_not_a_lost_login() {
    let b = Bench::start(
        vec![(
            password_login("a", 100 * DAY),
            held(EPOCH_MS, 1000 * SEC, Some(EPOCH_MS)),
        )],
        policy(),
        |clock| {
            Script::new(
                clock,
                1000 * SEC,
                vec![failure(UpstreamKind::ServerError, 503, None)],
            )
        },
    );
    b.first_refresh(1000 * SEC).await;
    assert_eq!(b.show("a").state, AuthState::Failing);
    let retry = b.plan("a").expect("a retry is planned");
    b.advance_to(retry + SEC).await;
    b.until("the retry is committed", |b| {
        b.show("a").state == AuthState::Ok
    })
    .await;
    assert_eq!(b.asked()[1].step, Step::Refresh);
}

/// A login whose refresh token, issued when the test begins, dies after
/// 20 days; its access tokens live 30 days, so no refresh interferes.
fn dying_login() -> Bench {
    Bench::start(
        vec![(
            password_login("a", 20 * DAY),
            held(EPOCH_MS, 30 * DAY, Some(EPOCH_MS)),
        )],
        policy(),
        |clock| Script::new(clock, 30 * DAY, vec![]),
    )
}

fn warnings(b: &Bench) -> Vec<String> {
    b.log.lines_with("the refresh token of a")
}

/// Walks to `days_left` before the deadline: no new warning a second
/// before, one a second after. Returns that warning.
async fn warned_at(b: &Bench, days_left: i64, before: usize) -> String {
    let due = 20 * DAY - days_left * DAY;
    b.advance_to(due - SEC).await;
    assert_eq!(warnings(b).len(), before, "{:?}", warnings(b));
    b.advance_to(due + SEC).await;
    let lines = warnings(b);
    assert_eq!(lines.len(), before + 1, "{lines:?}");
    lines.last().cloned().unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_first_deadline_warning_comes_14_days_before() {
    let b = dying_login();
    let line = warned_at(&b, 14, 0).await;
    assert!(line.contains("dies in 13d 23h"), "{line}");
    assert!(line.contains("snctl login a"), "{line}");
}

#[tokio::test(start_paused = true)]
async fn the_second_deadline_warning_comes_7_days_before() {
    let b = dying_login();
    warned_at(&b, 14, 0).await;
    let line = warned_at(&b, 7, 1).await;
    assert!(line.contains("dies in 6d 23h"), "{line}");
}

#[tokio::test(start_paused = true)]
async fn the_last_deadline_warning_before_comes_1_day_before() {
    let b = dying_login();
    warned_at(&b, 14, 0).await;
    warned_at(&b, 7, 1).await;
    let line = warned_at(&b, 1, 2).await;
    assert!(line.contains("dies in 23h 59m"), "{line}");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_itself_is_warned_of_once() {
    let b = dying_login();
    b.advance_to(19 * DAY + HOUR).await;
    let line = warned_at(&b, 0, 1).await;
    assert!(line.contains("has reached its recorded lifespan"), "{line}");
    b.advance_to(40 * DAY).await;
    assert_eq!(warnings(&b).len(), 2, "{:?}", warnings(&b));
}

#[tokio::test(start_paused = true)]
async fn a_start_past_several_thresholds_warns_once_for_the_tightest() {
    // Issued 15 days before the start: the 14- and 7-day marks have passed.
    let b = Bench::start(
        vec![(
            password_login("a", 20 * DAY),
            held(EPOCH_MS, 30 * DAY, Some(EPOCH_MS - 15 * DAY)),
        )],
        policy(),
        |clock| Script::new(clock, 30 * DAY, vec![]),
    );
    b.settle().await;
    let lines = warnings(&b);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("dies in 5d 0h"), "{}", lines[0]);
}

/// A login whose instance rotates refresh tokens (each refresh answers
/// `refresh-N` and supersedes the one presented); access tokens live
/// 10,000 s, so a refresh is planned every 7,500 s.
fn rotating_login() -> Bench {
    Bench::start(
        vec![(
            password_login("a", 100 * DAY),
            held(EPOCH_MS, 10_000 * SEC, Some(EPOCH_MS)),
        )],
        policy(),
        |clock| Script {
            rotate: true,
            ..Script::new(clock, 10_000 * SEC, vec![])
        },
    )
}

/// How many times `snctl show` says the save of `name`'s tokens was tried.
fn save_tries(b: &Bench, name: &str) -> usize {
    let said = b.show(name).last_error.unwrap_or_default();
    said.split("tried ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn new_tokens_the_disk_refuses_are_served_and_their_save_retried_not_the_refresh() {
    let b = rotating_login();
    b.refuse_writes(true).await;
    b.first_refresh(10_000 * SEC).await;
    assert_eq!(b.asked()[0].refresh.as_deref(), Some("refresh-0"));

    // Only memory holds refresh-1 now: the instance has superseded
    // refresh-0, which the disk still holds. The new access token is served.
    assert_eq!(
        b.token("a", MinValid::Default(60)).await.unwrap(),
        "access-1"
    );
    let shown = b.show("a");
    assert_eq!(shown.state, AuthState::Ok);
    let said = shown.last_error.expect("show says the tokens are unsaved");
    assert!(said.contains("not yet saved"), "{said}");
    assert!(said.contains("readonly"), "names the cause: {said}");
    assert_eq!(b.stored("a").await.1.as_deref(), Some("refresh-0"));
    assert_eq!(b.tokens.overview().unhealthy, 1, "status counts it");

    // Twenty minutes of failing saves, retried with backoff: no refresh,
    // one error line.
    for step in 1..=120 {
        b.advance_to(7_500 * SEC + step * 10 * SEC).await;
    }
    b.until("the save is retried", |b| save_tries(b, "a") >= 4)
        .await;
    assert_eq!(b.asked().len(), 1, "the save is retried, not the refresh");
    let errors = b.log.lines_with("cannot save a's new tokens");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("ERROR"), "{}", errors[0]);

    // The disk recovers: the next try saves the newest tokens, one line says
    // so. The last failing try may still be with the store thread; wait for
    // its answer to plan the next one, so that it is that one which finds
    // the disk back, at a time known before the clock moves.
    b.until("the next save is planned", |b| {
        b.save_due("a").is_some_and(|at| at > b.elapsed())
    })
    .await;
    let next_try = b.save_due("a").expect("a save is planned");
    b.refuse_writes(false).await;
    b.advance_to(next_try).await;
    b.until("the save works", |b| b.show("a").last_error.is_none())
        .await;
    assert_eq!(
        b.stored("a").await,
        ("access-1".to_string(), Some("refresh-1".to_string()))
    );
    let saved = b.log.lines_with("saved a's new tokens");
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].contains("INFO"), "{}", saved[0]);
    assert_eq!(b.tokens.overview().unhealthy, 0);
    assert_eq!(b.asked().len(), 1);
    assert_eq!(
        b.token("a", MinValid::Default(60)).await.unwrap(),
        "access-1"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_due_while_tokens_are_unsaved_presents_the_newest_refresh_token_and_saves_its_answer(
) {
    let b = rotating_login();
    b.refuse_writes(true).await;
    b.first_refresh(10_000 * SEC).await;
    assert_eq!(
        b.token("a", MinValid::Default(60)).await.unwrap(),
        "access-1"
    );

    b.advance_to(15_000 * SEC).await;
    b.until("the next refresh is asked", |b| b.asked().len() == 2)
        .await;
    assert_eq!(
        b.asked()[1].refresh.as_deref(),
        Some("refresh-1"),
        "the refresh token in memory, never the superseded one on disk"
    );
    b.until("its answer is in hand", |b| {
        b.show("a").last_refresh_at == Some((EPOCH_MS + 15_000 * SEC) / SEC)
    })
    .await;
    assert_eq!(
        b.token("a", MinValid::Default(60)).await.unwrap(),
        "access-2"
    );
    assert!(b
        .show("a")
        .last_error
        .is_some_and(|e| e.contains("not yet saved")));
    assert_eq!(b.log.lines_with("cannot save a's new tokens").len(), 1);

    b.refuse_writes(false).await;
    b.advance_to(15_000 * SEC + 301 * SEC).await;
    b.until("the save works", |b| b.show("a").last_error.is_none())
        .await;
    assert_eq!(
        b.stored("a").await,
        ("access-2".to_string(), Some("refresh-2".to_string()))
    );
    assert_eq!(b.asked().len(), 2);
}

/// A stop soon after the disk recovers, before the retried save was due
/// (an admin who frees the space and restarts at once): the stop saves
/// the tokens in memory, so the next start presents the newest refresh
/// token. A disk still failing at the stop is named in one error line
/// with what to do.
#[tokio::test(start_paused = true)]
async fn a_stop_saves_the_unsaved_tokens_or_says_they_are_lost() {
    let b = rotating_login();
    b.refuse_writes(true).await;
    b.first_refresh(10_000 * SEC).await;
    assert_eq!(b.stored("a").await.1.as_deref(), Some("refresh-0"));
    b.refuse_writes(false).await;
    b.tokens.shutdown().await;
    assert_eq!(
        b.stored("a").await,
        ("access-1".to_string(), Some("refresh-1".to_string())),
        "the stop saved what only memory held"
    );
    assert_eq!(b.log.lines_with("saved a's new tokens").len(), 1);
    assert!(b.log.lines_with("stopping with").is_empty());

    let b = rotating_login();
    b.refuse_writes(true).await;
    b.first_refresh(10_000 * SEC).await;
    b.tokens.shutdown().await;
    assert_eq!(b.stored("a").await.1.as_deref(), Some("refresh-0"));
    let lost = b.log.lines_with("stopping with a's newest tokens unsaved");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(lost[0].contains("ERROR"), "{}", lost[0]);
    assert!(lost[0].contains("snctl login a"), "{}", lost[0]);
    assert!(lost[0].contains("readonly"), "names the cause: {}", lost[0]);
}

/// A connection's warm copy ([`super::Warm`]): answered from while nothing
/// it was made from changed, without asking the rules again; made again
/// after new rules, a refresh and the authentication's removal, and never
/// serving a token too close to its expiry.
#[tokio::test(start_paused = true)]
async fn a_connections_warm_copy_is_made_again_whenever_what_it_copied_changes() {
    let b = Bench::one(1000 * SEC, policy(), vec![]);
    let mut warm = super::Warm::default();
    let rules_read = std::cell::Cell::new(0);
    let now = |warm: &mut super::Warm, rules: u64, allow: bool, min_valid: MinValid| {
        b.tokens
            .token_now(
                "a",
                min_valid,
                rules,
                warm,
                |_| {
                    rules_read.set(rules_read.get() + 1);
                    allow
                },
                |token, out| {
                    out.extend_from_slice(token.access_token.as_bytes());
                    true
                },
            )
            .map(|(reply, _)| String::from_utf8(reply.to_vec()).expect("the token"))
    };
    let expires_at = |warm: &mut super::Warm| {
        b.tokens
            .token_now(
                "a",
                MinValid::Default(60),
                2,
                warm,
                |_| true,
                |token, out| {
                    out.extend_from_slice(token.access_token.as_bytes());
                    true
                },
            )
            .map(|(_, expires_at)| expires_at)
    };
    let default = MinValid::Default(60);
    assert_eq!(
        now(&mut warm, 0, true, default).as_deref(),
        Some("access-0")
    );
    assert_eq!(
        now(&mut warm, 0, true, default).as_deref(),
        Some("access-0")
    );
    assert_eq!(rules_read.get(), 1, "the second answer came from the copy");

    // Reading the state (show, list, the proxy's check) changes nothing.
    let _ = b.show("a");
    let _ = b.tokens.list(|_| true);
    assert!(!b.tokens.needs_login("a"));
    assert_eq!(
        now(&mut warm, 0, true, default).as_deref(),
        Some("access-0")
    );
    assert_eq!(rules_read.get(), 1, "still from the copy");

    // The rules changed: read again; a refusal is kept in the copy too.
    assert_eq!(now(&mut warm, 1, false, default), None);
    assert_eq!(now(&mut warm, 1, false, default), None);
    assert_eq!(rules_read.get(), 2);

    // More than the token has left: not from the copy either.
    let long = MinValid::Required(1000);
    assert_eq!(now(&mut warm, 2, true, long), None);
    assert_eq!(
        now(&mut warm, 2, true, default).as_deref(),
        Some("access-0")
    );
    assert_eq!(rules_read.get(), 3);

    // A wall clock stepped back: the expiry in the answer follows it.
    let before = expires_at(&mut warm).expect("valid");
    b.clock.step_wall(-HOUR);
    assert_eq!(expires_at(&mut warm), Some(before - HOUR / SEC));
    assert_eq!(
        now(&mut warm, 2, true, default).as_deref(),
        Some("access-0")
    );

    // A refresh replaces the token: the copy is made again. (Its time is
    // shown by the stepped wall clock.)
    b.advance_to(750 * SEC).await;
    b.until("the refresh is committed", |b| {
        b.show("a").last_refresh_at == Some((EPOCH_MS + 750 * SEC - HOUR) / SEC)
    })
    .await;
    assert_eq!(
        now(&mut warm, 2, true, default).as_deref(),
        Some("access-1")
    );

    // Removed: nothing to answer from, whatever the copy held.
    b.tokens
        .remove(snctl_shared::protocol::RemoveRequest {
            name: "a".into(),
            keep_upstream: true,
        })
        .await
        .expect("removed");
    assert_eq!(now(&mut warm, 2, true, default), None);
}

/// The instance's view of `name`'s token handed out now: how many
/// milliseconds it stays valid, by the time that really passed (the boot
/// clock), not by a wall clock that may have been stepped.
async fn really_valid_ms(b: &Bench, token: &str) -> i64 {
    let asked = b.asked();
    // access-N was issued by request N (access-0 before the test began);
    // every token here lives as long as the script says.
    let n: usize = token
        .trim_start_matches("access-")
        .parse()
        .expect("a scripted token");
    let issued_boot = match n {
        0 => 0,
        n => asked[n - 1].boot_ms,
    };
    issued_boot + b.script.lifetime_ms - b.clock.boot_ms()
}

#[tokio::test(start_paused = true)]
async fn after_a_suspend_past_the_tokens_life_the_first_caller_gets_a_valid_token_with_one_request()
{
    let b = Bench::one(1000 * SEC, policy(), vec![]);
    b.advance_to(100 * SEC).await;
    // The lid closes for an hour: the token died meanwhile, and the
    // scheduler's timer stood still with the process's monotonic clock.
    b.clock.suspend(HOUR);
    let token = b.token("a", MinValid::Default(60)).await.unwrap();
    assert_eq!(token, "access-1", "a refreshed token, never the dead one");
    assert!(really_valid_ms(&b, &token).await > 60 * SEC);
    assert_eq!(b.asked().len(), 1);
    // The schedule catches up without a second request.
    b.advance_to(130 * SEC).await;
    assert_eq!(
        b.asked().len(),
        1,
        "one refresh after the resume, not a storm"
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_suspend_the_schedule_refreshes_without_waiting_for_its_stopped_timer() {
    let b = Bench::one(1000 * SEC, policy(), vec![]);
    b.advance_to(100 * SEC).await;
    // Suspended past the planned refresh (750 s), not past the expiry.
    b.clock.suspend(800 * SEC);
    b.advance_to(130 * SEC).await;
    b.until("the overdue refresh is made", |b| b.asked().len() == 1)
        .await;
    assert_eq!(b.asked().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_stepped_back_does_not_make_an_expired_token_look_valid() {
    let b = Bench::one(1000 * SEC, policy(), vec![]);
    b.clock.step_wall(-HOUR);
    b.advance_to(1001 * SEC).await;
    // By the wall clock the first token is still valid; it is not.
    let token = b.token("a", MinValid::Default(60)).await.unwrap();
    assert_ne!(token, "access-0", "the expired token was handed out");
    assert!(really_valid_ms(&b, &token).await > 60 * SEC);
    assert_eq!(b.asked().len(), 1, "refreshed on schedule, once");
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_stepped_forward_causes_at_most_one_early_refresh() {
    let b = Bench::one(1000 * SEC, policy(), vec![]);
    b.advance_to(100 * SEC).await;
    b.clock.step_wall(HOUR);
    for at in (110..740).step_by(10) {
        b.advance_to(at * SEC).await;
        let token = b.token("a", MinValid::Default(60)).await.unwrap();
        assert!(really_valid_ms(&b, &token).await > 60 * SEC);
    }
    assert!(b.asked().len() <= 1, "{} refreshes", b.asked().len());
}

#[tokio::test(start_paused = true)]
async fn the_expiry_handed_out_counts_from_the_current_wall_clock() {
    let b = Bench::one(1000 * SEC, policy(), vec![]);
    b.advance_to(100 * SEC).await;
    b.clock.step_wall(-HOUR);
    let reply = b
        .tokens
        .token("a", MinValid::Default(60), |_| Ok(()))
        .await
        .unwrap();
    // 900 s left, counted from what the host's clock says now, so that a
    // caller comparing it with that clock sees the truth.
    assert_eq!(reply.expires_at * 1000, b.clock.now_ms() + 900 * SEC);
    assert_eq!(
        b.show("a").access_expires_at,
        Some(reply.expires_at),
        "show agrees"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stored_token_obtained_after_the_wall_clock_at_start_is_not_trusted() {
    // The host starts with its clock an hour behind the one that stamped
    // the stored token: how much of its life is left cannot be known.
    let b = Bench::start(
        vec![(
            client_credentials("a"),
            held(EPOCH_MS + HOUR, 1000 * SEC, None),
        )],
        policy(),
        |clock| Script::new(clock, 1000 * SEC, vec![]),
    );
    let token = b.token("a", MinValid::Default(60)).await.unwrap();
    assert_eq!(token, "access-1");
    assert_eq!(b.asked().len(), 1);
}

/// A restart within one boot: the stored token is placed on the boot
/// clock by its stamp, whatever the wall clock did while snctld was down.
#[tokio::test(start_paused = true)]
async fn a_stored_token_of_this_boot_is_judged_by_the_boot_clock() {
    let stamped = |wall_ms: i64, boot_ms: i64, boot_id: &str| TokenSet {
        obtained_boot: Some(BootStamp {
            boot_id: boot_id.into(),
            boot_ms,
        }),
        ..held(wall_ms, 1000 * SEC, None)
    };
    let started_on = |tokens: TokenSet| {
        Bench::start(vec![(client_credentials("a"), tokens)], policy(), |clock| {
            Script::new(clock, 1000 * SEC, vec![])
        })
    };
    // Stored an hour ahead by the wall clock, which was set back since; by
    // the boot clock it is 10 s old: served, nothing asked.
    let b = started_on(stamped(EPOCH_MS + HOUR, -10 * SEC, TEST_BOOT));
    assert_eq!(
        b.token("a", MinValid::Default(60)).await.unwrap(),
        "access-0"
    );
    assert_eq!(b.asked().len(), 0);
    // Its refresh is planned at 75 % of its life from the stamp.
    b.advance_to(739 * SEC).await;
    assert_eq!(b.asked().len(), 0);
    b.advance_to(741 * SEC).await;
    b.until("the planned refresh", |b| b.asked().len() == 1)
        .await;

    // Stored just now by the wall clock (which was set back by more than
    // the token's age), 2000 s ago by the boot clock: expired, refreshed
    // before anyone gets it. The wall clock alone would hand it out.
    let b = started_on(stamped(EPOCH_MS, -2000 * SEC, TEST_BOOT));
    assert_eq!(
        b.token("a", MinValid::Default(60)).await.unwrap(),
        "access-1"
    );
    assert_eq!(b.asked().len(), 1);

    // A stamp of another boot (a reboot, a backup restored elsewhere) or
    // from the boot clock's future means nothing: the wall clock judges,
    // and a token from the wall clock's future is refreshed.
    for stamp in [
        stamped(EPOCH_MS + HOUR, -10 * SEC, "another-boot"),
        stamped(EPOCH_MS + HOUR, 3600 * SEC, TEST_BOOT),
        // An edited database: expired, and nothing overflows.
        stamped(EPOCH_MS, i64::MIN, TEST_BOOT),
    ] {
        let b = started_on(stamp);
        assert_eq!(
            b.token("a", MinValid::Default(60)).await.unwrap(),
            "access-1"
        );
        assert_eq!(b.asked().len(), 1);
    }
}

/// Tokens asked for are stored with the boot clock's time of the asking.
#[tokio::test(start_paused = true)]
async fn a_refresh_stores_when_it_asked_on_the_boot_clock() {
    let b = Bench::one(1000 * SEC, policy(), vec![]);
    b.first_refresh(1000 * SEC).await;
    let asked = b.asked()[0].boot_ms;
    assert_eq!(
        b.stored_set("a").await.obtained_boot,
        Some(BootStamp {
            boot_id: TEST_BOOT.into(),
            boot_ms: asked,
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_hundred_suspends_and_wall_clock_steps_hand_out_no_expired_token() {
    let b = Bench::one(1000 * SEC, policy(), vec![]);
    let mut expired = 0;
    for i in 0..100i64 {
        b.advance_to((i + 1) * 10 * SEC).await;
        let before = b.asked().len();
        match i % 3 {
            // Suspended past the token's life, by a different span each time.
            0 => b.clock.suspend(1000 * SEC + i * MIN),
            1 => b.clock.step_wall(HOUR + i * SEC),
            _ => b.clock.step_wall(-2 * HOUR - i * SEC),
        }
        let token = b.token("a", MinValid::Default(60)).await.unwrap();
        if really_valid_ms(&b, &token).await <= 60 * SEC {
            expired += 1;
        }
        let asked = b.asked().len() - before;
        match i % 3 {
            0 => assert_eq!(asked, 1, "event {i}: one refresh after a resume"),
            _ => assert_eq!(asked, 0, "event {i}: a step alone refreshes nothing"),
        }
    }
    assert_eq!(expired, 0);
}
