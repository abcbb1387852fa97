//! A fake ServiceNow instance for snctl's end-to-end tests.
//!
//! It is a small HTTP/1.1 server written on raw TCP with `httparse` rather than a
//! framework, because the tests need failures no framework will produce: a TCP reset
//! before or after the token is issued, a body shorter than its `Content-Length`, a body
//! trickling out one byte at a time, an HTML page where JSON was expected.
//!
//! ServiceNow behaviours it reproduces:
//! - `GET /oauth_auth.do` is the authorize endpoint of the authorization code grant. It
//!   redirects only to the Redirect URL registered on the client's Application Registry
//!   record, compared exactly: an unknown client, another `redirect_uri`, a
//!   `response_type` other than `code` or a missing `state` get an HTML error page and no
//!   redirect. PKCE is optional, but `S256` is the only method accepted. The fake
//!   answers the consent page as a user would (see [`Consent`]) and redirects with a
//!   single-use code valid for two minutes, or with `error=access_denied`. A test can
//!   have it answer an unknown client or another `redirect_uri` the other ways instances
//!   do (see [`AuthorizeErrors`]): redirected to the `redirect_uri` asked for with
//!   `error=invalid_request`, or a code whose exchange is then refused.
//! - `GET /api/now/ui/user/current_user` needs a valid bearer token and answers the user
//!   the token acts for (`{"result":{"user_name":..,"user_sys_id":..}}`), unless a test
//!   makes it unavailable ([`FakeInstance::set_current_user_available`]).
//! - `POST /oauth_token.do` takes client authentication as form fields or HTTP Basic and
//!   grants `client_credentials` (only while the system property
//!   `glide.oauth.inbound.client.credential.grant_type.enabled` is on, and without a
//!   refresh token), `password`, `authorization_code` (the code is bound to the client,
//!   the `redirect_uri` and the PKCE challenge of its authorize request) and
//!   `refresh_token`, and `urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523) as
//!   ServiceNow's JWT Verifier Map does: the assertion must be signed (RS256 or ES256) by
//!   a key registered for the client ([`FakeInstance::add_jwt_key`]), with `iss` and
//!   `aud` the client ID, `exp` in the future and at most an hour ahead, `iat` not in the
//!   future (60 s of skew), a `jti` never seen before and a known user as `sub`; the
//!   client authenticates as well. No refresh token.
//! - Refresh tokens are not rotated, as on ServiceNow, unless a test asks for rotation
//!   (see [`FakeInstance::set_rotate_refresh_tokens`]); it then behaves like servers that
//!   rotate with reuse protection yet tolerate a lost answer.
//! - Every token or revocation failure is the same
//!   `401 {"error":"server_error","error_description":"access_denied"}`, so a client
//!   cannot tell a wrong secret from a disabled grant; snctl must cope with that.
//! - `POST /oauth_revoke_token.do` revokes access and refresh tokens and answers `{}`; an
//!   administrator can also delete every refresh token at once
//!   ([`FakeInstance::revoke_refresh_tokens`]).
//! - `GET /api/now/table/<table>` needs a valid bearer token, otherwise it answers
//!   ServiceNow's "User Not Authenticated" failure.
//! - `POST /api/now/attachment/file` needs a valid bearer token and answers the size of
//!   the body it got (`{"result":{"size_bytes":"N"}}`); bodies up to 64 MiB, for
//!   streaming tests.
//! - `GET /api/now/attachment/<sys_id>/file` needs a valid bearer token and answers
//!   [`DOWNLOAD_BYTES`] bytes, a download larger than any socket buffer.
//! - Table responses carry ServiceNow's session cookies (`Set-Cookie: JSESSIONID=…`)
//!   and `X-Total-Count`; with `sysparm_display_value=all` each field is an object
//!   of `value` and `display_value`, as pysnc asks by default.
//! - A test can have the next table request answered `429` with `Retry-After`
//!   ([`FakeInstance::rate_limit_next_table`]) and can revoke every access token
//!   ([`FakeInstance::revoke_access_tokens`]).
//! - Anything else gets a ServiceNow-style JSON 404.
//! - A hibernating developer instance ([`FakeInstance::set_hibernating`]) answers every
//!   request with a 200 HTML page.
//! - A hostile instance (see [`Hostile`]) answers a chosen path
//!   ([`FakeInstance::set_hostile`]), or the token endpoint ([`Fault::Hostile`]), with
//!   headers that never end, a body that never ends (dripping or as fast as it is
//!   taken), or a huge JSON error page.
//!
//! Faults (see [`Fault`]) only ever apply to `POST /oauth_token.do`. So does a hold
//! ([`FakeInstance::hold_token_requests`]): one client's token requests wait, unanswered,
//! until the test releases them.
//!
//! [`FakeInstance::start_tls`] serves the same instance over HTTPS, with a certificate
//! for `127.0.0.1` signed by a CA generated at start ([`FakeInstance::ca_pem`], what
//! snctld's `[http] ca_file` would name). It can switch to a certificate of another CA
//! ([`FakeInstance::set_untrusted_certificate`]), as an intercepting proxy nobody told
//! snctld about would present.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::Rng as _;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const MAX_ATTACHMENT: usize = 64 * 1024 * 1024;
/// The size of every attachment download.
pub const DOWNLOAD_BYTES: usize = 16 * 1024 * 1024;
const ATTACHMENT_PATH: &str = "/api/now/attachment/file";
const TOKEN_PATH: &str = "/oauth_token.do";
const MAX_HEADERS: usize = 64;
const JSON: &str = "application/json;charset=UTF-8";
const HTML: &str = "text/html;charset=UTF-8";
const ACCESS_DENIED: &str = r#"{"error":"server_error","error_description":"access_denied"}"#;
const NOT_AUTHENTICATED: &str = r#"{"error":{"message":"User Not Authenticated","detail":"Required to provide Auth information"},"status":"failure"}"#;
const NOT_FOUND: &str = r#"{"error":{"message":"Requested URI does not represent any resource","detail":null},"status":"failure"}"#;
const HIBERNATING: &str = "<html><head><title>Instance Hibernating page</title></head>\
<body><h1>Your instance is hibernating</h1>\
<p>Sign in to the developer site to wake it up.</p></body></html>";
const BAD_JSON: &str = r#"{"access_token": "abc", "expires_in": "#;
const DEFAULT_SCOPE: &str = "useraccount";
const DEFAULT_ACCESS_LIFETIME: u64 = 1800;
const DEFAULT_REFRESH_LIFESPAN: u64 = 100 * 24 * 60 * 60;
const AUTH_CODE_LIFETIME: u64 = 120;
/// A demo user present on every ServiceNow instance.
/// ServiceNow's UI API path that says who the caller is.
const CURRENT_USER_PATH: &str = "/api/now/ui/user/current_user";
/// What the authorize endpoint says of an unknown client and of another `redirect_uri`.
const CLIENT_PROBLEM: &str = "Invalid client_id";
const REDIRECT_PROBLEM: &str = "Invalid redirect_uri";
const DEFAULT_USER: &str = "abel.tuter";

/// A misbehaviour applied to one (queued) or every (standing) `POST /oauth_token.do`.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with exactly this status, body, content type and optional `Retry-After`.
    Status {
        code: u16,
        body: String,
        content_type: &'static str,
        retry_after: Option<String>,
    },
    /// `200 OK` with the HTML page a hibernating developer instance serves.
    Html,
    /// `200 OK` announced as JSON, with a body cut off mid-object.
    BadJson,
    /// `200 OK` whose `Content-Length` promises more bytes than are sent before closing.
    Truncated,
    /// Sleep, then answer normally.
    Delay(Duration),
    /// Answer normally, but send the body one byte per interval after the headers.
    SlowBody(Duration),
    /// Read the request, then reset the connection without issuing anything.
    ResetBeforeProcessing,
    /// Issue the token, then reset the connection instead of answering.
    ResetAfterProcessing,
    /// Issue the token (rotating the refresh token if rotation is on), then sleep before
    /// answering, so a test can kill the client after the server changed its state but
    /// before the client saw the answer.
    IssueThenDelay(Duration),
    /// Answer as a hostile instance would, issuing nothing.
    Hostile(Hostile),
}

/// What a hostile (or broken) instance sends instead of an answer. Each is generated
/// as it is sent: the fake holds none of it in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// A `200` status line, then header lines without end.
    EndlessHeaders,
    /// A `200` JSON head (chunked), then a body without end, one byte per interval.
    DripBody(Duration),
    /// A `200` JSON head (chunked), then a body without end, as fast as it is taken.
    EndlessBody,
    /// `status` with a JSON error page of `bytes` bytes, by its `Content-Length`.
    HugeError { status: u16, bytes: u64 },
}

impl Fault {
    /// A bare status with a generic OAuth-style JSON error body.
    pub fn status(code: u16) -> Fault {
        let description = match reason(code) {
            "" => format!("HTTP {code}"),
            phrase => phrase.to_owned(),
        };
        let body = serde_json::json!({"error": "server_error", "error_description": description});
        json_fault(code, body.to_string(), None)
    }

    /// ServiceNow's rate limiter: 429 with `Retry-After` in seconds.
    pub fn too_many_requests(retry_after_secs: u64) -> Fault {
        let detail = format!("Too many requests; retry after {retry_after_secs} seconds");
        let body = serde_json::json!({
            "error": {"message": "Rate limit exceeded", "detail": detail},
            "status": "failure",
        });
        json_fault(429, body.to_string(), Some(retry_after_secs.to_string()))
    }

    /// The generic 401 ServiceNow gives for every OAuth failure, without touching state.
    pub fn access_denied() -> Fault {
        json_fault(401, ACCESS_DENIED.to_owned(), None)
    }
}

/// How the user answers ServiceNow's consent page in the authorization code flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Consent {
    /// The user, logged in as `user`, allows access.
    Approve { user: String },
    /// The user denies access.
    Deny,
}

/// How the authorize endpoint answers a request it cannot trust: an unknown client, or a
/// `redirect_uri` other than the registered one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthorizeErrors {
    /// An HTML error page for the user; nothing reaches the client.
    #[default]
    Page,
    /// A redirect to the `redirect_uri` asked for, with `error=invalid_request` and
    /// `error_description=Invalid redirect_uri` (or `Invalid client_id`) and the `state`.
    Redirect,
    /// Another `redirect_uri` still gets a code, redirected to it; the exchange of that
    /// code is refused with `400 {"error":"invalid_request","error_description":"Invalid
    /// redirect_uri"}`. An unknown client gets the page.
    AtExchange,
}

impl Default for Consent {
    fn default() -> Consent {
        Consent::Approve {
            user: DEFAULT_USER.to_owned(),
        }
    }
}

fn json_fault(code: u16, body: String, retry_after: Option<String>) -> Fault {
    let content_type = JSON;
    Fault::Status {
        code,
        body,
        content_type,
        retry_after,
    }
}

/// A running fake instance on `127.0.0.1`. Dropping it stops accepting and closes
/// every open connection.
pub struct FakeInstance {
    addr: SocketAddr,
    state: Shared,
    accept_task: JoinHandle<()>,
    /// The certificates of an HTTPS instance.
    tls: Option<Arc<Tls>>,
}

impl Drop for FakeInstance {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl FakeInstance {
    /// Binds an ephemeral loopback port and starts serving on the current runtime.
    pub async fn start() -> io::Result<FakeInstance> {
        FakeInstance::serve(None).await
    }

    /// Like [`FakeInstance::start`], but over HTTPS: a certificate for `127.0.0.1` and
    /// `localhost`, signed by a CA made for this instance alone ([`FakeInstance::ca_pem`]).
    pub async fn start_tls() -> io::Result<FakeInstance> {
        FakeInstance::serve(Some(Arc::new(Tls::generate()?))).await
    }

    async fn serve(tls: Option<Arc<Tls>>) -> io::Result<FakeInstance> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state: Shared = Arc::new(Mutex::new(State::new()));
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&state), tls.clone()));
        Ok(FakeInstance {
            addr,
            state,
            accept_task,
            tls,
        })
    }

    /// `https://127.0.0.1:PORT` for an instance started with [`FakeInstance::start_tls`],
    /// else `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM certificate of the CA that signed an HTTPS instance's certificate: what
    /// a client must trust. `None` for a plain HTTP instance.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|tls| tls.ca_pem.as_str())
    }

    /// From now on an HTTPS instance presents, on new connections, a certificate for
    /// the same names signed by another CA, whose certificate no test sees. The token
    /// endpoint of an HTTPS instance closes the connection after each answer, so the
    /// next token request makes a new handshake: a client that trusts only
    /// [`FakeInstance::ca_pem`] fails it, and no request reaches the instance.
    pub fn set_untrusted_certificate(&self, on: bool) {
        self.lock().untrusted_certificate = on;
    }

    /// TCP connections accepted so far, HTTPS handshakes that failed included.
    pub fn connections(&self) -> u64 {
        self.lock().connections
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Registers an Application Registry record (or replaces its secret).
    pub fn add_client(&self, client_id: &str, client_secret: &str) {
        let mut s = self.lock();
        s.clients
            .insert(client_id.to_owned(), client_secret.to_owned());
    }

    /// Rotates a client's secret; the old one stops working at once.
    pub fn set_client_secret(&self, client_id: &str, client_secret: &str) {
        self.add_client(client_id, client_secret);
    }

    /// A `sys_user` allowed to use the password grant.
    pub fn add_user(&self, username: &str, password: &str) {
        let mut s = self.lock();
        s.users.insert(username.to_owned(), password.to_owned());
    }

    /// `glide.oauth.inbound.client.credential.grant_type.enabled`. On by default here,
    /// unlike a fresh instance, so that most tests need no setup.
    pub fn set_client_credentials_enabled(&self, enabled: bool) {
        self.lock().client_credentials_enabled = enabled;
    }

    /// A hibernating developer instance: every request, whatever the path,
    /// gets the 200 HTML page that asks to wake the instance.
    pub fn set_hibernating(&self, hibernating: bool) {
        self.lock().hibernating = hibernating;
    }

    /// `expires_in` of access tokens issued from now on (default 1800).
    pub fn set_access_lifetime(&self, secs: u64) {
        self.lock().access_lifetime = secs;
    }

    /// Lifespan of refresh tokens issued from now on (default 100 days).
    pub fn set_refresh_lifespan(&self, secs: u64) {
        self.lock().refresh_lifespan = secs;
    }

    /// The Redirect URL of a client's Application Registry record. The authorize
    /// endpoint redirects nowhere else, and ServiceNow compares it exactly.
    pub fn set_redirect_uri(&self, client_id: &str, uri: &str) {
        let mut s = self.lock();
        s.redirect_uris.insert(client_id.to_owned(), uri.to_owned());
    }

    /// How the user answers the consent page from now on (default: `abel.tuter` allows).
    pub fn set_consent(&self, consent: Consent) {
        self.lock().consent = consent;
    }

    /// How the authorize endpoint answers an unknown client or another `redirect_uri`
    /// from now on (default: [`AuthorizeErrors::Page`]).
    pub fn set_authorize_errors(&self, errors: AuthorizeErrors) {
        self.lock().authorize_errors = errors;
    }

    /// Whether `GET /api/now/ui/user/current_user` answers (default); when not, it is a
    /// 403 as for a user without the rights to it.
    pub fn set_current_user_available(&self, available: bool) {
        self.lock().current_user_unavailable = !available;
    }

    /// A `state` the authorize endpoint sends back instead of the one it was given, as
    /// a forged redirect would carry; `None` (the default) echoes the request's.
    pub fn set_state_override(&self, state: Option<String>) {
        self.lock().state_override = state;
    }

    /// Off by default, as on ServiceNow. When on, every successful refresh returns a
    /// new refresh token, a successor of the one presented, with a fresh lifespan. The
    /// presented token stays valid, so a client that lost the answer can retry with it,
    /// until one of its successors is used: that supersedes it and its other successors.
    pub fn set_rotate_refresh_tokens(&self, on: bool) {
        self.lock().rotate_refresh_tokens = on;
    }

    /// Deletes every refresh token issued so far, as an administrator deleting the
    /// OAuth credentials (or a user being locked out) does, so the next refresh gets the
    /// generic 401. Access tokens are left to expire.
    pub fn revoke_refresh_tokens(&self) {
        self.lock().refresh_grants.clear();
    }

    pub fn push_fault(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    pub fn set_standing_fault(&self, fault: Option<Fault>) {
        self.lock().standing_fault = fault;
    }

    /// From now on, token requests authenticated as `client_id` are read and
    /// then held, unanswered, until [`FakeInstance::release_token_requests`]:
    /// an upstream request that takes as long as the test wants, without a
    /// clock. Other clients' requests are answered as usual.
    pub fn hold_token_requests(&self, client_id: &str) {
        self.lock().held_clients.insert(client_id.to_owned());
    }

    /// Lets every held token request of `client_id` go on (answered as
    /// usual), and no longer holds new ones.
    pub fn release_token_requests(&self, client_id: &str) {
        self.lock().held_clients.remove(client_id);
    }

    /// Token requests being held right now.
    pub fn held_token_requests(&self) -> u64 {
        self.lock().held_now
    }

    pub fn token_requests(&self) -> u64 {
        self.lock().token_requests
    }

    pub fn tokens_issued(&self) -> u64 {
        self.lock().tokens_issued
    }

    pub fn authorize_requests(&self) -> u64 {
        self.lock().authorize_requests
    }

    /// Authorization codes successfully exchanged for tokens.
    pub fn auth_code_exchanges(&self) -> u64 {
        self.lock().auth_code_exchanges
    }

    /// Of those, the ones whose PKCE verifier matched an S256 challenge.
    pub fn pkce_exchanges(&self) -> u64 {
        self.lock().pkce_exchanges
    }

    pub fn revoke_requests(&self) -> u64 {
        self.lock().revoke_requests
    }

    /// Registers the public key of the PKCS#8 `private_key` (P-256 EC or RSA) in the
    /// client's JWT Verifier Map, as the certificate an admin would upload.
    pub fn add_jwt_key(&self, client_id: &str, private_key: &[u8]) {
        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let fixed = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let verifier = match ring::signature::EcdsaKeyPair::from_pkcs8(fixed, private_key, &rng) {
            Ok(ec) => JwtVerifier::Es256(ec.public_key().as_ref().to_vec()),
            Err(_) => {
                let rsa = ring::signature::RsaKeyPair::from_pkcs8(private_key)
                    .expect("a P-256 EC or RSA PKCS#8 key");
                JwtVerifier::Rs256(rsa.public_key().as_ref().to_vec())
            }
        };
        let mut s = self.lock();
        s.jwt_keys
            .entry(client_id.to_owned())
            .or_default()
            .push(verifier);
    }

    /// Empties the client's JWT Verifier Map.
    pub fn clear_jwt_keys(&self, client_id: &str) {
        self.lock().jwt_keys.remove(client_id);
    }

    /// JWT-bearer grants that issued a token.
    pub fn jwt_grants(&self) -> u64 {
        self.lock().jwt_grants
    }

    pub fn table_requests(&self) -> u64 {
        self.lock().table_requests
    }

    /// Requests read, of any method and path.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// The `Authorization` header of the last table request, as received.
    pub fn last_table_authorization(&self) -> Option<String> {
        self.lock().last_table_authorization.clone()
    }

    /// The next table request is answered 429 with `Retry-After: retry_after`.
    pub fn rate_limit_next_table(&self, retry_after: &str) {
        self.lock()
            .table_rate_limits
            .push_back(retry_after.to_owned());
    }

    /// Revokes every access token issued so far, as an administrator could.
    pub fn revoke_access_tokens(&self) {
        let mut state = self.lock();
        let issued = state.issued_access.clone();
        for token in issued {
            if state.revoked.insert(token.clone()) {
                state.revoked_order.push(token);
            }
        }
    }

    /// Requests for `path` (without a query) are answered with `hostile`, or normally
    /// again with `None`.
    pub fn set_hostile(&self, path: &str, hostile: Option<Hostile>) {
        let mut state = self.lock();
        match hostile {
            Some(hostile) => state.hostile_paths.insert(path.to_owned(), hostile),
            None => state.hostile_paths.remove(path),
        };
    }

    /// Attachment uploads answered, authenticated or not.
    pub fn attachment_requests(&self) -> u64 {
        self.lock().attachment_requests
    }

    pub fn is_access_token_valid(&self, token: &str) -> bool {
        self.lock().access_token_valid(token)
    }

    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.lock().issued_access.clone()
    }

    pub fn refresh_tokens_issued(&self) -> Vec<String> {
        self.lock().issued_refresh.clone()
    }

    /// Every authorization code the authorize endpoint handed out, in order,
    /// used or not.
    pub fn issued_auth_codes(&self) -> Vec<String> {
        self.lock().issued_codes.clone()
    }

    pub fn revoked_tokens(&self) -> Vec<String> {
        self.lock().revoked_order.clone()
    }

    /// Known, not revoked, not superseded by rotation and not expired.
    pub fn is_refresh_token_valid(&self, token: &str) -> bool {
        self.lock().refresh_token_valid(token)
    }

    /// Rotated refresh tokens invalidated by the use of a successor, in that order.
    pub fn superseded_refresh_tokens(&self) -> Vec<String> {
        self.lock().superseded_order.clone()
    }

    /// The user a refresh token acts for, while the instance still knows the token.
    pub fn refresh_token_user(&self, token: &str) -> Option<String> {
        let s = self.lock();
        s.refresh_grants.get(token).map(|grant| grant.user.clone())
    }

    /// The refresh token `token` was rotated from (the one presented to get
    /// it), if it came from a refresh.
    pub fn refresh_token_parent(&self, token: &str) -> Option<String> {
        let s = self.lock();
        s.refresh_grants.get(token).and_then(|g| g.parent.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

type Shared = Arc<Mutex<State>>;

// A test that panicked while holding the lock must not turn every later call into a
// second panic that hides the first.
fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct RefreshGrant {
    client_id: String,
    scope: String,
    user: String,
    /// The refresh token this one was rotated from.
    parent: Option<String>,
    expires_at: Instant,
}

/// What an authorization code was issued for; its exchange must match.
struct AuthCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: Option<String>,
    scope: String,
    user: String,
    expires_at: Instant,
    /// Issued for a `redirect_uri` that is not the registered one
    /// ([`AuthorizeErrors::AtExchange`]): its exchange is refused.
    unregistered: bool,
}

/// A public key of a JWT Verifier Map, as ring verifies with it.
enum JwtVerifier {
    /// The uncompressed P-256 point.
    Es256(Vec<u8>),
    /// The RSAPublicKey DER.
    Rs256(Vec<u8>),
}

impl JwtVerifier {
    fn verify(&self, alg: &str, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature::{
            UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
        };
        match (self, alg) {
            (JwtVerifier::Es256(key), "ES256") => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
                    .verify(message, signature)
                    .is_ok()
            }
            (JwtVerifier::Rs256(key), "RS256") => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
                    .verify(message, signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

#[derive(Default)]
struct State {
    clients: HashMap<String, String>,
    redirect_uris: HashMap<String, String>,
    users: HashMap<String, String>,
    consent: Consent,
    authorize_errors: AuthorizeErrors,
    current_user_unavailable: bool,
    /// The user each access token acts for, when it acts for one.
    access_users: HashMap<String, String>,
    /// The refusal of the last token request, when it is not the generic 401.
    refusal: Option<Response>,
    state_override: Option<String>,
    client_credentials_enabled: bool,
    rotate_refresh_tokens: bool,
    hibernating: bool,
    untrusted_certificate: bool,
    connections: u64,
    access_lifetime: u64,
    refresh_lifespan: u64,
    faults: VecDeque<Fault>,
    standing_fault: Option<Fault>,
    auth_codes: HashMap<String, AuthCode>,
    access_expiry: HashMap<String, Instant>,
    refresh_grants: HashMap<String, RefreshGrant>,
    issued_access: Vec<String>,
    issued_refresh: Vec<String>,
    issued_codes: Vec<String>,
    revoked: HashSet<String>,
    revoked_order: Vec<String>,
    superseded: HashSet<String>,
    superseded_order: Vec<String>,
    authorize_requests: u64,
    auth_code_exchanges: u64,
    pkce_exchanges: u64,
    token_requests: u64,
    tokens_issued: u64,
    revoke_requests: u64,
    table_requests: u64,
    requests: u64,
    last_table_authorization: Option<String>,
    table_rate_limits: VecDeque<String>,
    attachment_requests: u64,
    jwt_keys: HashMap<String, Vec<JwtVerifier>>,
    seen_jtis: HashSet<String>,
    jwt_grants: u64,
    /// Clients whose token requests wait until released ([`FakeInstance::hold_token_requests`]).
    held_clients: HashSet<String>,
    /// Token requests waiting for their release right now.
    held_now: u64,
    /// Paths answered as a hostile instance would.
    hostile_paths: HashMap<String, Hostile>,
}

/// Field order matches ServiceNow's answer, which is easier to compare by eye in logs.
#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    scope: &'a str,
    token_type: &'static str,
    expires_in: u64,
}

struct Denied;

type Form = HashMap<String, String>;

/// The refresh token a grant hands out, if any, and the scope of its access token.
type Granted = (Option<String>, String);

impl State {
    fn new() -> State {
        State {
            client_credentials_enabled: true,
            access_lifetime: DEFAULT_ACCESS_LIFETIME,
            refresh_lifespan: DEFAULT_REFRESH_LIFESPAN,
            ..State::default()
        }
    }

    fn access_token_valid(&self, token: &str) -> bool {
        !self.revoked.contains(token)
            && self
                .access_expiry
                .get(token)
                .is_some_and(|expiry| Instant::now() < *expiry)
    }

    fn refresh_token_valid(&self, token: &str) -> bool {
        !self.revoked.contains(token)
            && !self.superseded.contains(token)
            && self
                .refresh_grants
                .get(token)
                .is_some_and(|grant| Instant::now() < grant.expires_at)
    }

    /// The authenticated client id, if the request names a known client and its secret.
    fn authenticate(&self, req: &Request, form: &Form) -> Option<String> {
        let (id, secret) = client_credentials(req, form)?;
        (self.clients.get(&id) == Some(&secret)).then_some(id)
    }

    /// The authorize endpoint. The fake answers the consent page itself, so a request
    /// ends in a redirect to the client, or in an HTML page when it cannot.
    fn authorize(&mut self, req: &Request) -> Response {
        self.authorize_requests += 1;
        let query = parse_form(req.query().as_bytes());
        let (client_id, redirect_uri, state, unregistered) = match self.trusted_redirect(&query) {
            Ok((client_id, redirect_uri, state)) => (client_id, redirect_uri, state, false),
            Err((page, untrusted)) => match (self.authorize_errors, untrusted) {
                (AuthorizeErrors::Redirect, Some((problem, redirect_uri, state))) => {
                    return error_redirect(redirect_uri, "invalid_request", problem, state);
                }
                (AuthorizeErrors::AtExchange, Some((REDIRECT_PROBLEM, redirect_uri, state))) => {
                    let client_id = param(&query, "client_id").unwrap_or_default();
                    (client_id, redirect_uri, state, true)
                }
                _ => return page,
            },
        };
        let state = self
            .state_override
            .clone()
            .unwrap_or_else(|| state.to_owned());
        let challenge = (
            param(&query, "code_challenge"),
            param(&query, "code_challenge_method"),
        );
        let code_challenge = match challenge {
            (None, None) => None,
            (Some(challenge), Some("S256")) => Some(challenge.to_owned()),
            _ => {
                let description = "code_challenge_method must be S256";
                return error_redirect(redirect_uri, "invalid_request", description, &state);
            }
        };
        let user = match &self.consent {
            Consent::Approve { user } => user.clone(),
            Consent::Deny => {
                let description = "The user denied the authorization request";
                return error_redirect(redirect_uri, "access_denied", description, &state);
            }
        };
        let code = random_token();
        let issued = AuthCode {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            code_challenge,
            scope: param(&query, "scope").unwrap_or(DEFAULT_SCOPE).to_owned(),
            user,
            expires_at: deadline(AUTH_CODE_LIFETIME),
            unregistered,
        };
        self.auth_codes.insert(code.clone(), issued);
        self.issued_codes.push(code.clone());
        redirect(redirect_uri, &[("code", &code), ("state", &state)])
    }

    /// The client id, Redirect URL and state of an authorize request that may be
    /// answered with a redirect. Otherwise, ServiceNow shows the user an error page:
    /// redirecting elsewhere than the registered URL could hand a code to an attacker,
    /// and `state` is mandatory on current instances.
    ///
    /// The error page comes with the problem, the `redirect_uri` asked for and the
    /// `state`, when the request is otherwise well formed: what an instance that does
    /// redirect such errors redirects with.
    #[allow(clippy::type_complexity)]
    fn trusted_redirect<'q>(
        &self,
        query: &'q Form,
    ) -> Result<(&'q str, &'q str, &'q str), (Response, Option<(&'static str, &'q str, &'q str)>)>
    {
        let untrusted = |problem: &'static str| {
            let asked = param(query, "redirect_uri").zip(param(query, "state"));
            let well_formed = param(query, "response_type") == Some("code");
            let redirectable = asked.filter(|_| well_formed);
            (
                error_page(problem),
                redirectable.map(|(uri, state)| (problem, uri, state)),
            )
        };
        let client_id = param(query, "client_id")
            .filter(|id| self.clients.contains_key(*id))
            .ok_or_else(|| untrusted(CLIENT_PROBLEM))?;
        let registered = self.redirect_uris.get(client_id);
        let redirect_uri = param(query, "redirect_uri")
            .filter(|uri| registered.is_some_and(|r| r == uri))
            .ok_or_else(|| untrusted(REDIRECT_PROBLEM))?;
        if param(query, "response_type") != Some("code") {
            return Err((error_page("Unsupported response_type"), None));
        }
        let state =
            param(query, "state").ok_or_else(|| (error_page("Missing state parameter"), None))?;
        Ok((client_id, redirect_uri, state))
    }

    /// Runs the token endpoint proper; the JSON body on success.
    fn grant(&mut self, req: &Request) -> Result<String, Denied> {
        let form = parse_form(&req.body);
        let client_id = self.authenticate(req, &form).ok_or(Denied)?;
        let (refresh_token, scope) = match form.get("grant_type").map(String::as_str) {
            Some("client_credentials") if self.client_credentials_enabled => (
                None,
                requested_scope(&form).unwrap_or_else(|| DEFAULT_SCOPE.into()),
            ),
            Some("password") => self.password_grant(client_id, &form)?,
            Some("authorization_code") => self.code_grant(client_id, &form)?,
            Some("refresh_token") => self.refresh_grant(client_id, &form)?,
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                self.jwt_grant(&client_id, &form)?
            }
            _ => return Err(Denied),
        };
        let access_token = random_token();
        let user = refresh_token
            .as_ref()
            .and_then(|t| self.refresh_grants.get(t))
            .map(|grant| grant.user.clone());
        if let Some(user) = user {
            self.access_users.insert(access_token.clone(), user);
        }
        self.access_expiry
            .insert(access_token.clone(), deadline(self.access_lifetime));
        self.issued_access.push(access_token.clone());
        self.tokens_issued += 1;
        let body = TokenBody {
            access_token: &access_token,
            refresh_token: refresh_token.as_deref(),
            scope: &scope,
            token_type: "Bearer",
            expires_in: self.access_lifetime,
        };
        serde_json::to_string(&body).map_err(|_| Denied)
    }

    fn password_grant(&mut self, client_id: String, form: &Form) -> Result<Granted, Denied> {
        let (Some(user), Some(password)) = (form.get("username"), form.get("password")) else {
            return Err(Denied);
        };
        if self.users.get(user) != Some(password) {
            return Err(Denied);
        }
        let scope = requested_scope(form).unwrap_or_else(|| DEFAULT_SCOPE.into());
        let token = self.new_refresh_token(client_id, &scope, user.clone(), None);
        Ok((Some(token), scope))
    }

    /// A code is consumed by the first exchange that presents it, whether that exchange
    /// succeeds or not, so a verifier cannot be guessed by retrying.
    fn code_grant(&mut self, client_id: String, form: &Form) -> Result<Granted, Denied> {
        let field = |name: &str| form.get(name).map(String::as_str);
        let code = self
            .auth_codes
            .remove(field("code").ok_or(Denied)?)
            .ok_or(Denied)?;
        // A verifier without a challenge is refused too: the client and the authorize
        // request disagree about PKCE.
        let verified = match (&code.code_challenge, field("code_verifier")) {
            (Some(challenge), Some(verifier)) => s256(verifier) == *challenge,
            (None, None) => true,
            _ => false,
        };
        if code.unregistered {
            let body = r#"{"error":"invalid_request","error_description":"Invalid redirect_uri"}"#;
            self.refusal = Some(Response::new(400, JSON, body));
            return Err(Denied);
        }
        if !verified
            || code.client_id != client_id
            || field("redirect_uri") != Some(code.redirect_uri.as_str())
            || Instant::now() >= code.expires_at
        {
            return Err(Denied);
        }
        self.auth_code_exchanges += 1;
        self.pkce_exchanges += u64::from(code.code_challenge.is_some());
        let token = self.new_refresh_token(client_id, &code.scope, code.user, None);
        Ok((Some(token), code.scope))
    }

    /// Checks the assertion as ServiceNow's JWT Verifier Map does. Its `jti` is spent
    /// once the signature holds, whether the other claims pass or not.
    fn jwt_grant(&mut self, client_id: &str, form: &Form) -> Result<Granted, Denied> {
        let assertion = form.get("assertion").ok_or(Denied)?;
        let mut parts = assertion.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Denied);
        };
        let decode = |part: &str| -> Result<serde_json::Value, Denied> {
            let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| Denied)?;
            serde_json::from_slice(&bytes).map_err(|_| Denied)
        };
        let (header, claims) = (decode(header)?, decode(claims)?);
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| Denied)?;
        let alg = header["alg"].as_str().ok_or(Denied)?;
        let signed = &assertion[..assertion.rfind('.').ok_or(Denied)?];
        let keys = self.jwt_keys.get(client_id).ok_or(Denied)?;
        if !keys
            .iter()
            .any(|key| key.verify(alg, signed.as_bytes(), &signature))
        {
            return Err(Denied);
        }
        let jti = claims["jti"].as_str().ok_or(Denied)?;
        if !self.seen_jtis.insert(jti.to_owned()) {
            return Err(Denied);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Denied)?
            .as_secs() as i64;
        let (exp, iat) = (claims["exp"].as_i64(), claims["iat"].as_i64());
        let timely = exp.is_some_and(|exp| now < exp && exp <= now + 3600)
            && iat.is_some_and(|iat| iat <= now + 60);
        let subject = claims["sub"].as_str().ok_or(Denied)?;
        if !timely
            || claims["iss"].as_str() != Some(client_id)
            || claims["aud"].as_str() != Some(client_id)
            || !self.users.contains_key(subject)
        {
            return Err(Denied);
        }
        self.jwt_grants += 1;
        Ok((
            None,
            requested_scope(form).unwrap_or_else(|| DEFAULT_SCOPE.into()),
        ))
    }

    fn refresh_grant(&mut self, client_id: String, form: &Form) -> Result<Granted, Denied> {
        let token = form.get("refresh_token").ok_or(Denied)?;
        let grant = self.refresh_grants.get(token).ok_or(Denied)?;
        if grant.client_id != client_id || !self.refresh_token_valid(token) {
            return Err(Denied);
        }
        let (grant_scope, user) = (grant.scope.clone(), grant.user.clone());
        let scope = requested_scope(form).unwrap_or_else(|| grant_scope.clone());
        self.supersede_relatives(token);
        let refresh_token = if self.rotate_refresh_tokens {
            self.new_refresh_token(client_id, &grant_scope, user, Some(token.clone()))
        } else {
            token.clone()
        };
        Ok((Some(refresh_token), scope))
    }

    fn new_refresh_token(
        &mut self,
        client_id: String,
        scope: &str,
        user: String,
        parent: Option<String>,
    ) -> String {
        let token = random_token();
        let grant = RefreshGrant {
            client_id,
            scope: scope.to_owned(),
            user,
            parent,
            expires_at: deadline(self.refresh_lifespan),
        };
        self.refresh_grants.insert(token.clone(), grant);
        self.issued_refresh.push(token.clone());
        token
    }

    /// Using a rotated token proves its client received it, so the token it was rotated
    /// from and that token's other successors (answers the client lost) are superseded.
    fn supersede_relatives(&mut self, token: &str) {
        let parent = self
            .refresh_grants
            .get(token)
            .and_then(|g| g.parent.clone());
        let Some(parent) = parent else {
            return;
        };
        let is_sibling = |t: &&String| {
            t.as_str() != token
                && self
                    .refresh_grants
                    .get(*t)
                    .is_some_and(|g| g.parent.as_ref() == Some(&parent))
        };
        let siblings = self.issued_refresh.iter().filter(is_sibling).cloned();
        let relatives: Vec<String> = std::iter::once(parent.clone()).chain(siblings).collect();
        for relative in relatives {
            if self.superseded.insert(relative.clone()) {
                self.superseded_order.push(relative);
            }
        }
    }

    fn revoke(&mut self, req: &Request) -> Response {
        self.revoke_requests += 1;
        let form = parse_form(&req.body);
        if self.authenticate(req, &form).is_none() {
            return denied();
        }
        let Some(token) = form.get("token") else {
            return denied();
        };
        let known =
            self.access_expiry.contains_key(token) || self.refresh_grants.contains_key(token);
        if known && self.revoked.insert(token.clone()) {
            self.revoked_order.push(token.clone());
        }
        // Unknown tokens still get 200, as RFC 7009 asks, so revocation is idempotent.
        Response::new(200, JSON, "{}")
    }

    fn table(&mut self, req: &Request) -> Response {
        self.table_requests += 1;
        self.last_table_authorization = req.header("authorization").map(str::to_owned);
        if let Some(retry_after) = self.table_rate_limits.pop_front() {
            let body = r#"{"error":{"message":"Too Many Requests","detail":"Rate limit exceeded"},"status":"failure"}"#;
            let mut response = Response::new(429, JSON, body);
            response.headers.push(("Retry-After", retry_after));
            return response;
        }
        let token = req.header("authorization").and_then(bearer_token);
        if !token.is_some_and(|t| self.access_token_valid(t)) {
            return Response::new(401, JSON, NOT_AUTHENTICATED);
        }
        let mut record = serde_json::json!({
            "sys_id": format!("{:032x}", rand::random::<u128>()),
            "number": "INC0010001",
            "short_description": "fake incident",
        });
        // `sysparm_display_value=all` (pysnc's default) gives each field as
        // its value and display value.
        let query = parse_form(req.query().as_bytes());
        if param(&query, "sysparm_display_value") == Some("all") {
            for field in record
                .as_object_mut()
                .into_iter()
                .flat_map(|r| r.values_mut())
            {
                *field =
                    serde_json::json!({"value": field.clone(), "display_value": field.clone()});
            }
        }
        let body = serde_json::json!({"result": [record]});
        let mut response = Response::new(200, JSON, body.to_string());
        // How many records match, as the Table API says; clients page by it.
        response.headers.push(("X-Total-Count", "1".to_owned()));
        let session = format!("{:032x}", rand::random::<u128>());
        response.headers.push((
            "Set-Cookie",
            format!("JSESSIONID={session}; Path=/; HttpOnly; Secure"),
        ));
        response
            .headers
            .push(("Set-Cookie", "glide_user_route=glide.1; Path=/".to_owned()));
        response
    }

    fn download(&mut self, req: &Request) -> Response {
        let token = req.header("authorization").and_then(bearer_token);
        if !token.is_some_and(|t| self.access_token_valid(t)) {
            return Response::new(401, JSON, NOT_AUTHENTICATED);
        }
        Response::new(200, "application/octet-stream", vec![b'd'; DOWNLOAD_BYTES])
    }

    /// ServiceNow's UI API: who the bearer token acts for.
    fn current_user(&mut self, req: &Request) -> Response {
        let token = req.header("authorization").and_then(bearer_token);
        let Some(token) = token.filter(|t| self.access_token_valid(t)) else {
            return Response::new(401, JSON, NOT_AUTHENTICATED);
        };
        if self.current_user_unavailable {
            let body = r#"{"error":{"message":"User Not Authorized","detail":"Insufficient rights"},"status":"failure"}"#;
            return Response::new(403, JSON, body);
        }
        let user = self.access_users.get(token).cloned().unwrap_or_default();
        let sys_id = format!("{:032x}", rand::random::<u128>());
        let body = serde_json::json!({"result": {"user_name": user, "user_sys_id": sys_id}});
        Response::new(200, JSON, body.to_string())
    }

    fn attachment(&mut self, req: &Request) -> Response {
        self.attachment_requests += 1;
        let token = req.header("authorization").and_then(bearer_token);
        if !token.is_some_and(|t| self.access_token_valid(t)) {
            return Response::new(401, JSON, NOT_AUTHENTICATED);
        }
        let body = serde_json::json!({"result": {"size_bytes": req.body.len().to_string()}});
        Response::new(201, JSON, body.to_string())
    }
}

/// 64 random bytes in unpadded base64url: 86 characters, the length ServiceNow uses.
fn random_token() -> String {
    let mut bytes = [0u8; 64];
    rand::thread_rng().fill(&mut bytes[..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

// Clamped so that an absurd lifetime from a test cannot overflow `Instant`.
fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs.min(100 * 365 * 24 * 60 * 60))
}

fn parse_form(body: &[u8]) -> Form {
    let mut form = HashMap::new();
    for (key, value) in form_urlencoded::parse(body) {
        form.entry(key.into_owned()).or_insert(value.into_owned());
    }
    form
}

/// A query parameter; an empty one counts as missing.
fn param<'a>(query: &'a Form, name: &str) -> Option<&'a str> {
    query
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn requested_scope(form: &Form) -> Option<String> {
    param(form, "scope").map(str::to_owned)
}

/// RFC 7636's S256 transformation: BASE64URL-ENCODE(SHA256(ASCII(code_verifier))).
fn s256(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

/// Clients authenticate either way; a Basic header, when present, is the one that counts.
fn client_credentials(req: &Request, form: &Form) -> Option<(String, String)> {
    if let Some(basic) = req.header("authorization").and_then(basic_credentials) {
        return Some(basic);
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn denied() -> Response {
    Response::new(401, JSON, ACCESS_DENIED)
}

/// The page ServiceNow shows the user instead of redirecting to a client it cannot trust.
fn error_page(problem: &'static str) -> Response {
    let body = format!(
        "<html><head><title>{problem}</title></head><body><h1>{problem}</h1></body></html>"
    );
    Response::new(400, HTML, body)
}

/// `302 Found` to `redirect_uri`, with `params` appended to whatever query it has.
fn redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    // The serializer writes a space as `+` and a literal `+` as `%2B`, so every `+` left
    // is a space; `%20` means the same to every URL parser, not only to form parsers.
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
        .replace('+', "%20");
    let mut response = Response::new(302, HTML, "");
    let location = format!("{redirect_uri}{separator}{query}");
    response.headers.push(("Location", location));
    response
}

fn error_redirect(redirect_uri: &str, error: &str, description: &str, state: &str) -> Response {
    let params = [
        ("error", error),
        ("error_description", description),
        ("state", state),
    ];
    redirect(redirect_uri, &params)
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Request {
    /// The request target split into path and query (empty when there is none).
    fn target(&self) -> (&str, &str) {
        self.path.split_once('?').unwrap_or((&self.path, ""))
    }

    fn query(&self) -> &str {
        self.target().1
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn head(&self, content_length: usize, close: bool) -> String {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            content_length
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        head
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// How the connection task should deliver an answer.
enum Reply {
    Full(Response),
    Slow(Response, Duration),
    Truncated,
    Reset,
    Hostile(Hostile),
}

/// The certificates of an HTTPS instance: the one its clients are told to trust, and
/// another for [`FakeInstance::set_untrusted_certificate`].
struct Tls {
    ca_pem: String,
    trusted: tokio_rustls::TlsAcceptor,
    untrusted: tokio_rustls::TlsAcceptor,
}

impl Tls {
    fn generate() -> io::Result<Tls> {
        let (ca_pem, trusted) = signed_acceptor("snctl test instance CA")?;
        let (_, untrusted) = signed_acceptor("snctl test interceptor CA")?;
        Ok(Tls {
            ca_pem,
            trusted,
            untrusted,
        })
    }
}

/// A new CA named `ca_name` and a server certificate it signed for `127.0.0.1` and
/// `localhost`: the CA's PEM, and an acceptor presenting the server certificate.
fn signed_acceptor(ca_name: &str) -> io::Result<(String, tokio_rustls::TlsAcceptor)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let failed = |e: rcgen::Error| io::Error::other(format!("test certificate: {e}"));
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(failed)?;
    let ca_pem = ca.self_signed(&ca_key).map_err(failed)?.pem();
    let issuer = Issuer::new(ca, ca_key);

    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let mut leaf = CertificateParams::new(names).map_err(failed)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "fake ServiceNow instance");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().map_err(failed)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(failed)?;

    // The provider is named rather than taken from the process default, which is
    // ambiguous when another crate in the build enables a second one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![leaf_cert.der().clone()], key)
        })
        .map_err(io::Error::other)?;
    Ok((ca_pem, tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// A stream the fake serves HTTP on: plain TCP, or TLS over TCP.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {
    /// Whether the connection closes after answering a token request, so that the
    /// next one makes a handshake with whichever certificate is in force then. Closing
    /// them when the certificate changes would race with a client that is already
    /// sending on one.
    const CLOSE_AFTER_TOKEN: bool;

    /// Closes with a TCP reset, whatever the layers above would say.
    fn reset(self);
}

impl Connection for TcpStream {
    const CLOSE_AFTER_TOKEN: bool = false;

    fn reset(self) {
        reset(self);
    }
}

impl Connection for tokio_rustls::server::TlsStream<TcpStream> {
    const CLOSE_AFTER_TOKEN: bool = true;

    fn reset(self) {
        reset(self.into_inner().0);
    }
}

async fn accept_loop(listener: TcpListener, state: Shared, tls: Option<Arc<Tls>>) {
    // Connections live in this set so that aborting the accept task also ends keep-alive
    // connections, which would otherwise keep answering after the instance is dropped.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = Arc::clone(&state);
                    let untrusted = {
                        let mut s = lock(&state);
                        s.connections += 1;
                        s.untrusted_certificate
                    };
                    match &tls {
                        None => connections.spawn(serve_connection(stream, state)),
                        Some(tls) => {
                            let acceptor = match untrusted {
                                true => tls.untrusted.clone(),
                                false => tls.trusted.clone(),
                            };
                            connections.spawn(serve_tls(acceptor, stream, state))
                        }
                    };
                }
                // Usually descriptor exhaustion; pausing avoids a hot loop until it clears.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The handshake, then HTTP as on a plain connection. A client that refuses the
/// certificate ends the handshake with an alert; there is nothing to answer then.
async fn serve_tls(acceptor: tokio_rustls::TlsAcceptor, stream: TcpStream, state: Shared) {
    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
    if let Ok(Ok(stream)) = handshake.await {
        serve_connection(stream, state).await;
    }
}

async fn serve_connection<S: Connection>(mut stream: S, state: Shared) {
    let mut buf = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buf).await {
            Ok(Some(request)) => request,
            Ok(None) | Err(ReadError::Closed) => return,
            Err(ReadError::Reject(code)) => {
                let body = serde_json::json!({
                    "error": {"message": reason(code), "detail": "Malformed request"},
                    "status": "failure",
                });
                let response = Response::new(code, JSON, body.to_string());
                if send(&mut stream, &response, true).await.is_ok() {
                    close_gracefully(stream).await;
                }
                return;
            }
        };
        let close =
            !request.keep_alive || (S::CLOSE_AFTER_TOKEN && request.target().0 == TOKEN_PATH);
        let delivered = match handle(&state, &request).await {
            Reply::Full(response) => send(&mut stream, &response, close).await,
            Reply::Slow(response, interval) => {
                send_slowly(&mut stream, &response, interval, close).await
            }
            Reply::Truncated => {
                let _ = send_truncated(&mut stream).await;
                return;
            }
            Reply::Reset => {
                stream.reset();
                return;
            }
            Reply::Hostile(hostile) => {
                let _ = send_hostile(&mut stream, hostile).await;
                return;
            }
        };
        if delivered.is_err() || close {
            return;
        }
    }
}

async fn handle(state: &Shared, req: &Request) -> Reply {
    if lock(state).hibernating {
        return Reply::Full(Response::new(200, "text/html;charset=UTF-8", HIBERNATING));
    }
    let (path, _) = req.target();
    let table = path
        .strip_prefix("/api/now/table/")
        .is_some_and(|t| !t.is_empty());
    let download = path
        .strip_prefix("/api/now/attachment/")
        .and_then(|p| p.strip_suffix("/file"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    lock(state).requests += 1;
    if let Some(&hostile) = lock(state).hostile_paths.get(path) {
        return Reply::Hostile(hostile);
    }
    match (req.method.as_str(), path) {
        ("GET", "/oauth_auth.do") => Reply::Full(lock(state).authorize(req)),
        ("POST", TOKEN_PATH) => token_endpoint(state, req).await,
        ("POST", "/oauth_revoke_token.do") => Reply::Full(lock(state).revoke(req)),
        ("GET", _) if table => Reply::Full(lock(state).table(req)),
        ("GET", CURRENT_USER_PATH) => Reply::Full(lock(state).current_user(req)),
        ("POST", ATTACHMENT_PATH) => Reply::Full(lock(state).attachment(req)),
        ("GET", _) if download => Reply::Full(lock(state).download(req)),
        _ => Reply::Full(Response::new(404, JSON, NOT_FOUND)),
    }
}

async fn token_endpoint(state: &Shared, req: &Request) -> Reply {
    hold_while_asked(state, req).await;
    let fault = {
        let mut s = lock(state);
        s.token_requests += 1;
        let queued = s.faults.pop_front();
        queued.or_else(|| s.standing_fault.clone())
    };
    let Some(fault) = fault else {
        return Reply::Full(issue(state, req));
    };
    match fault {
        Fault::Status {
            code,
            body,
            content_type,
            retry_after,
        } => {
            let mut response = Response::new(code, content_type, body);
            if let Some(value) = retry_after {
                response.headers.push(("Retry-After", value));
            }
            Reply::Full(response)
        }
        Fault::Html => Reply::Full(Response::new(200, HTML, HIBERNATING)),
        Fault::BadJson => Reply::Full(Response::new(200, JSON, BAD_JSON)),
        Fault::Truncated => Reply::Truncated,
        Fault::Delay(delay) => {
            // The token is issued after the delay even if the client gave up meanwhile,
            // as a slow real instance would.
            tokio::time::sleep(delay).await;
            Reply::Full(issue(state, req))
        }
        Fault::SlowBody(interval) => Reply::Slow(issue(state, req), interval),
        Fault::ResetBeforeProcessing => Reply::Reset,
        Fault::ResetAfterProcessing => {
            let _ = issue(state, req);
            Reply::Reset
        }
        Fault::IssueThenDelay(delay) => {
            let response = issue(state, req);
            tokio::time::sleep(delay).await;
            Reply::Full(response)
        }
        Fault::Hostile(hostile) => Reply::Hostile(hostile),
    }
}

/// Sends what `hostile` says, until the client goes away (or, for a huge error page,
/// until it is all sent).
async fn send_hostile<S: Connection>(stream: &mut S, hostile: Hostile) -> io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let filler = vec![b'x'; CHUNK];
    let chunked_head =
        format!("HTTP/1.1 200 OK\r\nContent-Type: {JSON}\r\nTransfer-Encoding: chunked\r\n\r\n");
    match hostile {
        Hostile::EndlessHeaders => {
            stream.write_all(b"HTTP/1.1 200 OK\r\n").await?;
            for n in 0u64.. {
                let line = format!("X-Hostile-{n}: {}\r\n", "x".repeat(64));
                stream.write_all(line.as_bytes()).await?;
            }
            Ok(())
        }
        Hostile::DripBody(interval) => {
            stream.write_all(chunked_head.as_bytes()).await?;
            stream.write_all(b"1\r\n[\r\n").await?;
            loop {
                tokio::time::sleep(interval).await;
                stream.write_all(b"1\r\n \r\n").await?;
            }
        }
        Hostile::EndlessBody => {
            stream.write_all(chunked_head.as_bytes()).await?;
            let chunk = [format!("{CHUNK:x}\r\n").as_bytes(), &filler, b"\r\n"].concat();
            loop {
                stream.write_all(&chunk).await?;
            }
        }
        Hostile::HugeError { status, bytes } => {
            let (open, close) = (
                r#"{"error":{"message":""#,
                r#"","detail":null},"status":"failure"}"#,
            );
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: {JSON}\r\nContent-Length: {bytes}\r\n\
                 Connection: close\r\n\r\n",
                reason(status)
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(open.as_bytes()).await?;
            let mut left = bytes.saturating_sub((open.len() + close.len()) as u64);
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                stream.write_all(&filler[..n]).await?;
                left -= n as u64;
            }
            stream.write_all(close.as_bytes()).await?;
            stream.flush().await
        }
    }
}

/// Waits while the request's client is held ([`FakeInstance::hold_token_requests`]).
async fn hold_while_asked(state: &Shared, req: &Request) {
    let form = parse_form(&req.body);
    let Some((client_id, _)) = client_credentials(req, &form) else {
        return;
    };
    {
        let mut s = lock(state);
        if !s.held_clients.contains(&client_id) {
            return;
        }
        s.held_now += 1;
    }
    while lock(state).held_clients.contains(&client_id) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lock(state).held_now -= 1;
}

fn issue(state: &Shared, req: &Request) -> Response {
    let mut s = lock(state);
    match s.grant(req) {
        Ok(body) => Response::new(200, JSON, body),
        Err(Denied) => s.refusal.take().unwrap_or_else(denied),
    }
}

async fn send<S: Connection>(stream: &mut S, response: &Response, close: bool) -> io::Result<()> {
    let mut bytes = response.head(response.body.len(), close).into_bytes();
    bytes.extend_from_slice(&response.body);
    stream.write_all(&bytes).await
}

async fn send_slowly<S: Connection>(
    stream: &mut S,
    response: &Response,
    interval: Duration,
    close: bool,
) -> io::Result<()> {
    let head = response.head(response.body.len(), close);
    stream.write_all(head.as_bytes()).await?;
    for byte in &response.body {
        tokio::time::sleep(interval).await;
        stream.write_all(std::slice::from_ref(byte)).await?;
    }
    Ok(())
}

/// Promises a whole token response but sends only its first half, then closes cleanly,
/// so the client sees EOF mid-body rather than a reset.
async fn send_truncated<S: Connection>(stream: &mut S) -> io::Result<()> {
    let body = format!(
        r#"{{"access_token":"{}","scope":"{DEFAULT_SCOPE}","token_type":"Bearer","expires_in":{DEFAULT_ACCESS_LIFETIME}}}"#,
        random_token()
    );
    let response = Response::new(200, JSON, Vec::new());
    stream
        .write_all(response.head(body.len(), true).as_bytes())
        .await?;
    stream.write_all(&body.as_bytes()[..body.len() / 2]).await?;
    stream.shutdown().await
}

fn reset(stream: TcpStream) {
    // SO_LINGER 0 turns close() into an RST. Tokio deprecates set_linger because a
    // non-zero linger blocks the thread on close; a zero linger never blocks, and this
    // spelling works on every tokio 1.x, unlike the newer `set_zero_linger`.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// After rejecting a request whose body was not read, closing at once would make the
/// kernel answer the unread bytes with an RST that can destroy the error response
/// before the client reads it. Half-close and drain for a while instead.
async fn close_gracefully<S: Connection>(mut stream: S) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 8192];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

enum ReadError {
    /// The peer went away or the socket failed; nothing can be answered.
    Closed,
    /// The request is unacceptable; answer with this status and close.
    Reject(u16),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> ReadError {
        ReadError::Closed
    }
}

/// Reads one request. `buf` carries bytes already received past the previous request,
/// which matters for pipelining clients. `Ok(None)` is a clean close between requests.
async fn read_request<S: Connection>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, ReadError> {
    let (mut request, head_len, content_length) = loop {
        if !buf.is_empty() {
            if let Some(parsed) = parse_head(buf)? {
                break parsed;
            }
        }
        if read_more(stream, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Closed)
            };
        }
    };
    let end = head_len + content_length;
    while buf.len() < end {
        if read_more(stream, buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
    request.body = buf[head_len..end].to_vec();
    buf.drain(..end);
    Ok(Some(request))
}

async fn read_more<S: Connection>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// `Ok(None)` while the head is incomplete; otherwise the request (without body), the
/// head length and the body length.
fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        _ => return Err(ReadError::Reject(400)),
    };
    let headers = parsed
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    let mut request = Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: parsed.path.unwrap_or_default().to_owned(),
        headers,
        body: Vec::new(),
        keep_alive: true,
    };
    let connection = request.header("connection").unwrap_or_default();
    let has_token = |token: &str| {
        connection
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    request.keep_alive = if parsed.version == Some(1) {
        !has_token("close")
    } else {
        has_token("keep-alive")
    };
    // No client of ServiceNow's token endpoint streams its form, so chunked bodies are
    // refused rather than half-supported.
    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::Reject(411));
    }
    let content_length = match request.header("content-length") {
        None => 0,
        Some(value) => value
            .trim()
            .parse::<usize>()
            .map_err(|_| ReadError::Reject(400))?,
    };
    let limit = match request.target().0 {
        ATTACHMENT_PATH => MAX_ATTACHMENT,
        _ => MAX_BODY,
    };
    if content_length > limit {
        return Err(ReadError::Reject(413));
    }
    Ok(Some((request, head_len, content_length)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const ID: &str = "snctl";
    const SECRET: &str = "s3cret";
    const TOKEN: &str = "/oauth_token.do";
    const REVOKE: &str = "/oauth_revoke_token.do";
    const REDIRECT: &str = "http://127.0.0.1:8400/callback";
    // The example of RFC 7636, appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    async fn fake() -> FakeInstance {
        let fake = FakeInstance::start().await.expect("start fake");
        fake.add_client(ID, SECRET);
        fake
    }

    async fn code_fake() -> FakeInstance {
        let fake = fake().await;
        fake.set_redirect_uri(ID, REDIRECT);
        fake
    }

    // A proxy from the environment must not intercept loopback traffic, and redirects
    // from the authorize endpoint are what the tests look at.
    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }

    async fn try_post(
        fake: &FakeInstance,
        path: &str,
        form: &[(&str, &str)],
    ) -> reqwest::Result<reqwest::Response> {
        let url = format!("{}{path}", fake.url());
        http().post(url).form(form).send().await
    }

    async fn post(fake: &FakeInstance, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        try_post(fake, path, form).await.expect("send")
    }

    fn cc_form(secret: &str) -> [(&'static str, &str); 3] {
        let grant = ("grant_type", "client_credentials");
        [grant, ("client_id", ID), ("client_secret", secret)]
    }

    async fn json(response: reqwest::Response) -> Value {
        response.json().await.expect("json body")
    }

    fn text(body: &Value, field: &str) -> String {
        body[field].as_str().expect(field).to_owned()
    }

    async fn table(fake: &FakeInstance, token: &str) -> reqwest::Response {
        let url = format!("{}/api/now/table/incident?sysparm_limit=1", fake.url());
        http()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("send")
    }

    fn authorize_params() -> Vec<(&'static str, &'static str)> {
        vec![
            ("response_type", "code"),
            ("client_id", ID),
            ("redirect_uri", REDIRECT),
            ("state", "xyz"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ]
    }

    /// [`authorize_params`] with `name` replaced by `value`, or removed if `None`.
    fn authorize_params_with(
        name: &'static str,
        value: Option<&'static str>,
    ) -> Vec<(&'static str, &'static str)> {
        let mut params = authorize_params();
        params.retain(|(n, _)| *n != name);
        params.extend(value.map(|v| (name, v)));
        params
    }

    async fn authorize(fake: &FakeInstance, params: &[(&str, &str)]) -> reqwest::Response {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let url = format!("{}/oauth_auth.do?{query}", fake.url());
        http().get(url).send().await.expect("send")
    }

    /// The parameters of a 302 whose `Location` must start with `prefix`.
    fn redirect_params(response: &reqwest::Response, prefix: &str) -> Form {
        assert_eq!(response.status(), 302);
        let location = response.headers()["location"].to_str().expect("ascii");
        let query = location.strip_prefix(prefix).expect(location);
        parse_form(query.as_bytes())
    }

    async fn authorized_code(fake: &FakeInstance) -> String {
        let response = authorize(fake, &authorize_params()).await;
        redirect_params(&response, &format!("{REDIRECT}?"))["code"].clone()
    }

    async fn exchange(
        fake: &FakeInstance,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", ID),
            ("client_secret", SECRET),
        ];
        form.extend(verifier.map(|v| ("code_verifier", v)));
        post(fake, TOKEN, &form).await
    }

    /// A refresh token from a whole authorization code flow.
    async fn refresh_token(fake: &FakeInstance) -> String {
        let code = authorized_code(fake).await;
        let response = exchange(fake, &code, REDIRECT, Some(VERIFIER)).await;
        text(&json(response).await, "refresh_token")
    }

    fn refresh_form(token: &str) -> [(&'static str, &str); 4] {
        [
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", ID),
            ("client_secret", SECRET),
        ]
    }

    async fn refresh(fake: &FakeInstance, token: &str) -> reqwest::Response {
        post(fake, TOKEN, &refresh_form(token)).await
    }

    async fn assert_denied(response: reqwest::Response) {
        assert_eq!(response.status(), 401);
        assert_eq!(response.text().await.expect("body"), ACCESS_DENIED);
    }

    async fn assert_error_page(response: reqwest::Response, title: &str) {
        assert_eq!(response.status(), 400);
        assert!(response.headers().get("location").is_none());
        assert_eq!(response.headers()["content-type"], HTML);
        let body = response.text().await.expect("body");
        assert!(body.contains(&format!("<title>{title}</title>")), "{body}");
    }

    /// Writes raw bytes and returns everything the server sends until it closes.
    async fn raw_exchange(fake: &FakeInstance, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", fake.port()))
            .await
            .expect("connect");
        stream.write_all(request).await.expect("write");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn client_credentials_issues_token_with_configured_lifetime() {
        let fake = fake().await;
        fake.set_access_lifetime(600);
        let response = post(&fake, TOKEN, &cc_form(SECRET)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], JSON);
        let body = json(response).await;
        let token = text(&body, "access_token");
        assert_eq!(token.len(), 86);
        assert_eq!(
            (&body["expires_in"], &body["token_type"]),
            (&600.into(), &"Bearer".into())
        );
        assert_eq!(body["scope"], "useraccount");
        assert!(body.get("refresh_token").is_none());
        assert!(fake.is_access_token_valid(&token));
        assert_eq!(fake.issued_access_tokens(), vec![token]);

        let mut scoped = cc_form(SECRET).to_vec();
        scoped.push(("scope", "custom"));
        assert_eq!(
            json(post(&fake, TOKEN, &scoped).await).await["scope"],
            "custom"
        );

        fake.set_access_lifetime(0);
        let expired = text(
            &json(post(&fake, TOKEN, &cc_form(SECRET)).await).await,
            "access_token",
        );
        assert!(!fake.is_access_token_valid(&expired));
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (3, 3));
    }

    #[tokio::test]
    async fn every_failure_is_the_same_generic_401() {
        let fake = fake().await;
        let no_secret = [("grant_type", "client_credentials"), ("client_id", ID)];
        let mut unknown = cc_form(SECRET);
        unknown[1].1 = "nobody";
        let mut unsupported = cc_form(SECRET);
        unsupported[0].1 = "urn:ietf:params:oauth:grant-type:device_code";
        let forms: [&[(&str, &str)]; 4] = [&cc_form("wrong"), &unknown, &no_secret, &unsupported];
        for form in forms {
            let response = post(&fake, TOKEN, form).await;
            assert_eq!(response.status(), 401);
            assert_eq!(response.text().await.expect("body"), ACCESS_DENIED);
        }

        fake.set_client_credentials_enabled(false);
        let disabled = post(&fake, TOKEN, &cc_form(SECRET)).await;
        assert_eq!(disabled.text().await.expect("body"), ACCESS_DENIED);
        fake.set_client_credentials_enabled(true);

        fake.set_client_secret(ID, "rotated");
        assert_eq!(post(&fake, TOKEN, &cc_form(SECRET)).await.status(), 401);
        assert_eq!(post(&fake, TOKEN, &cc_form("rotated")).await.status(), 200);
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (7, 1));
    }

    #[tokio::test]
    async fn basic_auth_is_accepted() {
        let fake = fake().await;
        let response = http()
            .post(format!("{}{TOKEN}", fake.url()))
            .basic_auth(ID, Some(SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        assert!(fake.is_access_token_valid(&text(&json(response).await, "access_token")));
    }

    #[tokio::test]
    async fn table_api_requires_a_valid_bearer_token() {
        let fake = fake().await;
        let token = text(
            &json(post(&fake, TOKEN, &cc_form(SECRET)).await).await,
            "access_token",
        );
        let ok = table(&fake, &token).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(json(ok).await["result"][0]["number"], "INC0010001");

        let rejected = table(&fake, "bogus").await;
        assert_eq!(rejected.status(), 401);
        assert_eq!(rejected.text().await.expect("body"), NOT_AUTHENTICATED);
        assert_eq!(fake.table_requests(), 2);
    }

    #[tokio::test]
    async fn revoked_access_token_is_no_longer_valid() {
        let fake = fake().await;
        let token = text(
            &json(post(&fake, TOKEN, &cc_form(SECRET)).await).await,
            "access_token",
        );
        let anonymous = post(&fake, REVOKE, &[("token", &token)]).await;
        assert_eq!(anonymous.status(), 401);
        assert!(fake.is_access_token_valid(&token));

        let form = [
            ("token", token.as_str()),
            ("client_id", ID),
            ("client_secret", SECRET),
        ];
        let response = post(&fake, REVOKE, &form).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "{}");
        assert!(!fake.is_access_token_valid(&token));
        assert_eq!(table(&fake, &token).await.status(), 401);
        assert_eq!(fake.revoked_tokens(), vec![token]);
        assert_eq!(fake.revoke_requests(), 2);
    }

    #[tokio::test]
    async fn queued_429_carries_retry_after_and_applies_once() {
        let fake = fake().await;
        fake.push_fault(Fault::too_many_requests(7));
        let limited = post(&fake, TOKEN, &cc_form(SECRET)).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["retry-after"], "7");
        assert_eq!(post(&fake, TOKEN, &cc_form(SECRET)).await.status(), 200);
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (2, 1));
    }

    #[tokio::test]
    async fn standing_fault_applies_after_the_queue_until_cleared() {
        let fake = fake().await;
        fake.set_standing_fault(Some(Fault::status(503)));
        fake.push_fault(Fault::access_denied());
        for expected in [401, 503, 503] {
            assert_eq!(
                post(&fake, TOKEN, &cc_form(SECRET)).await.status(),
                expected
            );
        }
        fake.set_standing_fault(None);
        assert_eq!(post(&fake, TOKEN, &cc_form(SECRET)).await.status(), 200);
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (4, 1));
    }

    #[tokio::test]
    async fn a_hibernating_instance_answers_every_path_with_its_page() {
        let fake = fake().await;
        fake.set_hibernating(true);
        let answer = post(&fake, TOKEN, &cc_form(SECRET)).await;
        assert_eq!(answer.status(), 200);
        assert!(answer.text().await.unwrap().contains("hibernating"));
        assert_eq!(table(&fake, "anything").await.status(), 200);
        assert_eq!(fake.tokens_issued(), 0);
        fake.set_hibernating(false);
        assert_eq!(post(&fake, TOKEN, &cc_form(SECRET)).await.status(), 200);
    }

    #[tokio::test]
    async fn html_bad_json_and_truncated_faults_give_unusable_200s() {
        let fake = fake().await;
        fake.push_fault(Fault::Html);
        fake.push_fault(Fault::BadJson);
        fake.push_fault(Fault::Truncated);
        let html = post(&fake, TOKEN, &cc_form(SECRET)).await;
        assert_eq!(html.status(), 200);
        let content_type = html.headers()["content-type"].to_str().expect("ascii");
        assert!(content_type.starts_with("text/html"));
        assert!(html.text().await.expect("body").contains("hibernating"));

        let bad = post(&fake, TOKEN, &cc_form(SECRET)).await;
        assert!(bad.json::<Value>().await.is_err());

        let truncated = post(&fake, TOKEN, &cc_form(SECRET)).await;
        assert_eq!(truncated.status(), 200);
        assert!(truncated.bytes().await.is_err());
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (3, 0));
    }

    #[tokio::test]
    async fn delay_and_slow_body_still_deliver_a_valid_token() {
        let fake = fake().await;
        fake.push_fault(Fault::Delay(Duration::ZERO));
        fake.push_fault(Fault::SlowBody(Duration::ZERO));
        for _ in 0..2 {
            let body = json(post(&fake, TOKEN, &cc_form(SECRET)).await).await;
            assert!(fake.is_access_token_valid(&text(&body, "access_token")));
        }
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (2, 2));
    }

    #[tokio::test]
    async fn reset_before_processing_issues_nothing() {
        let fake = fake().await;
        fake.push_fault(Fault::ResetBeforeProcessing);
        assert!(try_post(&fake, TOKEN, &cc_form(SECRET)).await.is_err());
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (1, 0));
        assert!(fake.issued_access_tokens().is_empty());
    }

    #[tokio::test]
    async fn reset_after_processing_issues_a_token_the_client_never_sees() {
        let fake = fake().await;
        fake.push_fault(Fault::ResetAfterProcessing);
        assert!(try_post(&fake, TOKEN, &cc_form(SECRET)).await.is_err());
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (1, 1));
        let issued = fake.issued_access_tokens();
        assert_eq!(issued.len(), 1);
        assert!(fake.is_access_token_valid(&issued[0]));
    }

    /// A client that trusts the CA of `fake`, on connections of its own.
    fn https(fake: &FakeInstance) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(fake.ca_pem().unwrap().as_bytes()).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .expect("client")
    }

    #[tokio::test]
    async fn tls_serves_to_clients_that_trust_its_ca_and_can_switch_certificates() {
        let fake = FakeInstance::start_tls().await.expect("start fake");
        fake.add_client(ID, SECRET);
        assert!(fake.url().starts_with("https://127.0.0.1:"));
        let url = format!("{}{TOKEN}", fake.url());
        let client = https(&fake);
        let answer = client.post(&url).form(&cc_form(SECRET)).send().await;
        assert_eq!(answer.unwrap().status(), 200);

        // Another CA's certificate: the handshake fails, nothing reaches the endpoint.
        fake.set_untrusted_certificate(true);
        let error = client
            .post(&url)
            .form(&cc_form(SECRET))
            .send()
            .await
            .unwrap_err();
        assert!(format!("{error:?}").contains("UnknownIssuer"), "{error:?}");
        assert_eq!(fake.token_requests(), 1);
        assert_eq!(fake.connections(), 2);

        // Faults travel over TLS as over TCP.
        fake.set_untrusted_certificate(false);
        fake.push_fault(Fault::ResetBeforeProcessing);
        assert!(client
            .post(&url)
            .form(&cc_form(SECRET))
            .send()
            .await
            .is_err());
        let answer = client.post(&url).form(&cc_form(SECRET)).send().await;
        assert_eq!(answer.unwrap().status(), 200);
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (3, 2));
    }

    #[tokio::test]
    async fn password_then_refresh_keeps_the_same_refresh_token() {
        let fake = fake().await;
        fake.add_user("admin", "hunter2");
        fake.add_client("other", "x");
        let client = [("client_id", ID), ("client_secret", SECRET)];
        let user = [("username", "admin"), ("password", "hunter2")];
        let password = [&[("grant_type", "password")], &client[..], &user[..]].concat();
        let first = json(post(&fake, TOKEN, &password).await).await;
        let refresh = text(&first, "refresh_token");
        assert_eq!(fake.refresh_tokens_issued(), vec![refresh.clone()]);

        let grant = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ];
        let refresh_form = [&grant[..], &client[..]].concat();
        let second = json(post(&fake, TOKEN, &refresh_form).await).await;
        assert_eq!(text(&second, "refresh_token"), refresh);
        assert_ne!(second["access_token"], first["access_token"]);
        assert!(fake.is_access_token_valid(&text(&second, "access_token")));

        let mut wrong_password = password.clone();
        wrong_password[4].1 = "wrong";
        let other_client = [
            &grant[..],
            &[("client_id", "other"), ("client_secret", "x")],
        ]
        .concat();
        let mut revoke = client.to_vec();
        revoke.push(("token", &refresh));
        assert_eq!(post(&fake, TOKEN, &wrong_password).await.status(), 401);
        assert_eq!(post(&fake, TOKEN, &other_client).await.status(), 401);
        assert_eq!(post(&fake, REVOKE, &revoke).await.status(), 200);
        let denied = post(&fake, TOKEN, &refresh_form).await;
        assert_eq!(denied.text().await.expect("body"), ACCESS_DENIED);

        fake.set_refresh_lifespan(0);
        let expiring = text(
            &json(post(&fake, TOKEN, &password).await).await,
            "refresh_token",
        );
        let grant = [
            ("grant_type", "refresh_token"),
            ("refresh_token", expiring.as_str()),
        ];
        let expired = post(&fake, TOKEN, &[&grant[..], &client[..]].concat()).await;
        assert_eq!(expired.status(), 401);
    }

    #[tokio::test]
    async fn bad_requests_are_rejected_and_unknown_paths_get_a_json_404() {
        let fake = fake().await;
        let garbage = raw_exchange(&fake, b"NOT HTTP AT ALL\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");

        let chunked = b"POST /oauth_token.do HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n0\r\n\r\n";
        let answer = raw_exchange(&fake, chunked).await;
        assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");

        let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        huge.resize(huge.len() + MAX_HEAD, b'a');
        let answer = raw_exchange(&fake, &huge).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

        let answer = raw_exchange(&fake, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
        assert!(answer.ends_with(NOT_FOUND), "{answer}");
        assert_eq!(fake.token_requests(), 0);
    }

    #[tokio::test]
    async fn keep_alive_serves_pipelined_requests_until_connection_close() {
        let fake = fake().await;
        let request = "GET /api/now/table/incident HTTP/1.1\r\n\r\n\
            GET /api/now/table/incident HTTP/1.1\r\nConnection: close\r\n\r\n";
        let answer = raw_exchange(&fake, request.as_bytes()).await;
        assert_eq!(answer.matches("HTTP/1.1 401 ").count(), 2, "{answer}");
        assert!(answer.contains("Connection: close"));
        assert_eq!(fake.table_requests(), 2);
    }

    #[tokio::test]
    async fn authorization_code_with_pkce_issues_a_refresh_token() {
        let fake = code_fake().await;
        let response = authorize(&fake, &authorize_params()).await;
        let params = redirect_params(&response, &format!("{REDIRECT}?"));
        assert_eq!(params["state"], "xyz");
        assert_eq!(params["code"].len(), 86);

        let response = exchange(&fake, &params["code"], REDIRECT, Some(VERIFIER)).await;
        assert_eq!(response.status(), 200);
        let body = json(response).await;
        let refresh = text(&body, "refresh_token");
        assert_eq!(body["scope"], DEFAULT_SCOPE);
        assert!(fake.is_access_token_valid(&text(&body, "access_token")));
        assert!(fake.is_refresh_token_valid(&refresh));
        assert_eq!(
            fake.refresh_token_user(&refresh).as_deref(),
            Some(DEFAULT_USER)
        );
        assert_eq!(fake.refresh_tokens_issued(), vec![refresh]);
        assert_eq!(fake.authorize_requests(), 1);
        assert_eq!((fake.token_requests(), fake.auth_code_exchanges()), (1, 1));
        assert_eq!(fake.pkce_exchanges(), 1);
    }

    #[tokio::test]
    async fn code_carries_user_and_scope_and_redirect_keeps_its_query() {
        let fake = fake().await;
        let redirect_uri = "http://localhost:9000/cb?tenant=a";
        fake.set_redirect_uri(ID, redirect_uri);
        fake.set_consent(Consent::Approve {
            user: "beth.anglin".into(),
        });
        let mut params = authorize_params_with("redirect_uri", Some(redirect_uri));
        params.retain(|(n, _)| *n != "state");
        params.extend([("scope", "incident_read"), ("state", "a b&c")]);
        let response = authorize(&fake, &params).await;
        let location = response.headers()["location"].to_str().expect("ascii");
        assert!(location.ends_with("&state=a%20b%26c"), "{location}");
        let code = redirect_params(&response, &format!("{redirect_uri}&"))["code"].clone();

        let body = json(exchange(&fake, &code, redirect_uri, Some(VERIFIER)).await).await;
        assert_eq!(body["scope"], "incident_read");
        let refresh = text(&body, "refresh_token");
        assert_eq!(
            fake.refresh_token_user(&refresh).as_deref(),
            Some("beth.anglin")
        );
    }

    #[tokio::test]
    async fn wrong_code_verifier_is_the_generic_401() {
        let fake = code_fake().await;
        let code = authorized_code(&fake).await;
        assert_denied(exchange(&fake, &code, REDIRECT, Some("not-the-verifier")).await).await;
        let missing = authorized_code(&fake).await;
        assert_denied(exchange(&fake, &missing, REDIRECT, None).await).await;
        assert_eq!((fake.tokens_issued(), fake.auth_code_exchanges()), (0, 0));
    }

    #[tokio::test]
    async fn a_code_is_single_use() {
        let fake = code_fake().await;
        let code = authorized_code(&fake).await;
        assert_eq!(
            exchange(&fake, &code, REDIRECT, Some(VERIFIER))
                .await
                .status(),
            200
        );
        assert_denied(exchange(&fake, &code, REDIRECT, Some(VERIFIER)).await).await;
        assert_denied(exchange(&fake, "never-issued", REDIRECT, Some(VERIFIER)).await).await;
        assert_eq!((fake.tokens_issued(), fake.auth_code_exchanges()), (1, 1));
    }

    #[tokio::test]
    async fn exchange_needs_the_redirect_uri_of_the_authorize_request() {
        let fake = code_fake().await;
        let code = authorized_code(&fake).await;
        let other = "http://127.0.0.1:8400/other";
        assert_denied(exchange(&fake, &code, other, Some(VERIFIER)).await).await;
        assert_eq!(fake.tokens_issued(), 0);
    }

    #[tokio::test]
    async fn a_code_is_bound_to_its_client() {
        let fake = code_fake().await;
        fake.add_client("other", "x");
        let code = authorized_code(&fake).await;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", "other"),
            ("client_secret", "x"),
        ];
        assert_denied(post(&fake, TOKEN, &form).await).await;
        assert_eq!(fake.tokens_issued(), 0);
    }

    #[tokio::test]
    async fn pkce_is_optional_but_only_s256_is_accepted() {
        let fake = code_fake().await;
        let plain = [
            ("code_challenge", VERIFIER),
            ("code_challenge_method", "plain"),
        ];
        let mut params = authorize_params_with("code_challenge_method", None);
        params.retain(|(n, _)| *n != "code_challenge");
        let response = authorize(&fake, &[&params[..], &plain[..]].concat()).await;
        let error = redirect_params(&response, &format!("{REDIRECT}?"));
        assert_eq!(
            (&error["error"][..], &error["state"][..]),
            ("invalid_request", "xyz")
        );
        assert!(!error.contains_key("code"));

        let no_pkce = authorize(&fake, &params).await;
        let code = redirect_params(&no_pkce, &format!("{REDIRECT}?"))["code"].clone();
        assert_eq!(exchange(&fake, &code, REDIRECT, None).await.status(), 200);
        let no_pkce = authorize(&fake, &params).await;
        let code = redirect_params(&no_pkce, &format!("{REDIRECT}?"))["code"].clone();
        assert_denied(exchange(&fake, &code, REDIRECT, Some(VERIFIER)).await).await;
        assert_eq!(fake.auth_code_exchanges(), 1);
        assert_eq!(fake.pkce_exchanges(), 0);
    }

    #[tokio::test]
    async fn unregistered_redirect_uri_gets_an_html_page_and_no_redirect() {
        let fake = code_fake().await;
        fake.add_client("unregistered", "x");
        let cases = [
            ("redirect_uri", Some("http://evil.example/callback")),
            ("redirect_uri", Some("http://127.0.0.1:8400/callback/")),
            ("redirect_uri", None),
        ];
        for (name, value) in cases {
            let response = authorize(&fake, &authorize_params_with(name, value)).await;
            assert_error_page(response, "Invalid redirect_uri").await;
        }
        let unregistered = authorize_params_with("client_id", Some("unregistered"));
        assert_error_page(
            authorize(&fake, &unregistered).await,
            "Invalid redirect_uri",
        )
        .await;
        let unknown = authorize_params_with("client_id", Some("nobody"));
        assert_error_page(authorize(&fake, &unknown).await, "Invalid client_id").await;
        assert_eq!(fake.authorize_requests(), 5);
    }

    #[tokio::test]
    async fn missing_state_or_another_response_type_gets_an_html_page() {
        let fake = code_fake().await;
        for state in [None, Some("")] {
            let response = authorize(&fake, &authorize_params_with("state", state)).await;
            assert_error_page(response, "Missing state parameter").await;
        }
        let token = authorize_params_with("response_type", Some("token"));
        let response = authorize(&fake, &token).await;
        assert_error_page(response, "Unsupported response_type").await;
    }

    #[tokio::test]
    async fn denied_consent_redirects_with_access_denied() {
        let fake = code_fake().await;
        fake.set_consent(Consent::Deny);
        let response = authorize(&fake, &authorize_params()).await;
        let params = redirect_params(&response, &format!("{REDIRECT}?"));
        assert_eq!(params["error"], "access_denied");
        assert_eq!(params["state"], "xyz");
        assert!(!params["error_description"].is_empty());
        assert!(!params.contains_key("code"));
    }

    #[tokio::test]
    async fn state_override_replaces_the_returned_state() {
        let fake = code_fake().await;
        fake.set_state_override(Some("forged".into()));
        let response = authorize(&fake, &authorize_params()).await;
        let params = redirect_params(&response, &format!("{REDIRECT}?"));
        assert_eq!(params["state"], "forged");
        assert!(params.contains_key("code"));

        fake.set_state_override(None);
        let response = authorize(&fake, &authorize_params()).await;
        assert_eq!(
            redirect_params(&response, &format!("{REDIRECT}?"))["state"],
            "xyz"
        );
    }

    #[tokio::test]
    async fn rotation_keeps_the_parent_valid_until_a_successor_is_used() {
        let fake = code_fake().await;
        fake.set_rotate_refresh_tokens(true);
        let r0 = refresh_token(&fake).await;
        let r1 = text(&json(refresh(&fake, &r0).await).await, "refresh_token");
        assert_ne!(r1, r0);
        assert!(fake.is_refresh_token_valid(&r0) && fake.is_refresh_token_valid(&r1));

        // The answer carrying r1 was lost, so the client retries with r0.
        let r1b = text(&json(refresh(&fake, &r0).await).await, "refresh_token");
        for token in [&r0, &r1, &r1b] {
            assert!(fake.is_refresh_token_valid(token));
        }
        assert!(fake.superseded_refresh_tokens().is_empty());

        let r2 = text(&json(refresh(&fake, &r1b).await).await, "refresh_token");
        assert_eq!(
            fake.superseded_refresh_tokens(),
            vec![r0.clone(), r1.clone()]
        );
        assert!(!fake.is_refresh_token_valid(&r0) && !fake.is_refresh_token_valid(&r1));
        assert!(fake.is_refresh_token_valid(&r1b) && fake.is_refresh_token_valid(&r2));
        assert_eq!(fake.refresh_token_user(&r2).as_deref(), Some(DEFAULT_USER));
        assert_denied(refresh(&fake, &r0).await).await;
        assert_denied(refresh(&fake, &r1).await).await;
        assert_eq!(fake.refresh_tokens_issued(), vec![r0, r1, r1b, r2]);
    }

    #[tokio::test]
    async fn revoke_refresh_tokens_denies_the_next_refresh() {
        let fake = code_fake().await;
        let first = refresh_token(&fake).await;
        let second = refresh_token(&fake).await;
        let access = fake.issued_access_tokens();
        fake.revoke_refresh_tokens();
        assert!(!fake.is_refresh_token_valid(&first) && !fake.is_refresh_token_valid(&second));
        assert_denied(refresh(&fake, &first).await).await;
        assert!(access.iter().all(|token| fake.is_access_token_valid(token)));

        let fresh = refresh_token(&fake).await;
        assert_eq!(refresh(&fake, &fresh).await.status(), 200);
    }

    #[tokio::test]
    async fn issue_then_delay_rotates_before_answering() {
        let fake = code_fake().await;
        fake.set_rotate_refresh_tokens(true);
        let r0 = refresh_token(&fake).await;
        fake.push_fault(Fault::IssueThenDelay(Duration::from_secs(60)));
        let url = format!("{}{TOKEN}", fake.url());
        let pending = tokio::spawn(http().post(url).form(&refresh_form(&r0)).send());
        let rotated = async {
            while fake.refresh_tokens_issued().len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), rotated)
            .await
            .expect("rotated while the answer is held back");
        assert!(!pending.is_finished());
        pending.abort();

        let r1 = fake.refresh_tokens_issued()[1].clone();
        assert!(fake.is_refresh_token_valid(&r0) && fake.is_refresh_token_valid(&r1));
        assert_eq!((fake.token_requests(), fake.tokens_issued()), (2, 2));
        assert_eq!(refresh(&fake, &r0).await.status(), 200);
    }

    const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
    const SUBJECT: &str = "svc.sync";

    fn now_secs() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn ec_key() -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let fixed = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        ring::signature::EcdsaKeyPair::generate_pkcs8(fixed, &rng)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn good_claims() -> Value {
        let now = now_secs();
        serde_json::json!({
            "iss": ID, "sub": SUBJECT, "aud": ID, "iat": now, "exp": now + 300,
            "jti": random_token(),
        })
    }

    fn sign_es256(pkcs8: &[u8], claims: &Value) -> String {
        let rng = ring::rand::SystemRandom::new();
        let fixed = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(fixed, pkcs8, &rng).unwrap();
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = key.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    async fn jwt_fake() -> (FakeInstance, Vec<u8>) {
        let fake = fake().await;
        fake.add_user(SUBJECT, "unused-password");
        let key = ec_key();
        fake.add_jwt_key(ID, &key);
        (fake, key)
    }

    async fn exchange_jwt(fake: &FakeInstance, assertion: &str, secret: &str) -> reqwest::Response {
        let form = [
            ("grant_type", JWT_GRANT),
            ("assertion", assertion),
            ("client_id", ID),
            ("client_secret", secret),
        ];
        post(fake, TOKEN, &form).await
    }

    #[tokio::test]
    async fn jwt_bearer_issues_a_token_once_per_assertion() {
        let (fake, key) = jwt_fake().await;
        let assertion = sign_es256(&key, &good_claims());
        let response = exchange_jwt(&fake, &assertion, SECRET).await;
        assert_eq!(response.status(), 200);
        let body = json(response).await;
        assert!(body.get("refresh_token").is_none());
        assert_eq!(
            table(&fake, &text(&body, "access_token")).await.status(),
            200
        );
        // The same assertion again is a replay.
        assert_denied(exchange_jwt(&fake, &assertion, SECRET).await).await;
        assert_eq!(fake.jwt_grants(), 1);
    }

    #[tokio::test]
    async fn jwt_bearer_refuses_every_bad_assertion_with_the_generic_401() {
        let (fake, key) = jwt_fake().await;
        let now = now_secs();
        let changes: [(&str, Value); 8] = [
            ("aud", "another-client".into()),
            ("iss", "another-client".into()),
            ("exp", (now - 1).into()),
            ("exp", (now + 2 * 3600).into()),
            ("iat", (now + 300).into()),
            ("sub", "nobody".into()),
            ("jti", Value::Null),
            ("exp", Value::Null),
        ];
        for (claim, value) in changes {
            let mut claims = good_claims();
            claims[claim] = value;
            let response = exchange_jwt(&fake, &sign_es256(&key, &claims), SECRET).await;
            assert_eq!(response.status(), 401, "{claim}");
            assert_eq!(response.text().await.unwrap(), ACCESS_DENIED);
        }
        // Signed by a key the Verifier Map does not hold.
        assert_denied(exchange_jwt(&fake, &sign_es256(&ec_key(), &good_claims()), SECRET).await)
            .await;
        // Claims changed after signing.
        let signed = sign_es256(&key, &good_claims());
        let mut parts: Vec<String> = signed.split('.').map(str::to_owned).collect();
        let mut forged = good_claims();
        forged["sub"] = DEFAULT_USER.into();
        parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
        assert_denied(exchange_jwt(&fake, &parts.join("."), SECRET).await).await;
        // A valid assertion does not replace the client's own authentication.
        assert_denied(exchange_jwt(&fake, &sign_es256(&key, &good_claims()), "wrong").await).await;
        assert_denied(exchange_jwt(&fake, "not.a.jwt", SECRET).await).await;
        assert_eq!(fake.jwt_grants(), 0);
        assert_eq!(fake.tokens_issued(), 0);
    }

    /// The test-only RSA key in `tests/fixtures`, as PKCS#8 DER.
    fn fixture_rsa_key() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/test-only-jwt-rsa-key.pem"
        );
        let pem = std::fs::read_to_string(path).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(body).unwrap()
    }

    #[tokio::test]
    async fn snctld_rs256_assertions_verify() {
        let fake = fake().await;
        fake.add_user(SUBJECT, "unused-password");
        let key = fixture_rsa_key();
        fake.add_jwt_key(ID, &key);
        let jwt = snctl_shared::protocol::JwtSettings {
            key: snctl_shared::Secret::new(STANDARD.encode(&key)),
            subject: SUBJECT.into(),
            kid: Some("snctl-test".into()),
        };
        let assertion = snctld::jwt::assertion(&jwt, ID, now_secs()).unwrap();
        assert_eq!(exchange_jwt(&fake, &assertion, SECRET).await.status(), 200);
        let other = snctld::jwt::assertion(&jwt, "another-client", now_secs()).unwrap();
        assert_denied(exchange_jwt(&fake, &other, SECRET).await).await;
        assert_eq!(fake.jwt_grants(), 1);
    }

    #[tokio::test]
    async fn untrusted_authorize_requests_can_be_redirected_or_refused_at_the_exchange() {
        let fake = code_fake().await;
        let other = "http://127.0.0.1:8401/callback";
        let elsewhere = authorize_params_with("redirect_uri", Some(other));
        let unknown = authorize_params_with("client_id", Some("unknown"));

        fake.set_authorize_errors(AuthorizeErrors::Redirect);
        let params = redirect_params(&authorize(&fake, &elsewhere).await, &format!("{other}?"));
        assert_eq!(params["error"], "invalid_request");
        assert_eq!(params["error_description"], "Invalid redirect_uri");
        assert_eq!(params["state"], "xyz");
        let params = redirect_params(&authorize(&fake, &unknown).await, &format!("{REDIRECT}?"));
        assert_eq!(params["error_description"], "Invalid client_id");

        fake.set_authorize_errors(AuthorizeErrors::AtExchange);
        let params = redirect_params(&authorize(&fake, &elsewhere).await, &format!("{other}?"));
        let refused = exchange(&fake, &params["code"], other, Some(VERIFIER)).await;
        assert_eq!(refused.status(), 400);
        let body = json(refused).await;
        assert_eq!(text(&body, "error"), "invalid_request");
        assert_eq!(text(&body, "error_description"), "Invalid redirect_uri");
        assert_error_page(authorize(&fake, &unknown).await, "Invalid client_id").await;
        // The registered Redirect URL still works.
        let code = authorized_code(&fake).await;
        let granted = exchange(&fake, &code, REDIRECT, Some(VERIFIER)).await;
        assert_eq!(granted.status(), 200);
    }

    #[tokio::test]
    async fn current_user_names_the_user_a_token_acts_for() {
        let fake = code_fake().await;
        let code = authorized_code(&fake).await;
        let body = json(exchange(&fake, &code, REDIRECT, Some(VERIFIER)).await).await;
        let token = text(&body, "access_token");
        let ask = |token: String| {
            let url = format!("{}{CURRENT_USER_PATH}", fake.url());
            async move {
                http()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("send")
            }
        };
        let body = json(ask(token.clone()).await).await;
        assert_eq!(body["result"]["user_name"], DEFAULT_USER);
        assert_eq!(ask("made-up".into()).await.status(), 401);
        fake.set_current_user_available(false);
        assert_eq!(ask(token).await.status(), 403);
    }
}
