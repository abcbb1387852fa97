//! Bytes <-> messages. The only module that knows the wire encoding.
//!
//! A frame is:
//!
//! ```text
//! +----------------------+-----------------------------------------+
//! | length: u32, LE      | payload: `length` bytes of bincode 2    |
//! +----------------------+-----------------------------------------+
//! ```
//!
//! The payload is the message encoded with bincode 2.0.1's standard
//! configuration through serde: little-endian, variable-length integers
//! (values below 251 take one byte; then a marker byte 251/252/253 and
//! 2/4/8 bytes), strings and sequences as a length then their items, enum
//! variants as their index, `Option` as 0 or 1 then the value.
//!
//! Two limits protect the reader: the length is checked against a cap for
//! the direction before anything is allocated (requests are small;
//! responses may list thousands of authentications), and bincode itself runs
//! with the same limit so that a length *inside* the payload cannot make it
//! allocate more. A payload must be consumed exactly; trailing bytes are an
//! error.
//!
//! `PROTOCOL.md` at the repository root lays every message out as bytes for
//! clients in other languages; `shared/tests/protocol_doc.rs` holds it to
//! this encoder.

use std::io::{self, Read};

use bincode::config::{Configuration, Limit};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest frame a client may send to the daemon.
pub const MAX_REQUEST_FRAME: usize = 64 * 1024;
/// Largest frame the daemon may send to a client.
pub const MAX_RESPONSE_FRAME: usize = 16 * 1024 * 1024;
/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

type Config<const N: usize> =
    Configuration<bincode::config::LittleEndian, bincode::config::Varint, Limit<N>>;

fn config<const N: usize>() -> Config<N> {
    bincode::config::standard().with_limit::<N>()
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix claims more than the reader accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Claimed length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// The message could not be encoded (or is larger than the limit).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Encodes `message` as a whole frame (length prefix included).
///
/// Fails when the payload would exceed `max` bytes.
pub fn encode<T: Serialize>(message: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::new();
    encode_into(message, max, &mut frame)?;
    Ok(frame)
}

/// Encodes `message` as a whole frame into `frame`, replacing what it held:
/// a connection that keeps one buffer for its frames allocates nothing for
/// a frame no larger than the ones before.
///
/// Fails when the payload would exceed `max` bytes (`frame` is then
/// cleared).
pub fn encode_into<T: Serialize>(
    message: &T,
    max: usize,
    frame: &mut Vec<u8>,
) -> Result<(), FrameError> {
    frame.clear();
    frame.extend_from_slice(&[0; HEADER_LEN]);
    let encoded =
        bincode::serde::encode_into_std_write(message, &mut *frame, config::<MAX_RESPONSE_FRAME>())
            .map_err(|e| FrameError::Encode(e.to_string()))
            .and_then(|len| match len > max {
                true => Err(FrameError::TooLarge { len, max }),
                false => Ok(len),
            });
    match encoded {
        Ok(len) => {
            frame[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
            Ok(())
        }
        Err(error) => {
            frame.clear();
            Err(error)
        }
    }
}

/// Reads the payload length from a frame header, refusing lengths above `max`.
pub fn payload_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a request-direction payload (client to daemon).
pub fn decode_request<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    decode_with(payload, config::<MAX_REQUEST_FRAME>())
}

/// Decodes a response-direction payload (daemon to client).
pub fn decode_response<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    decode_with(payload, config::<MAX_RESPONSE_FRAME>())
}

/// Decodes a request-direction payload into a message that borrows from
/// it (its strings read in place, nothing allocated), such as
/// [`crate::protocol::RequestRef`].
pub fn decode_request_ref<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    decode_with(payload, config::<MAX_REQUEST_FRAME>())
}

/// Decodes a response-direction payload into a message that borrows from
/// it, such as [`crate::protocol::TokenResponseRef`].
pub fn decode_response_ref<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    decode_with(payload, config::<MAX_RESPONSE_FRAME>())
}

fn decode_with<'a, T: Deserialize<'a>, const N: usize>(
    payload: &'a [u8],
    config: Config<N>,
) -> Result<T, FrameError> {
    let (message, used) = bincode::serde::borrow_decode_from_slice(payload, config)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(message)
}

/// Bytes read at a time while no longer frame is in progress: a hello with
/// a token request, or their answers, fit many times over.
pub const READ_CHUNK: usize = 1024;

/// Frames as they arrive on a stream, for both ends: whatever has come is
/// read into a buffer and whole frames are taken from its front, so that a
/// frame that came whole (or with the next) costs one read. A frame longer
/// than the buffer grows it only once its header has passed the limit, and
/// the buffer shrinks back once that frame is taken.
///
/// The daemon drives it with its timeouts ([`FrameBuf::read_from`],
/// [`FrameBuf::take`]); the client library reads a frame at a time
/// ([`FrameBuf::read_frame`]).
#[derive(Debug)]
pub struct FrameBuf {
    buf: Vec<u8>,
    /// Bytes of `buf` read and not yet taken.
    filled: usize,
    /// The largest payload accepted.
    max: usize,
}

impl FrameBuf {
    /// A buffer for frames whose payload is at most `max` bytes
    /// ([`MAX_REQUEST_FRAME`] or [`MAX_RESPONSE_FRAME`]).
    pub fn new(max: usize) -> FrameBuf {
        FrameBuf {
            buf: vec![0; READ_CHUNK],
            filled: 0,
            max,
        }
    }

    /// Whether nothing of a next frame has arrived: the stream is between
    /// frames.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Length of the frame at the front, header included, once its header
    /// is in; an error when the header claims more than the limit.
    fn front_len(&self) -> Result<Option<usize>, FrameError> {
        match self.buf[..self.filled].first_chunk::<HEADER_LEN>() {
            Some(header) => Ok(Some(HEADER_LEN + payload_len(*header, self.max)?)),
            None => Ok(None),
        }
    }

    /// One read from `reader`, of as much as has arrived and there is room
    /// for: the count, 0 at the end of the stream. Refuses a frame whose
    /// header claims more than the limit before reading (or allocating)
    /// any of it.
    pub fn read_from<R: Read + ?Sized>(&mut self, reader: &mut R) -> Result<usize, FrameError> {
        let mut room = self.front_len()?.unwrap_or(0).max(READ_CHUNK);
        if self.filled == room {
            // Whole frames not yet taken fill the buffer.
            room += READ_CHUNK;
        }
        if self.buf.len() < room {
            // A new zeroed buffer rather than `resize`: a large one comes
            // from the allocator already zeroed (fresh pages), instead of
            // being written over before the frame arrives.
            let mut grown = vec![0; room];
            grown[..self.filled].copy_from_slice(&self.buf[..self.filled]);
            self.buf = grown;
        }
        loop {
            match reader.read(&mut self.buf[self.filled..]) {
                Ok(n) => {
                    self.filled += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes the frame at the front once it is whole, its payload decoded
    /// by `decode` ([`decode_request`] or [`decode_response`]); `None`
    /// while it is not. A payload that does not decode is taken too.
    pub fn take<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<T, FrameError>,
    ) -> Result<Option<T>, FrameError> {
        let Some(payload) = self.front()? else {
            return Ok(None);
        };
        let message = decode(payload);
        self.pop();
        message.map(Some)
    }

    /// Gives back the buffer while nothing is in it (a connection parked
    /// between requests); the next read takes a new one.
    pub fn release(&mut self) {
        if self.filled == 0 {
            self.buf = Vec::new();
        }
    }

    /// The payload of the frame at the front once it is whole, to be read
    /// in place; `None` while it is not. [`FrameBuf::pop`] then takes it.
    pub fn front(&self) -> Result<Option<&[u8]>, FrameError> {
        Ok(self
            .front_len()?
            .filter(|len| self.filled >= *len)
            .map(|len| &self.buf[HEADER_LEN..len]))
    }

    /// Drops the whole frame at the front ([`FrameBuf::front`]); nothing
    /// when there is none.
    pub fn pop(&mut self) {
        let Ok(Some(len)) = self.front_len() else {
            return;
        };
        if self.filled < len {
            return;
        }
        self.buf.copy_within(len..self.filled, 0);
        self.filled -= len;
        if self.buf.len() > READ_CHUNK && self.filled <= READ_CHUNK {
            self.buf.truncate(READ_CHUNK);
            self.buf.shrink_to_fit();
        }
    }

    /// Reads from a blocking `reader` until a frame is whole, and takes
    /// it. The end of the stream before the frame's first byte is
    /// [`FrameError::Closed`]; within it, an `UnexpectedEof` error.
    pub fn read_frame<R: Read + ?Sized, T>(
        &mut self,
        reader: &mut R,
        decode: impl Fn(&[u8]) -> Result<T, FrameError>,
    ) -> Result<T, FrameError> {
        loop {
            if let Some(message) = self.take(&decode)? {
                return Ok(message);
            }
            if self.read_from(reader)? == 0 {
                return Err(match self.is_empty() {
                    true => FrameError::Closed,
                    false => io::Error::from(io::ErrorKind::UnexpectedEof).into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;
    use crate::Secret;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn frames_are_taken_whole_however_they_arrive() {
        let hello = |v: &str| Hello {
            protocol_version: 3,
            client_version: v.into(),
        };
        let mut stream = encode(&hello("one"), MAX_REQUEST_FRAME).unwrap();
        let first = stream.len();
        stream.extend(encode(&hello("two"), MAX_REQUEST_FRAME).unwrap());
        let big = hello(&"x".repeat(8 * READ_CHUNK));
        stream.extend(encode(&big, MAX_REQUEST_FRAME).unwrap());
        let mut reader = io::Cursor::new(&stream);
        let mut frames = FrameBuf::new(MAX_REQUEST_FRAME);
        let decode = decode_request::<Hello>;
        // Two small frames come in one read; the second waits, read.
        assert_eq!(
            frames.read_frame(&mut reader, decode).unwrap(),
            hello("one")
        );
        assert!(
            frames.filled > first,
            "the second frame came with the first"
        );
        assert_eq!(
            frames.read_frame(&mut reader, decode).unwrap(),
            hello("two")
        );
        // A long frame grows the buffer while it is read, not after.
        assert_eq!(frames.read_frame(&mut reader, decode).unwrap(), big);
        assert_eq!(frames.buf.len(), READ_CHUNK);
        assert!(matches!(
            frames.read_frame(&mut reader, decode),
            Err(FrameError::Closed)
        ));
        // Cut off within a frame.
        let mut frames = FrameBuf::new(MAX_REQUEST_FRAME);
        let err = frames
            .read_frame(&mut io::Cursor::new(&stream[..first + 2]), decode)
            .map(|_| ())
            .and_then(|_| frames.read_frame(&mut io::Cursor::new(&[][..]), decode));
        assert!(matches!(err, Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_frame_is_read() {
        let mut frames = FrameBuf::new(MAX_REQUEST_FRAME);
        let header = ((MAX_REQUEST_FRAME + 1) as u32).to_le_bytes();
        let mut reader = io::Cursor::new(&header);
        assert!(frames.take(decode_request::<Hello>).unwrap().is_none());
        assert_eq!(frames.read_from(&mut reader).unwrap(), HEADER_LEN);
        assert!(matches!(
            frames.read_from(&mut reader),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            frames.take(decode_request::<Hello>),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(frames.buf.len(), READ_CHUNK);
    }

    // Golden frames: these bytes are the protocol. A change here is a
    // protocol change and needs a PROTOCOL_VERSION bump.
    #[test]
    fn golden_hello() {
        let hello = Hello {
            protocol_version: 1,
            client_version: "0.1.0".into(),
        };
        let frame = encode(&hello, MAX_REQUEST_FRAME).unwrap();
        assert_eq!(hex(&frame), "070000000105302e312e30");
        let reply = HelloReply {
            protocol_version: 1,
            daemon_version: "0.1.0".into(),
        };
        let frame = encode(&reply, MAX_RESPONSE_FRAME).unwrap();
        assert_eq!(hex(&frame), "070000000105302e312e30");
    }

    #[test]
    fn golden_token_request_and_reply() {
        let request = Request::Token(TokenRequest {
            name: "prod".into(),
            min_valid: MinValid::Required(300),
        });
        let frame = encode(&request, MAX_REQUEST_FRAME).unwrap();
        // variant 0, "prod", Required (variant 0), 300 as varint (251 marker + u16 LE)
        assert_eq!(hex(&frame), "0a000000000470726f6400fb2c01");
        let response: Response = Ok(Reply::Token(TokenReply {
            access_token: Secret::new("tok".into()),
            expires_at: 1_700_000_000,
            instance_url: "https://a".into(),
        }));
        let frame = encode(&response, MAX_RESPONSE_FRAME).unwrap();
        // Ok(0), Token(0), "tok", zigzag i64 (3.4e9: 252 marker + u32 LE), "https://a"
        assert_eq!(
            hex(&frame),
            "15000000000003746f6bfc00e2a7ca0968747470733a2f2f61"
        );
    }

    #[test]
    fn golden_error_response() {
        let response: Response = Err(Error::NotFound { name: "x".into() });
        let frame = encode(&response, MAX_RESPONSE_FRAME).unwrap();
        assert_eq!(hex(&frame), "0400000001000178");
    }

    #[test]
    fn the_borrowed_token_exchange_is_byte_for_byte_the_owned_one() {
        for (name, min_valid) in [
            ("prod", MinValid::Default(60)),
            ("", MinValid::Required(0)),
            ("ünïcode-név", MinValid::Required(u32::MAX)),
        ] {
            let owned = encode(
                &Request::Token(TokenRequest {
                    name: name.into(),
                    min_valid,
                }),
                MAX_REQUEST_FRAME,
            )
            .unwrap();
            let borrowed = RequestRef::Token(TokenRequestRef { name, min_valid });
            assert_eq!(encode(&borrowed, MAX_REQUEST_FRAME).unwrap(), owned);
            let read: RequestRef<'_> = decode_request_ref(&owned[HEADER_LEN..]).unwrap();
            assert_eq!(read, borrowed);
        }
        for (token, expires_at, url) in [
            ("eyJ0", 1_700_000_000, "https://acme.service-now.com"),
            ("", -1, ""),
            ("x".repeat(5000).as_str(), i64::MAX, "http://127.0.0.1:1"),
        ] {
            let owned: Response = Ok(Reply::Token(TokenReply {
                access_token: Secret::new(token.into()),
                expires_at,
                instance_url: url.into(),
            }));
            let borrowed = TokenResponseRef::token(TokenReplyRef {
                access_token: token,
                expires_at,
                instance_url: url,
            });
            let mut frame = b"left over from the last frame".to_vec();
            encode_into(&borrowed, MAX_RESPONSE_FRAME, &mut frame).unwrap();
            assert_eq!(frame, encode(&owned, MAX_RESPONSE_FRAME).unwrap());
            assert!(!format!("{borrowed:?}").contains(token) || token.is_empty());
            // Read back in place, and copied out, it is the owned reply.
            let TokenResponseRef::Ok(ReplyRef::Token(read)) =
                decode_response_ref(&frame[HEADER_LEN..]).unwrap();
            assert_eq!(Ok(Reply::Token(read.to_reply())), owned);
        }
        // Any other answer is not a token, and is read whole.
        for other in [
            Ok(Reply::List(Vec::new())),
            Err(Error::NotFound {
                name: "prod".into(),
            }),
        ] {
            let frame = encode::<Response>(&other, MAX_RESPONSE_FRAME).unwrap();
            assert!(decode_response_ref::<TokenResponseRef<'_>>(&frame[HEADER_LEN..]).is_err());
        }
        // Any other request is not a token request, and is read whole.
        let list = encode(&Request::List, MAX_REQUEST_FRAME).unwrap();
        assert!(decode_request_ref::<RequestRef<'_>>(&list[HEADER_LEN..]).is_err());
        let show = encode(
            &Request::Show(NameRequest { name: "a".into() }),
            MAX_REQUEST_FRAME,
        )
        .unwrap();
        assert!(decode_request_ref::<RequestRef<'_>>(&show[HEADER_LEN..]).is_err());
    }

    #[test]
    fn a_frame_too_large_leaves_the_buffer_empty() {
        let mut frame = vec![1, 2, 3];
        let big = Hello {
            protocol_version: 1,
            client_version: "v".repeat(100),
        };
        assert!(matches!(
            encode_into(&big, 10, &mut frame),
            Err(FrameError::TooLarge { max: 10, .. })
        ));
        assert!(frame.is_empty());
    }

    #[test]
    fn round_trip_every_request_kind() {
        let requests = [
            Request::Token(TokenRequest {
                name: "a".into(),
                min_valid: MinValid::Default(0),
            }),
            Request::List,
            Request::Show(NameRequest { name: "a".into() }),
            Request::Add(AddRequest {
                name: "a".into(),
                instance_url: "https://x".into(),
                grant: Grant::ClientCredentials,
                client_id: "id".into(),
                client_secret: Secret::new("s".into()),
                client_auth: ClientAuth::Basic,
                scope: Some("useraccount".into()),
                user: Some(UserLogin {
                    username: "abel.tuter".into(),
                    password: Secret::new("pw".into()),
                }),
                redirect_port: Some(8751),
                refresh_lifespan_secs: None,
                readers: Readers {
                    users: vec!["alice".into()],
                    groups: vec!["ops".into()],
                    units: vec!["sync.service".into()],
                },
                jwt: None,
                proxy: false,
            }),
            Request::Update(UpdateRequest {
                name: "a".into(),
                instance_url: None,
                client_id: Some("id2".into()),
                client_secret: None,
                client_auth: None,
                scope: None,
                redirect_port: None,
                refresh_lifespan_secs: Some(86_400),
                readers: Some(Readers::default()),
                proxy: Some(false),
            }),
            Request::Remove(RemoveRequest {
                name: "a".into(),
                keep_upstream: true,
            }),
            Request::Refresh(NameRequest { name: "a".into() }),
            Request::Status,
            Request::StartLogin(StartLoginRequest {
                name: "a".into(),
                add: None,
                client_secret: Some(Secret::new("s2".into())),
            }),
            Request::Login(LoginRequest {
                name: "a".into(),
                proof: LoginProof::AuthorizationCode {
                    code: Secret::new("c".into()),
                    state: "s".into(),
                },
                client_secret: None,
            }),
            Request::Doctor(NameRequest { name: "a".into() }),
            Request::Backup(BackupRequest {
                snapshot: None,
                offset: 0,
            }),
            Request::Backup(BackupRequest {
                snapshot: Some(u64::MAX),
                offset: 1 << 40,
            }),
            Request::Metrics,
        ];
        for request in requests {
            let frame = encode(&request, MAX_REQUEST_FRAME).unwrap();
            let len = payload_len(frame[..4].try_into().unwrap(), MAX_REQUEST_FRAME).unwrap();
            assert_eq!(len, frame.len() - 4);
            let back: Request = decode_request(&frame[4..]).unwrap();
            assert_eq!(back, request);
        }
    }

    #[test]
    fn a_full_backup_chunk_fits_in_a_response_frame() {
        let response: Response = Ok(Reply::Backup(BackupChunk {
            snapshot: 7,
            total: 1 << 33,
            offset: 1 << 32,
            bytes: (0..BACKUP_CHUNK).map(|i| i as u8).collect(),
            key: "/var/lib/snctld/snctld.key".into(),
        }));
        let frame = encode(&response, MAX_RESPONSE_FRAME).unwrap();
        let back: Response = FrameBuf::new(MAX_RESPONSE_FRAME)
            .read_frame(&mut io::Cursor::new(frame), decode_response)
            .unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn oversized_lengths_are_refused_before_reading() {
        let header = u32::MAX.to_le_bytes();
        assert!(matches!(
            payload_len(header, MAX_REQUEST_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        // A reader that would hand out 4 GiB is asked for one chunk.
        let mut reader = io::Cursor::new(header.to_vec()).chain(io::repeat(0));
        let mut frames = FrameBuf::new(MAX_RESPONSE_FRAME);
        assert!(matches!(
            frames.read_frame(&mut reader, decode_response::<Response>),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(frames.buf.len(), READ_CHUNK);
    }

    #[test]
    fn a_length_inside_the_payload_cannot_claim_more_than_the_limit() {
        // Show(name) whose string length claims u64::MAX bytes.
        let mut payload = vec![2u8, 253];
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_request::<Request>(&payload).is_err());
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors_not_panics() {
        assert!(decode_request::<Request>(&[200, 1, 2, 3]).is_err());
        assert!(decode_request::<Request>(&[]).is_err());
        assert!(decode_request::<Request>(&[1, 0]).is_err(), "trailing byte");
        assert!(decode_request::<Hello>(&[0xff; 16]).is_err());
    }

    #[test]
    fn closed_between_frames_is_not_an_error_of_the_peer() {
        let mut empty = io::empty();
        assert!(matches!(
            FrameBuf::new(MAX_RESPONSE_FRAME).read_frame(&mut empty, decode_response::<Response>),
            Err(FrameError::Closed)
        ));
    }
}
