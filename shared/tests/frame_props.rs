//! Properties of the frame codec under arbitrary input: what a hostile or
//! broken peer can send cannot panic either side, cannot make a reader
//! allocate past its limit, and a valid message always comes back as itself.
//!
//! Both ends read frames with [`FrameBuf`]: the daemon drives it with its
//! timeouts (`daemon/src/server.rs`, `Conn`), the client library with
//! `FrameBuf::read_frame`. The readers below drive the same `FrameBuf` from
//! a blocking reader that hands out the stream in small pieces.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Cursor, Read};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde::de::DeserializeOwned;

use snctl_shared::frame::{
    decode_request, decode_response, encode, payload_len, FrameBuf, HEADER_LEN, MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
};
use snctl_shared::protocol::*;
use snctl_shared::{FrameError, Secret};

// ---------------------------------------------------------------------------
// Allocation accounting: the largest single allocation made by this thread
// while a closure runs, so that "refused without allocating" is checked, not
// assumed.

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// thread-local is const-initialised and has no destructor, so touching it
// cannot allocate or recurse.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`; returns its result and the largest allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// What serde lets a sequence preallocate from its claimed length whatever
/// the format's limit (`serde::__private::size_hint::cautious`).
const SERDE_PREALLOCATION_CAP: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// Readers.

/// One request-direction frame from `reader`, as the daemon reads one:
/// `None` at end of stream before a header.
fn read_request_frame<T: DeserializeOwned, R: Read>(
    reader: &mut R,
) -> Result<Option<T>, FrameError> {
    match FrameBuf::new(MAX_REQUEST_FRAME).read_frame(reader, decode_request) {
        Ok(message) => Ok(Some(message)),
        Err(FrameError::Closed) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One response-direction frame from `reader`, as the client reads one.
fn read_response<R: Read, T: DeserializeOwned>(reader: &mut R) -> Result<T, FrameError> {
    FrameBuf::new(MAX_RESPONSE_FRAME).read_frame(reader, decode_response)
}

/// Everything the daemon reads from one connection: a `Hello`, then
/// requests until the end of stream or the first error.
fn daemon_reads(bytes: &[u8], chunk: usize) -> (Vec<Request>, Option<FrameError>) {
    let mut stream = Chunked::new(bytes, chunk);
    let mut frames = FrameBuf::new(MAX_REQUEST_FRAME);
    let mut requests = Vec::new();
    match frames.read_frame(&mut stream, decode_request::<Hello>) {
        Ok(_) => {}
        Err(FrameError::Closed) => return (requests, None),
        Err(e) => return (requests, Some(e)),
    }
    loop {
        match frames.read_frame(&mut stream, decode_request::<Request>) {
            Ok(request) => requests.push(request),
            Err(FrameError::Closed) => return (requests, None),
            Err(e) => return (requests, Some(e)),
        }
    }
}

/// Everything a client reads from one connection: a `HelloReply`, then
/// responses until the end of stream or the first error.
fn client_reads(bytes: &[u8], chunk: usize) -> (Vec<Response>, FrameError) {
    let mut stream = Chunked::new(bytes, chunk);
    let mut frames = FrameBuf::new(MAX_RESPONSE_FRAME);
    let mut responses = Vec::new();
    if let Err(e) = frames.read_frame(&mut stream, decode_response::<HelloReply>) {
        return (responses, e);
    }
    loop {
        match frames.read_frame(&mut stream, decode_response::<Response>) {
            Ok(response) => responses.push(response),
            Err(e) => return (responses, e),
        }
    }
}

/// A reader that hands out at most `chunk` bytes per call, as a socket may.
struct Chunked<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl<'a> Chunked<'a> {
    fn new(bytes: &'a [u8], chunk: usize) -> Self {
        Chunked { bytes, chunk }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// A reader holding only a header, one byte per call, that fails the test
/// if anything past the header is asked for.
struct HeaderOnly {
    header: [u8; HEADER_LEN],
    given: usize,
}

impl Read for HeaderOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        assert!(
            self.given < HEADER_LEN,
            "read past the header of a frame claiming {} bytes",
            u32::from_le_bytes(self.header)
        );
        if buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.header[self.given];
        self.given += 1;
        Ok(1)
    }
}

// ---------------------------------------------------------------------------
// Strategies: every request kind, every response kind, arbitrary contents.

fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

fn secret() -> impl Strategy<Value = Secret> {
    text().prop_map(Secret::new)
}

fn grant() -> impl Strategy<Value = Grant> {
    prop_oneof![
        Just(Grant::ClientCredentials),
        Just(Grant::Password),
        Just(Grant::AuthorizationCode),
        Just(Grant::JwtBearer),
    ]
}

fn client_auth() -> impl Strategy<Value = ClientAuth> {
    prop_oneof![Just(ClientAuth::Form), Just(ClientAuth::Basic)]
}

fn readers() -> impl Strategy<Value = Readers> {
    (vec(text(), 0..3), vec(text(), 0..3), vec(text(), 0..3)).prop_map(|(users, groups, units)| {
        Readers {
            users,
            groups,
            units,
        }
    })
}

fn user_login() -> impl Strategy<Value = UserLogin> {
    (text(), secret()).prop_map(|(username, password)| UserLogin { username, password })
}

fn jwt() -> impl Strategy<Value = JwtSettings> {
    (secret(), text(), option::of(text())).prop_map(|(key, subject, kid)| JwtSettings {
        key,
        subject,
        kid,
    })
}

fn add_request() -> impl Strategy<Value = AddRequest> {
    (
        (text(), text(), grant(), text(), secret(), client_auth()),
        (
            option::of(text()),
            option::of(user_login()),
            option::of(any::<u16>()),
            option::of(any::<u64>()),
            readers(),
            option::of(jwt()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (name, instance_url, grant, client_id, client_secret, client_auth),
                (scope, user, redirect_port, refresh_lifespan_secs, readers, jwt, proxy),
            )| AddRequest {
                name,
                instance_url,
                grant,
                client_id,
                client_secret,
                client_auth,
                scope,
                user,
                redirect_port,
                refresh_lifespan_secs,
                readers,
                jwt,
                proxy,
            },
        )
}

fn update_request() -> impl Strategy<Value = UpdateRequest> {
    (
        (
            text(),
            option::of(text()),
            option::of(text()),
            option::of(secret()),
            option::of(client_auth()),
        ),
        (
            option::of(text()),
            option::of(any::<u16>()),
            option::of(any::<u64>()),
            option::of(readers()),
            option::of(any::<bool>()),
        ),
    )
        .prop_map(
            |(
                (name, instance_url, client_id, client_secret, client_auth),
                (scope, redirect_port, refresh_lifespan_secs, readers, proxy),
            )| UpdateRequest {
                name,
                instance_url,
                client_id,
                client_secret,
                client_auth,
                scope,
                redirect_port,
                refresh_lifespan_secs,
                readers,
                proxy,
            },
        )
}

fn login_proof() -> impl Strategy<Value = LoginProof> {
    prop_oneof![
        user_login().prop_map(LoginProof::Password),
        (secret(), text()).prop_map(|(code, state)| LoginProof::AuthorizationCode { code, state }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (text(), any::<u32>(), any::<bool>()).prop_map(|(name, secs, required)| {
            Request::Token(TokenRequest {
                name,
                min_valid: if required {
                    MinValid::Required(secs)
                } else {
                    MinValid::Default(secs)
                },
            })
        }),
        Just(Request::List),
        text().prop_map(|name| Request::Show(NameRequest { name })),
        add_request().prop_map(Request::Add),
        update_request().prop_map(Request::Update),
        (text(), any::<bool>()).prop_map(|(name, keep_upstream)| Request::Remove(RemoveRequest {
            name,
            keep_upstream
        })),
        text().prop_map(|name| Request::Refresh(NameRequest { name })),
        Just(Request::Status),
        (text(), option::of(add_request()), option::of(secret())).prop_map(
            |(name, add, client_secret)| Request::StartLogin(StartLoginRequest {
                name,
                add,
                client_secret
            })
        ),
        (text(), login_proof(), option::of(secret())).prop_map(|(name, proof, client_secret)| {
            Request::Login(LoginRequest {
                name,
                proof,
                client_secret,
            })
        }),
        text().prop_map(|name| Request::Doctor(NameRequest { name })),
        (option::of(any::<u64>()), any::<u64>())
            .prop_map(|(snapshot, offset)| Request::Backup(BackupRequest { snapshot, offset })),
        Just(Request::Metrics),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u32>(), text()).prop_map(|(protocol_version, client_version)| Hello {
        protocol_version,
        client_version,
    })
}

fn hello_reply() -> impl Strategy<Value = HelloReply> {
    (any::<u32>(), text()).prop_map(|(protocol_version, daemon_version)| HelloReply {
        protocol_version,
        daemon_version,
    })
}

fn auth_state() -> impl Strategy<Value = AuthState> {
    prop_oneof![
        Just(AuthState::Ok),
        Just(AuthState::Failing),
        Just(AuthState::Rejected),
        Just(AuthState::NeedsLogin),
    ]
}

fn login_summary() -> impl Strategy<Value = LoginSummary> {
    (
        option::of(text()),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        any::<u64>(),
        option::of(text()),
    )
        .prop_map(
            |(
                username,
                refresh_issued_at,
                refresh_expires_at,
                refresh_lifespan_secs,
                redirect_uri,
            )| LoginSummary {
                username,
                refresh_issued_at,
                refresh_expires_at,
                refresh_lifespan_secs,
                redirect_uri,
            },
        )
}

fn auth_summary() -> impl Strategy<Value = AuthSummary> {
    (
        (
            text(),
            text(),
            grant(),
            text(),
            client_auth(),
            option::of(text()),
            auth_state(),
        ),
        (
            option::of(text()),
            option::of(any::<i64>()),
            option::of(any::<i64>()),
            option::of(any::<i64>()),
            any::<i64>(),
            option::of(login_summary()),
            readers(),
            any::<bool>(),
            option::of(proxy_socket()),
        ),
    )
        .prop_map(
            |(
                (name, instance_url, grant, client_id, client_auth, scope, state),
                (
                    last_error,
                    access_expires_at,
                    last_refresh_at,
                    next_refresh_at,
                    created_at,
                    login,
                    readers,
                    proxy,
                    proxy_socket,
                ),
            )| AuthSummary {
                name,
                instance_url,
                grant,
                client_id,
                client_auth,
                scope,
                state,
                last_error,
                access_expires_at,
                last_refresh_at,
                next_refresh_at,
                created_at,
                login,
                readers,
                proxy,
                proxy_socket,
            },
        )
}

fn proxy_socket() -> impl Strategy<Value = ProxySocket> {
    (text(), option::of(text())).prop_map(|(path, error)| ProxySocket { path, error })
}

fn daemon_status() -> impl Strategy<Value = DaemonStatus> {
    (
        (
            text(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            text(),
            text(),
        ),
        (
            any::<u32>(),
            any::<u32>(),
            option::of((text(), any::<i64>())),
            any::<u32>(),
            any::<u32>(),
            option::of((text(), any::<i64>())),
        ),
    )
        .prop_map(
            |(
                (version, protocol_version, pid, uptime_secs, socket, state_dir),
                (
                    authentications,
                    unhealthy,
                    next_refresh,
                    connections,
                    needs_login,
                    next_login_deadline,
                ),
            )| DaemonStatus {
                version,
                protocol_version,
                pid,
                uptime_secs,
                socket,
                state_dir,
                authentications,
                unhealthy,
                next_refresh,
                connections,
                needs_login,
                next_login_deadline,
            },
        )
}

fn diagnosis() -> impl Strategy<Value = Diagnosis> {
    let outcome = prop_oneof![
        Just(CheckOutcome::Pass),
        Just(CheckOutcome::Fail),
        Just(CheckOutcome::Unknown),
        Just(CheckOutcome::Skipped),
    ];
    let check = (text(), outcome, text()).prop_map(|(what, outcome, detail)| Check {
        what,
        outcome,
        detail,
    });
    (
        text(),
        vec(check, 0..4),
        any::<bool>(),
        option::of(text()),
        option::of(text()),
        any::<bool>(),
    )
        .prop_map(|(name, checks, works, cause, fix, needs_login)| Diagnosis {
            name,
            checks,
            works,
            cause,
            fix,
            needs_login,
        })
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (secret(), any::<i64>(), text()).prop_map(|(access_token, expires_at, instance_url)| {
            Reply::Token(TokenReply {
                access_token,
                expires_at,
                instance_url,
            })
        }),
        vec(auth_summary(), 0..3).prop_map(Reply::List),
        auth_summary().prop_map(|a| Reply::Auth(Box::new(a))),
        (any::<u32>(), option::of(text())).prop_map(|(revoked, revoke_error)| Reply::Removed(
            RemoveReply {
                revoked,
                revoke_error
            }
        )),
        daemon_status().prop_map(Reply::Status),
        (text(), text(), text(), any::<i64>()).prop_map(
            |(authorize_url, redirect_uri, state, expires_at)| {
                Reply::LoginChallenge(LoginChallenge {
                    authorize_url,
                    redirect_uri,
                    state,
                    expires_at,
                })
            }
        ),
        diagnosis().prop_map(Reply::Diagnosis),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            vec(any::<u8>(), 0..64),
            text()
        )
            .prop_map(
                |(snapshot, total, offset, bytes, key)| Reply::Backup(BackupChunk {
                    snapshot,
                    total,
                    offset,
                    bytes,
                    key,
                })
            ),
        text().prop_map(Reply::Metrics),
    ]
}

fn error() -> impl Strategy<Value = Error> {
    let upstream_kind = prop_oneof![
        Just(UpstreamKind::AccessDenied),
        Just(UpstreamKind::RateLimited),
        Just(UpstreamKind::ServerError),
        Just(UpstreamKind::HttpStatus),
        Just(UpstreamKind::NotJson),
        Just(UpstreamKind::BadResponse),
        Just(UpstreamKind::Timeout),
        Just(UpstreamKind::Connection),
        Just(UpstreamKind::Tls),
    ];
    prop_oneof![
        text().prop_map(|name| Error::NotFound { name }),
        text().prop_map(|name| Error::AlreadyExists { name }),
        text().prop_map(|name| Error::NeedsLogin { name }),
        text().prop_map(|reason| Error::Forbidden { reason }),
        (
            upstream_kind,
            option::of(any::<u16>()),
            text(),
            option::of(any::<i64>())
        )
            .prop_map(
                |(kind, status, message, retry_at)| Error::Upstream(UpstreamError {
                    kind,
                    status,
                    message,
                    retry_at,
                })
            ),
        text().prop_map(|message| Error::InvalidRequest { message }),
        text().prop_map(|message| Error::Unavailable { message }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(daemon, client)| Error::ProtocolMismatch { daemon, client }),
        text().prop_map(|message| Error::Internal { message }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![reply().prop_map(Ok), error().prop_map(Err)]
}

/// A valid frame in either direction and what it was made from.
#[derive(Debug, Clone)]
enum Message {
    Request(Box<Request>),
    Response(Response),
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        request().prop_map(|r| Message::Request(Box::new(r))),
        response().prop_map(Message::Response),
    ]
}

impl Message {
    fn frame(&self) -> Vec<u8> {
        match self {
            Message::Request(r) => encode(&**r, MAX_REQUEST_FRAME).unwrap(),
            Message::Response(r) => encode(r, MAX_RESPONSE_FRAME).unwrap(),
        }
    }

    /// Decodes `payload` in this message's direction; `Ok(true)` when it
    /// is this very message.
    fn decodes_to_self(&self, payload: &[u8]) -> Result<bool, FrameError> {
        Ok(match self {
            Message::Request(r) => decode_request::<Request>(payload)? == **r,
            Message::Response(r) => decode_response::<Response>(payload)? == *r,
        })
    }
}

// ---------------------------------------------------------------------------
// (a) Arbitrary bytes never panic a reader.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every decoder, in both directions, on arbitrary payloads: an error
    /// or a message, never a panic; and what decodes re-encodes to a payload
    /// that decodes to the same message.
    #[test]
    fn arbitrary_payloads_never_panic_the_decoders(bytes in vec(any::<u8>(), 0..256)) {
        if let Ok(request) = decode_request::<Request>(&bytes) {
            let again = encode(&request, MAX_REQUEST_FRAME).unwrap();
            prop_assert_eq!(decode_request::<Request>(&again[HEADER_LEN..]).unwrap(), request);
        }
        if let Ok(response) = decode_response::<Response>(&bytes) {
            let again = encode(&response, MAX_RESPONSE_FRAME).unwrap();
            prop_assert_eq!(decode_response::<Response>(&again[HEADER_LEN..]).unwrap(), response);
        }
        let _ = decode_request::<Hello>(&bytes);
        let _ = decode_response::<HelloReply>(&bytes);
    }

    /// Arbitrary byte streams through the daemon's read loop (a `Hello`,
    /// then requests) and the client's: they stop at the
    /// first error without panicking, and a header is never more than the
    /// direction's limit.
    #[test]
    fn arbitrary_streams_never_panic_either_reader(bytes in vec(any::<u8>(), 0..512)) {
        let (_, error) = daemon_reads(&bytes, 3);
        if let Some(FrameError::TooLarge { len, max }) = error {
            prop_assert!(len > max && max == MAX_REQUEST_FRAME);
        }
        let (_, error) = client_reads(&bytes, 5);
        if let FrameError::TooLarge { len, max } = error {
            prop_assert!(len > max && max == MAX_RESPONSE_FRAME);
        }
        if let Some(header) = bytes.first_chunk::<HEADER_LEN>() {
            let claimed = u32::from_le_bytes(*header) as usize;
            match payload_len(*header, MAX_REQUEST_FRAME) {
                Ok(len) => prop_assert!(len == claimed && len <= MAX_REQUEST_FRAME),
                Err(FrameError::TooLarge { len, max }) => {
                    prop_assert!(len == claimed && len > max)
                }
                Err(other) => prop_assert!(false, "payload_len: {other}"),
            }
        }
    }

    /// Valid frames with a few bytes overwritten (the inputs most likely to
    /// get deep into a decoder): never a panic, and the readers stay within
    /// their limits.
    #[test]
    fn corrupted_frames_never_panic(
        message in message(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut frame = message.frame();
        for (at, byte) in edits {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        let payload = &frame[HEADER_LEN..];
        let _ = decode_request::<Request>(payload);
        let _ = decode_response::<Response>(payload);
        let mut stream = Chunked::new(&frame, 2);
        let _ = read_request_frame::<Request, _>(&mut stream);
        let _ = read_response::<_, Response>(&mut Cursor::new(&frame));
    }
}

// ---------------------------------------------------------------------------
// (b) Valid messages come back as themselves.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any request, of any kind: encode, read the header, decode the
    /// payload: the same request; encoding it again gives the same bytes.
    #[test]
    fn every_request_round_trips(request in request()) {
        let frame = encode(&request, MAX_REQUEST_FRAME).unwrap();
        let header = *frame.first_chunk::<HEADER_LEN>().unwrap();
        prop_assert_eq!(payload_len(header, MAX_REQUEST_FRAME).unwrap(), frame.len() - HEADER_LEN);
        let back: Request = decode_request(&frame[HEADER_LEN..]).unwrap();
        prop_assert_eq!(&back, &request);
        prop_assert_eq!(encode(&back, MAX_REQUEST_FRAME).unwrap(), frame.clone());
        let mut stream = Chunked::new(&frame, 1);
        prop_assert_eq!(read_request_frame::<Request, _>(&mut stream).unwrap(), Some(request));
    }

    /// Any response, success or error of any kind, through the client's
    /// reader: the same response, and the same bytes when encoded again.
    #[test]
    fn every_response_round_trips(response in response()) {
        let frame = encode(&response, MAX_RESPONSE_FRAME).unwrap();
        let back: Response = read_response(&mut Chunked::new(&frame, 3)).unwrap();
        prop_assert_eq!(&back, &response);
        prop_assert_eq!(decode_response::<Response>(&frame[HEADER_LEN..]).unwrap(), response);
        prop_assert_eq!(encode(&back, MAX_RESPONSE_FRAME).unwrap(), frame);
    }

    /// A whole conversation in one stream, each side reading what the other
    /// wrote, in pieces of any size (one byte to several frames at once):
    /// the handshake, then requests (daemon side) and responses (client
    /// side) in order, then a clean end of stream.
    #[test]
    fn conversations_round_trip_in_order(
        hello in hello(),
        hello_reply in hello_reply(),
        requests in vec(request(), 0..4),
        responses in vec(response(), 0..4),
        chunk in 1..2048usize,
    ) {
        let mut upstream = encode(&hello, MAX_REQUEST_FRAME).unwrap();
        for r in &requests {
            upstream.extend(encode(r, MAX_REQUEST_FRAME).unwrap());
        }
        let mut stream = Chunked::new(&upstream, 7);
        prop_assert_eq!(read_request_frame::<Hello, _>(&mut stream).unwrap(), Some(hello));
        let (read, error) = daemon_reads(&upstream, chunk);
        prop_assert!(error.is_none(), "{:?}", error);
        prop_assert_eq!(read, requests);

        let mut downstream = encode(&hello_reply, MAX_RESPONSE_FRAME).unwrap();
        for r in &responses {
            downstream.extend(encode(r, MAX_RESPONSE_FRAME).unwrap());
        }
        let reply: HelloReply = read_response(&mut Cursor::new(&downstream)).unwrap();
        prop_assert_eq!(reply, hello_reply);
        let (read, end) = client_reads(&downstream, chunk);
        prop_assert!(matches!(end, FrameError::Closed), "{}", end);
        prop_assert_eq!(read, responses);
    }
}

// ---------------------------------------------------------------------------
// (c) Lengths past the limit are refused before anything is read or
// allocated.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A header above the response limit: `TooLarge` with the claimed
    /// length, the payload never asked for, nothing of that size allocated.
    #[test]
    fn oversized_response_headers_are_refused_before_the_payload(
        len in (MAX_RESPONSE_FRAME as u32 + 1)..=u32::MAX,
    ) {
        let header = len.to_le_bytes();
        let refused = payload_len(header, MAX_RESPONSE_FRAME);
        prop_assert!(matches!(
            refused,
            Err(FrameError::TooLarge { len: l, max: MAX_RESPONSE_FRAME }) if l == len as usize
        ), "{:?}", refused);
        let mut reader = HeaderOnly { header, given: 0 };
        let (result, largest) = largest_allocation(|| read_response::<_, Response>(&mut reader));
        prop_assert!(matches!(
            result,
            Err(FrameError::TooLarge { len: l, max: MAX_RESPONSE_FRAME }) if l == len as usize
        ), "{:?}", result);
        prop_assert!(largest < 4096, "allocated {} bytes", largest);
    }

    /// The same for the daemon's request read, whose limit is lower.
    #[test]
    fn oversized_request_headers_are_refused_before_the_payload(
        len in (MAX_REQUEST_FRAME as u32 + 1)..=u32::MAX,
    ) {
        let header = len.to_le_bytes();
        let mut reader = HeaderOnly { header, given: 0 };
        let (result, largest) =
            largest_allocation(|| read_request_frame::<Request, _>(&mut reader));
        prop_assert!(matches!(
            result,
            Err(FrameError::TooLarge { len: l, max: MAX_REQUEST_FRAME }) if l == len as usize
        ), "{:?}", result);
        prop_assert!(largest < 4096, "allocated {} bytes", largest);
    }

    /// Lengths at or under the limit are accepted as they are.
    #[test]
    fn lengths_within_the_limit_are_taken_as_is(len in 0..=MAX_REQUEST_FRAME as u32) {
        prop_assert_eq!(payload_len(len.to_le_bytes(), MAX_REQUEST_FRAME).unwrap(), len as usize);
        prop_assert_eq!(payload_len(len.to_le_bytes(), MAX_RESPONSE_FRAME).unwrap(), len as usize);
    }

    /// A string or byte-string length *inside* a payload that claims more
    /// than the direction's limit (up to exabytes) is refused, and what is
    /// allocated meanwhile stays within that limit.
    #[test]
    fn lengths_inside_a_payload_cannot_claim_past_the_limit(
        request_claim in (MAX_REQUEST_FRAME as u64 + 1)..=u64::MAX,
        response_claim in (MAX_RESPONSE_FRAME as u64 + 1)..=u64::MAX,
        tail in vec(any::<u8>(), 0..16),
    ) {
        let varint = |prefix: &[u8], claimed: u64| {
            let mut p = prefix.to_vec();
            p.push(253);
            p.extend_from_slice(&claimed.to_le_bytes());
            p.extend_from_slice(&tail);
            p
        };
        // Request::Show(name), Request::Token(name, ..), and the name of a
        // Request::Add.
        for payload in [2, 0, 3].map(|kind| varint(&[kind], request_claim)) {
            let (result, largest) = largest_allocation(|| decode_request::<Request>(&payload));
            prop_assert!(result.is_err());
            prop_assert!(largest <= MAX_REQUEST_FRAME, "allocated {} bytes", largest);
        }
        // Ok(Reply::Backup(snapshot 0, total 0, offset 0, bytes)) and
        // Ok(Reply::Token(access_token)) and Err(Error::NotFound(name)).
        let prefixes: [&[u8]; 3] = [&[0, 7, 0, 0, 0], &[0, 0], &[1, 0]];
        for payload in prefixes.map(|prefix| varint(prefix, response_claim)) {
            let (result, largest) = largest_allocation(|| decode_response::<Response>(&payload));
            prop_assert!(result.is_err());
            prop_assert!(largest <= MAX_RESPONSE_FRAME, "allocated {} bytes", largest);
        }
    }

    /// A sequence length inside a payload (a list of authentications, of
    /// reader names) may claim anything: the decode fails on the missing
    /// items, and what is preallocated stays bounded by serde's cap instead
    /// of following the claim.
    #[test]
    fn sequence_lengths_inside_a_payload_are_not_trusted(
        claimed in any::<u64>(),
        tail in vec(any::<u8>(), 0..8),
    ) {
        let varint = |prefix: &[u8]| {
            let mut p = prefix.to_vec();
            p.push(253);
            p.extend_from_slice(&claimed.to_le_bytes());
            p.extend_from_slice(&tail);
            p
        };
        // Ok(Reply::List(..)).
        let payload = varint(&[0, 1]);
        let (_, largest) = largest_allocation(|| decode_response::<Response>(&payload));
        prop_assert!(largest <= SERDE_PREALLOCATION_CAP, "allocated {} bytes", largest);
        // Request::Add with empty fields up to readers.users.
        let payload = varint(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let (_, largest) = largest_allocation(|| decode_request::<Request>(&payload));
        prop_assert!(largest <= SERDE_PREALLOCATION_CAP, "allocated {} bytes", largest);
    }
}

// ---------------------------------------------------------------------------
// (d) A truncated frame is an error, never another message.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any strict prefix of a valid frame, in its direction's reader: an
    /// error (`Closed` only for the empty prefix), never a panic, never a
    /// message. The payload cut short is not a message either.
    #[test]
    fn truncated_frames_are_errors(message in message(), cut in any::<prop::sample::Index>()) {
        let frame = message.frame();
        let cut = cut.index(frame.len());
        let short = &frame[..cut];
        match &message {
            Message::Request(_) => {
                let read = read_request_frame::<Request, _>(&mut Chunked::new(short, 3));
                match read {
                    Ok(None) => prop_assert_eq!(cut, 0),
                    Ok(Some(other)) => prop_assert!(false, "a prefix read as {:?}", other),
                    Err(_) => prop_assert!(cut > 0),
                }
            }
            Message::Response(_) => match read_response::<_, Response>(&mut Cursor::new(short)) {
                Err(FrameError::Closed) => prop_assert_eq!(cut, 0),
                Err(_) => prop_assert!(cut > 0),
                Ok(other) => prop_assert!(false, "a prefix read as {:?}", other),
            },
        }
        if cut >= HEADER_LEN {
            prop_assert!(message.decodes_to_self(&frame[HEADER_LEN..cut]).is_err());
        }
        prop_assert!(message.decodes_to_self(&frame[HEADER_LEN..]).unwrap());
    }

    /// A valid payload with bytes after it is refused, whatever they are.
    #[test]
    fn trailing_bytes_are_errors(message in message(), extra in vec(any::<u8>(), 1..8)) {
        let mut frame = message.frame();
        frame.extend_from_slice(&extra);
        prop_assert!(message.decodes_to_self(&frame[HEADER_LEN..]).is_err());
    }
}

// ---------------------------------------------------------------------------
// Fixed cases: what the properties above once found, or what they pin.

/// bincode accepts a varint in a longer form than needed (here 5 as a
/// 251-marked u16), so the same message has more than one encoding; what
/// is decoded still re-encodes to the one canonical form.
#[test]
fn non_minimal_varints_decode_to_the_canonical_message() {
    let long = [0u8, 1, b'a', 0, 251, 5, 0];
    let request: Request = decode_request(&long).unwrap();
    assert_eq!(
        request,
        Request::Token(TokenRequest {
            name: "a".into(),
            min_valid: MinValid::Required(5)
        })
    );
    assert_eq!(
        &encode(&request, MAX_REQUEST_FRAME).unwrap()[HEADER_LEN..],
        &[0, 1, b'a', 0, 5]
    );
}

/// The claim checked first is the limit, not the bytes at hand: a 16 MiB
/// byte string in a response payload of a few bytes is allocated (once, at
/// the limit) and then refused as truncated.
#[test]
fn a_claim_at_the_limit_allocates_at_most_the_limit() {
    let mut payload = vec![0, 7, 0, 0, 0, 253];
    payload.extend_from_slice(&(MAX_RESPONSE_FRAME as u64 - 16).to_le_bytes());
    let (result, largest) = largest_allocation(|| decode_response::<Response>(&payload));
    assert!(result.is_err());
    assert!(largest <= MAX_RESPONSE_FRAME, "allocated {largest} bytes");
}

/// The allocation counter the properties above rely on does count.
#[test]
fn the_allocation_counter_sees_large_allocations() {
    let (buffer, largest) = largest_allocation(|| vec![1u8; 3 << 20]);
    assert_eq!(buffer.len(), 3 << 20);
    assert!(largest >= 3 << 20, "saw {largest} bytes");
}
