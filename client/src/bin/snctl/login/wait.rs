//! The wait for the authorization code: whichever comes first of the
//! browser's redirect to the listener and a redirect address pasted on
//! standard input, until the timeout. Each event comes to one loop over a
//! channel; a redirect that is not this login's, or from another user, is
//! noted and the wait goes on.

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use snctl::Secret;
use zeroize::Zeroizing;

use super::browser::{spawn_browser, BrowserError};
use super::error::{one_line, CallbackError, Login};
use super::listener::Listener;
use super::peer::Senders;
use super::redirect::{parse_redirect, pasted_params, Expected, Verdict};
use super::terminal::{announce_browser, announce_no_browser, paste_instructions, Spinner};
use super::Authorize;

/// How often the wait looks for connections and updates the spinner.
pub(super) const POLL: Duration = Duration::from_millis(50);

/// The line on stderr for a redirect that does not carry this login's state.
pub(super) const IGNORED: &str =
    "ignored a redirect that does not carry this login's state (not from this login, or stale)";

/// Sends the user to the authorize URL and returns the authorization code
/// that comes back: by the browser's redirect to the loopback listener, or
/// pasted on `paste` (standard input; read at once with `--no-browser`, or
/// once no browser opens).
pub fn wait_for_code<R: BufRead + Send + 'static>(
    request: &Authorize,
    paste: R,
) -> Result<Secret, CallbackError> {
    let (port, path) =
        parse_redirect(request.redirect_uri).ok_or_else(|| CallbackError::BadRedirect {
            name: request.name.to_owned(),
            uri: request.redirect_uri.to_owned(),
        })?;
    let expected = Arc::new(Expected {
        login: Login::of(request),
        path: path.to_owned(),
        state: request.state.to_owned(),
    });
    let senders = Senders::of_this_process();
    let listener = Listener::bind(port, request.name, Arc::clone(&expected), senders)?;
    eprintln!(
        "Redirect URL registered on the Application Registry record must be: {}",
        request.redirect_uri
    );
    let (events, inbox) = mpsc::channel();
    let mut wait = Wait {
        request,
        port,
        expected,
        listener,
        refused: HashSet::new(),
        events,
        inbox,
        paste: Some(paste),
        spinner: Spinner::none(),
    };
    if request.open_browser {
        announce_browser(request);
        let events = wait.events.clone();
        spawn_browser(request.authorize_url.to_owned(), move |why| {
            let _ = events.send(Event::BrowserFailed(why));
        });
        wait.spinner = Spinner::start();
    } else {
        announce_no_browser(request, port);
        wait.read_pastes();
    }
    wait.run()
}

/// Something the wait learns from its threads.
pub(super) enum Event {
    /// A GET of the redirect path was answered: what it means.
    Redirect(Verdict),
    /// A line read from the paste source.
    Pasted(Zeroizing<String>),
    /// The browser could not be opened: why.
    BrowserFailed(BrowserError),
}

/// A login being waited for.
pub(super) struct Wait<'r, 'a, R> {
    request: &'r Authorize<'a>,
    port: u16,
    expected: Arc<Expected>,
    listener: Listener,
    /// The senders already noted as refused, noted once each.
    refused: HashSet<String>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    /// The paste source, until it is read.
    paste: Option<R>,
    spinner: Spinner,
}

impl<R: BufRead + Send + 'static> Wait<'_, '_, R> {
    /// Waits for the first redirect or pasted address that carries this
    /// login's state, or the timeout.
    pub(super) fn run(mut self) -> Result<Secret, CallbackError> {
        let deadline = Instant::now() + self.request.timeout;
        loop {
            let events = self.events.clone();
            self.listener.accept_pending(move |verdict| {
                let _ = events.send(Event::Redirect(verdict));
            })?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CallbackError::Timeout {
                    login: Box::new(Login::of(self.request)),
                    waited: self.request.timeout,
                });
            }
            self.spinner.show_left(left);
            // Never disconnected: `self.events` is a sender.
            if let Ok(event) = self.inbox.recv_timeout(POLL.min(left)) {
                if let Some(outcome) = self.handle(event) {
                    return outcome;
                }
            }
        }
    }

    /// The outcome an event settles, if it settles one.
    pub(super) fn handle(&mut self, event: Event) -> Option<Result<Secret, CallbackError>> {
        match event {
            Event::Redirect(verdict) => self.settled(verdict),
            Event::Pasted(text) => self.pasted(&text),
            Event::BrowserFailed(why) => {
                self.spinner.stop();
                eprintln!(
                    "Could not open a browser ({}): open the address above in a browser on \
                     any machine, log in and allow access.",
                    one_line(&why.to_string())
                );
                paste_instructions(self.request, self.port);
                self.read_pastes();
                None
            }
        }
    }

    /// The outcome a pasted line settles; says why when it is not usable.
    pub(super) fn pasted(&mut self, text: &str) -> Option<Result<Secret, CallbackError>> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        match pasted_params(text, &self.expected.path) {
            Ok(params) => self.settled(self.expected.check(params)),
            Err(why) => {
                self.spinner.say(&format!(
                    "{why}: paste the whole address from the address bar, starting {}?",
                    self.request.redirect_uri
                ));
                None
            }
        }
    }

    /// The outcome a redirect settles; notes one that is not this login's,
    /// and once each sender that may not deliver it.
    pub(super) fn settled(&mut self, verdict: Verdict) -> Option<Result<Secret, CallbackError>> {
        match verdict {
            Verdict::Settles(outcome) => Some(outcome),
            Verdict::Foreign => {
                self.spinner.say(IGNORED);
                None
            }
            Verdict::Refused(sender) => {
                if self.refused.insert(sender.clone()) {
                    self.spinner.say(&format!(
                        "warning: ignored a redirect sent by {}: only processes of snctl's own \
                         user (or root, or the user who ran sudo) may deliver it; still waiting",
                        one_line(&sender)
                    ));
                }
                None
            }
        }
    }

    /// Starts reading pasted lines, once.
    pub(super) fn read_pastes(&mut self) {
        if let Some(source) = self.paste.take() {
            spawn_paste_reader(source, self.events.clone());
        }
    }
}

/// Sends each line read from `source` as [`Event::Pasted`], until the end
/// of the input or of the wait.
pub(super) fn spawn_paste_reader<R: BufRead + Send + 'static>(
    mut source: R,
    events: Sender<Event>,
) {
    thread::spawn(move || loop {
        let mut line = Zeroizing::new(Vec::new());
        match source.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = Zeroizing::new(String::from_utf8_lossy(&line).into_owned());
                if events.send(Event::Pasted(text)).is_err() {
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::listener::MAX_HANDLERS;
    use crate::login::request::MAX_HEAD;
    use std::io::{Cursor, Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;

    const STATE: &str = "st4te-Xyz";

    /// A port that was free a moment ago.
    fn free_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Runs a no-browser wait on `port` in a thread, with `paste` as what
    /// the user pastes.
    fn start(
        port: u16,
        paste: &str,
        timeout: Duration,
    ) -> JoinHandle<Result<Secret, CallbackError>> {
        let paste = Cursor::new(paste.as_bytes().to_vec());
        thread::spawn(move || {
            let redirect_uri = format!("http://127.0.0.1:{port}/callback");
            let request = Authorize {
                name: "dev",
                authorize_url: "https://example.invalid/oauth_auth.do?client_id=c1d&state=x",
                redirect_uri: &redirect_uri,
                state: STATE,
                timeout,
                open_browser: false,
                adding: false,
            };
            wait_for_code(&request, paste)
        })
    }

    /// A connection to the listener, once it is up.
    fn connect(port: u16) -> TcpStream {
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                Ok(stream) => return stream,
                Err(e) if Instant::now() > give_up => panic!("cannot connect: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends `method target` to the listener once it is up; the status line
    /// and the whole answer.
    fn get(port: u16, method: &str, target: &str) -> (String, String) {
        let mut stream = connect(port);
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer.lines().next().unwrap_or_default().to_owned();
        (status, answer)
    }

    fn wait(handle: JoinHandle<Result<Secret, CallbackError>>) -> Result<Secret, CallbackError> {
        handle.join().unwrap()
    }

    #[test]
    fn right_state_gives_the_code() {
        let port = free_port();
        let waiting = start(port, "", Duration::from_secs(10));
        let (status, answer) = get(port, "GET", "/callback?code=the-code&state=st4te-Xyz");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(answer.contains("Content-Type: text/html; charset=utf-8"));
        assert!(answer.contains("Cache-Control: no-store"));
        assert!(answer.contains("Logged in — snctl has the authorization"));
        assert!(!answer.contains("the-code"));
        assert_eq!(wait(waiting).unwrap().expose(), "the-code");
    }

    #[test]
    fn wrong_state_gets_400_and_the_wait_goes_on() {
        let port = free_port();
        let waiting = start(port, "", Duration::from_secs(10));
        for target in [
            "/callback?code=forged-code&state=forged",
            "/callback?code=forged-code",
        ] {
            let (status, answer) = get(port, "GET", target);
            assert_eq!(status, "HTTP/1.1 400 Bad Request", "{target}");
            assert!(answer.contains("This is not the login snctl is waiting for"));
        }
        let (status, _) = get(port, "GET", "/callback?code=the-code&state=st4te-Xyz");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(wait(waiting).unwrap().expose(), "the-code");
    }

    #[test]
    fn error_without_this_logins_state_does_not_end_the_wait() {
        let port = free_port();
        let waiting = start(port, "", Duration::from_secs(10));
        for target in [
            "/callback?error=x",
            "/callback?error=access_denied&state=stale",
        ] {
            let (status, _) = get(port, "GET", target);
            assert_eq!(status, "HTTP/1.1 400 Bad Request", "{target}");
        }
        let (status, _) = get(port, "GET", "/callback?code=the-code&state=st4te-Xyz");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(wait(waiting).unwrap().expose(), "the-code");
    }

    #[test]
    fn missing_code_is_refused_with_400() {
        let port = free_port();
        let waiting = start(port, "", Duration::from_secs(10));
        let (status, _) = get(port, "GET", "/callback?state=st4te-Xyz");
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        assert!(matches!(
            wait(waiting),
            Err(CallbackError::MissingCode { .. })
        ));
    }

    #[test]
    fn access_denied_is_reported() {
        let port = free_port();
        let waiting = start(port, "", Duration::from_secs(10));
        let target =
            "/callback?error=access_denied&error_description=User+said%0Ano&state=st4te-Xyz";
        let (status, answer) = get(port, "GET", target);
        assert_eq!(status, "HTTP/1.1 403 Forbidden");
        assert!(answer.contains("Access was not granted"));
        let error = wait(waiting).unwrap_err();
        assert!(matches!(error, CallbackError::Denied { .. }));
        assert_eq!(error.exit_code(), 7);
        assert_eq!(
            error.to_string(),
            "access was refused on the instance's consent page (the person logging in clicked Deny; \
             access_denied: User said no): run `snctl login dev` again and click Allow"
        );
    }

    #[test]
    fn other_requests_get_404_and_the_wait_goes_on() {
        let port = free_port();
        let waiting = start(port, "", Duration::from_secs(10));
        let (status, _) = get(port, "GET", "/favicon.ico");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _) = get(port, "POST", "/callback?code=the-code&state=st4te-Xyz");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        // A connection that sends nothing holds nothing up.
        let _idle = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let (status, _) = get(port, "GET", "/callback?state=st4te-Xyz&code=the-code");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(wait(waiting).unwrap().expose(), "the-code");
    }

    #[test]
    fn a_head_that_never_ends_gets_431_and_the_wait_goes_on() {
        let port = free_port();
        let waiting = start(port, "", Duration::from_secs(10));
        for start in [&b"GET /callback?code="[..], b"GET /callback HTTP/1.1\r\n"] {
            // As much as the listener reads, and no end of the head: what
            // follows would never be read (and closing on unread bytes
            // would reset the connection under the answer).
            let mut endless = start.to_vec();
            let filler: &[u8] = if start.ends_with(b"\n") {
                b"X-A: b\r\n"
            } else {
                b"a"
            };
            while endless.len() < MAX_HEAD {
                endless.extend_from_slice(filler);
            }
            endless.truncate(MAX_HEAD);
            let mut stream = connect(port);
            stream.write_all(&endless).unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).unwrap();
            let answer = String::from_utf8(answer).unwrap();
            assert!(
                answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                "{answer}"
            );
            assert!(
                answer.contains("<p>Request header fields too large.</p>"),
                "{answer}"
            );
        }
        let (status, _) = get(port, "GET", "/callback?code=the-code&state=st4te-Xyz");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(wait(waiting).unwrap().expose(), "the-code");
    }

    #[test]
    fn pasted_redirect_address_gives_the_code() {
        let port = free_port();
        let paste = format!(
            "\n  not a url\nhttp://127.0.0.1:{port}/callback?code=abc\n  \
             http://127.0.0.1:{port}/callback?code=pasted&state=st4te-Xyz  \n"
        );
        let waiting = start(port, &paste, Duration::from_secs(10));
        assert_eq!(wait(waiting).unwrap().expose(), "pasted");
    }

    #[test]
    fn pasted_address_without_this_logins_state_is_ignored() {
        let port = free_port();
        let paste = "code=abc&state=forged\nerror=access_denied\n\
                     code=pasted&state=st4te-Xyz\n";
        let waiting = start(port, paste, Duration::from_secs(10));
        assert_eq!(wait(waiting).unwrap().expose(), "pasted");
    }

    #[test]
    fn connections_that_trickle_their_head_cannot_hold_the_listener() {
        let port = free_port();
        let waiting = start(port, "", Duration::from_secs(60));
        // More slow connections than handlers, each accepted before the
        // good one: each sends a byte now and then, never the end of the
        // head. Only the deadline on the whole head frees their handlers.
        let done = Arc::new(AtomicBool::new(false));
        let tricklers: Vec<_> = (0..MAX_HANDLERS + 2)
            .map(|_| {
                let mut stream = connect(port);
                let done = Arc::clone(&done);
                thread::spawn(move || {
                    let _ = stream.write_all(b"GET /callback?");
                    while !done.load(Ordering::Relaxed) && stream.write_all(b"x").is_ok() {
                        thread::sleep(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        let (status, _) = get(port, "GET", "/callback?code=the-code&state=st4te-Xyz");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(wait(waiting).unwrap().expose(), "the-code");
        done.store(true, Ordering::Relaxed);
        for trickler in tricklers {
            trickler.join().unwrap();
        }
    }

    #[test]
    fn nothing_coming_back_times_out() {
        let port = free_port();
        let waiting = start(port, "", Duration::from_millis(300));
        let error = wait(waiting).unwrap_err();
        assert!(matches!(error, CallbackError::Timeout { .. }));
        assert_eq!(error.exit_code(), 1);
        assert_eq!(
            error.to_string(),
            "no login came back within 1s: if the browser shows an error page of the instance \
             (such as Invalid redirect_uri), check that the Application Registry record's \
             Redirect URL is exactly http://127.0.0.1:PORT/callback and its Client ID c1d; \
             otherwise run `snctl login dev` again (use --no-browser on a host without a browser)"
                .replace("PORT", &port.to_string())
        );
    }

    #[test]
    fn port_in_use_is_a_usage_error() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let error = wait(start(port, "", Duration::from_secs(10))).unwrap_err();
        assert!(matches!(error, CallbackError::PortInUse { .. }));
        assert_eq!(error.exit_code(), 2);
        assert!(error
            .to_string()
            .starts_with(&format!("port {port} on 127.0.0.1 is in use")));
    }

    #[test]
    fn bad_redirect_uri_is_a_usage_error() {
        let request = Authorize {
            name: "dev",
            authorize_url: "https://example.invalid/oauth_auth.do",
            redirect_uri: "http://localhost:8751/callback",
            state: STATE,
            timeout: Duration::from_secs(1),
            open_browser: false,
            adding: false,
        };
        let error = wait_for_code(&request, Cursor::new(Vec::new())).unwrap_err();
        assert!(matches!(error, CallbackError::BadRedirect { .. }));
        assert_eq!(error.exit_code(), 2);
    }
}
