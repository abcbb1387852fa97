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
//! ([`Senders`]); the kernel says whose it is (the other end's socket in
//! `/proc/net/tcp`). Another user's redirect, or one whose user cannot be
//! told, is answered 403, noted in one line on stderr, and ignored.
//!
//! The listener also bounds what a connection can hold: each has
//! [`HEAD_DEADLINE`] from being accepted to send its whole request head,
//! and at most [`MAX_HANDLERS`] wait for theirs at once: one more pushes
//! out the one that has waited longest, so a flood of idle connections
//! never keeps the browser's redirect waiting.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use snctl::Secret;
use snctl_shared::secret::equal_in_constant_time;
use zeroize::Zeroizing;

/// How often the wait looks for connections and updates the spinner.
const POLL: Duration = Duration::from_millis(50);
/// The most of a request head the listener reads.
const MAX_HEAD: usize = 8 * 1024;
/// The most connections waiting for their request heads at once. A
/// browser opens one or two (a preconnect, the redirect) and sends its head
/// at once; one more connection pushes out the one that has waited
/// longest.
const MAX_HANDLERS: usize = 64;
/// How long a connection has, from being accepted, to send its whole
/// request head: in all, not per read, so that trickling bytes does not
/// hold a handler. A browser sends it at once.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// How long each write of the answer may take. The answer fits in the
/// socket's buffer, so this bounds only a connection that cannot take it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The line on stderr for a redirect that does not carry this login's state.
const IGNORED: &str =
    "ignored a redirect that does not carry this login's state (not from this login, or stale)";

/// The users whose processes may deliver the redirect: snctl's own user,
/// root (who could read the code from snctl's memory anyway) and, under
/// sudo, the user who ran sudo (whose browser it is).
#[derive(Debug, Clone)]
struct Senders(Vec<u32>);

impl Senders {
    fn of_this_process() -> Senders {
        let mut uids = vec![0];
        uids.extend(own_uid());
        uids.extend(
            std::env::var("SUDO_UID")
                .ok()
                .and_then(|uid| uid.trim().parse::<u32>().ok()),
        );
        Senders(uids)
    }

    /// Who opened `stream`, when that is not one of these users: why the
    /// connection does not count.
    fn refuse(&self, stream: &TcpStream) -> Option<String> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        match peer_uid(stream) {
            Ok(uid) if self.0.contains(&uid) => None,
            Ok(uid) => Some(format!("a process of another user (uid {uid})")),
            Err(why) => Some(format!("a process whose user cannot be told ({why})")),
        }
    }
}

/// The effective uid of this process: the owner of its `/proc/self`.
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The uid owning the other end of a loopback connection: its socket is
/// the one in `/proc/net/tcp` (or `tcp6`) whose local address is our
/// peer's and whose remote address is ours.
fn peer_uid(stream: &TcpStream) -> Result<u32, String> {
    let ours = stream.local_addr().map_err(|e| e.to_string())?;
    let theirs = stream.peer_addr().map_err(|e| e.to_string())?;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {table}: {e}")),
        };
        if let Some(uid) = socket_owner(&text, canonical(theirs), canonical(ours)) {
            return Ok(uid);
        }
    }
    Err("its socket is not in /proc/net/tcp".to_owned())
}

/// The uid of the socket from `local` to `remote` in a `/proc/net/tcp`
/// table.
fn socket_owner(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ends = (proc_address(fields.get(1)?)?, proc_address(fields.get(2)?)?);
        (ends == (local, remote))
            .then(|| fields.get(7)?.parse().ok())
            .flatten()
    })
}

/// An address as `/proc/net/tcp` writes it: the IP as 32-bit words in hex,
/// each as the host stores it, then `:` and the port in hex.
fn proc_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if ip.len() % 8 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(16);
    for word in 0..ip.len() / 8 {
        let word = u32::from_str_radix(ip.get(word * 8..word * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

/// An IPv4 address mapped into IPv6 as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

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

/// The login an error is about, for its message: what to register and
/// what to run again.
#[derive(Debug, Clone)]
pub struct Login {
    name: String,
    redirect_uri: String,
    client_id: String,
    adding: bool,
}

impl Login {
    fn of(request: &Authorize) -> Login {
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
    fn again(&self) -> String {
        if self.adding {
            "run the same `snctl add` again".to_owned()
        } else {
            format!("run `snctl login {}` again", self.name)
        }
    }
}

/// Why no authorization code came back.
#[derive(Debug)]
pub enum CallbackError {
    /// The redirect URL is not `http://127.0.0.1:PORT/PATH`.
    BadRedirect { name: String, uri: String },
    /// Something else listens on the redirect port.
    PortInUse { name: String, port: u16 },
    /// The listener could not be set up, or failed.
    Listen {
        name: String,
        port: u16,
        source: io::Error,
    },
    /// The instance redirected with an error instead of a code.
    Denied {
        login: Box<Login>,
        error: String,
        description: Option<String>,
    },
    /// The redirect carries this login's state but no code.
    MissingCode { name: String },
    /// Nothing came back in time.
    Timeout { login: Box<Login>, waited: Duration },
}

impl CallbackError {
    /// The exit status: 2 when the administrator must change the redirect
    /// port, 7 when the instance refused the login (the person's Deny
    /// included: it is the instance's answer), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CallbackError::BadRedirect { .. } | CallbackError::PortInUse { .. } => 2,
            CallbackError::Denied { .. } => 7,
            _ => 1,
        }
    }
}

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallbackError::BadRedirect { name, uri } => write!(
                f,
                "the redirect URL {} is not http://127.0.0.1:PORT/PATH: set the port with \
                 `snctl update {name} --redirect-port N`",
                one_line(uri)
            ),
            CallbackError::PortInUse { name, port } => write!(
                f,
                "port {port} on 127.0.0.1 is in use, so the redirect cannot come back to snctl: \
                 stop what uses it, or pick another port with `snctl update {name} \
                 --redirect-port N` and register http://127.0.0.1:N/callback on the \
                 Application Registry record"
            ),
            CallbackError::Listen { name, port, source } => write!(
                f,
                "cannot listen for the redirect on 127.0.0.1:{port} ({source}): \
                 run `snctl login {name}` again"
            ),
            CallbackError::Denied {
                login,
                error,
                description,
            } => refusal(f, login, error, description.as_deref()),
            CallbackError::MissingCode { name } => write!(
                f,
                "the redirect carries no authorization code: run `snctl login {name}` again"
            ),
            CallbackError::Timeout { login, waited } => write!(
                f,
                "no login came back within {}: if the browser shows an error page of the \
                 instance (such as Invalid redirect_uri), check that the Application Registry \
                 record's Redirect URL is exactly {} and its Client ID {}; otherwise {} \
                 (use --no-browser on a host without a browser)",
                human(*waited),
                login.redirect_uri,
                one_line(&login.client_id),
                login.again()
            ),
        }
    }
}

/// What went wrong, for an error the instance redirected back instead of a
/// code, and what fixes it. RFC 6749 §4.1.2.1 names the errors; ServiceNow
/// says `invalid_request` for a Redirect URL or client it does not know,
/// and names which in the description.
fn refusal(
    f: &mut fmt::Formatter<'_>,
    login: &Login,
    error: &str,
    description: Option<&str>,
) -> fmt::Result {
    let said = match description {
        Some(description) => format!("{}: {}", one_line(error), one_line(description)),
        None => one_line(error),
    };
    let lower = said.to_ascii_lowercase();
    let (name, uri, id) = (&login.name, &login.redirect_uri, one_line(&login.client_id));
    let again = login.again();
    if error == "access_denied" {
        write!(
            f,
            "access was refused on the instance's consent page (the person logging in clicked Deny; {said}): \
             {again} and click Allow"
        )
    } else if lower.contains("redirect") {
        write!(
            f,
            "the instance refused the Redirect URL {uri} ({said}): set the Redirect URL of the \
             Application Registry record to exactly {uri}, "
        )?;
        if login.adding {
            f.write_str(
                "or run the same `snctl add` with --redirect-port N, the port of the one registered",
            )
        } else {
            write!(
                f,
                "or use the port of the one registered (`snctl update {name} --redirect-port N`), \
                 then run `snctl login {name}`"
            )
        }
    } else if error == "invalid_client" || lower.contains("client_id") {
        write!(
            f,
            "the instance does not know the client ID {id} ({said}): copy the Client ID of the \
             Application Registry record, "
        )?;
        if login.adding {
            f.write_str("then run `snctl add` again with it (--client-id)")
        } else {
            write!(
                f,
                "run `snctl update {name} --client-id ID`, then `snctl login {name}`"
            )
        }
    } else if error == "invalid_scope" {
        write!(
            f,
            "the instance refused the scope asked for ({said}): give a scope of the Application \
             Registry record (--scope), then {again}"
        )
    } else if error == "server_error" || error == "temporarily_unavailable" {
        write!(
            f,
            "the instance could not complete the login ({said}): {again} later"
        )
    } else {
        write!(
            f,
            "the instance refused the login ({said}): check the Application Registry record of \
             client ID {id}, then {again}"
        )
    }
}

impl std::error::Error for CallbackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallbackError::Listen { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Sends the user to the authorize URL and returns the authorization code
/// that comes back: by the browser's redirect to the loopback listener, or
/// pasted on standard input (with `--no-browser`, or when no browser opens).
pub fn wait_for_code(request: &Authorize) -> Result<Secret, CallbackError> {
    wait_with_paste(request, BufReader::new(io::stdin()))
}

/// [`wait_for_code`], reading pasted redirect addresses from `paste`.
fn wait_with_paste<R: BufRead + Send + 'static>(
    request: &Authorize,
    paste: R,
) -> Result<Secret, CallbackError> {
    let (port, path) =
        parse_redirect(request.redirect_uri).ok_or_else(|| CallbackError::BadRedirect {
            name: request.name.to_owned(),
            uri: request.redirect_uri.to_owned(),
        })?;
    let listener = listen(port, request.name)?;
    eprintln!(
        "Redirect URL registered on the Application Registry record must be: {}",
        request.redirect_uri
    );
    let (events, inbox) = mpsc::channel();
    let mut wait = Wait {
        request,
        port,
        expected: Arc::new(Expected {
            login: Login::of(request),
            path: path.to_owned(),
            state: request.state.to_owned(),
        }),
        listener,
        handlers: Handlers::default(),
        senders: Arc::new(Senders::of_this_process()),
        refused: HashSet::new(),
        events,
        inbox,
        paste: Some(paste),
        spinner: Spinner::none(),
    };
    if request.open_browser {
        announce_browser(request);
        spawn_browser(request.authorize_url.to_owned(), wait.events.clone());
        wait.spinner = Spinner::start();
    } else {
        announce_no_browser(request, port);
        wait.read_pastes();
    }
    wait.run()
}

/// The port and path of `http://127.0.0.1:PORT/PATH`.
fn parse_redirect(uri: &str) -> Option<(u16, &str)> {
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

/// Binds the loopback listener, non-blocking so that the wait can poll it.
fn listen(port: u16, name: &str) -> Result<TcpListener, CallbackError> {
    let failed = |source: io::Error| match source.kind() {
        io::ErrorKind::AddrInUse => CallbackError::PortInUse {
            name: name.to_owned(),
            port,
        },
        _ => CallbackError::Listen {
            name: name.to_owned(),
            port,
            source,
        },
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    Ok(listener)
}

/// Tells the user a browser opens, and where to go if none does.
fn announce_browser(request: &Authorize) {
    eprintln!("Opening a browser to log in…");
    eprintln!("If no browser opens, visit:");
    eprintln!("  {}", request.authorize_url);
}

/// Tells the user to log in from any browser and paste the redirect address.
fn announce_no_browser(request: &Authorize, port: u16) {
    eprintln!("Open this address in a browser on any machine, log in and allow access:");
    eprintln!("  {}", request.authorize_url);
    paste_instructions(request, port);
}

/// How to bring the redirect back from a browser on another machine.
fn paste_instructions(request: &Authorize, port: u16) {
    eprintln!(
        "The browser then goes to {}?…, which may fail to load on that machine:",
        request.redirect_uri
    );
    eprintln!(
        "copy the whole address from its address bar, paste it here and press Enter \
         (within {}).",
        human(request.timeout)
    );
    eprintln!(
        "(In a browser on this host, or with the port forwarded by \
         `ssh -L {port}:127.0.0.1:{port} HOST`, snctl gets the redirect by itself.)"
    );
}

/// Something the wait learns from its threads.
enum Event {
    /// A GET of the redirect path was answered: what it means.
    Redirect(Verdict),
    /// A line read from the paste source.
    Pasted(Zeroizing<String>),
    /// The browser could not be opened: why.
    BrowserFailed(String),
}

/// A login being waited for.
struct Wait<'r, 'a, R> {
    request: &'r Authorize<'a>,
    port: u16,
    expected: Arc<Expected>,
    listener: TcpListener,
    /// The connections waiting for their request heads.
    handlers: Handlers,
    /// Whose connections count.
    senders: Arc<Senders>,
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
    fn run(mut self) -> Result<Secret, CallbackError> {
        let deadline = Instant::now() + self.request.timeout;
        loop {
            self.accept_pending()?;
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

    /// Hands each pending connection to a thread of its own, so that an
    /// idle connection (a browser's preconnect) holds nothing up; past
    /// [`MAX_HANDLERS`] waiting for their heads, the longest waiting is
    /// dropped.
    fn accept_pending(&self) -> Result<(), CallbackError> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let deadline = Instant::now() + HEAD_DEADLINE;
                    let Some(slot) = self.handlers.start(&stream) else {
                        continue;
                    };
                    let expected = Arc::clone(&self.expected);
                    let senders = Arc::clone(&self.senders);
                    let events = self.events.clone();
                    thread::spawn(move || {
                        let refused = senders.refuse(&stream);
                        if let Some(verdict) = serve(stream, deadline, &expected, refused, slot) {
                            let _ = events.send(Event::Redirect(verdict));
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(source) => {
                    return Err(CallbackError::Listen {
                        name: self.request.name.to_owned(),
                        port: self.port,
                        source,
                    })
                }
            }
        }
    }

    /// The outcome an event settles, if it settles one.
    fn handle(&mut self, event: Event) -> Option<Result<Secret, CallbackError>> {
        match event {
            Event::Redirect(verdict) => self.settled(verdict),
            Event::Pasted(text) => self.pasted(&text),
            Event::BrowserFailed(why) => {
                self.spinner.stop();
                eprintln!(
                    "Could not open a browser ({}): open the address above in a browser on \
                     any machine, log in and allow access.",
                    one_line(&why)
                );
                paste_instructions(self.request, self.port);
                self.read_pastes();
                None
            }
        }
    }

    /// The outcome a pasted line settles; says why when it is not usable.
    fn pasted(&mut self, text: &str) -> Option<Result<Secret, CallbackError>> {
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
    fn settled(&mut self, verdict: Verdict) -> Option<Result<Secret, CallbackError>> {
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
    fn read_pastes(&mut self) {
        if let Some(source) = self.paste.take() {
            spawn_paste_reader(source, self.events.clone());
        }
    }
}

/// The connections waiting for their request heads, oldest first, to keep
/// them to [`MAX_HANDLERS`].
#[derive(Default)]
struct Handlers {
    waiting: Arc<Mutex<VecDeque<(u64, TcpStream)>>>,
    next: AtomicU64,
}

impl Handlers {
    /// Registers a connection that waits for its head; past
    /// [`MAX_HANDLERS`], shuts the longest waiting one down, which ends its
    /// read. None when the connection cannot be registered (it is dropped).
    fn start(&self, stream: &TcpStream) -> Option<HandlerSlot> {
        let handle = stream.try_clone().ok()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        while waiting.len() >= MAX_HANDLERS {
            if let Some((_, oldest)) = waiting.pop_front() {
                let _ = oldest.shutdown(Shutdown::Both);
            }
        }
        waiting.push_back((id, handle));
        Some(HandlerSlot {
            waiting: Arc::clone(&self.waiting),
            id,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A connection's place among those waiting for their heads; given up
/// once its head is read, or when dropped (even by a panic).
struct HandlerSlot {
    waiting: Arc<Mutex<VecDeque<(u64, TcpStream)>>>,
    id: u64,
}

impl Drop for HandlerSlot {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|(id, _)| *id != self.id);
    }
}

/// Opens the browser on a thread of its own (a text browser runs until it
/// exits, and the listener must answer it meanwhile); reports a failure.
fn spawn_browser(url: String, events: Sender<Event>) {
    thread::spawn(move || {
        if let Err(why) = open_browser(&url) {
            let _ = events.send(Event::BrowserFailed(why));
        }
    });
}

/// Opens `url` in the user's browser: `$BROWSER` first, then the desktop's.
fn open_browser(url: &str) -> Result<(), String> {
    if headless() {
        return Err("no display: DISPLAY and WAYLAND_DISPLAY are unset".to_owned());
    }
    webbrowser::open(url).map_err(|e| e.to_string())
}

/// Whether this is a Linux or BSD host with no graphical session and no
/// `$BROWSER`: an opener like xdg-open would seem to succeed there while
/// showing nothing.
fn headless() -> bool {
    let set = |name| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    cfg!(all(unix, not(target_os = "macos")))
        && !["BROWSER", "DISPLAY", "WAYLAND_DISPLAY", "WSL_DISTRO_NAME"]
            .into_iter()
            .any(set)
}

/// Sends each line read from `source` as [`Event::Pasted`], until the end
/// of the input or of the wait.
fn spawn_paste_reader<R: BufRead + Send + 'static>(mut source: R, events: Sender<Event>) {
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

/// The parameters of a pasted redirect address, or of a pasted bare query;
/// or why the text is not usable.
fn pasted_params(text: &str, path: &str) -> Result<Params, &'static str> {
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
struct Expected {
    /// The login, for the errors.
    login: Login,
    /// The redirect path, e.g. `/callback`.
    path: String,
    /// This login's `state`.
    state: String,
}

/// What a redirect means for the login.
enum Verdict {
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
    fn check(&self, params: Params) -> Verdict {
        let ours = params
            .state
            .as_deref()
            .is_some_and(|state| equal_in_constant_time(state.as_bytes(), self.state.as_bytes()));
        if !ours {
            return Verdict::Foreign;
        }
        let name = self.login.name.clone();
        Verdict::Settles(match params.error {
            Some(error) => Err(CallbackError::Denied {
                login: Box::new(self.login.clone()),
                error,
                description: params.error_description,
            }),
            None => params.code.ok_or(CallbackError::MissingCode { name }),
        })
    }
}

/// The parameters of a redirect's query that matter; the first of each
/// counts and empty ones do not.
#[derive(Default)]
struct Params {
    code: Option<Secret>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Params {
    /// Reads an `application/x-www-form-urlencoded` query.
    fn parse(query: &str) -> Params {
        let mut params = Params::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = Zeroizing::new(value.into_owned());
            if value.is_empty() {
                continue;
            }
            let slot = match &*key {
                "code" => {
                    if params.code.is_none() {
                        params.code = Some(Secret::new(value.to_string()));
                    }
                    continue;
                }
                "state" => &mut params.state,
                "error" => &mut params.error,
                "error_description" => &mut params.error_description,
                _ => continue,
            };
            slot.get_or_insert_with(|| value.to_string());
        }
        params
    }
}

/// An answer of the listener: status line and the page's one sentence.
struct Page {
    status: &'static str,
    text: &'static str,
}

const LOGGED_IN: Page = Page {
    status: "200 OK",
    text: "Logged in — snctl has the authorization; you may close this tab.",
};
const NOT_GRANTED: Page = Page {
    status: "403 Forbidden",
    text: "Access was not granted — snctl did not get the authorization; \
           see the terminal where it runs.",
};
const OTHER_USER: Page = Page {
    status: "403 Forbidden",
    text: "snctl takes the redirect only from processes of the user running it, and this \
           connection does not come from one (or its user cannot be told): it is ignored; \
           snctl goes on waiting.",
};
const NOT_THIS_LOGIN: Page = Page {
    status: "400 Bad Request",
    text: "This is not the login snctl is waiting for (the redirect does not carry its \
           state); snctl goes on waiting for it.",
};
const NO_CODE: Page = Page {
    status: "400 Bad Request",
    text: "This redirect carries no authorization code; see the terminal where snctl runs.",
};
const NOT_FOUND: Page = Page {
    status: "404 Not Found",
    text: "Not found.",
};
const BAD_REQUEST: Page = Page {
    status: "400 Bad Request",
    text: "Bad request.",
};
const TOO_LARGE: Page = Page {
    status: "431 Request Header Fields Too Large",
    text: "Request header fields too large.",
};

/// Why a request head could not be read.
enum HeadError {
    /// Longer than [`MAX_HEAD`].
    TooLarge,
    /// Not a request line.
    Malformed,
    /// The connection failed, closed, or did not send the head by the
    /// deadline.
    Io,
}

/// Answers one connection, which must send its request head by `deadline`
/// (unless `slot` is shut down first); the verdict when it was a GET of the
/// redirect path. `refused` says why its sender may not deliver it.
fn serve(
    mut stream: TcpStream,
    deadline: Instant,
    expected: &Expected,
    refused: Option<String>,
    slot: HandlerSlot,
) -> Option<Verdict> {
    stream.set_nonblocking(false).ok()?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).ok()?;
    let head = read_request_line(&mut stream, deadline);
    drop(slot);
    let (page, verdict) = match head {
        Ok(line) => answer(&line, expected, refused),
        Err(HeadError::TooLarge) => (&TOO_LARGE, None),
        Err(HeadError::Malformed) => (&BAD_REQUEST, None),
        Err(HeadError::Io) => return None,
    };
    respond(&mut stream, page);
    verdict
}

/// The page answering a request line; the verdict when it is a GET of the
/// redirect path. A sender that may not deliver the redirect gets nothing
/// checked.
fn answer(
    line: &str,
    expected: &Expected,
    refused: Option<String>,
) -> (&'static Page, Option<Verdict>) {
    let Some((method, path, query)) = parse_request_line(line) else {
        return (&BAD_REQUEST, None);
    };
    if method != "GET" || path != expected.path {
        return (&NOT_FOUND, None);
    }
    if let Some(sender) = refused {
        return (&OTHER_USER, Some(Verdict::Refused(sender)));
    }
    let verdict = expected.check(Params::parse(query));
    let page = match &verdict {
        Verdict::Foreign => &NOT_THIS_LOGIN,
        Verdict::Refused(_) => &OTHER_USER,
        Verdict::Settles(Ok(_)) => &LOGGED_IN,
        Verdict::Settles(Err(CallbackError::Denied { .. })) => &NOT_GRANTED,
        Verdict::Settles(Err(_)) => &NO_CODE,
    };
    (page, Some(verdict))
}

/// Reads the whole request head (so that closing does not reset the
/// connection before the browser has the answer) by `deadline`, and returns
/// its first line.
fn read_request_line(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<Zeroizing<String>, HeadError> {
    let mut head = Zeroizing::new(vec![0; MAX_HEAD]);
    let mut len = 0;
    while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Io);
        }
        match stream.read(&mut head[len..]) {
            Ok(0) | Err(_) => return Err(HeadError::Io),
            Ok(n) => len += n,
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    std::str::from_utf8(line)
        .map(|line| Zeroizing::new(line.to_owned()))
        .map_err(|_| HeadError::Malformed)
}

/// The method, path and query of a request line
/// (`GET /callback?code=…&state=… HTTP/1.1`).
fn parse_request_line(line: &str) -> Option<(&str, &str, &str)> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/") {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some((method, path, query))
}

/// Sends `page` and closes the connection.
fn respond(stream: &mut TcpStream, page: &Page) {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>snctl</title></head>\
         <body><p>{}</p></body></html>\n",
        page.text
    );
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        page.status,
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .and_then(|()| stream.flush());
    let _ = stream.shutdown(Shutdown::Write);
}

/// The "Waiting for the browser… 4m 32s left" line on stderr, drawn only
/// on a terminal; cleared when dropped.
struct Spinner(ProgressBar);

impl Spinner {
    /// A spinner that shows.
    fn start() -> Spinner {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner(bar)
    }

    /// No spinner: while the user may be pasting, a redrawn line would
    /// clobber what they type.
    fn none() -> Spinner {
        Spinner(ProgressBar::hidden())
    }

    /// Updates the time left.
    fn show_left(&self, left: Duration) {
        self.0
            .set_message(format!("Waiting for the browser… {} left", human(left)));
    }

    /// Prints a line on stderr above the spinner.
    fn say(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }

    /// Clears the spinner for good.
    fn stop(&mut self) {
        self.0.finish_and_clear();
        self.0 = ProgressBar::hidden();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A duration as `4m 32s`, `5m` or `9s`, rounded up to the second.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m {s}s"),
    }
}

/// Text from outside (a redirect's error, a URL) made fit for a one-line
/// message: control characters blanked, at most 200 characters.
fn one_line(text: &str) -> String {
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
    use std::io::Cursor;
    use std::sync::atomic::AtomicBool;
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
            wait_with_paste(&request, paste)
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
    fn past_the_cap_the_longest_waiting_connection_is_dropped() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let handlers = Handlers::default();
        let mut clients = Vec::new();
        let mut slots = Vec::new();
        for _ in 0..=MAX_HANDLERS {
            clients.push(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap());
            let (accepted, _) = listener.accept().unwrap();
            slots.push((handlers.start(&accepted).unwrap(), accepted));
        }
        assert_eq!(handlers.len(), MAX_HANDLERS);
        // The first one was shut down: its client sees the end.
        let mut byte = [0; 1];
        assert_eq!(clients[0].read(&mut byte).unwrap(), 0);
        // A slot given up (its head was read) makes room.
        slots.pop();
        assert_eq!(handlers.len(), MAX_HANDLERS - 1);
    }

    #[test]
    fn proc_net_tcp_addresses_are_read() {
        let v4 = proc_address("0100007F:1F4F").unwrap();
        assert_eq!(v4, "127.0.0.1:8015".parse().unwrap());
        let mapped = proc_address("0000000000000000FFFF00000100007F:0050").unwrap();
        assert_eq!(mapped, "127.0.0.1:80".parse().unwrap());
        let v6 = proc_address("00000000000000000000000001000000:0050").unwrap();
        assert_eq!(v6, "[::1]:80".parse().unwrap());
        assert_eq!(proc_address("0100007:1F4F"), None);
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 0100007F:1F4F 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1 1\n   \
             1: 0100007F:D431 0100007F:1F4F 01 00000000:00000000 00:00000000 00000000 65534        0 2 1\n";
        let (theirs, ours) = (
            "127.0.0.1:54321".parse().unwrap(),
            "127.0.0.1:8015".parse().unwrap(),
        );
        assert_eq!(socket_owner(table, theirs, ours), Some(65534));
        assert_eq!(socket_owner(table, ours, theirs), Some(0));
        assert_eq!(socket_owner(table, theirs, theirs), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_owner_of_a_loopback_peer_is_found() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(peer_uid(&accepted), Ok(own_uid().unwrap()));
        assert_eq!(Senders::of_this_process().refuse(&accepted), None);
        assert_eq!(
            Senders(vec![u32::MAX]).refuse(&accepted),
            Some(format!(
                "a process of another user (uid {})",
                own_uid().unwrap()
            ))
        );
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
        let error = wait_with_paste(&request, Cursor::new(Vec::new())).unwrap_err();
        assert!(matches!(error, CallbackError::BadRedirect { .. }));
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn durations_read_like_4m_32s() {
        assert_eq!(human(Duration::from_secs(272)), "4m 32s");
        assert_eq!(human(Duration::from_secs(300)), "5m");
        assert_eq!(human(Duration::from_millis(8_100)), "9s");
    }

    #[test]
    fn outside_text_stays_on_one_line() {
        assert_eq!(one_line("a\nb\u{1b}[2J"), "a b [2J");
        assert_eq!(one_line(&"x".repeat(300)).chars().count(), 201);
    }
}
