//! Get ServiceNow access tokens from `snctld`.
//!
//! The daemon holds the OAuth client secret and refresh tokens and keeps an
//! access token fresh; this library asks it for one over a Unix socket. It
//! is synchronous and small: std, [`snctl_shared`] and interprocess, no
//! async runtime and no HTTP stack.
//!
//! ```no_run
//! # fn main() -> Result<(), snctl::ClientError> {
//! let token = snctl::Client::connect_default()?.token("prod")?;
//! println!("{} expires at {}", token.instance_url, token.expires_at);
//! let bearer = format!("Bearer {}", token.access_token.expose());
//! # let _ = bearer;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, Stream};

use snctl_shared::frame::{self, FrameBuf, FrameError, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use snctl_shared::protocol::{
    AddRequest, AuthSummary, BackupRequest, DaemonStatus, Diagnosis, Hello, HelloReply,
    LoginChallenge, LoginRequest, NameRequest, RemoveReply, RemoveRequest, Reply, ReplyRef,
    Request, RequestRef, Response, StartLoginRequest, TokenRequestRef, TokenResponseRef,
    UpdateRequest,
};

/// The protocol types, for callers that build admin requests.
pub use snctl_shared::protocol;
pub use snctl_shared::protocol::MinValid;
pub use snctl_shared::protocol::TokenReply as Token;
pub use snctl_shared::{Error, ErrorKind, Secret, PROTOCOL_VERSION};

/// How long to wait for an answer. Admin requests talk to the instance,
/// which may take a while; a token from memory takes microseconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be opened: no daemon, or no permission.
    #[error("{}", connect_failed(.path, .source))]
    Connect {
        /// The socket tried.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The connection failed or the daemon sent something unreadable.
    #[error("{}", connection_lost(.path, .source))]
    Connection {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: FrameError,
    },
    /// The socket is served by a user who is not trusted to be snctld:
    /// nothing was sent.
    #[error(
        "refusing to talk to {}: {problem}; nothing was sent. Check --socket and SNCTL_SOCKET, and ask an admin who put that socket there",
        .path.display()
    )]
    Untrusted {
        /// The socket.
        path: PathBuf,
        /// Who serves it and why that user is not trusted.
        problem: String,
    },
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(#[source] Error),
}

/// What a failed connect means, and what to do about it.
fn connect_failed(path: &Path, source: &io::Error) -> String {
    match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => format!(
            "snctld is not running at {}: start it (systemctl start snctld), or point SNCTL_SOCKET or --socket at its socket",
            path.display()
        ),
        io::ErrorKind::PermissionDenied => format!(
            "no permission to open {}: ask an admin to add you to the socket's group (usually snctl)",
            path.display()
        ),
        _ => format!("cannot connect to snctld at {}: {source}", path.display()),
    }
}

/// What a lost connection means.
fn connection_lost(path: &Path, source: &FrameError) -> String {
    match source {
        FrameError::Closed => format!(
            "snctld at {} closed the connection (it may be stopping or at its connection limit; see its log)",
            path.display()
        ),
        other => format!("lost the connection to snctld at {}: {other}", path.display()),
    }
}

impl ClientError {
    /// The coarse kind, which fixes `snctl`'s exit code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Connect { .. }
            | ClientError::Connection { .. }
            | ClientError::Untrusted { .. } => ErrorKind::Unreachable,
            ClientError::Daemon(error) => error.kind(),
        }
    }
}

/// Checks who serves the socket at `path` before anything is sent to it:
/// an admin's requests carry client secrets, and a path through a
/// directory or link another user controls could lead to that user's
/// socket.
///
/// Trusted at once: root (the service manager binds the system socket)
/// and the caller's own uid (a user daemon). Another uid is trusted only
/// as the owner of the socket file, in a directory it or root owns, and
/// on a path that nobody but root and the caller could redirect
/// ([`snctl_shared::paths::check_traversal`]) — the system daemon running
/// as its own user without socket activation.
fn check_server(stream: &Stream, path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let untrusted = |problem: String| ClientError::Untrusted {
        path: path.to_path_buf(),
        problem,
    };
    let server = stream
        .peer_creds()
        .ok()
        .and_then(|creds| creds.euid())
        .ok_or_else(|| untrusted("the server's uid cannot be read".into()))?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if server == 0 || server == me {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = snctl_shared::paths::check_traversal(dir, |uid| uid == 0 || uid == me)
        .map_err(|e| untrusted(format!("it is served by uid {server}, and {e}")))?;
    let file = path.file_name().map(|f| dir.join(f)).unwrap_or(dir.clone());
    let socket = std::fs::symlink_metadata(&file)
        .map_err(|e| untrusted(format!("cannot check {}: {e}", file.display())))?;
    if !socket.file_type().is_socket() || socket.uid() != server {
        return Err(untrusted(format!(
            "it is served by uid {server}, who is neither root, you (uid {me}) nor the owner of the socket file"
        )));
    }
    let meta = std::fs::metadata(&dir)
        .map_err(|e| untrusted(format!("cannot check {}: {e}", dir.display())))?;
    if (meta.uid() != server && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "it is served by uid {server}, and its directory {} could be changed by others (owner uid {}, mode {:o})",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// What [`Client::backup`] returns.
#[derive(Debug)]
pub struct Backup {
    /// The database file: write it as is.
    pub bytes: Vec<u8>,
    /// Where the daemon's master key is; it is not in the backup.
    pub key: PathBuf,
}

/// A connection to `snctld`. One connection serves any number of requests,
/// one at a time.
pub struct Client {
    stream: Stream,
    /// Answers as they arrive: one read takes a frame that came whole (and
    /// the hello's answer with the first request's).
    frames: FrameBuf,
    path: PathBuf,
    daemon_version: String,
    /// The hello, encoded and not yet sent: it goes out with the first
    /// request, in one write ([`Client::connect_pipelined`]).
    unsent_hello: Vec<u8>,
    /// The hello's answer is still to be read.
    hello_pending: bool,
    /// The request being sent, encoded: one buffer for the connection's
    /// life.
    out: Vec<u8>,
}

impl Client {
    /// Connects to the socket found the usual way: `$SNCTL_SOCKET`, the user
    /// daemon's socket if it exists, else the system daemon's.
    ///
    /// ```no_run
    /// let mut client = snctl::Client::connect_default()?;
    /// let token = client.token("prod")?;
    /// # Ok::<(), snctl::ClientError>(())
    /// ```
    pub fn connect_default() -> Result<Client, ClientError> {
        Client::connect(&snctl_shared::paths::client_socket(None))
    }

    /// Connects to the daemon at `path` and checks that it speaks this
    /// protocol version.
    ///
    /// ```no_run
    /// use std::path::Path;
    ///
    /// let mut client = snctl::Client::connect(Path::new("/run/snctld/snctld.sock"))?;
    /// println!("snctld {}", client.daemon_version());
    /// let token = client.token("prod")?;
    /// # let _ = token;
    /// # Ok::<(), snctl::ClientError>(())
    /// ```
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let mut client = Client::connect_pipelined(path)?;
        client.finish_hello()?;
        Ok(client)
    }

    /// Connects without waiting for the hello's answer: the hello goes out
    /// with the first request, in one write, and its answer is read with
    /// that request's: a process that makes one request (`snctl token`)
    /// waits for one round trip instead of two.
    /// A daemon of another protocol version, or one that refuses the
    /// connection, shows as the first request's error.
    pub fn connect_pipelined(path: &Path) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let name = path.to_fs_name::<GenericFilePath>().map_err(connect_err)?;
        let stream = Stream::connect(name).map_err(connect_err)?;
        check_server(&stream, path)?;
        stream
            .set_recv_timeout(Some(DEFAULT_TIMEOUT))
            .map_err(connect_err)?;
        stream
            .set_send_timeout(Some(DEFAULT_TIMEOUT))
            .map_err(connect_err)?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let lost = |source| ClientError::Connection {
            path: path.to_path_buf(),
            source,
        };
        let unsent_hello = frame::encode(&hello, MAX_REQUEST_FRAME).map_err(lost)?;
        Ok(Client {
            stream,
            frames: FrameBuf::new(MAX_RESPONSE_FRAME),
            path: path.to_path_buf(),
            daemon_version: String::new(),
            unsent_hello,
            hello_pending: true,
            out: Vec::new(),
        })
    }

    /// Sends `frame`, after the hello if that is still to go.
    fn send(&mut self, frame: &[u8]) -> Result<(), FrameError> {
        let stream = &mut self.stream;
        if self.unsent_hello.is_empty() {
            stream.write_all(frame)?;
        } else {
            // Taken before writing: after a failed write the hello's answer
            // (a refusal, say) is still read, never the hello sent twice.
            let mut both = std::mem::take(&mut self.unsent_hello);
            both.extend_from_slice(frame);
            stream.write_all(&both)?;
        }
        stream.flush()?;
        Ok(())
    }

    /// Reads the answer to the hello, if it is still to come.
    fn finish_hello(&mut self) -> Result<(), ClientError> {
        if !self.hello_pending {
            return Ok(());
        }
        if !self.unsent_hello.is_empty() {
            self.send(&[]).map_err(|e| self.lost(e))?;
        }
        let reply: HelloReply = self
            .frames
            .read_frame(&mut self.stream, frame::decode_response)
            .map_err(|e| self.lost(e))?;
        if reply.protocol_version != PROTOCOL_VERSION {
            return Err(ClientError::Daemon(Error::ProtocolMismatch {
                daemon: reply.protocol_version,
                client: PROTOCOL_VERSION,
            }));
        }
        self.daemon_version = reply.daemon_version;
        self.hello_pending = false;
        Ok(())
    }

    fn lost(&self, source: FrameError) -> ClientError {
        ClientError::Connection {
            path: self.path.clone(),
            source,
        }
    }

    /// The daemon's package version, from the handshake (empty before the
    /// first request of a pipelined connection).
    pub fn daemon_version(&self) -> &str {
        &self.daemon_version
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// Sets how long to wait for each answer (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let err = |source| ClientError::Connect {
            path: self.path.clone(),
            source,
        };
        self.stream.set_recv_timeout(Some(timeout)).map_err(err)?;
        self.stream.set_send_timeout(Some(timeout)).map_err(err)
    }

    /// Sends one request and waits for its answer.
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.exchange(|out| frame::encode_into(request, MAX_REQUEST_FRAME, out))
    }

    /// Sends the request `encode` writes (a [`Request`], or its borrowed
    /// form) and waits for its answer.
    fn exchange(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), FrameError>,
    ) -> Result<Reply, ClientError> {
        self.exchange_read(encode, frame::decode_response)
    }

    /// [`Client::exchange`], the answer's payload read by `decode`.
    fn exchange_read(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), FrameError>,
        decode: impl Fn(&[u8]) -> Result<Response, FrameError>,
    ) -> Result<Reply, ClientError> {
        let mut out = std::mem::take(&mut self.out);
        let written = encode(&mut out).and_then(|()| self.send(&out));
        // Kept for the next request unless a large one (an add with a
        // long key) grew it.
        if out.capacity() <= frame::READ_CHUNK {
            self.out = out;
        }
        // A refused handshake explains a failed write better than the write.
        self.finish_hello()?;
        written.map_err(|e| self.lost(e))?;
        let response = self
            .frames
            .read_frame(&mut self.stream, decode)
            .map_err(|e| self.lost(e))?;
        response.map_err(ClientError::Daemon)
    }

    fn unexpected(&self, reply: Reply) -> ClientError {
        self.lost(FrameError::Decode(format!("unexpected answer {reply:?}")))
    }

    /// An access token for authentication `name`, valid for at least 60 s,
    /// or a quarter of its lifetime when its tokens live less than 4 minutes
    /// (a short Access Token Lifespan on the instance never makes this
    /// fail).
    ///
    /// ```no_run
    /// let token = snctl::Client::connect_default()?.token("prod")?;
    /// let url = format!("{}/api/now/table/incident?sysparm_limit=1", token.instance_url);
    /// let authorization = format!("Bearer {}", token.access_token.expose());
    /// // Hand both to any HTTP client; the token is good until `token.expires_at`.
    /// # let _ = (url, authorization);
    /// # Ok::<(), snctl::ClientError>(())
    /// ```
    pub fn token(&mut self, name: &str) -> Result<Token, ClientError> {
        self.token_valid(name, MinValid::Default(60))
    }

    /// An access token valid for at least `min_valid`; the daemon refreshes
    /// first when the token in hand has less left. When the
    /// authentication's tokens do not live that long, the daemon refuses
    /// ([`ErrorKind::Usage`]).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// // A batch job that runs for up to ten minutes on one token.
    /// let mut client = snctl::Client::connect_default()?;
    /// match client.token_with("prod", Duration::from_secs(600)) {
    ///     Ok(token) => println!("valid until {}", token.expires_at),
    ///     Err(e) if e.kind() == snctl::ErrorKind::Usage => {
    ///         eprintln!("prod's tokens do not live ten minutes: {e}")
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), snctl::ClientError>(())
    /// ```
    pub fn token_with(&mut self, name: &str, min_valid: Duration) -> Result<Token, ClientError> {
        let secs = min_valid.as_secs().min(u32::MAX as u64) as u32;
        self.token_valid(name, MinValid::Required(secs))
    }

    /// An access token valid as `min_valid` says: [`MinValid::Required`] is
    /// [`Client::token_with`], [`MinValid::Default`] bends to a short
    /// lifetime as [`Client::token`] does.
    pub fn token_valid(&mut self, name: &str, min_valid: MinValid) -> Result<Token, ClientError> {
        // The borrowed forms: the same bytes, without copying the name,
        // and the answer read in place, where the owned decoding would
        // allocate each string zeroed before copying it in (glibc's calloc
        // takes its arena's lock: threads asking at once wait on each
        // other).
        let request = RequestRef::Token(TokenRequestRef { name, min_valid });
        let read_token = |payload: &[u8]| match frame::decode_response_ref(payload) {
            Ok(TokenResponseRef::Ok(ReplyRef::Token(token))) => {
                Ok(Ok(Reply::Token(token.to_reply())))
            }
            Err(_) => frame::decode_response(payload),
        };
        match self.exchange_read(
            |out| frame::encode_into(&request, MAX_REQUEST_FRAME, out),
            read_token,
        )? {
            Reply::Token(token) => Ok(token),
            other => Err(self.unexpected(other)),
        }
    }

    /// Every authentication this caller may see.
    pub fn list(&mut self) -> Result<Vec<AuthSummary>, ClientError> {
        match self.request(&Request::List)? {
            Reply::List(list) => Ok(list),
            other => Err(self.unexpected(other)),
        }
    }

    /// One authentication, without secrets.
    pub fn show(&mut self, name: &str) -> Result<AuthSummary, ClientError> {
        self.auth_request(Request::Show(NameRequest {
            name: name.to_string(),
        }))
    }

    /// How the daemon is doing.
    pub fn status(&mut self) -> Result<DaemonStatus, ClientError> {
        match self.request(&Request::Status)? {
            Reply::Status(status) => Ok(status),
            other => Err(self.unexpected(other)),
        }
    }

    /// The daemon's metrics as OpenMetrics text (ending with `# EOF`): its
    /// own, and those of the authentications this caller may read.
    pub fn metrics(&mut self) -> Result<String, ClientError> {
        match self.request(&Request::Metrics)? {
            Reply::Metrics(text) => Ok(text),
            other => Err(self.unexpected(other)),
        }
    }

    /// Registers an authentication; the daemon saves it only once it has
    /// obtained a token with it.
    pub fn add(&mut self, request: AddRequest) -> Result<AuthSummary, ClientError> {
        self.auth_request(Request::Add(request))
    }

    /// Changes an authentication once the new settings have worked.
    pub fn update(&mut self, request: UpdateRequest) -> Result<AuthSummary, ClientError> {
        self.auth_request(Request::Update(request))
    }

    /// Gets a new access token now.
    pub fn refresh(&mut self, name: &str) -> Result<AuthSummary, ClientError> {
        self.auth_request(Request::Refresh(NameRequest {
            name: name.to_string(),
        }))
    }

    /// Revokes (unless `keep_upstream`) and deletes an authentication.
    pub fn remove(&mut self, name: &str, keep_upstream: bool) -> Result<RemoveReply, ClientError> {
        let request = Request::Remove(RemoveRequest {
            name: name.to_string(),
            keep_upstream,
        });
        match self.request(&request)? {
            Reply::Removed(reply) => Ok(reply),
            other => Err(self.unexpected(other)),
        }
    }

    /// Starts a browser login (authorization-code grant): the daemon
    /// answers with the URL to open and the `state` to expect back.
    pub fn start_login(
        &mut self,
        request: StartLoginRequest,
    ) -> Result<LoginChallenge, ClientError> {
        match self.request(&Request::StartLogin(request))? {
            Reply::LoginChallenge(challenge) => Ok(challenge),
            other => Err(self.unexpected(other)),
        }
    }

    /// Logs in with a password, or finishes a started browser login.
    pub fn login(&mut self, request: LoginRequest) -> Result<AuthSummary, ClientError> {
        self.auth_request(Request::Login(request))
    }

    /// Probes the instance to tell why an authentication fails.
    pub fn doctor(&mut self, name: &str) -> Result<Diagnosis, ClientError> {
        let request = Request::Doctor(NameRequest {
            name: name.to_string(),
        });
        match self.request(&request)? {
            Reply::Diagnosis(diagnosis) => Ok(diagnosis),
            other => Err(self.unexpected(other)),
        }
    }

    /// A consistent copy of the daemon's database (admins only): sealed
    /// secrets only, never the master key. Fetched in chunks over one
    /// snapshot the daemon takes at the first.
    pub fn backup(&mut self) -> Result<Backup, ClientError> {
        let mut bytes = Vec::new();
        let mut snapshot = None;
        loop {
            let request = Request::Backup(BackupRequest {
                snapshot,
                offset: bytes.len() as u64,
            });
            let chunk = match self.request(&request)? {
                Reply::Backup(chunk) => chunk,
                other => return Err(self.unexpected(other)),
            };
            if chunk.offset != bytes.len() as u64
                || snapshot.is_some_and(|id| id != chunk.snapshot)
                || (chunk.bytes.is_empty() && chunk.offset < chunk.total)
            {
                return Err(self.lost(FrameError::Decode(format!(
                    "backup chunk out of order (snapshot {}, offset {}, {} bytes)",
                    chunk.snapshot,
                    chunk.offset,
                    chunk.bytes.len()
                ))));
            }
            if bytes.is_empty() {
                bytes.reserve_exact(usize::try_from(chunk.total).unwrap_or(0));
            }
            snapshot = Some(chunk.snapshot);
            bytes.extend_from_slice(&chunk.bytes);
            if bytes.len() as u64 >= chunk.total {
                return Ok(Backup {
                    bytes,
                    key: PathBuf::from(chunk.key),
                });
            }
        }
    }

    fn auth_request(&mut self, request: Request) -> Result<AuthSummary, ClientError> {
        match self.request(&request)? {
            Reply::Auth(summary) => Ok(*summary),
            other => Err(self.unexpected(other)),
        }
    }
}
