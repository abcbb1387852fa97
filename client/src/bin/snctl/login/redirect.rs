//! What a redirect must be to count: the registered redirect URL's shape,
//! a pasted address, and the check of this login's `state` (in constant
//! time) before its code or error means anything.

use snctl::Secret;
use snctl_shared::secret::equal_in_constant_time;

use super::error::{CallbackError, Login};
pub(super) use super::request::Params;

/// The port and path of `http://127.0.0.1:PORT/PATH`.
pub(super) fn parse_redirect(uri: &str) -> Option<(u16, &str)> {
    let rest = uri.strip_prefix("http://127.0.0.1:")?;
    let (port, path) = rest.split_at(rest.find('/')?);
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || path.contains(['?', '#']) {
        return None;
    }
    port.parse()
        .ok()
        .filter(|&port| port != 0)
        .map(|port| (port, path))
}

/// The parameters of a pasted redirect address, or of a pasted bare query;
/// or why the text is not usable.
pub(super) fn pasted_params(text: &str, path: &str) -> Result<Params, &'static str> {
    let (address, query) = text.split_once('?').unwrap_or(("", text));
    if !address.is_empty() && !address.ends_with(path) {
        return Err("That is not the address the browser went to");
    }
    let params = Params::parse(query);
    if params.error.is_none() && (params.code.is_none() || params.state.is_none()) {
        return Err("That has no code and state (cut short?)");
    }
    Ok(params)
}

/// What a redirect must carry to settle the login.
pub(super) struct Expected {
    /// The login, for the errors.
    pub(super) login: Login,
    /// The redirect path, e.g. `/callback`.
    pub(super) path: String,
    /// This login's `state`.
    pub(super) state: String,
}

/// What a redirect means for the login.
pub(super) enum Verdict {
    /// It carries this login's state: the login ends with this outcome.
    Settles(Result<Secret, CallbackError>),
    /// It does not carry this login's state (another login's, a stale one,
    /// or forged): the wait goes on.
    Foreign,
    /// It was sent by a process that may not deliver it (who, for the
    /// note): the wait goes on.
    Refused(String),
}

impl Expected {
    /// Whether a redirect is this login's, and if so the code it carries or
    /// why there is none. The state is checked first: without it neither a
    /// code nor an error counts.
    pub(super) fn check(&self, params: Params) -> Verdict {
        let ours = params
            .state
            .as_deref()
            .is_some_and(|state| equal_in_constant_time(state.as_bytes(), self.state.as_bytes()));
        if !ours {
            return Verdict::Foreign;
        }
        Verdict::Settles(match params.error {
            Some(error) => Err(CallbackError::Denied {
                login: Box::new(self.login.clone()),
                error,
                description: params.error_description,
            }),
            None => params.code.ok_or_else(|| CallbackError::MissingCode {
                login: Box::new(self.login.clone()),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "st4te-Xyz";

    #[test]
    fn redirect_uri_must_be_loopback_http_with_a_port() {
        assert_eq!(
            parse_redirect("http://127.0.0.1:8751/callback"),
            Some((8751, "/callback"))
        );
        assert_eq!(parse_redirect("http://127.0.0.1:80/"), Some((80, "/")));
        for bad in [
            "https://127.0.0.1:8751/callback",
            "http://localhost:8751/callback",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:8751",
            "http://127.0.0.1:0/callback",
            "http://127.0.0.1:+8751/callback",
            "http://127.0.0.1:65536/callback",
            "http://127.0.0.1:8751/callback?x=1",
        ] {
            assert_eq!(parse_redirect(bad), None, "{bad}");
        }
    }

    #[test]
    fn pasted_address_or_bare_query_is_read() {
        let full = "http://127.0.0.1:8751/callback?code=c%2Fde&state=st4te-Xyz";
        let params = pasted_params(full, "/callback").unwrap();
        assert_eq!(params.code.unwrap().expose(), "c/de");
        assert_eq!(params.state.as_deref(), Some(STATE));

        let params = pasted_params("state=st4te-Xyz&code=abc", "/callback").unwrap();
        assert_eq!(params.code.unwrap().expose(), "abc");
        let params = pasted_params("?code=abc&state=s", "/callback").unwrap();
        assert_eq!(params.code.unwrap().expose(), "abc");
        let params = pasted_params("127.0.0.1:8751/callback?error=access_denied", "/callback");
        assert_eq!(params.unwrap().error.as_deref(), Some("access_denied"));
    }

    #[test]
    fn pasted_text_that_is_not_the_redirect_is_refused() {
        for text in [
            "hello",
            "http://127.0.0.1:8751/callback",
            "http://127.0.0.1:8751/callback?code=abc",
            "http://127.0.0.1:8751/callback?state=s",
            "https://acme.service-now.com/oauth_auth.do?state=s&code=abc",
        ] {
            assert!(pasted_params(text, "/callback").is_err(), "{text}");
        }
    }

    #[test]
    fn state_is_checked_before_the_code_or_error_counts() {
        let expected = Expected {
            login: Login {
                name: "dev".to_owned(),
                redirect_uri: "http://127.0.0.1:8751/callback".to_owned(),
                client_id: "c1d".to_owned(),
                adding: false,
            },
            path: "/callback".to_owned(),
            state: STATE.to_owned(),
        };
        let check = |query| expected.check(Params::parse(query));
        match check("code=abc&state=st4te-Xyz") {
            Verdict::Settles(Ok(code)) => assert_eq!(code.expose(), "abc"),
            _ => panic!("the code with the right state is refused"),
        }
        for foreign in [
            "code=abc",
            "code=abc&state=",
            "code=abc&state=st4te-Xy",
            "code=abc&state=st4te-Xyz1",
            "error=access_denied&state=other",
            "error=server_error",
        ] {
            assert!(matches!(check(foreign), Verdict::Foreign), "{foreign}");
        }
        assert!(matches!(
            check("state=st4te-Xyz&code="),
            Verdict::Settles(Err(CallbackError::MissingCode { .. }))
        ));
        assert!(matches!(
            check("error=server_error&state=st4te-Xyz"),
            Verdict::Settles(Err(CallbackError::Denied { .. }))
        ));
    }
}
