//! The OAuth client for ServiceNow instances: every request the daemon
//! makes of its own (tokens, revocation, the doctor's probes, who logged
//! in) goes through here; the local proxy (`proxy/`) only forwards its
//! callers' requests, over the same pooled client.
//!
//! oauth2 builds the requests and parses successful token responses; the
//! transport underneath is our own [`AsyncHttpClient`] over one pooled
//! reqwest client, so that every answer ServiceNow gives can be told apart
//! before oauth2 sees it. ServiceNow's failures are not RFC 6749 shaped: a
//! wrong secret, a disabled grant and a missing OAuth Application User all
//! answer 401 `{"error":"server_error","error_description":"access_denied"}`,
//! a hibernating instance answers 200 with an HTML page, and the usual 429s,
//! 5xx and network faults happen. Each becomes a [`Failure`] with an
//! [`UpstreamKind`] and a one-line explanation.

use std::error::Error as _;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicTokenResponse, BasicTokenType};
use oauth2::{
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, ResourceOwnerPassword, ResourceOwnerUsername, Scope, TokenResponse,
    TokenUrl,
};

use serde::Deserialize;

use snctl_shared::protocol::{ClientAuth, UpstreamKind};
use snctl_shared::Secret;

use crate::clock;
pub use crate::instance::normalize_instance_url;
use crate::settings::{debug, optional, Applies, Changes, InvalidSetting};
use crate::store::{Authentication, TokenSet};

/// Token endpoint, relative to the instance URL.
pub const TOKEN_PATH: &str = "/oauth_token.do";
/// Authorize endpoint, relative to the instance URL.
pub const AUTHORIZE_PATH: &str = "/oauth_auth.do";
/// The `grant_type` of the JWT-bearer grant (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Revocation endpoint, relative to the instance URL.
pub const REVOKE_PATH: &str = "/oauth_revoke_token.do";
/// Lifetime assumed when a token response has no `expires_in`
/// (ServiceNow's default access token lifespan).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(1800);
// Bodies larger than this are not a token response; stop reading.
const MAX_BODY: usize = 256 * 1024;

/// HTTP settings shared by every instance.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Extra CA certificates (PEM), for proxies that re-sign HTTPS.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `[http]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    ca_file: Option<PathBuf>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
}

impl HttpConfig {
    /// Reads `[http]` over these settings.
    pub fn apply(&mut self, h: HttpSection) -> Result<(), InvalidSetting> {
        if h.ca_file.is_some() {
            self.ca_file = h.ca_file;
        }
        let seconds = crate::config::seconds;
        if let Some(connect) = seconds("http.connect_timeout_secs", h.connect_timeout_secs)? {
            self.connect_timeout = connect;
        }
        if let Some(request) = seconds("http.request_timeout_secs", h.request_timeout_secs)? {
            self.request_timeout = request;
        }
        Ok(())
    }

    /// What differs in `new`: the client is built when the daemon starts.
    pub fn changes(&self, new: &HttpConfig) -> Changes {
        let next = Applies::NextStart;
        let mut changes = Changes::default();
        changes
            .compare("http.ca_file", next, &self.ca_file, &new.ca_file, optional)
            .compare(
                "http.connect_timeout_secs",
                next,
                &self.connect_timeout,
                &new.connect_timeout,
                debug,
            )
            .compare(
                "http.request_timeout_secs",
                next,
                &self.request_timeout,
                &new.request_timeout,
                debug,
            );
        changes
    }
}

/// What proves the right to a token, one per grant.
pub enum Proof<'a> {
    /// The client's own credentials.
    ClientCredentials,
    /// A refresh token from an earlier login.
    Refresh(&'a Secret),
    /// A user's name and password.
    Password {
        username: &'a str,
        password: &'a Secret,
    },
    /// The code from the browser's redirect, with the PKCE verifier that
    /// goes with its challenge.
    Code {
        code: &'a Secret,
        verifier: &'a Secret,
        redirect_uri: &'a str,
    },
    /// A fresh assertion signed with the authentication's JWT key.
    JwtBearer,
}

/// Which call failed; it decides what a 401 means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ClientCredentials,
    Refresh,
    Password,
    Code,
    Revoke,
    JwtBearer,
}

impl Proof<'_> {
    fn step(&self) -> Step {
        match self {
            Proof::ClientCredentials => Step::ClientCredentials,
            Proof::Refresh(_) => Step::Refresh,
            Proof::Password { .. } => Step::Password,
            Proof::Code { .. } => Step::Code,
            Proof::JwtBearer => Step::JwtBearer,
        }
    }
}

/// What a probe saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub status: u16,
    /// Whether the answer was JSON (a web page is not).
    pub json: bool,
    /// The error fields, the page title, or the size of the body.
    pub detail: String,
}

/// Why the instance did not say which of its users a token acts for.
#[derive(Debug, thiserror::Error)]
pub enum Unnamed {
    /// The question or its answer did not get through.
    #[error("{0}")]
    Unreachable(String),
    #[error("{CURRENT_USER_PATH} answered more than {MAX_BODY} bytes")]
    TooLarge,
    #[error("{CURRENT_USER_PATH} answered HTTP {status} ({detail})")]
    Status { status: u16, detail: String },
    #[error("{CURRENT_USER_PATH} answered no JSON ({0})")]
    NotJson(#[source] serde_json::Error),
    #[error("{CURRENT_USER_PATH} names no user")]
    NoUser,
}

/// ServiceNow's UI API path that says who the bearer token acts for
/// (`{"result":{"user_name":..,"user_sys_id":..}}`). Every session's UI
/// uses it, so it needs no role beyond logging in.
/// What a 5xx from the instance means, in every message that reports one.
pub const UNAVAILABLE: &str = "down, being upgraded or overloaded";

const CURRENT_USER_PATH: &str = "/api/now/ui/user/current_user";
/// How long the question of who logged in may take: the login stands
/// whatever the answer, so it is not worth the whole request timeout.
const CURRENT_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The REST API path `snctl doctor` probes.
const PROBE_API_PATH: &str = "/api/now/table/sys_user?sysparm_limit=1&sysparm_fields=sys_id";

/// The start of an authorization-code login: where to send the person, and
/// what the daemon keeps to finish it.
pub struct Authorize {
    pub url: String,
    pub state: String,
    pub verifier: Secret,
}

/// A failed call to the instance.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: UpstreamKind,
    pub status: Option<u16>,
    /// What was observed, without advice.
    pub detail: String,
    /// The instance asked us to wait this long (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The call that failed.
    pub step: Step,
    /// The connection was made and broke before the answer was complete:
    /// the instance's address is right, whatever else is wrong.
    pub midway: bool,
}

impl Failure {
    fn new(kind: UpstreamKind, status: Option<u16>, detail: impl Into<String>) -> Self {
        Failure {
            kind,
            status,
            detail: detail.into(),
            retry_after: None,
            step: Step::ClientCredentials,
            midway: false,
        }
    }

    fn during(self, step: Step) -> Self {
        Failure { step, ..self }
    }

    /// Whether retrying later may help; a rejected credential never gets
    /// better by itself.
    pub fn is_transient(&self) -> bool {
        self.kind != UpstreamKind::AccessDenied
    }

    /// One line for the admin: what happened at `instance` and what to do.
    pub fn explain(&self, instance: &str) -> String {
        match self.kind {
            UpstreamKind::AccessDenied => match self.step {
                Step::ClientCredentials => format!(
                    "{instance} refused the client credentials (HTTP 401 access_denied): check the client \
                     secret, that the system property glide.oauth.inbound.client.credential.grant_type.enabled \
                     is true, and that the Application Registry record has an OAuth Application User"
                ),
                Step::Refresh => format!(
                    "{instance} refused the refresh token (HTTP 401 access_denied): the login expired or \
                     was revoked, the user is inactive or locked out, or the client secret changed"
                ),
                Step::Password => format!(
                    "{instance} refused the login (HTTP 401 access_denied): check the user name and \
                     password, the client ID and secret, and that the user is active and not locked out"
                ),
                Step::Code => format!(
                    "{instance} refused the authorization code (HTTP 401 access_denied): check the client \
                     secret and that the Redirect URL on the Application Registry record is exactly the one \
                     snctl printed, then log in again (codes expire within minutes)"
                ),
                Step::JwtBearer => format!(
                    "{instance} refused the JWT assertion (HTTP 401 access_denied): check that the JWT \
                     Verifier Map of the Application Registry record holds the certificate of this key \
                     (and its key id, if one is set), that the --jwt-subject user exists and is active, \
                     and the client ID and secret"
                ),
                Step::Revoke => format!(
                    "{instance} refused the client ID and secret at the revocation endpoint (HTTP 401 \
                     access_denied)"
                ),
            },
            UpstreamKind::RateLimited => format!(
                "{instance} is rate limiting token requests (HTTP 429{}); snctld waits before trying again",
                self.retry_after
                    .map(|d| format!(", Retry-After {} s", d.as_secs()))
                    .unwrap_or_default()
            ),
            UpstreamKind::ServerError => format!(
                "{instance} answered the token request with HTTP {} ({}): the instance may be {UNAVAILABLE}; \
                 snctld retries with backoff",
                self.status.unwrap_or(500),
                self.detail
            ),
            UpstreamKind::HttpStatus => format!(
                "{instance} answered the token request with HTTP {} ({}): check the instance URL",
                self.status.unwrap_or(0),
                self.detail
            ),
            UpstreamKind::NotJson => format!(
                "{instance} answered with a web page instead of a token ({}): a hibernating developer \
                 instance does this; wake it, or check the instance URL",
                self.detail
            ),
            UpstreamKind::BadResponse => format!(
                "{instance} sent an answer that is not a valid token response ({})",
                self.detail
            ),
            UpstreamKind::Timeout => format!(
                "no answer from {instance} in time ({}): check the network or HTTPS_PROXY; snctld retries",
                self.detail
            ),
            UpstreamKind::Connection if self.midway => format!(
                "the connection to {instance} broke before the token request was answered ({}): \
                 snctld retries; if it keeps happening, look for a proxy or firewall that cuts connections",
                self.detail
            ),
            UpstreamKind::Connection => format!(
                "cannot talk to {instance} ({}): check the instance URL, DNS, firewall or HTTPS_PROXY",
                self.detail
            ),
            UpstreamKind::Tls => format!(
                "TLS failure talking to {instance} ({}): if a proxy re-signs HTTPS, set ca_file in snctld.toml",
                self.detail
            ),
        }
    }
}

impl Failure {
    /// [`Failure::explain`] for the exchange of an authorization code
    /// issued for `redirect_uri`: a refusal that names the Redirect URL
    /// says which one to register.
    pub fn explain_code(&self, instance: &str, redirect_uri: &str, client_id: &str) -> String {
        if self.kind != UpstreamKind::AccessDenied {
            return self.explain(instance);
        }
        let status = self.status.unwrap_or(401);
        if self.detail.to_ascii_lowercase().contains("redirect") {
            format!(
                "{instance} refused the authorization code for its Redirect URL (HTTP {status} {}): \
                 set the Redirect URL of the Application Registry record of client ID {client_id} \
                 to exactly {redirect_uri}, or use the port of the one registered (--redirect-port N)",
                self.detail
            )
        } else {
            format!(
                "{instance} refused the authorization code (HTTP {status} {}): check the client \
                 secret and that the Redirect URL of the Application Registry record is exactly \
                 {redirect_uri}, then log in again (codes expire within minutes)",
                self.detail
            )
        }
    }
}

/// An exchange of an authorization code answered 400 or 403 was refused as
/// surely as with ServiceNow's usual 401: the code, its Redirect URL or the
/// client did not do (RFC 6749 §5.2 `invalid_grant`, `invalid_request`).
fn refused_code(failure: Failure) -> Failure {
    let refusal = matches!(failure.status, Some(400 | 403));
    if failure.step == Step::Code && failure.kind == UpstreamKind::HttpStatus && refusal {
        return Failure {
            kind: UpstreamKind::AccessDenied,
            ..failure
        };
    }
    failure
}

/// What the transport returns instead of a response oauth2 should parse:
/// every answer that is not a 200 with a JSON body, and network failures.
#[derive(Debug, thiserror::Error)]
pub enum Transport {
    #[error("HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        detail: String,
    },
    #[error("not JSON")]
    NotJson { status: u16, detail: String },
    /// The answer began but its body did not arrive whole.
    #[error("HTTP {status} body: {source}")]
    Body {
        status: u16,
        received: usize,
        expected: Option<u64>,
        #[source]
        source: reqwest::Error,
    },
    #[error("{0}")]
    Request(#[source] reqwest::Error),
    /// An answer longer than any token answer: not read past [`MAX_BODY`].
    #[error("HTTP {status}: {}", too_large(*.expected))]
    TooLarge { status: u16, expected: Option<u64> },
    #[error("{0}")]
    Other(String),
}

/// What is said of an answer longer than [`MAX_BODY`].
fn too_large(expected: Option<u64>) -> String {
    let length = expected
        .map(|n| format!(" ({n} by its Content-Length)"))
        .unwrap_or_default();
    format!("an answer of more than {MAX_BODY} bytes{length}, not read further")
}

/// Why the HTTP client for the instances could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read ca_file {}: {source}", path.display())]
    ReadCaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ca_file {} is not PEM certificates: {source}", path.display())]
    CaFileNotPem {
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error(transparent)]
    Build(#[from] reqwest::Error),
}

/// An endpoint URL that cannot be made from an authentication's settings.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("bad authorize URL: {0}")]
    Authorize(oauth2::url::ParseError),
    #[error("bad Redirect URL {uri}: {source}")]
    Redirect {
        uri: String,
        source: oauth2::url::ParseError,
    },
    #[error("bad token URL: {0}")]
    Token(oauth2::url::ParseError),
}

/// The HTTP client for every instance: one connection pool.
#[derive(Clone)]
pub struct ServiceNow {
    http: reqwest::Client,
    request_timeout: Duration,
}

impl ServiceNow {
    pub fn new(config: &HttpConfig) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            // oauth2 advises against following redirects at the token endpoint.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("snctld/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| ClientError::ReadCaFile {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ClientError::CaFileNotPem {
                    path: path.clone(),
                    source,
                }
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(ServiceNow {
            http: builder.build()?,
            request_timeout: config.request_timeout,
        })
    }

    /// The pooled client, for the local proxy ([`crate::proxy`]).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The authorize URL for a login by a person (PKCE S256 and a random
    /// `state`), and the verifier to keep until the code comes back.
    pub fn authorize(auth: &Authentication, redirect_uri: &str) -> Result<Authorize, UrlError> {
        let auth_url = AuthUrl::new(format!("{}{AUTHORIZE_PATH}", auth.instance_url))
            .map_err(UrlError::Authorize)?;
        let redirect =
            RedirectUrl::new(redirect_uri.to_string()).map_err(|source| UrlError::Redirect {
                uri: redirect_uri.to_string(),
                source,
            })?;
        let client = BasicClient::new(ClientId::new(auth.client_id.clone()))
            .set_auth_uri(auth_url)
            .set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(scopes(auth))
            .set_pkce_challenge(challenge)
            .url();
        Ok(Authorize {
            url: url.to_string(),
            state: state.secret().clone(),
            verifier: Secret::new(verifier.secret().clone()),
        })
    }

    /// Gets a token from the instance with `proof`.
    pub async fn request_token(
        &self,
        auth: &Authentication,
        proof: Proof<'_>,
    ) -> Result<TokenSet, Failure> {
        let step = proof.step();
        let started = clock::now_ms();
        let response = self
            .exchange(auth, proof)
            .await
            .map_err(|e| refused_code(self.classify(e).during(step)))?;
        let lifetime = response.expires_in().unwrap_or(DEFAULT_LIFETIME);
        if !matches!(response.token_type(), BasicTokenType::Bearer) {
            return Err(Failure::new(
                UpstreamKind::BadResponse,
                Some(200),
                format!("token type {:?} instead of Bearer", response.token_type()),
            ));
        }
        Ok(TokenSet {
            access_token: Secret::new(response.access_token().secret().clone()),
            // Count the lifetime from when we asked, not when the answer
            // arrived: the instance started the clock no later than that.
            expires_at_ms: started + lifetime.as_millis() as i64,
            obtained_at_ms: started,
            refresh_token: response
                .refresh_token()
                .map(|t| Secret::new(t.secret().clone())),
            refresh_issued_ms: None,
            obtained_boot: None,
        })
    }

    async fn exchange(
        &self,
        auth: &Authentication,
        proof: Proof<'_>,
    ) -> Result<BasicTokenResponse, RequestTokenError<Transport, oauth2::basic::BasicErrorResponse>>
    {
        let client = oauth_client(auth).map_err(|e| RequestTokenError::Other(e.to_string()))?;
        match proof {
            Proof::ClientCredentials => {
                client
                    .exchange_client_credentials()
                    .add_scopes(scopes(auth))
                    .request_async(self)
                    .await
            }
            // The scope of a refresh is the one granted at login.
            Proof::Refresh(token) => {
                let token = RefreshToken::new(token.expose().to_string());
                client
                    .exchange_refresh_token(&token)
                    .request_async(self)
                    .await
            }
            Proof::Password { username, password } => {
                let username = ResourceOwnerUsername::new(username.to_string());
                let password = ResourceOwnerPassword::new(password.expose().to_string());
                client
                    .exchange_password(&username, &password)
                    .add_scopes(scopes(auth))
                    .request_async(self)
                    .await
            }
            Proof::Code {
                code,
                verifier,
                redirect_uri,
            } => {
                let redirect = RedirectUrl::new(redirect_uri.to_string())
                    .map_err(|e| RequestTokenError::Other(e.to_string()))?;
                client
                    .set_redirect_uri(redirect)
                    .exchange_code(AuthorizationCode::new(code.expose().to_string()))
                    .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose().to_string()))
                    .request_async(self)
                    .await
            }
            Proof::JwtBearer => self.jwt_bearer(auth).await,
        }
    }

    /// The JWT-bearer grant, sent by hand (oauth2 has no such grant) through
    /// the same transport, so that every failure is told apart as for the
    /// other grants.
    async fn jwt_bearer(
        &self,
        auth: &Authentication,
    ) -> Result<BasicTokenResponse, RequestTokenError<Transport, oauth2::basic::BasicErrorResponse>>
    {
        let jwt = auth.jwt.as_ref().ok_or_else(|| {
            RequestTokenError::Other("no JWT signing key is stored for this authentication".into())
        })?;
        let assertion = crate::jwt::assertion(jwt, &auth.client_id, clock::now_ms() / 1000)
            .map_err(|e| RequestTokenError::Other(e.to_string()))?;
        let mut form = vec![
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", assertion.as_str()),
        ];
        if let Some(scope) = &auth.scope {
            form.push(("scope", scope));
        }
        let request = self
            .form_post(auth, TOKEN_PATH, form)
            .map_err(|e| RequestTokenError::Request(Transport::Request(e)))?;
        let response = self
            .execute(request)
            .await
            .map_err(RequestTokenError::Request)?;
        serde_json::from_slice(response.body())
            .map_err(|e| RequestTokenError::Other(format!("malformed token response: {e}")))
    }

    /// A form POST to `path` of the instance, the client authenticated as
    /// its `client_auth` says.
    fn form_post<'a>(
        &self,
        auth: &'a Authentication,
        path: &str,
        mut form: Vec<(&'a str, &'a str)>,
    ) -> Result<reqwest::Request, reqwest::Error> {
        let mut request = self.http.post(format!("{}{path}", auth.instance_url));
        match auth.client_auth {
            ClientAuth::Form => {
                form.push(("client_id", &auth.client_id));
                form.push(("client_secret", auth.client_secret.expose()));
            }
            ClientAuth::Basic => {
                request = request.basic_auth(&auth.client_id, Some(auth.client_secret.expose()));
            }
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        request
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .build()
    }

    /// Revokes a token at the instance (`/oauth_revoke_token.do`, form
    /// field `token`, the client authenticated as for the token endpoint).
    ///
    /// Sent by hand rather than through oauth2, whose revocation request
    /// refuses any URL that is not https, and loopback instances are http.
    pub async fn revoke(&self, auth: &Authentication, token: &Secret) -> Result<(), Failure> {
        let request = self
            .form_post(auth, REVOKE_PATH, vec![("token", token.expose())])
            .map_err(|e| classify_transport(&e, self.request_timeout))?;
        self.execute(request).await.map(drop).map_err(|e| {
            self.classify::<oauth2::basic::BasicErrorResponse>(RequestTokenError::Request(e))
                .during(Step::Revoke)
        })
    }

    /// GETs one row of the REST API (`sys_user`), with `bearer` when given:
    /// a live instance answers JSON (401 without a valid token), a
    /// hibernating one a web page.
    pub async fn probe_api(
        &self,
        instance: &str,
        bearer: Option<&Secret>,
    ) -> Result<Seen, Failure> {
        let mut request = self
            .http
            .get(format!("{instance}{PROBE_API_PATH}"))
            .header(http::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            request = request.bearer_auth(token.expose());
        }
        self.look(request).await
    }

    /// The user name of the ServiceNow user `access` acts for, or why it
    /// cannot be told.
    pub async fn current_user(&self, instance: &str, access: &Secret) -> Result<String, Unnamed> {
        let response = self
            .http
            .get(format!("{instance}{CURRENT_USER_PATH}"))
            .header(http::header::ACCEPT, "application/json")
            // Once per login: no connection is kept for it.
            .header(http::header::CONNECTION, "close")
            .bearer_auth(access.expose())
            .timeout(CURRENT_USER_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                Unnamed::Unreachable(classify_transport(&e, CURRENT_USER_TIMEOUT).detail)
            })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(Unnamed::TooLarge);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Unnamed::Unreachable(error_chain(&e)))?;
        if status != 200 {
            return Err(Unnamed::Status {
                status,
                detail: describe_body(&headers, &body),
            });
        }
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(Unnamed::NotJson)?;
        value
            .pointer("/result/user_name")
            .and_then(|name| name.as_str())
            .map(str::trim)
            .filter(|name| {
                !name.is_empty() && name.len() <= 256 && !name.contains(char::is_control)
            })
            .map(str::to_owned)
            .ok_or(Unnamed::NoUser)
    }

    /// POSTs a refresh grant with a token no instance issued and without
    /// the client secret: a working token endpoint answers its JSON 401.
    pub async fn probe_token_endpoint(&self, auth: &Authentication) -> Result<Seen, Failure> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "refresh_token"),
                ("refresh_token", "snctl-doctor-probe"),
                ("client_id", auth.client_id.as_str()),
            ])
            .finish();
        let request = self
            .http
            .post(format!("{}{TOKEN_PATH}", auth.instance_url))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body);
        self.look(request).await
    }

    async fn look(&self, request: reqwest::RequestBuilder) -> Result<Seen, Failure> {
        let request = request
            .build()
            .map_err(|e| classify_transport(&e, self.request_timeout))?;
        let mut response = self
            .http
            .execute(request)
            .await
            .map_err(|e| classify_transport(&e, self.request_timeout))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| classify_transport(&e, self.request_timeout))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Seen {
            status,
            json: is_json(&headers),
            detail: describe_body(&headers, &body),
        })
    }

    fn classify<T: oauth2::ErrorResponse>(
        &self,
        error: RequestTokenError<Transport, T>,
    ) -> Failure {
        match error {
            RequestTokenError::Request(Transport::Status {
                status,
                retry_after,
                detail,
            }) => {
                let kind = match status {
                    // ServiceNow's one answer for every refused credential.
                    401 => UpstreamKind::AccessDenied,
                    429 => UpstreamKind::RateLimited,
                    500..=599 => UpstreamKind::ServerError,
                    _ => UpstreamKind::HttpStatus,
                };
                Failure {
                    retry_after,
                    ..Failure::new(kind, Some(status), detail)
                }
            }
            RequestTokenError::Request(Transport::NotJson { status, detail }) => {
                Failure::new(UpstreamKind::NotJson, Some(status), detail)
            }
            // A body that stops coming is a timeout like any other.
            RequestTokenError::Request(Transport::Body { source, .. }) if source.is_timeout() => {
                classify_transport(&source, self.request_timeout)
            }
            // The instance answered, so the network is not the question: the
            // answer was cut off (a Content-Length it did not keep).
            RequestTokenError::Request(Transport::Body {
                status,
                received,
                expected,
                source,
            }) => Failure::new(
                UpstreamKind::BadResponse,
                Some(status),
                format!(
                    "the answer was cut off after {received}{} bytes: {}",
                    expected.map(|n| format!(" of {n}")).unwrap_or_default(),
                    error_chain(&source)
                ),
            ),
            RequestTokenError::Request(Transport::Request(e)) => {
                classify_transport(&e, self.request_timeout)
            }
            RequestTokenError::Request(Transport::TooLarge { status, expected }) => {
                let kind = match status {
                    200 => UpstreamKind::BadResponse,
                    401 => UpstreamKind::AccessDenied,
                    429 => UpstreamKind::RateLimited,
                    500..=599 => UpstreamKind::ServerError,
                    _ => UpstreamKind::HttpStatus,
                };
                Failure::new(kind, Some(status), too_large(expected))
            }
            RequestTokenError::Request(Transport::Other(e)) => {
                Failure::new(UpstreamKind::Connection, None, e)
            }
            RequestTokenError::Parse(e, _body) => Failure::new(
                UpstreamKind::BadResponse,
                Some(200),
                format!("malformed JSON at {}: {}", e.path(), e.inner()),
            ),
            RequestTokenError::ServerResponse(e) => {
                Failure::new(UpstreamKind::HttpStatus, None, e.to_string())
            }
            RequestTokenError::Other(e) => Failure::new(UpstreamKind::BadResponse, None, e),
        }
    }
}

type Client = BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn scopes(auth: &Authentication) -> Vec<Scope> {
    auth.scope
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(|s| Scope::new(s.to_string()))
        .collect()
}

fn oauth_client(auth: &Authentication) -> Result<Client, UrlError> {
    let token_url =
        TokenUrl::new(format!("{}{TOKEN_PATH}", auth.instance_url)).map_err(UrlError::Token)?;
    Ok(BasicClient::new(ClientId::new(auth.client_id.clone()))
        .set_client_secret(ClientSecret::new(auth.client_secret.expose().to_string()))
        .set_auth_type(match auth.client_auth {
            ClientAuth::Form => AuthType::RequestBody,
            ClientAuth::Basic => AuthType::BasicAuth,
        })
        .set_token_uri(token_url))
}

fn classify_transport(error: &reqwest::Error, timeout: Duration) -> Failure {
    if error.is_timeout() {
        return Failure::new(
            UpstreamKind::Timeout,
            None,
            format!("no complete answer within {} s", timeout.as_secs()),
        );
    }
    if let Some(tls) = error.source().and_then(rustls_cause) {
        return Failure::new(UpstreamKind::Tls, None, tls.to_string());
    }
    Failure {
        midway: !error.is_connect(),
        ..Failure::new(UpstreamKind::Connection, None, error_chain(error))
    }
}

/// The rustls error behind `error`, however deep. An `io::Error` hides
/// what it wraps from `source()` (it answers with the wrapped error's own
/// source), and the connector nests one `io::Error` in another, so each
/// one's `get_ref()` is searched as well.
fn rustls_cause<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let wrapped = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref());
    if let Some(tls) = wrapped.and_then(|inner| rustls_cause(inner)) {
        return Some(tls);
    }
    error.source().and_then(rustls_cause)
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

/// A short description of a body that is not what we expected: the JSON
/// error fields when there are some, else the HTML title, else its size.
fn describe_body(headers: &http::HeaderMap, body: &[u8]) -> String {
    if is_json(headers) {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
            let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
            // ServiceNow: {"error":"server_error","error_description":"access_denied"}
            // and for the REST API {"error":{"message":..,"detail":..}}.
            let error = field("error").or_else(|| {
                value
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            });
            let description = field("error_description");
            return match (error, description) {
                (Some(e), Some(d)) => format!("{e}: {d}"),
                (Some(e), None) => e,
                (None, Some(d)) => d,
                (None, None) => "JSON without an error field".into(),
            };
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    if let Some(start) = text.to_ascii_lowercase().find("<title>") {
        let rest = &text[start + 7..];
        let title: String = rest
            .split('<')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !title.is_empty() {
            return format!("page titled {:?}", truncate(&title, 80));
        }
    }
    let kind = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type");
    format!("{} bytes of {kind}", body.len())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A call to the instance in progress.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the token machinery asks of an instance. [`ServiceNow`] answers
/// over HTTP; the token machinery's own tests answer from a script.
pub trait Upstream: Send + Sync + 'static {
    /// Gets a token with `proof` ([`ServiceNow::request_token`]).
    fn request_token<'a>(
        &'a self,
        auth: &'a Authentication,
        proof: Proof<'a>,
    ) -> Call<'a, Result<TokenSet, Failure>>;

    /// Revokes a token ([`ServiceNow::revoke`]).
    fn revoke<'a>(
        &'a self,
        auth: &'a Authentication,
        token: &'a Secret,
    ) -> Call<'a, Result<(), Failure>>;

    /// Which user a token acts for ([`ServiceNow::current_user`]).
    fn current_user<'a>(
        &'a self,
        instance: &'a str,
        access: &'a Secret,
    ) -> Call<'a, Result<String, Unnamed>>;

    /// Reads the REST API ([`ServiceNow::probe_api`]).
    fn probe_api<'a>(
        &'a self,
        instance: &'a str,
        bearer: Option<&'a Secret>,
    ) -> Call<'a, Result<Seen, Failure>>;

    /// Pokes the token endpoint ([`ServiceNow::probe_token_endpoint`]).
    fn probe_token_endpoint<'a>(
        &'a self,
        auth: &'a Authentication,
    ) -> Call<'a, Result<Seen, Failure>>;
}

impl Upstream for ServiceNow {
    fn request_token<'a>(
        &'a self,
        auth: &'a Authentication,
        proof: Proof<'a>,
    ) -> Call<'a, Result<TokenSet, Failure>> {
        Box::pin(ServiceNow::request_token(self, auth, proof))
    }

    fn revoke<'a>(
        &'a self,
        auth: &'a Authentication,
        token: &'a Secret,
    ) -> Call<'a, Result<(), Failure>> {
        Box::pin(ServiceNow::revoke(self, auth, token))
    }

    fn current_user<'a>(
        &'a self,
        instance: &'a str,
        access: &'a Secret,
    ) -> Call<'a, Result<String, Unnamed>> {
        Box::pin(ServiceNow::current_user(self, instance, access))
    }

    fn probe_api<'a>(
        &'a self,
        instance: &'a str,
        bearer: Option<&'a Secret>,
    ) -> Call<'a, Result<Seen, Failure>> {
        Box::pin(ServiceNow::probe_api(self, instance, bearer))
    }

    fn probe_token_endpoint<'a>(
        &'a self,
        auth: &'a Authentication,
    ) -> Call<'a, Result<Seen, Failure>> {
        Box::pin(ServiceNow::probe_token_endpoint(self, auth))
    }
}

impl<'c> AsyncHttpClient<'c> for ServiceNow {
    type Error = Transport;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Transport>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(Transport::Request)?;
            self.execute(request).await
        })
    }
}

impl ServiceNow {
    /// Sends a request; only a 200 with a JSON body comes back as a response.
    async fn execute(&self, request: reqwest::Request) -> Result<HttpResponse, Transport> {
        let mut response = self
            .http
            .execute(request)
            .await
            .map_err(Transport::Request)?;
        let status = response.status();
        let headers = response.headers().clone();
        let expected = response.content_length();
        let mut body = Vec::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(source) => {
                    return Err(Transport::Body {
                        status: status.as_u16(),
                        received: body.len(),
                        expected,
                        source,
                    })
                }
            };
            if body.len() + chunk.len() > MAX_BODY {
                // The instance answered; what it said is too long to be an
                // answer to this request, whatever its status.
                return Err(Transport::TooLarge {
                    status: status.as_u16(),
                    expected,
                });
            }
            body.extend_from_slice(&chunk);
        }
        if status != http::StatusCode::OK {
            return Err(Transport::Status {
                status: status.as_u16(),
                retry_after: crate::http::retry_after(&headers, std::time::SystemTime::now()),
                detail: describe_body(&headers, &body),
            });
        }
        if !is_json(&headers) {
            return Err(Transport::NotJson {
                status: status.as_u16(),
                detail: describe_body(&headers, &body),
            });
        }
        let mut builder = http::Response::builder().status(status);
        for (name, value) in headers.iter() {
            builder = builder.header(name, value);
        }
        builder
            .body(body)
            .map_err(|e| Transport::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_described_without_dumping_them() {
        let mut json = http::HeaderMap::new();
        json.insert(
            http::header::CONTENT_TYPE,
            "application/json;charset=UTF-8".parse().unwrap(),
        );
        assert_eq!(
            describe_body(
                &json,
                br#"{"error":"server_error","error_description":"access_denied"}"#
            ),
            "server_error: access_denied"
        );
        let mut html = http::HeaderMap::new();
        html.insert(http::header::CONTENT_TYPE, "text/html".parse().unwrap());
        assert_eq!(
            describe_body(
                &html,
                b"<html><head><title>Instance Hibernating</title></head></html>"
            ),
            "page titled \"Instance Hibernating\""
        );
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            crate::http::retry_after(&h, std::time::SystemTime::now()),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn a_refused_code_names_the_redirect_url_to_register() {
        let at = |status, detail: &str| Failure {
            step: Step::Code,
            ..Failure::new(UpstreamKind::HttpStatus, Some(status), detail)
        };
        let uri = "http://127.0.0.1:8751/callback";
        let refused = refused_code(at(400, "invalid_request: Invalid redirect_uri"));
        assert_eq!(refused.kind, UpstreamKind::AccessDenied);
        assert_eq!(
            refused.explain_code("https://acme", uri, "c1d"),
            "https://acme refused the authorization code for its Redirect URL (HTTP 400 \
             invalid_request: Invalid redirect_uri): set the Redirect URL of the Application \
             Registry record of client ID c1d to exactly http://127.0.0.1:8751/callback, or use \
             the port of the one registered (--redirect-port N)"
        );
        let generic = Failure {
            step: Step::Code,
            ..Failure::new(
                UpstreamKind::AccessDenied,
                Some(401),
                "server_error: access_denied",
            )
        };
        assert!(generic
            .explain_code("https://acme", uri, "c1d")
            .contains("is exactly http://127.0.0.1:8751/callback, then log in again"));
        // Only the exchange of a code is read this way, and only 400 and 403.
        let refresh = Failure {
            step: Step::Refresh,
            ..at(400, "x")
        };
        assert_eq!(refused_code(refresh).kind, UpstreamKind::HttpStatus);
        assert_eq!(refused_code(at(404, "x")).kind, UpstreamKind::HttpStatus);
        assert_eq!(
            refused_code(at(502, "x")).explain_code("https://acme", uri, "c1d"),
            at(502, "x").explain("https://acme")
        );
    }

    #[test]
    fn a_tls_error_is_found_inside_nested_io_errors() {
        use std::io::{Error as IoError, ErrorKind};
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As the HTTPS connector hands it up: an io::Error in an io::Error.
        let nested = IoError::other(IoError::new(ErrorKind::InvalidData, tls.clone()));
        assert_eq!(rustls_cause(&nested), Some(&tls));
        let plain = IoError::new(ErrorKind::ConnectionReset, "reset");
        assert_eq!(rustls_cause(&plain), None);
    }
}
