//! Admin requests: add, update, remove, and logins by a person.
//!
//! Every change is proven upstream before it is stored: `add` saves nothing
//! until the instance has issued a token, `update` keeps the old settings
//! when the new ones fail, and a login replaces the stored tokens only once
//! the instance has accepted it.
//!
//! An authorization-code login comes in two requests. [`Tokens::start_login`]
//! makes the PKCE verifier and `state`, keeps them here (never on the
//! socket) and answers with the authorize URL; `snctl` sends the person to
//! it, catches the redirect on its loopback listener and hands the code to
//! [`Tokens::login`], which checks `state` and exchanges the code.

use std::sync::Arc;
use std::time::Duration;

use snctl_shared::protocol::{
    AddRequest, AuthState, AuthSummary, Grant, LoginChallenge, LoginProof, LoginRequest,
    RemoveReply, RemoveRequest, StartLoginRequest, UpdateRequest, UpstreamError, UpstreamKind,
};
use snctl_shared::{name, Error, Secret};

use super::{internal, redirect_uri, shutting_down, upstream_error, Entry, Tokens};
use crate::clock::now_ms;
use crate::servicenow::{normalize_instance_url, Proof, ServiceNow};
use crate::store::{Authentication, StoreError, TokenSet, DEFAULT_REFRESH_LIFESPAN_SECS};

/// Logins by a person.
#[derive(Debug, Clone)]
pub struct LoginPolicy {
    /// Port of the loopback Redirect URL for authentications that do not
    /// name one.
    pub redirect_port: u16,
    /// How long a started browser login waits for its code.
    pub timeout: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            redirect_port: 8751,
            timeout: Duration::from_secs(600),
        }
    }
}

/// A started authorization-code login.
pub(super) struct Pending {
    /// The settings the login is for (a new authentication's, or a copy).
    auth: Authentication,
    new: bool,
    state: String,
    verifier: Secret,
    redirect_uri: String,
    expires_at_ms: i64,
}

/// Compares without an early exit, so timing tells nothing about `state`.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn check_auth(auth: &Authentication) -> Result<(), Error> {
    if auth.client_id.trim().is_empty() {
        return Err(Error::invalid(
            "the client ID is empty: copy it from the Application Registry record",
        ));
    }
    if auth.client_secret.is_empty() {
        return Err(Error::invalid(
            "the client secret is empty: copy it from the Application Registry record",
        ));
    }
    Ok(())
}

fn check_lifespan(secs: u64) -> Result<u64, Error> {
    if secs == 0 {
        return Err(Error::invalid(
            "a refresh-token lifespan of 0 is impossible: give the Refresh Token Lifespan of the \
             Application Registry record (ServiceNow's default is 100 days)",
        ));
    }
    Ok(secs)
}

fn no_pending(name: &str) -> Error {
    Error::invalid(format!(
        "no browser login for {name} is waiting (it timed out, or a newer one replaced it): \
         run `snctl login {name}` again"
    ))
}

impl Tokens {
    /// Checks and normalises the settings of a new authentication.
    fn new_auth(&self, request: &AddRequest) -> Result<Authentication, Error> {
        name::validate(&request.name).map_err(Error::invalid)?;
        if self.read_entries().contains_key(&request.name) {
            return Err(Error::AlreadyExists {
                name: request.name.clone(),
            });
        }
        let code = request.grant == Grant::AuthorizationCode;
        if request.redirect_port.is_some() && !code {
            return Err(Error::invalid(
                "a redirect port only applies to the authorization-code grant",
            ));
        }
        if request.redirect_port == Some(0) {
            return Err(Error::invalid(
                "the redirect port must be fixed (not 0): it is part of the Redirect URL registered on the Application Registry record",
            ));
        }
        let auth = Authentication {
            instance_url: normalize_instance_url(&request.instance_url).map_err(Error::invalid)?,
            name: request.name.clone(),
            grant: request.grant,
            client_id: request.client_id.trim().to_string(),
            client_auth: request.client_auth,
            scope: request
                .scope
                .as_ref()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            client_secret: request.client_secret.clone(),
            created_at_ms: now_ms(),
            username: request.user.as_ref().map(|u| u.username.trim().to_string()),
            redirect_port: code.then(|| {
                request
                    .redirect_port
                    .unwrap_or(self.inner.login.redirect_port)
            }),
            refresh_lifespan_secs: check_lifespan(
                request
                    .refresh_lifespan_secs
                    .unwrap_or(DEFAULT_REFRESH_LIFESPAN_SECS),
            )?,
        };
        check_auth(&auth)?;
        Ok(auth)
    }

    /// Registers an authentication once it has produced a token. An
    /// authorization-code authentication is added by
    /// [`Tokens::start_login`] and [`Tokens::login`] instead.
    pub async fn add(&self, request: AddRequest) -> Result<AuthSummary, Error> {
        let auth = self.new_auth(&request)?;
        let tokens = match (&request.grant, &request.user) {
            (Grant::ClientCredentials, None) => {
                self.verify(&auth, Proof::ClientCredentials).await?
            }
            (Grant::ClientCredentials, Some(_)) => {
                return Err(Error::invalid(
                    "the client-credentials grant takes no user: leave out --username",
                ))
            }
            (Grant::Password, Some(user)) => {
                let proof = Proof::Password {
                    username: &user.username,
                    password: &user.password,
                };
                self.verify(&auth, proof).await?
            }
            (Grant::Password, None) => {
                return Err(Error::invalid(
                    "the password grant needs a user: give --username",
                ))
            }
            (Grant::AuthorizationCode, _) => {
                return Err(Error::invalid(
                    "an authorization-code authentication is added through a browser login; use `snctl add --grant authorization-code`",
                ))
            }
        };
        self.insert_new(auth, tokens).await
    }

    async fn insert_new(
        &self,
        auth: Authentication,
        tokens: TokenSet,
    ) -> Result<AuthSummary, Error> {
        let (to_store, stored_tokens) = (auth.clone(), tokens.clone());
        self.inner
            .store
            .call(move |db| db.insert(&to_store, &stored_tokens))
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists => Error::AlreadyExists {
                    name: auth.name.clone(),
                },
                other => internal(other),
            })?;
        let name = auth.name.clone();
        let entry = self.new_entry(auth, Some(tokens), AuthState::Ok, None);
        self.write_entries().insert(name.clone(), entry.clone());
        self.spawn_scheduler(entry.clone());
        tracing::info!(%name, "authentication added");
        Ok(entry.summary())
    }

    /// Gets a token with settings that are not stored yet.
    async fn verify(&self, auth: &Authentication, proof: Proof<'_>) -> Result<TokenSet, Error> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| shutting_down())?;
        self.inner
            .upstream
            .request_token(auth, proof)
            .await
            .map_err(|failure| {
                Error::Upstream(UpstreamError {
                    message: format!("{}; nothing was saved", failure.explain(&auth.instance_url)),
                    ..upstream_error(&failure, &auth.instance_url, None)
                })
            })
    }

    /// Changes settings. New credentials must produce a token first; a
    /// login by a person is checked with its refresh token, and when the
    /// instance refuses it with the new client, the settings are saved and
    /// the authentication waits for `snctl login`.
    pub async fn update(&self, request: UpdateRequest) -> Result<AuthSummary, Error> {
        let entry = self.entry(&request.name)?;
        let _flight = entry.flight.lock().await;
        let mut auth = (*entry.lock().auth).clone();
        let mut credentials = false;
        if let Some(url) = request.instance_url {
            auth.instance_url = normalize_instance_url(&url).map_err(Error::invalid)?;
            credentials = true;
        }
        if let Some(id) = request.client_id {
            auth.client_id = id.trim().to_string();
            credentials = true;
        }
        if let Some(secret) = request.client_secret {
            auth.client_secret = secret;
            credentials = true;
        }
        if let Some(method) = request.client_auth {
            auth.client_auth = method;
            credentials = true;
        }
        if let Some(scope) = request.scope {
            auth.scope = Some(scope.trim().to_string()).filter(|s| !s.is_empty());
            credentials = true;
        }
        let mut settings = false;
        if let Some(port) = request.redirect_port {
            if auth.grant != Grant::AuthorizationCode || port == 0 {
                return Err(Error::invalid(
                    "a redirect port applies to the authorization-code grant only, and cannot be 0",
                ));
            }
            auth.redirect_port = Some(port);
            settings = true;
        }
        if let Some(secs) = request.refresh_lifespan_secs {
            auth.refresh_lifespan_secs = check_lifespan(secs)?;
            settings = true;
        }
        if !credentials && !settings {
            return Err(Error::invalid(
                "nothing to change: give --instance, --client-id, --client-secret-stdin, --client-auth, --scope, --redirect-port or --refresh-token-lifespan",
            ));
        }
        check_auth(&auth)?;
        let name = auth.name.clone();
        let (tokens, needs_login) = if credentials {
            self.verify_update(&entry, &auth).await?
        } else {
            (None, false)
        };
        let (to_store, stored_tokens) = (auth.clone(), tokens.clone());
        let found = self
            .inner
            .store
            .call(move |db| {
                let found = db.replace(&to_store, stored_tokens.as_ref())?;
                if found && needs_login {
                    db.set_health(
                        &to_store.name,
                        AuthState::NeedsLogin,
                        Some("the settings changed: the login must be renewed"),
                    )?;
                }
                Ok(found)
            })
            .await
            .map_err(internal)?;
        if !found {
            return Err(Error::NotFound { name });
        }
        tracing::info!(%name, needs_login, "authentication updated");
        {
            let mut shared = entry.lock();
            shared.auth = Arc::new(auth);
            // A new lifespan moves the deadline: warn afresh.
            shared.warned = 0;
            if let Some(tokens) = tokens {
                self.install(&mut shared, tokens);
            }
            if needs_login {
                shared.state = AuthState::NeedsLogin;
                shared.last_error = Some(UpstreamError {
                    kind: UpstreamKind::AccessDenied,
                    status: None,
                    message: "the settings changed: the login must be renewed".into(),
                    retry_at: None,
                });
            }
        }
        entry.wake.notify_one();
        Ok(entry.summary())
    }

    /// Gets a token with changed credentials: the new tokens, or (for a
    /// login by a person the instance no longer accepts) a note that the
    /// settings may be saved but a login is needed.
    async fn verify_update(
        &self,
        entry: &Entry,
        auth: &Authentication,
    ) -> Result<(Option<TokenSet>, bool), Error> {
        let keep = |e: Error| match e {
            Error::Upstream(u) => Error::Upstream(UpstreamError {
                message: u
                    .message
                    .replace("nothing was saved", "the previous settings stay in use"),
                ..u
            }),
            other => other,
        };
        if !auth.grant.needs_person() {
            let tokens = self
                .verify(auth, Proof::ClientCredentials)
                .await
                .map_err(keep)?;
            return Ok((Some(tokens), false));
        }
        let refresh = entry.lock().refresh.as_ref().map(|(t, _)| t.clone());
        let Some(refresh) = refresh else {
            return Ok((None, true));
        };
        match self.verify(auth, Proof::Refresh(&refresh)).await {
            Ok(tokens) => Ok((Some(tokens), false)),
            Err(Error::Upstream(u)) if u.kind == UpstreamKind::AccessDenied => Ok((None, true)),
            Err(e) => Err(keep(e)),
        }
    }

    /// Revokes (unless asked not to) and deletes an authentication.
    pub async fn remove(&self, request: RemoveRequest) -> Result<RemoveReply, Error> {
        let entry = self.entry(&request.name)?;
        let _flight = entry.flight.lock().await;
        // From here on nobody is handed this authentication's token.
        if self.write_entries().remove(&request.name).is_none() {
            return Err(Error::NotFound { name: request.name });
        }
        self.pending().remove(&request.name);
        let (auth, secrets) = {
            let shared = entry.lock();
            // The refresh token first: revoking it ends its access tokens too.
            let secrets: Vec<Secret> = shared
                .refresh
                .iter()
                .map(|(t, _)| t.clone())
                .chain(shared.token.iter().map(|t| t.access.clone()))
                .collect();
            (shared.auth.clone(), secrets)
        };
        let mut reply = RemoveReply {
            revoked: 0,
            revoke_error: None,
        };
        if !request.keep_upstream {
            for secret in &secrets {
                match self.inner.upstream.revoke(&auth, secret).await {
                    Ok(()) => reply.revoked += 1,
                    Err(failure) => {
                        reply.revoke_error = Some(failure.explain(&auth.instance_url));
                        break;
                    }
                }
            }
        }
        let name = request.name.clone();
        match self.inner.store.call(move |db| db.delete(&name)).await {
            Ok(_) => {
                entry.cancel.cancel();
                tracing::info!(name = %request.name, revoked = reply.revoked, "authentication removed");
                Ok(reply)
            }
            Err(e) => {
                self.write_entries().insert(request.name, entry.clone());
                Err(internal(e))
            }
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Pending>> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an authorization-code login: keeps the PKCE verifier and
    /// `state` and answers with the URL the person must open.
    pub async fn start_login(&self, request: StartLoginRequest) -> Result<LoginChallenge, Error> {
        let (auth, new) = match &request.add {
            Some(add) => {
                if add.name != request.name {
                    return Err(Error::invalid(
                        "the login and the new authentication have different names",
                    ));
                }
                if add.grant != Grant::AuthorizationCode {
                    return Err(Error::invalid(
                        "only the authorization-code grant logs in through a browser",
                    ));
                }
                (self.new_auth(add)?, true)
            }
            None => {
                let entry = self.entry(&request.name)?;
                let auth = (*entry.lock().auth).clone();
                match auth.grant {
                    Grant::AuthorizationCode => (auth, false),
                    Grant::Password => {
                        return Err(Error::invalid(format!(
                            "{} uses the password grant: log in with the user's name and password",
                            request.name
                        )))
                    }
                    Grant::ClientCredentials => {
                        return Err(Error::invalid(format!(
                            "{0} uses the client-credentials grant: no person logs in; use `snctl refresh {0}`",
                            request.name
                        )))
                    }
                }
            }
        };
        let redirect_uri =
            redirect_uri(auth.redirect_port.unwrap_or(self.inner.login.redirect_port));
        let authorize = ServiceNow::authorize(&auth, &redirect_uri).map_err(Error::invalid)?;
        let expires_at_ms = now_ms() + self.inner.login.timeout.as_millis() as i64;
        let challenge = LoginChallenge {
            authorize_url: authorize.url,
            redirect_uri: redirect_uri.clone(),
            state: authorize.state.clone(),
            expires_at: expires_at_ms / 1000,
        };
        let mut pending = self.pending();
        pending.retain(|_, p| p.expires_at_ms > now_ms());
        // A newer login for the same name replaces the older one.
        pending.insert(
            request.name.clone(),
            Pending {
                auth,
                new,
                state: authorize.state,
                verifier: authorize.verifier,
                redirect_uri,
                expires_at_ms,
            },
        );
        tracing::info!(name = %request.name, new, "browser login started");
        Ok(challenge)
    }

    /// Logs in: with a password, or with the code that ends a started
    /// browser login. The new tokens replace the old once the instance has
    /// issued them.
    pub async fn login(&self, request: LoginRequest) -> Result<AuthSummary, Error> {
        let name = request.name;
        match request.proof {
            LoginProof::Password(user) => {
                let entry = self.entry(&name)?;
                let mut auth = (*entry.lock().auth).clone();
                if auth.grant != Grant::Password {
                    return Err(Error::invalid(format!(
                        "{name} uses the {} grant, not the password grant",
                        auth.grant.as_str()
                    )));
                }
                auth.username = Some(user.username.trim().to_string());
                let proof = Proof::Password {
                    username: &user.username,
                    password: &user.password,
                };
                self.relogin(&entry, auth, proof).await
            }
            LoginProof::AuthorizationCode { code, state } => {
                let pending = self
                    .pending()
                    .remove(&name)
                    .ok_or_else(|| no_pending(&name))?;
                if pending.expires_at_ms <= now_ms() {
                    return Err(no_pending(&name));
                }
                if !same(&pending.state, &state) {
                    tracing::warn!(%name, "a browser login came back with the wrong state");
                    return Err(Error::invalid(format!(
                        "the redirect's state does not match the login snctld started: run `snctl login {name}` again"
                    )));
                }
                let proof = Proof::Code {
                    code: &code,
                    verifier: &pending.verifier,
                    redirect_uri: &pending.redirect_uri,
                };
                if pending.new {
                    let tokens = self.verify(&pending.auth, proof).await?;
                    return self.insert_new(pending.auth, tokens).await;
                }
                let entry = self.entry(&name)?;
                let auth = (*entry.lock().auth).clone();
                if auth.client_id != pending.auth.client_id
                    || auth.instance_url != pending.auth.instance_url
                {
                    return Err(Error::invalid(format!(
                        "{name}'s client or instance changed during the login: run `snctl login {name}` again"
                    )));
                }
                self.relogin(&entry, auth, proof).await
            }
        }
    }

    /// Replaces an existing authentication's tokens with those of a new login.
    async fn relogin(
        &self,
        entry: &Entry,
        auth: Authentication,
        proof: Proof<'_>,
    ) -> Result<AuthSummary, Error> {
        let _flight = entry.flight.lock().await;
        let tokens = self.verify(&auth, proof).await.map_err(|e| match e {
            Error::Upstream(u) => Error::Upstream(UpstreamError {
                message: u
                    .message
                    .replace("nothing was saved", "the previous login stays"),
                ..u
            }),
            other => other,
        })?;
        let (to_store, stored_tokens) = (auth.clone(), tokens.clone());
        let found = self
            .inner
            .store
            .call(move |db| db.replace(&to_store, Some(&stored_tokens)))
            .await
            .map_err(internal)?;
        if !found {
            return Err(Error::NotFound { name: auth.name });
        }
        tracing::info!(name = %auth.name, "logged in");
        {
            let mut shared = entry.lock();
            shared.auth = Arc::new(auth);
            self.install(&mut shared, tokens);
        }
        entry.wake.notify_one();
        Ok(entry.summary())
    }
}
