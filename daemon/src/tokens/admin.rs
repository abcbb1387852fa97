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
//! [`Tokens::login`], which checks `state` and exchanges the code. The
//! instance then says which of its users logged in (whoever held the
//! browser, not necessarily who ran snctl): that user name is kept with the
//! authentication, as the password grant's is, and shown.

use std::sync::Arc;
use std::time::Duration;

use snctl_shared::protocol::{
    AddRequest, AuthState, AuthSummary, Grant, JwtSettings, LoginChallenge, LoginProof,
    LoginRequest, RemoveReply, RemoveRequest, StartLoginRequest, UpdateRequest, UpstreamError,
    UpstreamKind,
};
use snctl_shared::secret::equal_in_constant_time;
use snctl_shared::{name, Error, Secret};

use super::{carry_issue_time, internal, redirect_uri, unattended, upstream_error, Entry, Tokens};
use crate::access::ReaderIds;
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

/// Longest refresh-token lifespan accepted: ten years is already "never".
const MAX_REFRESH_LIFESPAN_SECS: u64 = 10 * 366 * 24 * 60 * 60;

fn check_lifespan(secs: u64) -> Result<u64, Error> {
    if secs == 0 || secs > MAX_REFRESH_LIFESPAN_SECS {
        return Err(Error::invalid(format!(
            "a refresh-token lifespan of {secs} s is impossible: give the Refresh Token Lifespan \
             of the Application Registry record (ServiceNow's default is 100 days)"
        )));
    }
    Ok(secs)
}

/// What a failed check of new settings leaves behind, for the message.
const NOTHING_SAVED: &str = "nothing was saved";
const SETTINGS_KEPT: &str = "the previous settings stay in use";
const LOGIN_KEPT: &str = "the previous login stays";

/// Browser logins that may wait for their browsers at once. Each holds
/// an authentication's settings (its client secret among them) until it is
/// finished or times out; only admins start them, and this bounds what a
/// script gone wrong can pile up.
const MAX_PENDING_LOGINS: usize = 64;

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
            created_at_ms: self.now_ms(),
            username: request.user.as_ref().map(|u| u.username.clone()),
            redirect_port: code.then(|| {
                request
                    .redirect_port
                    .unwrap_or(self.login_policy().redirect_port)
            }),
            refresh_lifespan_secs: check_lifespan(
                request
                    .refresh_lifespan_secs
                    .unwrap_or(DEFAULT_REFRESH_LIFESPAN_SECS),
            )?,
            readers: ReaderIds::resolve(&request.readers)?,
            jwt: check_jwt(request)?,
            proxy: request.proxy,
        };
        check_auth(&auth)?;
        Ok(auth)
    }

    /// Registers an authentication once it has produced a token. An
    /// authorization-code authentication is added by
    /// [`Tokens::start_login`] and [`Tokens::login`] instead.
    pub async fn add(&self, mut request: AddRequest) -> Result<AuthSummary, Error> {
        if let Some(user) = &mut request.user {
            user.username = user.username.trim().to_string();
        }
        let auth = self.new_auth(&request)?;
        let tokens = match (&request.grant, &request.user) {
            (Grant::ClientCredentials, None) => {
                self.verify(&auth, Proof::ClientCredentials, NOTHING_SAVED)
                    .await?
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
                self.verify(&auth, proof, NOTHING_SAVED).await?
            }
            (Grant::Password, None) => {
                return Err(Error::invalid(
                    "the password grant needs a user: give --username",
                ))
            }
            (Grant::JwtBearer, None) => {
                self.verify(&auth, Proof::JwtBearer, NOTHING_SAVED).await?
            }
            (Grant::JwtBearer, Some(_)) => {
                return Err(Error::invalid(
                    "the jwt-bearer grant takes no user: the --jwt-subject user is the one tokens act as",
                ))
            }
            (Grant::AuthorizationCode, _) => return Err(Error::invalid(
                "an authorization-code authentication is added by a browser login: a StartLogin \
                     request with the settings, then Login with the code (`snctl add` does both)",
            )),
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

    /// Gets a token with settings that are not stored yet; on failure the
    /// message ends with what stays as it was (`kept`).
    async fn verify(
        &self,
        auth: &Authentication,
        proof: Proof<'_>,
        kept: &str,
    ) -> Result<TokenSet, Error> {
        self.ask(auth, proof).await?.map_err(|failure| {
            Error::Upstream(UpstreamError {
                message: format!("{}; {kept}", failure.explain(&auth.instance_url)),
                ..upstream_error(&failure, &auth.instance_url, None)
            })
        })
    }

    /// [`Tokens::verify`] of an authorization code issued for
    /// `redirect_uri`: a refusal says which Redirect URL to register.
    async fn verify_code(
        &self,
        auth: &Authentication,
        proof: Proof<'_>,
        redirect_uri: &str,
        kept: &str,
    ) -> Result<TokenSet, Error> {
        self.ask(auth, proof).await?.map_err(|failure| {
            let explained = failure.explain_code(&auth.instance_url, redirect_uri, &auth.client_id);
            Error::Upstream(UpstreamError {
                message: format!("{explained}; {kept}"),
                ..upstream_error(&failure, &auth.instance_url, None)
            })
        })
    }

    /// The user name of the ServiceNow user a browser login's tokens act
    /// for, as the instance says; None (and a warning in the log) when it
    /// cannot be told: the login stands all the same.
    async fn who_logged_in(&self, auth: &Authentication, tokens: &TokenSet) -> Option<String> {
        let asked = self
            .inner
            .upstream
            .current_user(&auth.instance_url, &tokens.access_token)
            .await;
        match asked {
            Ok(user) => {
                tracing::info!(name = %auth.name, %user, "browser login by this ServiceNow user");
                Some(user)
            }
            Err(why) => {
                tracing::warn!(name = %auth.name, "cannot tell which ServiceNow user logged in: {why}");
                None
            }
        }
    }

    /// Changes settings. New credentials must produce a token before they
    /// replace the old ones: client credentials ask for one, a login by a
    /// person refreshes with its refresh token. When that fails nothing
    /// changes (a rotated secret whose login also died is saved by
    /// `snctl login --client-secret-…` instead).
    pub async fn update(&self, request: UpdateRequest) -> Result<AuthSummary, Error> {
        let entry = self.entry(&request.name)?;
        let _flight = self.lock_flight(&entry).await?;
        let (mut auth, held) = {
            let shared = entry.lock();
            ((*shared.auth).clone(), shared.refresh.clone())
        };
        let name = auth.name.clone();
        let Changed {
            credentials,
            lifespan,
        } = apply_update(&mut auth, request)?;
        check_auth(&auth)?;
        let tokens = match (credentials, auth.grant.needs_person(), &held) {
            (false, _, _) => None,
            (true, false, _) => Some(self.verify(&auth, unattended(&auth), SETTINGS_KEPT).await?),
            (true, true, Some(refresh)) => {
                let mut tokens = self
                    .verify(&auth, Proof::Refresh(&refresh.token), SETTINGS_KEPT)
                    .await
                    .map_err(|e| relogin_hint(e, &name))?;
                carry_issue_time(&mut tokens, held.as_ref());
                Some(tokens)
            }
            (true, true, None) => {
                return Err(Error::invalid(format!(
                    "{name} has no login to check new credentials with; {SETTINGS_KEPT}: log in \
                     with them, `snctl login {name} --client-secret-prompt`"
                )))
            }
        };
        let (to_store, stored_tokens) = (auth.clone(), tokens.clone());
        let found = self
            .inner
            .store
            .call(move |db| db.replace(&to_store, stored_tokens.as_ref(), false))
            .await
            .map_err(internal)?;
        if !found {
            return Err(Error::NotFound { name });
        }
        tracing::info!(%name, "authentication updated");
        {
            let mut shared = entry.lock();
            shared.auth = Arc::new(auth);
            if lifespan {
                // The deadline moved: warn afresh.
                shared.warned = 0;
            }
            if let Some(tokens) = tokens {
                // Unsaved tokens still to save: these are newer, but only
                // a refresh token among them makes the one in hand moot.
                if tokens.refresh_token.is_some() {
                    shared.unsaved = None;
                } else if let Some(unsaved) = shared.unsaved.take() {
                    shared.unsaved = Some(Box::new(super::Unsaved {
                        tokens: super::with_unsaved_refresh(tokens.clone(), Some(&unsaved)),
                        ..*unsaved
                    }));
                }
                self.install(&mut shared, tokens);
            }
        }
        entry.wake.notify_one();
        Ok(entry.summary())
    }

    /// Revokes (unless asked not to) and deletes an authentication.
    pub async fn remove(&self, request: RemoveRequest) -> Result<RemoveReply, Error> {
        let entry = match self.entry(&request.name) {
            Ok(entry) => entry,
            Err(error) => return self.remove_unloaded(&request.name, error).await,
        };
        let _flight = self.lock_flight(&entry).await?;
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
                .map(|held| held.token.clone())
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
                // Still under the flight lock: work queued behind it finds
                // the authentication gone.
                entry.remove();
                tracing::info!(name = %request.name, revoked = reply.revoked, "authentication removed");
                Ok(reply)
            }
            Err(e) => {
                self.write_entries().insert(request.name, entry.clone());
                Err(internal(e))
            }
        }
    }

    /// Deletes a stored authentication that was not loaded because its
    /// secrets do not open (a damaged database, another key): it can only
    /// be removed, and nothing can be revoked for it.
    async fn remove_unloaded(&self, name: &str, not_found: Error) -> Result<RemoveReply, Error> {
        let row = name.to_string();
        let deleted = self
            .inner
            .store
            .call(move |db| db.delete(&row))
            .await
            .map_err(internal)?;
        if !deleted {
            return Err(not_found);
        }
        tracing::info!(%name, "unreadable authentication removed");
        Ok(RemoveReply {
            revoked: 0,
            revoke_error: Some(
                "its stored secrets did not open, so nothing could be revoked at the instance"
                    .into(),
            ),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Pending>> {
        let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Started logins hold a verifier and maybe a secret: drop stale ones.
        pending.retain(|_, p| p.expires_at_ms > self.now_ms());
        pending
    }

    /// Starts an authorization-code login: keeps the PKCE verifier and
    /// `state` and answers with the URL the person must open.
    pub async fn start_login(&self, request: StartLoginRequest) -> Result<LoginChallenge, Error> {
        let (auth, new) = match &request.add {
            Some(add) => {
                if add.name != request.name || request.client_secret.is_some() {
                    return Err(Error::invalid(
                        "a new authentication's login takes its name and secret from its settings",
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
                let mut auth = (*entry.lock().auth).clone();
                check_login_grant(&auth, Grant::AuthorizationCode)?;
                if let Some(secret) = &request.client_secret {
                    auth.client_secret = secret.clone();
                    check_auth(&auth)?;
                }
                (auth, false)
            }
        };
        let redirect_uri = redirect_uri(
            auth.redirect_port
                .unwrap_or(self.login_policy().redirect_port),
        );
        let authorize = ServiceNow::authorize(&auth, &redirect_uri).map_err(Error::invalid)?;
        let expires_at_ms = self.now_ms() + self.login_policy().timeout.as_millis() as i64;
        let challenge = LoginChallenge {
            authorize_url: authorize.url,
            redirect_uri: redirect_uri.clone(),
            state: authorize.state.clone(),
            expires_at: expires_at_ms / 1000,
        };
        // A newer login for the same name replaces the older one.
        let mut pending = self.pending();
        if pending.len() >= MAX_PENDING_LOGINS && !pending.contains_key(&request.name) {
            return Err(Error::Unavailable {
                message: format!(
                    "{MAX_PENDING_LOGINS} browser logins are already waiting for their browsers: \
                     finish one, or try again once one has timed out (within {} s)",
                    self.login_policy().timeout.as_secs()
                ),
            });
        }
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
    /// browser login. The new tokens (and a new client secret, when one
    /// came with the login) replace the old once the instance has issued
    /// them.
    pub async fn login(&self, request: LoginRequest) -> Result<AuthSummary, Error> {
        let name = request.name;
        match request.proof {
            LoginProof::Password(user) => {
                let entry = self.entry(&name)?;
                let username = user.username.trim().to_string();
                let secret = request.client_secret;
                self.relogin(
                    &entry,
                    |auth| {
                        check_login_grant(auth, Grant::Password)?;
                        auth.username = Some(username.clone());
                        if let Some(secret) = &secret {
                            auth.client_secret = secret.clone();
                        }
                        check_auth(auth)?;
                        Ok(())
                    },
                    |_| Proof::Password {
                        username: &username,
                        password: &user.password,
                    },
                    None,
                )
                .await
            }
            LoginProof::AuthorizationCode { code, state } => {
                let pending = self
                    .pending()
                    .remove(&name)
                    .ok_or_else(|| no_pending(&name))?;
                if !equal_in_constant_time(pending.state.as_bytes(), state.as_bytes()) {
                    tracing::warn!(%name, "a browser login came back with the wrong state");
                    return Err(Error::invalid(format!(
                        "the redirect's state does not match the login snctld started: run `snctl login {name}` again"
                    )));
                }
                let proof = |_: &Authentication| Proof::Code {
                    code: &code,
                    verifier: &pending.verifier,
                    redirect_uri: &pending.redirect_uri,
                };
                if pending.new {
                    let tokens = self
                        .verify_code(
                            &pending.auth,
                            proof(&pending.auth),
                            &pending.redirect_uri,
                            NOTHING_SAVED,
                        )
                        .await?;
                    let mut auth = pending.auth.clone();
                    auth.username = self.who_logged_in(&auth, &tokens).await;
                    return self.insert_new(auth, tokens).await;
                }
                let entry = self.entry(&name)?;
                let started = &pending.auth;
                self.relogin(&entry, |auth| {
                    if auth.client_id != started.client_id || auth.instance_url != started.instance_url {
                        return Err(Error::invalid(format!(
                            "{name}'s client or instance changed during the login: run `snctl login {name}` again"
                        )));
                    }
                    auth.client_secret = started.client_secret.clone();
                    Ok(())
                }, proof, Some(&pending.redirect_uri))
                .await
            }
        }
    }

    /// Replaces an existing authentication's tokens with those of a new
    /// login. `adjust` applies the login's changes to the settings as they
    /// are once the flight lock is held, so a concurrent update is not
    /// undone. `redirect_uri` is that of an authorization code's login.
    async fn relogin<'p>(
        &self,
        entry: &Entry,
        adjust: impl FnOnce(&mut Authentication) -> Result<(), Error>,
        proof: impl FnOnce(&Authentication) -> Proof<'p>,
        redirect_uri: Option<&str>,
    ) -> Result<AuthSummary, Error> {
        let _flight = self.lock_flight(entry).await?;
        let mut auth = (*entry.lock().auth).clone();
        adjust(&mut auth)?;
        // A new login: its refresh token (or none) replaces the old one.
        let tokens = match redirect_uri {
            Some(uri) => {
                let tokens = self
                    .verify_code(&auth, proof(&auth), uri, LOGIN_KEPT)
                    .await?;
                auth.username = self.who_logged_in(&auth, &tokens).await;
                tokens
            }
            None => self.verify(&auth, proof(&auth), LOGIN_KEPT).await?,
        };
        let (to_store, stored_tokens) = (auth.clone(), tokens.clone());
        let found = self
            .inner
            .store
            .call(move |db| db.replace(&to_store, Some(&stored_tokens), true))
            .await
            .map_err(internal)?;
        if !found {
            return Err(Error::NotFound { name: auth.name });
        }
        tracing::info!(name = %auth.name, "logged in");
        {
            let mut shared = entry.lock();
            shared.auth = Arc::new(auth);
            shared.refresh = None;
            // A new login: whatever the old one left unsaved is moot.
            shared.unsaved = None;
            self.install(&mut shared, tokens);
        }
        entry.wake.notify_one();
        Ok(entry.summary())
    }
}

/// What an update changes, besides the settings themselves.
struct Changed {
    /// Whatever gets a token changed: the new settings must prove it.
    credentials: bool,
    /// The refresh token's recorded lifespan, and so its deadline, moved.
    lifespan: bool,
}

/// Applies `request` to `auth`, checking each new setting.
fn apply_update(auth: &mut Authentication, request: UpdateRequest) -> Result<Changed, Error> {
    let name = auth.name.clone();
    let mut credentials = false;
    if let Some(url) = request.instance_url {
        let url = normalize_instance_url(&url).map_err(Error::invalid)?;
        if auth.grant.needs_person() && url != auth.instance_url {
            // Its refresh token must not be sent to another host.
            return Err(Error::invalid(format!(
                "{name}'s login belongs to {}: for another instance, `snctl remove {name}` and add it again",
                auth.instance_url
            )));
        }
        auth.instance_url = url;
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
    if let Some(readers) = &request.readers {
        auth.readers = ReaderIds::resolve(readers)?;
        settings = true;
    }
    if let Some(on) = request.proxy {
        auth.proxy = on;
        settings = true;
    }
    let lifespan_changed = match request.refresh_lifespan_secs {
        Some(secs) => {
            let secs = check_lifespan(secs)?;
            settings = true;
            std::mem::replace(&mut auth.refresh_lifespan_secs, secs) != secs
        }
        None => false,
    };
    if !credentials && !settings {
        return Err(Error::invalid(
            "nothing to change: give --instance, --client-id, --client-secret-stdin or \
             --client-secret-prompt, --client-auth, --scope, --redirect-port, \
             --refresh-token-lifespan, --allow-… or --proxy",
        ));
    }
    Ok(Changed {
        credentials,
        lifespan: lifespan_changed,
    })
}

/// A login of the wrong kind gets a message that says which kind is right.
fn check_login_grant(auth: &Authentication, wanted: Grant) -> Result<(), Error> {
    let name = &auth.name;
    match auth.grant {
        grant if grant == wanted => Ok(()),
        Grant::ClientCredentials => Err(Error::invalid(format!(
            "{name} uses the client-credentials grant: no person logs in; use `snctl refresh {name}`"
        ))),
        Grant::Password => Err(Error::invalid(format!(
            "{name} uses the password grant: log in with the user's name and password"
        ))),
        Grant::AuthorizationCode => Err(Error::invalid(format!(
            "{name} uses the authorization-code grant: log in through the browser"
        ))),
        Grant::JwtBearer => Err(Error::invalid(format!(
            "{name} uses the jwt-bearer grant: no person logs in; use `snctl refresh {name}`"
        ))),
    }
}

/// The JWT settings of a new authentication: given, with a usable key and
/// a subject, exactly for the jwt-bearer grant.
fn check_jwt(request: &AddRequest) -> Result<Option<JwtSettings>, Error> {
    match (request.grant, &request.jwt) {
        (Grant::JwtBearer, Some(jwt)) => {
            crate::jwt::check_key(&jwt.key).map_err(Error::invalid)?;
            let subject = jwt.subject.trim();
            if subject.is_empty() {
                return Err(Error::invalid(
                    "the jwt-bearer grant needs a subject: give --jwt-subject USER",
                ));
            }
            Ok(Some(JwtSettings {
                key: jwt.key.clone(),
                subject: subject.to_string(),
                kid: jwt
                    .kid
                    .as_ref()
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty()),
            }))
        }
        (Grant::JwtBearer, None) => Err(Error::invalid(
            "the jwt-bearer grant needs a signing key and a subject: give --jwt-key FILE and --jwt-subject USER",
        )),
        (_, Some(_)) => Err(Error::invalid(
            "a JWT signing key only applies to the jwt-bearer grant",
        )),
        (_, None) => Ok(None),
    }
}

/// A refresh refused with new credentials: the login may have died too.
fn relogin_hint(error: Error, name: &str) -> Error {
    match error {
        Error::Upstream(u) if u.kind == UpstreamKind::AccessDenied => {
            Error::Upstream(UpstreamError {
                message: format!(
                    "{}; if the old login has died as well, log in with the new secret: `snctl \
                     login {name} --client-secret-prompt`",
                    u.message
                ),
                ..u
            })
        }
        other => other,
    }
}
