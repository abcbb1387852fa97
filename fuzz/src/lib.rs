//! What the fuzz targets share: the daemon's and the client's frame reads
//! on an in-memory stream, and the checks made on every decoded message.

use std::io::{self, Read};

use serde::{de::DeserializeOwned, Serialize};
use snctl_shared::frame::{
    decode_request, decode_response, encode, payload_len, read_response, HEADER_LEN,
    MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME,
};
use snctl_shared::protocol::{Hello, HelloReply, Request, Response};
use snctl_shared::FrameError;

/// The daemon's request read (`read_frame` in `daemon/src/server.rs`, which
/// is private and async) on a blocking reader, call for call: one read for
/// the header (0 bytes: the client closed), the rest of it, the length
/// checked against [`MAX_REQUEST_FRAME`], the payload, `decode_request`.
pub fn read_request_frame<T: DeserializeOwned, R: Read>(
    reader: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = reader.read(&mut header)?;
    if got == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut header[got..])?;
    let len = payload_len(header, MAX_REQUEST_FRAME)?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    Ok(Some(decode_request(&payload)?))
}

/// A reader that hands out at most `chunk` bytes per call, as a socket may.
pub struct Chunked<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl<'a> Chunked<'a> {
    /// Reads `bytes`, `chunk` (at least 1) at a time.
    pub fn new(bytes: &'a [u8], chunk: usize) -> Self {
        Chunked {
            bytes,
            chunk: chunk.max(1),
        }
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

/// The daemon's side of a connection: a `Hello`, then requests until the
/// end of the stream or the first error. Every request read is checked
/// with [`check_request`].
pub fn daemon_reads(bytes: &[u8], chunk: usize) -> usize {
    let mut stream = Chunked::new(bytes, chunk);
    match read_request_frame::<Hello, _>(&mut stream) {
        Ok(Some(hello)) => check_round_trip(&hello, MAX_REQUEST_FRAME, decode_request),
        Ok(None) => return 0,
        Err(e) => return check_refusal(e, MAX_REQUEST_FRAME),
    }
    let mut count = 0;
    loop {
        match read_request_frame::<Request, _>(&mut stream) {
            Ok(Some(request)) => {
                check_request(&request);
                count += 1;
            }
            Ok(None) => return count,
            Err(e) => return check_refusal(e, MAX_REQUEST_FRAME) + count,
        }
    }
}

/// The client's side: a `HelloReply`, then responses until the end of the
/// stream or the first error.
pub fn client_reads(bytes: &[u8], chunk: usize) -> usize {
    let mut stream = Chunked::new(bytes, chunk);
    match read_response::<_, HelloReply>(&mut stream) {
        Ok(reply) => check_round_trip(&reply, MAX_RESPONSE_FRAME, decode_response),
        Err(e) => return check_refusal(e, MAX_RESPONSE_FRAME),
    }
    let mut count = 0;
    loop {
        match read_response::<_, Response>(&mut stream) {
            Ok(response) => {
                check_round_trip(&response, MAX_RESPONSE_FRAME, decode_response);
                count += 1;
            }
            Err(e) => return check_refusal(e, MAX_RESPONSE_FRAME) + count,
        }
    }
}

/// A refused frame names the right limit.
fn check_refusal(error: FrameError, max: usize) -> usize {
    if let FrameError::TooLarge { len, max: limit } = error {
        assert_eq!(limit, max, "refused against the wrong limit");
        assert!(len > limit, "{len} bytes refused under a limit of {limit}");
    }
    0
}

/// A request that decoded: it encodes again, within the request limit,
/// to bytes that decode to the same request.
pub fn check_request(request: &Request) {
    check_round_trip(request, MAX_REQUEST_FRAME, decode_request);
    assert!(!request.kind().is_empty());
}

/// Encoding `message` gives a frame whose header is right and whose
/// payload decodes (through `decode`) to `message`; that canonical form is
/// a fixed point.
pub fn check_round_trip<T, D>(message: &T, max: usize, decode: D)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    D: Fn(&[u8]) -> Result<T, FrameError>,
{
    let frame = encode(message, max).expect("a decoded message encodes within its limit");
    let header = *frame.first_chunk::<HEADER_LEN>().expect("a header");
    assert_eq!(
        payload_len(header, max).expect("the header is within the limit"),
        frame.len() - HEADER_LEN
    );
    let back = decode(&frame[HEADER_LEN..]).expect("a canonical encoding decodes");
    assert_eq!(&back, message, "the round trip changed the message");
    assert_eq!(
        encode(&back, max).expect("encodes again"),
        frame,
        "the canonical encoding is not a fixed point"
    );
}
