//! `snctl doctor`: tells ServiceNow's one generic 401 apart, as far as the
//! instance allows.
//!
//! A wrong client secret, a disabled client-credentials grant, a missing
//! OAuth Application User, a dead refresh token and a bad scope all answer
//! the same `401 access_denied`. The probes below ask questions whose
//! answers differ: does the REST API answer JSON (a hibernating instance
//! answers a web page)? does the token endpoint speak OAuth? does the
//! revocation endpoint, which checks the client but no grant, accept the
//! client ID and secret? is the refresh token past its recorded deadline?
//! Then the grant itself is tried; when it works the new token is kept.

use snctl_shared::protocol::{Check, CheckOutcome, Diagnosis, Grant, UpstreamError, UpstreamKind};
use snctl_shared::time::span;
use snctl_shared::{Error, Secret};

use super::Tokens;
use crate::servicenow::{Failure, Seen, UNAVAILABLE};
use crate::store::Authentication;

/// What the probes found, in the order they ran.
struct Findings {
    checks: Vec<Check>,
    blame: Option<Blame>,
}

/// The likely cause of a failure and what to do.
struct Blame {
    cause: String,
    fix: String,
    needs_login: bool,
}

impl Findings {
    fn check(&mut self, what: &str, outcome: CheckOutcome, detail: impl Into<String>) {
        self.checks.push(Check {
            what: what.to_string(),
            outcome,
            detail: detail.into(),
        });
    }

    /// Records the first cause found; later probes only add checks.
    fn blame(&mut self, cause: impl Into<String>, fix: impl Into<String>, needs_login: bool) {
        if self.blame.is_none() {
            self.blame = Some(Blame {
                cause: cause.into(),
                fix: fix.into(),
                needs_login,
            });
        }
    }

    fn skip(&mut self, what: &str, why: &str) {
        self.check(what, CheckOutcome::Skipped, why);
    }
}

const REACHABLE: &str = "instance reachable and awake";
const TOKEN_ENDPOINT: &str = "token endpoint answers OAuth";
const CLIENT: &str = "client ID and secret accepted";
const DEADLINE: &str = "refresh token within its recorded lifespan";
const ACCESS: &str = "access token accepted by the REST API";

/// The UTC instant of `ms` since the epoch, as people read it.
fn date(ms: i64) -> String {
    snctl_shared::time::utc(ms / 1000)
}

impl Tokens {
    /// Runs the probes for authentication `name` and says what is wrong.
    pub async fn doctor(&self, name: &str) -> Result<Diagnosis, Error> {
        let entry = self.entry(name)?;
        let (auth, deadline, has_refresh, access) = {
            let shared = entry.lock();
            let access = shared
                .token
                .as_ref()
                .filter(|t| t.expires_boot_ms > self.boot_ms())
                .map(|t| t.access.clone());
            (
                shared.auth.clone(),
                shared.refresh_deadline_ms(),
                shared.refresh.is_some(),
                access,
            )
        };
        let mut found = Findings {
            checks: Vec::new(),
            blame: None,
        };
        let reachable = self.probe_reachable(&auth, &mut found).await;
        if reachable {
            self.probe_token_endpoint(&auth, &mut found).await;
            self.probe_client(&auth, &mut found).await;
        } else {
            found.skip(TOKEN_ENDPOINT, "the instance does not answer");
            found.skip(CLIENT, "the instance does not answer");
        }
        if auth.grant.needs_person() {
            check_deadline(&auth, deadline, has_refresh, self.now_ms(), &mut found);
        }
        let works = if reachable {
            self.try_grant(name, &auth, &mut found).await
        } else {
            found.skip(&grant_check(auth.grant), "the instance does not answer");
            false
        };
        match (&access, reachable) {
            (Some(token), true) => self.probe_access(&auth, token, &mut found).await,
            _ => found.skip(ACCESS, "no valid access token in hand"),
        }
        let (cause, fix, needs_login) = match (works, found.blame.take()) {
            (true, _) => (None, None, false),
            (false, Some(b)) => (Some(b.cause), Some(b.fix), b.needs_login),
            (false, None) => (
                Some("the instance refuses without saying why".to_string()),
                Some(format!(
                    "check the Application Registry record of client {} and the system log of {} \
                     (System Logs > All, source OAuth)",
                    auth.client_id, auth.instance_url
                )),
                false,
            ),
        };
        tracing::info!(%name, works, "doctor ran");
        Ok(Diagnosis {
            name: name.to_string(),
            checks: found.checks,
            works,
            cause,
            fix,
            needs_login,
        })
    }

    async fn probe_reachable(&self, auth: &Authentication, found: &mut Findings) -> bool {
        let instance = &auth.instance_url;
        match self.inner.upstream.probe_api(instance, None).await {
            Ok(seen) if seen.json => {
                found.check(
                    REACHABLE,
                    CheckOutcome::Pass,
                    format!("the REST API answers (HTTP {})", seen.status),
                );
                true
            }
            Ok(seen) => {
                found.check(
                    REACHABLE,
                    CheckOutcome::Fail,
                    format!(
                        "a web page instead of the REST API (HTTP {}, {})",
                        seen.status, seen.detail
                    ),
                );
                found.blame(
                    format!("{instance} answers with a web page: it is hibernating, or the URL is not a ServiceNow instance"),
                    format!("wake the instance (developer instances: sign in at the developer site), or fix the URL with `snctl update {} --instance URL`", auth.name),
                    false,
                );
                false
            }
            Err(failure) => {
                found.check(REACHABLE, CheckOutcome::Fail, failure.detail.clone());
                found.blame(
                    failure.explain(instance),
                    "fix the network path to the instance (DNS, firewall, HTTPS_PROXY, ca_file in snctld.toml), then run `snctl doctor` again",
                    false,
                );
                false
            }
        }
    }

    async fn probe_token_endpoint(&self, auth: &Authentication, found: &mut Findings) {
        match self.inner.upstream.probe_token_endpoint(auth).await {
            Ok(Seen {
                status: 400 | 401,
                json: true,
                ..
            }) => found.check(
                TOKEN_ENDPOINT,
                CheckOutcome::Pass,
                "refuses a made-up refresh token with OAuth's JSON error",
            ),
            Ok(seen) => {
                found.check(
                    TOKEN_ENDPOINT,
                    CheckOutcome::Fail,
                    format!("HTTP {} ({})", seen.status, seen.detail),
                );
                // A server error or a rate limit says nothing about OAuth:
                // the same endpoint may answer properly in a minute.
                let again = format!(
                    "wait, then run `snctl doctor {}` again; snctld retries by itself",
                    auth.name
                );
                if seen.status >= 500 {
                    found.blame(
                        format!(
                            "{} answered HTTP {} at /oauth_token.do: it is {UNAVAILABLE}",
                            auth.instance_url, seen.status
                        ),
                        again,
                        false,
                    );
                    return;
                }
                if seen.status == 429 {
                    found.blame(
                        format!(
                            "{} is rate limiting requests to /oauth_token.do (HTTP 429)",
                            auth.instance_url
                        ),
                        again,
                        false,
                    );
                    return;
                }
                found.blame(
                    format!(
                        "{} does not serve OAuth at /oauth_token.do (HTTP {})",
                        auth.instance_url, seen.status
                    ),
                    "check that the OAuth 2.0 plugin is active and the system property com.snc.platform.security.oauth.is.active is true",
                    false,
                );
            }
            Err(failure) => found.check(TOKEN_ENDPOINT, CheckOutcome::Unknown, failure.detail),
        }
    }

    /// The revocation endpoint authenticates the client but involves no
    /// grant: revoking a made-up token tells a wrong secret from a refused
    /// grant.
    async fn probe_client(&self, auth: &Authentication, found: &mut Findings) {
        let made_up = Secret::new(format!("snctl-doctor-{:016x}", rand::random::<u64>()));
        match self.inner.upstream.revoke(auth, &made_up).await {
            Ok(()) => found.check(
                CLIENT,
                CheckOutcome::Pass,
                "the revocation endpoint accepts them",
            ),
            Err(Failure {
                kind: UpstreamKind::AccessDenied,
                ..
            }) => {
                found.check(
                    CLIENT,
                    CheckOutcome::Fail,
                    "the revocation endpoint refuses them (HTTP 401)",
                );
                found.blame(
                    format!(
                        "the instance does not accept client ID {} with the stored secret: the secret was changed or mistyped, or the Application Registry record is inactive",
                        auth.client_id
                    ),
                    format!(
                        "copy the Client Secret from the record and run `snctl update {} --client-secret-prompt` (add --client-id if it changed)",
                        auth.name
                    ),
                    false,
                );
            }
            Err(failure) => found.check(CLIENT, CheckOutcome::Unknown, failure.detail),
        }
    }

    async fn probe_access(&self, auth: &Authentication, token: &Secret, found: &mut Findings) {
        match self
            .inner
            .upstream
            .probe_api(&auth.instance_url, Some(token))
            .await
        {
            Ok(Seen { status: 200, .. }) => {
                found.check(ACCESS, CheckOutcome::Pass, "a table read succeeds")
            }
            Ok(Seen { status: 401, .. }) => found.check(
                ACCESS,
                CheckOutcome::Fail,
                "HTTP 401: the token was revoked or its user is inactive",
            ),
            Ok(seen) => found.check(
                ACCESS,
                CheckOutcome::Unknown,
                format!(
                    "HTTP {} ({}); the user may lack a role to read sys_user",
                    seen.status, seen.detail
                ),
            ),
            Err(failure) => found.check(ACCESS, CheckOutcome::Unknown, failure.detail),
        }
    }

    /// Tries the grant for real (a refresh, committed when it works),
    /// unless the instance asked to wait.
    async fn try_grant(&self, name: &str, auth: &Authentication, found: &mut Findings) -> bool {
        let what = grant_check(auth.grant);
        if let Some(error) = self.rate_limited(name) {
            found.check(&what, CheckOutcome::Skipped, error.message.clone());
            found.blame(
                error.message,
                format!("wait, then run `snctl doctor {name}` again; snctld retries by itself"),
                false,
            );
            return false;
        }
        match self.refresh(name).await {
            Ok(summary) => {
                found.check(
                    &what,
                    CheckOutcome::Pass,
                    format!(
                        "a new access token, valid for {}",
                        span(summary.access_expires_at.unwrap_or_default() * 1000 - self.now_ms())
                    ),
                );
                true
            }
            Err(Error::NeedsLogin { .. }) => {
                let detail = self
                    .show(name, |_| Ok(()))
                    .ok()
                    .and_then(|s| s.last_error)
                    .unwrap_or_else(|| "the login is gone".into());
                found.check(&what, CheckOutcome::Fail, detail);
                found.blame(
                    format!(
                        "{} refuses the refresh token before its recorded deadline: it was revoked, the user is inactive or locked out, or the record's Refresh Token Lifespan is shorter than the {} days recorded",
                        auth.instance_url,
                        auth.refresh_lifespan_secs / 86_400
                    ),
                    format!(
                        "run `snctl login {name}`; if the lifespan differs, also `snctl update {name} --refresh-token-lifespan DAYSd`"
                    ),
                    true,
                );
                false
            }
            Err(Error::Upstream(u))
                if u.kind == UpstreamKind::AccessDenied && auth.grant == Grant::JwtBearer =>
            {
                found.check(&what, CheckOutcome::Fail, "HTTP 401 access_denied");
                found.blame(
                    "the client is accepted but the JWT assertion is refused: the JWT Verifier Map of the Application Registry record lacks the certificate of snctl's key (or its key id), or the subject user is unknown or inactive",
                    format!(
                        "upload the certificate for the key (`openssl req -new -x509 -key FILE -subj /CN=snctl -days 825 -out snctl.crt`) to the record's JWT Verifier Map, then run `snctl refresh {name}`"
                    ),
                    false,
                );
                false
            }
            Err(Error::Upstream(u)) if u.kind == UpstreamKind::AccessDenied => {
                found.check(&what, CheckOutcome::Fail, "HTTP 401 access_denied");
                let scope = auth
                    .scope
                    .as_ref()
                    .map(|s| format!("; or the scope {s:?} is not allowed for this client"))
                    .unwrap_or_default();
                found.blame(
                    format!(
                        "the client is accepted but the client-credentials grant is refused: the system property glide.oauth.inbound.client.credential.grant_type.enabled is not true, or the Application Registry record has no (active) OAuth Application User{scope}"
                    ),
                    format!(
                        "in ServiceNow set the property to true and the OAuth Application User on the record, then run `snctl refresh {name}`"
                    ),
                    false,
                );
                false
            }
            Err(e) => {
                found.check(&what, CheckOutcome::Fail, e.to_string());
                let fix = match &e {
                    Error::Upstream(_) => {
                        format!("snctld retries by itself; run `snctl doctor {name}` again later")
                    }
                    _ => "see the snctld log".to_string(),
                };
                found.blame(e.to_string(), fix, false);
                false
            }
        }
    }
}

impl Tokens {
    /// The instance's own request to wait (429 with `Retry-After`), when it
    /// still holds.
    fn rate_limited(&self, name: &str) -> Option<UpstreamError> {
        let entry = self.entry(name).ok()?;
        let shared = entry.lock();
        let error = shared.last_error.as_ref()?;
        let waiting = shared.retry_at_boot_ms.is_some_and(|t| t > self.boot_ms());
        (waiting && error.kind == UpstreamKind::RateLimited).then(|| error.clone())
    }
}

fn grant_check(grant: Grant) -> String {
    match grant {
        Grant::ClientCredentials => "client-credentials grant gets a token".into(),
        Grant::JwtBearer => "jwt-bearer grant gets a token".into(),
        _ => "refresh token gets a token".into(),
    }
}

fn check_deadline(
    auth: &Authentication,
    deadline: Option<i64>,
    has_refresh: bool,
    now_ms: i64,
    found: &mut Findings,
) {
    let name = &auth.name;
    match deadline {
        _ if !has_refresh => {
            found.check(DEADLINE, CheckOutcome::Fail, "no refresh token is stored");
            found.blame(
                "the instance issued no refresh token at the last login (a public client, or a record without refresh tokens)",
                format!("run `snctl login {name}`; for a login that lasts, use a confidential client (with a secret)"),
                true,
            );
        }
        Some(at) if at <= now_ms => {
            found.check(
                DEADLINE,
                CheckOutcome::Fail,
                format!("it died on {} by the recorded lifespan", date(at)),
            );
            found.blame(
                format!("the refresh token reached its lifespan on {}", date(at)),
                format!("run `snctl login {name}`"),
                true,
            );
        }
        Some(at) => found.check(
            DEADLINE,
            CheckOutcome::Pass,
            format!("good until {}", date(at)),
        ),
        None => found.skip(DEADLINE, "no issue time recorded"),
    }
}
