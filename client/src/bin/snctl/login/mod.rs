//! The loopback end of an authorization-code login.
//!
//! `snctl add --grant authorization-code` and `snctl login` get a challenge
//! from the daemon: the authorize URL at the instance, the redirect URL
//! registered on the Application Registry record
//! (`http://127.0.0.1:PORT/callback`) and the expected `state`.
//! [`wait_for_code`] sends the user to the authorize URL and gets the
//! authorization code back, from whichever comes first: the browser's
//! redirect to a listener on `127.0.0.1:PORT`, or the redirect address pasted
//! on standard input when the browser runs on another machine. The code is a
//! secret: it is never printed nor written anywhere.
//!
//! Anyone can send a request to the listener: any local user, or any web
//! page the user visits (`<img src="http://127.0.0.1:8751/callback?error=x">`).
//! So a redirect, caught or pasted, counts only when it carries this login's
//! `state` (compared in constant time); then it ends the login with the code,
//! with the instance's `error`, or with a missing code. A redirect without
//! that state is answered 400, noted in one line on stderr and otherwise
//! ignored: the wait goes on.
//!
//! The `state` is no secret from other local users, though: the authorize
//! URL carrying it is on the browser's command line. So on Linux a
//! connection counts only when the process that opened it belongs to
//! snctl's own user, to root, or under sudo to the user who ran sudo
//! ([`peer`]); the kernel says whose it is (the other end's socket in
//! `/proc/net/tcp`). Another user's redirect, or one whose user cannot be
//! told, is answered 403, noted in one line on stderr, and ignored.
//!
//! The listener also bounds what a connection can hold ([`listener`]): a
//! deadline for the whole request head and a cap on connections waiting
//! for theirs, so a flood of idle connections never keeps the browser's
//! redirect waiting.
//!
//! The rooms: [`wait`] is the loop that ends the login, [`listener`] the
//! loopback HTTP server, [`request`] what it makes of a connection's bytes
//! (pure, fuzzed), [`redirect`] what a redirect must carry, [`peer`]
//! whose a connection is, [`terminal`] what the person sees, [`browser`]
//! opening the browser, [`error`] why a login ended without a code.

mod browser;
mod error;
mod listener;
mod peer;
mod redirect;
mod request;
mod terminal;
mod wait;

use std::time::Duration;

pub use wait::wait_for_code;

/// One authorization-code login to complete.
pub struct Authorize<'a> {
    /// The authentication's name, for the messages.
    pub name: &'a str,
    /// Where the user logs in and allows access.
    pub authorize_url: &'a str,
    /// The registered redirect URL, `http://127.0.0.1:PORT/PATH`.
    pub redirect_uri: &'a str,
    /// The `state` the redirect must carry.
    pub state: &'a str,
    /// How long to wait for the redirect.
    pub timeout: Duration,
    /// Whether to open a browser (false for `--no-browser`).
    pub open_browser: bool,
    /// Whether the login adds the authentication (`snctl add`), which
    /// changes what the user must run to try again.
    pub adding: bool,
}
