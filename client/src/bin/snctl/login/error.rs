//! Why a browser login ended without a code, said so that the person
//! knows what to fix: the redirect port, the Application Registry record,
//! or just to try again.

use std::io;
use std::time::Duration;

use super::Authorize;
use crate::output::human;

/// The login an error is about, for its message: what to register and
/// what to run again.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    pub(super) name: String,
    pub(super) redirect_uri: String,
    pub(super) client_id: String,
    pub(super) adding: bool,
}

impl Login {
    pub(super) fn of(request: &Authorize) -> Login {
        let query = request.authorize_url.split_once('?').map_or("", |(_, q)| q);
        let client_id = form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "client_id")
            .map(|(_, id)| id.into_owned())
            .unwrap_or_default();
        Login {
            name: request.name.to_owned(),
            redirect_uri: request.redirect_uri.to_owned(),
            client_id,
            adding: request.adding,
        }
    }

    /// What to run to try once more.
    pub(super) fn again(&self) -> String {
        if self.adding {
            "run the same `snctl add` again".to_owned()
        } else {
            format!("run `snctl login {}` again", self.name)
        }
    }
}

/// Why no authorization code came back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallbackError {
    /// The redirect URL is not `http://127.0.0.1:PORT/PATH`.
    #[error(
        "the redirect URL {} is not http://127.0.0.1:PORT/PATH: set the port with \
         `snctl update {name} --redirect-port N`",
        one_line(.uri)
    )]
    BadRedirect { name: String, uri: String },
    /// Something else listens on the redirect port.
    #[error(
        "port {port} on 127.0.0.1 is in use, so the redirect cannot come back to snctl: \
         stop what uses it, or pick another port with `snctl update {name} \
         --redirect-port N` and register http://127.0.0.1:N/callback on the \
         Application Registry record"
    )]
    PortInUse { name: String, port: u16 },
    /// The listener could not be set up, or failed.
    #[error(
        "cannot listen for the redirect on 127.0.0.1:{port} ({source}): \
         run `snctl login {name}` again"
    )]
    Listen {
        name: String,
        port: u16,
        source: io::Error,
    },
    /// The instance redirected with an error instead of a code.
    #[error("{}", refusal(.login, .error, .description.as_deref()))]
    Denied {
        login: Box<Login>,
        error: String,
        description: Option<String>,
    },
    /// The redirect carries this login's state but no code.
    #[error("the redirect carries no authorization code: {}", .login.again())]
    MissingCode { login: Box<Login> },
    /// Nothing came back in time.
    #[error(
        "no login came back within {}: if the browser shows an error page of the \
         instance (such as Invalid redirect_uri), check that the Application Registry \
         record's Redirect URL is exactly {} and its Client ID {}; otherwise {} \
         (use --no-browser on a host without a browser)",
        human(*.waited),
        .login.redirect_uri,
        one_line(&.login.client_id),
        .login.again()
    )]
    Timeout { login: Box<Login>, waited: Duration },
}

impl CallbackError {
    /// The exit status: 2 when the administrator must change the redirect
    /// port, 7 when the instance refused the login (the person's Deny
    /// included: it is the instance's answer), 1 otherwise.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            CallbackError::BadRedirect { .. } | CallbackError::PortInUse { .. } => 2,
            CallbackError::Denied { .. } => 7,
            _ => 1,
        }
    }
}

/// What went wrong, for an error the instance redirected back instead of a
/// code, and what fixes it. RFC 6749 §4.1.2.1 names the errors; ServiceNow
/// says `invalid_request` for a Redirect URL or client it does not know,
/// and names which in the description.
fn refusal(login: &Login, error: &str, description: Option<&str>) -> String {
    let said = match description {
        Some(description) => format!("{}: {}", one_line(error), one_line(description)),
        None => one_line(error),
    };
    let lower = said.to_ascii_lowercase();
    let (name, uri, id) = (&login.name, &login.redirect_uri, one_line(&login.client_id));
    let again = login.again();
    if error == "access_denied" {
        format!(
            "access was refused on the instance's consent page (the person logging in clicked Deny; {said}): \
             {again} and click Allow"
        )
    } else if lower.contains("redirect") {
        let fix = if login.adding {
            "or run the same `snctl add` with --redirect-port N, the port of the one registered"
                .to_owned()
        } else {
            format!(
                "or use the port of the one registered (`snctl update {name} --redirect-port N`), \
                 then run `snctl login {name}`"
            )
        };
        format!(
            "the instance refused the Redirect URL {uri} ({said}): set the Redirect URL of the \
             Application Registry record to exactly {uri}, {fix}"
        )
    } else if error == "invalid_client" || lower.contains("client_id") {
        let fix = if login.adding {
            "then run `snctl add` again with it (--client-id)".to_owned()
        } else {
            format!("run `snctl update {name} --client-id ID`, then `snctl login {name}`")
        };
        format!(
            "the instance does not know the client ID {id} ({said}): copy the Client ID of the \
             Application Registry record, {fix}"
        )
    } else if error == "invalid_scope" {
        format!(
            "the instance refused the scope asked for ({said}): give a scope of the Application \
             Registry record (--scope), then {again}"
        )
    } else if error == "server_error" || error == "temporarily_unavailable" {
        format!("the instance could not complete the login ({said}): {again} later")
    } else {
        format!(
            "the instance refused the login ({said}): check the Application Registry record of \
             client ID {id}, then {again}"
        )
    }
}

/// Text from outside (a redirect's error, a URL) made fit for a one-line
/// message: control characters blanked, at most 200 characters.
pub(super) fn one_line(text: &str) -> String {
    const MAX: usize = 200;
    let mut line: String = text
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX).is_some() {
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_says_what_to_fix() {
        let login = |adding| Login {
            name: "dev".to_owned(),
            redirect_uri: "http://127.0.0.1:8751/callback".to_owned(),
            client_id: "c1d".to_owned(),
            adding,
        };
        let refused = |adding, error: &str, description: Option<&str>| {
            let error = CallbackError::Denied {
                login: Box::new(login(adding)),
                error: error.to_owned(),
                description: description.map(str::to_owned),
            };
            assert_eq!(error.exit_code(), 7);
            error.to_string()
        };
        assert_eq!(
            refused(false, "invalid_request", Some("Invalid redirect_uri")),
            "the instance refused the Redirect URL http://127.0.0.1:8751/callback \
             (invalid_request: Invalid redirect_uri): set the Redirect URL of the Application \
             Registry record to exactly http://127.0.0.1:8751/callback, or use the port of the \
             one registered (`snctl update dev --redirect-port N`), then run `snctl login dev`"
        );
        assert!(refused(true, "invalid_request", Some("Invalid redirect_uri"))
            .ends_with("or run the same `snctl add` with --redirect-port N, the port of the one registered"));
        assert_eq!(
            refused(false, "invalid_client", None),
            "the instance does not know the client ID c1d (invalid_client): copy the Client ID \
             of the Application Registry record, run `snctl update dev --client-id ID`, then \
             `snctl login dev`"
        );
        assert!(refused(true, "invalid_request", Some("Invalid client_id"))
            .starts_with("the instance does not know the client ID c1d"));
        assert!(refused(false, "invalid_scope", None).contains("--scope"));
        assert!(refused(false, "temporarily_unavailable", None).ends_with("again later"));
        assert_eq!(
            refused(true, "unauthorized_client", None),
            "the instance refused the login (unauthorized_client): check the Application \
             Registry record of client ID c1d, then run the same `snctl add` again"
        );
    }

    #[test]
    fn a_redirect_without_a_code_says_what_to_run_again() {
        let missing = |adding| {
            CallbackError::MissingCode {
                login: Box::new(Login {
                    name: "desk".to_owned(),
                    redirect_uri: "http://127.0.0.1:8751/callback".to_owned(),
                    client_id: "c1d".to_owned(),
                    adding,
                }),
            }
            .to_string()
        };
        assert_eq!(
            missing(false),
            "the redirect carries no authorization code: run `snctl login desk` again"
        );
        assert_eq!(
            missing(true),
            "the redirect carries no authorization code: run the same `snctl add` again"
        );
    }

    #[test]
    fn outside_text_stays_on_one_line() {
        assert_eq!(one_line("a\nb\u{1b}[2J"), "a b [2J");
        assert_eq!(one_line(&"x".repeat(300)).chars().count(), 201);
    }
}
