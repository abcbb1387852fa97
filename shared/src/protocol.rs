//! The messages exchanged over the daemon's socket.
//!
//! A connection starts with the client sending [`Hello`] and the daemon
//! answering [`HelloReply`] with its own version; when the versions differ,
//! the daemon closes the connection after that reply and the client reports
//! [`Error::ProtocolMismatch`]. After that the client sends any
//! number of [`Request`]s, one at a time, each answered by one [`Response`].
//! How each message becomes bytes is the business of [`crate::frame`].
//!
//! Compatibility rules: [`Hello`] and [`HelloReply`] never change shape, so that any two versions can at least tell each other
//! that they disagree. Everything else may change only together with
//! [`PROTOCOL_VERSION`]; new enum variants are appended at the end.
//!
//! Secrets travel only inward (a client secret or a JWT signing key in
//! [`AddRequest`], a
//! password or an authorization code in [`LoginRequest`]); the only secret
//! the daemon ever sends is an access token in [`TokenReply`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// The protocol version spoken by this build. Bumped on any change to the
/// shape of a [`Request`] or [`Response`].
pub const PROTOCOL_VERSION: u32 = 5;

/// First frame of every connection, client to daemon. Frozen forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The client's package version, for the daemon's logs.
    pub client_version: String,
}

/// The daemon's answer to a matching [`Hello`]. Frozen forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The daemon's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The daemon's package version.
    pub daemon_version: String,
}

/// One request from a client. The daemon answers each with one [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// An access token for an authentication.
    Token(TokenRequest),
    /// Every authentication the caller may see.
    List,
    /// One authentication, without secrets.
    Show(NameRequest),
    /// Register a new authentication; it is saved only once it has worked.
    Add(AddRequest),
    /// Change an authentication's OAuth client or instance.
    Update(UpdateRequest),
    /// Revoke (unless asked not to) and delete an authentication.
    Remove(RemoveRequest),
    /// Get a new access token now.
    Refresh(NameRequest),
    /// How the daemon is doing.
    Status,
    /// First half of an authorization-code login: the daemon makes the
    /// PKCE verifier and `state` and answers with the URL to open.
    StartLogin(StartLoginRequest),
    /// Logs in: a password, or the code that ends a [`Request::StartLogin`].
    Login(LoginRequest),
    /// Probes the instance to tell why an authentication fails.
    Doctor(NameRequest),
    /// One chunk of an online copy of the database (admins only).
    Backup(BackupRequest),
    /// The daemon's metrics as OpenMetrics text: the daemon's own, and
    /// those of each authentication the caller may read.
    Metrics,
}

impl Request {
    /// A short name of the request kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Token(_) => "token",
            Request::List => "list",
            Request::Show(_) => "show",
            Request::Add(_) => "add",
            Request::Update(_) => "update",
            Request::Remove(_) => "remove",
            Request::Refresh(_) => "refresh",
            Request::Status => "status",
            Request::StartLogin(_) => "start-login",
            Request::Login(_) => "login",
            Request::Doctor(_) => "doctor",
            Request::Backup(_) => "backup",
            Request::Metrics => "metrics",
        }
    }
}

/// The daemon's answer to one [`Request`].
pub type Response = Result<Reply, Error>;

/// A successful answer, one variant per request kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to [`Request::Token`].
    Token(TokenReply),
    /// Answer to [`Request::List`].
    List(Vec<AuthSummary>),
    /// Answer to [`Request::Show`], [`Request::Add`], [`Request::Update`],
    /// [`Request::Refresh`] and [`Request::Login`]: the authentication as it
    /// now is. Boxed: a token reply, the common one, need not be as large
    /// (the encoding is the same).
    Auth(Box<AuthSummary>),
    /// Answer to [`Request::Remove`].
    Removed(RemoveReply),
    /// Answer to [`Request::Status`].
    Status(DaemonStatus),
    /// Answer to [`Request::StartLogin`].
    LoginChallenge(LoginChallenge),
    /// Answer to [`Request::Doctor`].
    Diagnosis(Diagnosis),
    /// Answer to [`Request::Backup`].
    Backup(BackupChunk),
    /// Answer to [`Request::Metrics`]: OpenMetrics text, ending with
    /// `# EOF`. Never a secret: names, states, times and counts.
    Metrics(String),
}

/// Asks for an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// The authentication's name.
    pub name: String,
    /// How long the token must stay valid; the daemon refreshes first when
    /// less is left.
    pub min_valid: MinValid,
}

/// How long a requested token must stay valid, in seconds.
///
/// An authentication's tokens may live any time the instance's registry
/// record says, a few seconds included, so a default minimum must bend to
/// the lifetime and only a caller's own demand may be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MinValid {
    /// The caller's own minimum (`snctl token --min-valid`): when the
    /// tokens do not live this long, the request is refused as invalid.
    Required(u32),
    /// A default: the daemon asks for at most a quarter of the tokens'
    /// lifetime (what is left when it refreshes ahead on its own), so a
    /// short lifetime never makes the request fail.
    Default(u32),
}

/// Names one authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRequest {
    /// The authentication's name.
    pub name: String,
}

/// An access token and what a caller needs to use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReply {
    /// The bearer token.
    pub access_token: Secret,
    /// Seconds since the Unix epoch after which the token is no longer valid.
    pub expires_at: i64,
    /// The instance the token is for, e.g. `https://acme.service-now.com`.
    pub instance_url: String,
}

/// The token exchange with its strings borrowed, for the path every warm
/// token takes: the daemon reads a token request in place from its frame
/// and writes the answer straight from where the token is kept, and the
/// client library writes its request without copying the name and reads
/// the answer in place, copying out only the two strings it returns. Each type
/// encodes exactly as its owned twin does: [`Request::Token`] and
/// [`Reply::Token`] are the first variants of their enums (index 0), and
/// `Ok` is the first of a `Result`'s. Other requests do not decode as a
/// [`RequestRef`]: the daemon then reads them as a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestRef<'a> {
    /// [`Request::Token`].
    #[serde(borrow)]
    Token(TokenRequestRef<'a>),
}

/// [`TokenRequest`], its name borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequestRef<'a> {
    /// The authentication's name.
    pub name: &'a str,
    /// How long the token must stay valid.
    pub min_valid: MinValid,
}

/// `Ok(Reply::Token(…))`, the answer to [`RequestRef::Token`], with
/// borrowed strings (see [`RequestRef`]). Any other answer does not decode
/// as one: the client library then reads it as a [`Response`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum TokenResponseRef<'a> {
    /// `Result::Ok`.
    #[serde(borrow)]
    Ok(ReplyRef<'a>),
}

/// [`Reply::Token`], borrowed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum ReplyRef<'a> {
    /// [`Reply::Token`].
    #[serde(borrow)]
    Token(TokenReplyRef<'a>),
}

/// [`TokenReply`], its strings borrowed.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct TokenReplyRef<'a> {
    /// The bearer token.
    pub access_token: &'a str,
    /// Seconds since the Unix epoch after which the token is no longer valid.
    pub expires_at: i64,
    /// The instance the token is for.
    pub instance_url: &'a str,
}

impl TokenReplyRef<'_> {
    /// The owned reply: the two strings copied.
    pub fn to_reply(self) -> TokenReply {
        TokenReply {
            access_token: Secret::new(self.access_token.to_string()),
            expires_at: self.expires_at,
            instance_url: self.instance_url.to_string(),
        }
    }
}

impl fmt::Debug for TokenReplyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReplyRef")
            .field("access_token", &format_args!("[redacted]"))
            .field("expires_at", &self.expires_at)
            .field("instance_url", &self.instance_url)
            .finish()
    }
}

impl<'a> TokenResponseRef<'a> {
    /// The answer carrying `token`.
    pub fn token(token: TokenReplyRef<'a>) -> Self {
        TokenResponseRef::Ok(ReplyRef::Token(token))
    }
}

/// How the OAuth client proves who it is at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` as form fields (ServiceNow's default).
    Form,
    /// HTTP Basic authentication.
    Basic,
}

impl ClientAuth {
    /// The spelling used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Form => "form",
            ClientAuth::Basic => "basic",
        }
    }
}

impl ClientAuth {
    /// Every client authentication, in declaration order.
    pub const ALL: [ClientAuth; 2] = [ClientAuth::Form, ClientAuth::Basic];
}

/// Reads [`ClientAuth::as_str`]'s spelling, the one the database stores.
impl std::str::FromStr for ClientAuth {
    type Err = UnknownSpelling;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnknownSpelling::find("client authentication", s, Self::ALL, Self::as_str)
    }
}

/// The OAuth grant an authentication uses to get tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grant {
    /// `client_credentials`: unattended, no refresh token.
    ClientCredentials,
    /// `password`: a user's name and password, used once for a refresh
    /// token and never stored. Deprecated by RFC 9700.
    Password,
    /// `authorization_code` with PKCE: a person consents in a browser.
    AuthorizationCode,
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer`: unattended, the daemon
    /// signs a short assertion with a private key for each token; no refresh
    /// token.
    JwtBearer,
}

impl Grant {
    /// The spelling used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client-credentials",
            Grant::Password => "password",
            Grant::AuthorizationCode => "authorization-code",
            Grant::JwtBearer => "jwt-bearer",
        }
    }

    /// Whether a person logs in (and must log in again when the refresh
    /// token dies).
    pub fn needs_person(self) -> bool {
        !matches!(self, Grant::ClientCredentials | Grant::JwtBearer)
    }
}

impl Grant {
    /// Every grant, in declaration order.
    pub const ALL: [Grant; 4] = [
        Grant::ClientCredentials,
        Grant::Password,
        Grant::AuthorizationCode,
        Grant::JwtBearer,
    ];
}

/// Reads [`Grant::as_str`]'s spelling, the one the database stores.
impl std::str::FromStr for Grant {
    type Err = UnknownSpelling;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnknownSpelling::find("grant", s, Self::ALL, Self::as_str)
    }
}

/// A spelling that names none of an enum's values (see the `FromStr` of
/// [`Grant`], [`ClientAuth`] and [`AuthState`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownSpelling {
    /// What was being read, in words: `grant`, `client authentication`,
    /// `state`.
    pub what: &'static str,
    /// The spelling that matched nothing.
    pub value: String,
}

impl UnknownSpelling {
    /// The one of `all` that `spell` spells as `s`.
    fn find<T: Copy, const N: usize>(
        what: &'static str,
        s: &str,
        all: [T; N],
        spell: fn(T) -> &'static str,
    ) -> Result<T, UnknownSpelling> {
        all.into_iter()
            .find(|&value| spell(value) == s)
            .ok_or_else(|| UnknownSpelling {
                what,
                value: s.to_string(),
            })
    }
}

/// A user's name and password for the `password` grant. Used once, never
/// stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLogin {
    /// The ServiceNow user name.
    pub username: String,
    /// The user's password.
    pub password: Secret,
}

/// Registers a new authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRequest {
    /// The name every later command uses.
    pub name: String,
    /// The instance URL, `https://NAME.service-now.com`.
    pub instance_url: String,
    /// The grant used to get tokens.
    pub grant: Grant,
    /// Client ID from the Application Registry record.
    pub client_id: String,
    /// Client secret from the Application Registry record.
    pub client_secret: Secret,
    /// How the client authenticates at the token endpoint.
    pub client_auth: ClientAuth,
    /// OAuth scope to request, if any.
    pub scope: Option<String>,
    /// The user for the `password` grant.
    pub user: Option<UserLogin>,
    /// Port of the loopback Redirect URL for the `authorization-code` grant;
    /// `None` takes the daemon's default.
    pub redirect_port: Option<u16>,
    /// How long the instance's refresh tokens live (seconds); `None` takes
    /// ServiceNow's default of 100 days.
    pub refresh_lifespan_secs: Option<u64>,
    /// Who may get its tokens; empty: anyone who can open the socket.
    pub readers: Readers,
    /// The signing key and subject for the `jwt-bearer` grant.
    pub jwt: Option<JwtSettings>,
    /// Serve it on a proxy socket (`DIR/NAME.sock`) as well.
    pub proxy: bool,
}

/// What the `jwt-bearer` grant signs its assertions with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtSettings {
    /// The private key: PKCS#8 DER in standard base64 (an RSA key signs
    /// RS256, a P-256 EC key ES256).
    pub key: Secret,
    /// The ServiceNow user the tokens act as (the assertion's `sub`).
    pub subject: String,
    /// The key id (`kid` header) the JWT Verifier Map expects, if any.
    pub kid: Option<String>,
}

/// Who may get an authentication's tokens besides admins: users, groups
/// (a caller's supplementary groups count) and systemd units. All empty
/// means anyone who can open the socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readers {
    /// User names (or numeric uids).
    pub users: Vec<String>,
    /// Group names (or numeric gids).
    pub groups: Vec<String>,
    /// systemd unit names, e.g. `sync.service`.
    pub units: Vec<String>,
}

impl Readers {
    /// Whether no rule is set (anyone who can open the socket may read).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty() && self.units.is_empty()
    }
}

/// Starts an authorization-code login, for a new authentication (`add`) or
/// an existing one (`name` alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartLoginRequest {
    /// The authentication.
    pub name: String,
    /// The settings of a new authentication; `None` logs in again.
    pub add: Option<AddRequest>,
    /// A new client secret for an existing authentication, saved once the
    /// login with it works (the secret was rotated and the old login died).
    pub client_secret: Option<Secret>,
}

/// Where to send the person who logs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginChallenge {
    /// The instance's authorize URL with every parameter set.
    pub authorize_url: String,
    /// The Redirect URL registered on the Application Registry record,
    /// `http://127.0.0.1:PORT/callback`.
    pub redirect_uri: String,
    /// The `state` the redirect must carry back.
    pub state: String,
    /// When the daemon forgets this login (Unix seconds).
    pub expires_at: i64,
}

/// Logs in to an authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The authentication (for a started login, the name it was started with).
    pub name: String,
    /// What proves the person's consent.
    pub proof: LoginProof,
    /// A new client secret (`password` grant), saved once the login with it
    /// works. A started browser login uses the one it was started with.
    pub client_secret: Option<Secret>,
}

/// What a login hands the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginProof {
    /// The user's name and password (`password` grant).
    Password(UserLogin),
    /// The code and state from the redirect of a started login.
    AuthorizationCode {
        /// The `code` parameter of the redirect.
        code: Secret,
        /// The `state` parameter of the redirect.
        state: String,
    },
}

/// Changes an authentication. Fields left `None` keep their value; the new
/// settings must get a token before they replace the old ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// The authentication to change.
    pub name: String,
    /// A new instance URL.
    pub instance_url: Option<String>,
    /// A new client ID.
    pub client_id: Option<String>,
    /// A new client secret.
    pub client_secret: Option<Secret>,
    /// A new client authentication method.
    pub client_auth: Option<ClientAuth>,
    /// A new scope; `Some("")` removes the scope.
    pub scope: Option<String>,
    /// A new Redirect URL port (authorization-code grant).
    pub redirect_port: Option<u16>,
    /// A new refresh-token lifespan in seconds, to match the registry record.
    pub refresh_lifespan_secs: Option<u64>,
    /// New readers, replacing the old list (empty: anyone with the socket).
    pub readers: Option<Readers>,
    /// Turn its proxy socket on or off, at once.
    pub proxy: Option<bool>,
}

/// Deletes an authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveRequest {
    /// The authentication to delete.
    pub name: String,
    /// Skip revoking the tokens at the instance.
    pub keep_upstream: bool,
}

/// What happened upstream when an authentication was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveReply {
    /// How many tokens the instance accepted to revoke.
    pub revoked: u32,
    /// Why revoking failed, when it did (the authentication is deleted anyway).
    pub revoke_error: Option<String>,
}

/// The health of an authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthState {
    /// A valid token is in hand and refreshes succeed.
    Ok,
    /// The last refresh failed for a reason that may pass (instance down,
    /// rate limit, network); the daemon retries with backoff.
    Failing,
    /// The instance refused the credentials; the daemon does not retry until
    /// an admin runs `snctl update` or `snctl refresh`.
    Rejected,
    /// The instance refused the refresh token (or there is none left): a
    /// person must run `snctl login`.
    NeedsLogin,
}

impl AuthState {
    /// The spelling used in `snctl list` and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthState::Ok => "ok",
            AuthState::Failing => "failing",
            AuthState::Rejected => "rejected",
            AuthState::NeedsLogin => "needs-login",
        }
    }
}

impl AuthState {
    /// Every state, in declaration order.
    pub const ALL: [AuthState; 4] = [
        AuthState::Ok,
        AuthState::Failing,
        AuthState::Rejected,
        AuthState::NeedsLogin,
    ];
}

/// Reads [`AuthState::as_str`]'s spelling, the one the database stores.
impl std::str::FromStr for AuthState {
    type Err = UnknownSpelling;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnknownSpelling::find("state", s, Self::ALL, Self::as_str)
    }
}

/// One authentication as admins see it: never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSummary {
    /// The authentication's name.
    pub name: String,
    /// The instance URL.
    pub instance_url: String,
    /// The grant.
    pub grant: Grant,
    /// The OAuth client ID (not a secret).
    pub client_id: String,
    /// How the client authenticates.
    pub client_auth: ClientAuth,
    /// The requested scope.
    pub scope: Option<String>,
    /// Health.
    pub state: AuthState,
    /// The last error, when the state is not `Ok`.
    pub last_error: Option<String>,
    /// When the current access token expires (Unix seconds).
    pub access_expires_at: Option<i64>,
    /// When the last successful refresh happened (Unix seconds).
    pub last_refresh_at: Option<i64>,
    /// When the daemon plans its next refresh (Unix seconds).
    pub next_refresh_at: Option<i64>,
    /// When the authentication was added (Unix seconds).
    pub created_at: i64,
    /// The login behind a `password` or `authorization-code` grant.
    pub login: Option<LoginSummary>,
    /// Who may get its tokens besides admins (all empty: anyone).
    pub readers: Readers,
    /// Whether its own setting turns its proxy on (`snctl add --proxy`,
    /// `snctl update NAME --proxy on`).
    pub proxy: bool,
    /// Its proxy socket, when it has one (by its setting or the daemon's
    /// configuration).
    pub proxy_socket: Option<ProxySocket>,
}

/// An authentication's proxy socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySocket {
    /// Where it is (`DIR/NAME.sock`).
    pub path: String,
    /// Why it does not serve, when it does not (it could not be bound).
    pub error: Option<String>,
}

/// The person's login behind an authentication, and how long it lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSummary {
    /// The user who logged in, when known: the one given (`password`
    /// grant), or the one the instance named after the login
    /// (`authorization-code`).
    pub username: Option<String>,
    /// When the current refresh token was issued (Unix seconds).
    pub refresh_issued_at: Option<i64>,
    /// When the current refresh token dies and a person must log in again
    /// (Unix seconds), from its issue time and the recorded lifespan.
    pub refresh_expires_at: Option<i64>,
    /// The refresh-token lifespan recorded for this authentication.
    pub refresh_lifespan_secs: u64,
    /// The Redirect URL to register (`authorization-code` grant).
    pub redirect_uri: Option<String>,
}

/// Answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The daemon's package version.
    pub version: String,
    /// The daemon's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The socket path the daemon serves.
    pub socket: String,
    /// The state directory (database and key).
    pub state_dir: String,
    /// How many authentications are stored.
    pub authentications: u32,
    /// How many are failing or rejected.
    pub unhealthy: u32,
    /// The next planned refresh: authentication name and Unix time.
    pub next_refresh: Option<(String, i64)>,
    /// Connections open right now, this one included.
    pub connections: u32,
    /// How many authentications need a new login.
    pub needs_login: u32,
    /// The nearest refresh-token deadline: authentication name and Unix time.
    pub next_login_deadline: Option<(String, i64)>,
}

/// What `snctl doctor` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The authentication.
    pub name: String,
    /// Each probe, in the order run.
    pub checks: Vec<Check>,
    /// Whether the authentication gets tokens now.
    pub works: bool,
    /// The likely cause, when it does not.
    pub cause: Option<String>,
    /// What to do about it.
    pub fix: Option<String>,
    /// Whether the fix is a new login (`snctl login`).
    pub needs_login: bool,
}

/// One probe of `snctl doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked, e.g. "instance reachable".
    pub what: String,
    /// How it went.
    pub outcome: CheckOutcome,
    /// What was seen.
    pub detail: String,
}

/// The outcome of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckOutcome {
    /// As it should be.
    Pass,
    /// Found the problem (or one of them).
    Fail,
    /// The instance's answer does not tell.
    Unknown,
    /// Not run: does not apply, or an earlier probe failed.
    Skipped,
}

/// Asks for a chunk of a backup. The first request (`snapshot: None`,
/// offset 0) makes the daemon take a consistent copy of the database (SQLite
/// online backup) and keep it under an id until its last chunk is read or
/// it expires; the following ones name that id and the next offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    /// The snapshot to read on; `None` takes a new one.
    pub snapshot: Option<u64>,
    /// Where in the snapshot the chunk starts.
    pub offset: u64,
}

/// A chunk of a backup: ciphertext only, never the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupChunk {
    /// The snapshot's id, for the next request.
    pub snapshot: u64,
    /// The snapshot's size in bytes.
    pub total: u64,
    /// Where this chunk starts.
    pub offset: u64,
    /// The chunk's bytes (at most [`BACKUP_CHUNK`]).
    pub bytes: Vec<u8>,
    /// Where the master key that opens the backup is (it is not in it).
    pub key: String,
}

/// Largest chunk of a [`BackupChunk`], well under the response frame limit.
pub const BACKUP_CHUNK: usize = 4 * 1024 * 1024;

/// Coarse kind of an [`Error`], for callers that branch on it. Each maps to
/// one of the CLI's documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Exit 1.
    Other,
    /// Exit 2.
    Usage,
    /// Exit 3.
    Unreachable,
    /// Exit 4.
    NotFound,
    /// Exit 5.
    NeedsLogin,
    /// Exit 6.
    Forbidden,
    /// Exit 7.
    Upstream,
}

impl ErrorKind {
    /// The `snctl` exit code for this kind (README.md, "Commands").
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Unreachable => 3,
            ErrorKind::NotFound => 4,
            ErrorKind::NeedsLogin => 5,
            ErrorKind::Forbidden => 6,
            ErrorKind::Upstream => 7,
        }
    }
}

/// What went wrong at the instance, as far as it can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    /// ServiceNow's generic 401 `access_denied`: credentials, grant setting
    /// or registry record. Not retried automatically.
    AccessDenied,
    /// 429 Too Many Requests.
    RateLimited,
    /// 5xx.
    ServerError,
    /// Another unexpected HTTP status.
    HttpStatus,
    /// The instance answered with an HTML page (often: hibernating).
    NotJson,
    /// The body was not the JSON a token endpoint returns.
    BadResponse,
    /// No answer in time.
    Timeout,
    /// The connection failed or was reset.
    Connection,
    /// TLS handshake or certificate failure.
    Tls,
}

/// A failure at the instance, with the daemon's explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamError {
    /// What kind of failure.
    pub kind: UpstreamKind,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// One line: what happened and what to do.
    pub message: String,
    /// When the daemon will try again (Unix seconds), if it will.
    pub retry_at: Option<i64>,
}

/// Every way a request can fail. Crosses the socket as is; callers branch on
/// the variant (or [`Error::kind`]), never on the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// No authentication has this name.
    #[error(
        "no authentication named {name:?}: see `snctl list`, or add it with `snctl add {name}`"
    )]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// `add` of a name that is taken.
    #[error("an authentication named {name:?} already exists: use `snctl update {name}` to change it, or `snctl remove {name}` first")]
    AlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// A person must log in again.
    #[error("authentication {name} needs a new login: run `snctl login {name}`")]
    NeedsLogin {
        /// The authentication.
        name: String,
    },
    /// The caller may not do this.
    #[error("forbidden: {reason}")]
    Forbidden {
        /// Which rule refused.
        reason: String,
    },
    /// The instance failed or refused.
    #[error("{}", .0.message)]
    Upstream(UpstreamError),
    /// The request itself is wrong (bad URL, bad name, impossible option).
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The daemon cannot serve right now (shutting down, too busy).
    #[error("the daemon cannot serve this request now: {message}")]
    Unavailable {
        /// Why.
        message: String,
    },
    /// Client and daemon speak different protocol versions.
    #[error("snctl speaks protocol {client} but snctld speaks {daemon}: snctl and snctld must come from the same release (README, \"Versions\"); install matching versions and restart snctld")]
    ProtocolMismatch {
        /// The daemon's version.
        daemon: u32,
        /// The client's version.
        client: u32,
    },
    /// A failure inside the daemon; its log has the detail.
    #[error("internal daemon error: {message} (see the snctld log)")]
    Internal {
        /// A short description.
        message: String,
    },
}

impl Error {
    /// The coarse kind, which fixes the exit code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::NeedsLogin { .. } => ErrorKind::NeedsLogin,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::Upstream(_) => ErrorKind::Upstream,
            Error::InvalidRequest { .. } => ErrorKind::Usage,
            Error::Unavailable { .. } => ErrorKind::Unreachable,
            Error::AlreadyExists { .. }
            | Error::ProtocolMismatch { .. }
            | Error::Internal { .. } => ErrorKind::Other,
        }
    }

    /// Shorthand for [`Error::InvalidRequest`].
    pub fn invalid(message: impl fmt::Display) -> Self {
        Error::InvalidRequest {
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_design() {
        let cases = [
            (Error::NotFound { name: "a".into() }, 4),
            (Error::NeedsLogin { name: "a".into() }, 5),
            (Error::Forbidden { reason: "r".into() }, 6),
            (
                Error::Upstream(UpstreamError {
                    kind: UpstreamKind::AccessDenied,
                    status: Some(401),
                    message: "m".into(),
                    retry_at: None,
                }),
                7,
            ),
            (Error::invalid("bad"), 2),
            (
                Error::Unavailable {
                    message: "m".into(),
                },
                3,
            ),
            (Error::AlreadyExists { name: "a".into() }, 1),
        ];
        for (error, code) in cases {
            assert_eq!(error.kind().exit_code(), code, "{error:?}");
        }
    }

    #[test]
    fn messages_are_one_line_and_say_what_to_do() {
        let e = Error::NeedsLogin {
            name: "prod".into(),
        };
        assert_eq!(
            e.to_string(),
            "authentication prod needs a new login: run `snctl login prod`"
        );
        let e = Error::NotFound {
            name: "prod".into(),
        };
        assert!(e.to_string().contains("snctl add prod"));
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn each_spelling_reads_back_and_an_unknown_one_is_named() {
        fn round_trip<T>(all: &[T], spell: fn(T) -> &'static str)
        where
            T: Copy + PartialEq + fmt::Debug + std::str::FromStr<Err = UnknownSpelling>,
        {
            for &value in all {
                assert_eq!(spell(value).parse::<T>(), Ok(value));
            }
        }
        round_trip(&Grant::ALL, Grant::as_str);
        round_trip(&ClientAuth::ALL, ClientAuth::as_str);
        round_trip(&AuthState::ALL, AuthState::as_str);
        // The spellings the database has always stored.
        let grants: Vec<_> = Grant::ALL.iter().map(|g| g.as_str()).collect();
        assert_eq!(
            grants,
            [
                "client-credentials",
                "password",
                "authorization-code",
                "jwt-bearer"
            ]
        );
        let states: Vec<_> = AuthState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, ["ok", "failing", "rejected", "needs-login"]);
        let auths: Vec<_> = ClientAuth::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(auths, ["form", "basic"]);

        let e = "client_credentials".parse::<Grant>().unwrap_err();
        assert_eq!(e.to_string(), "unknown grant \"client_credentials\"");
        assert_eq!(
            "Basic".parse::<ClientAuth>().unwrap_err().what,
            "client authentication"
        );
        assert_eq!(
            "needs_login".parse::<AuthState>().unwrap_err().value,
            "needs_login"
        );
    }
}
