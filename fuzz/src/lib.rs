//! What the fuzz targets share: the daemon's and the client's frame reads
//! on an in-memory stream, and the checks made on every decoded message.

use std::io::{self, Read};

use serde::{de::DeserializeOwned, Serialize};
use snctl_shared::frame::{
    decode_request, decode_response, encode, payload_len, FrameBuf, HEADER_LEN, MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
};
use snctl_shared::protocol::{Hello, HelloReply, Request, Response};
use snctl_shared::FrameError;

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

/// The daemon's side of a connection, read with the daemon's
/// [`FrameBuf`]: a `Hello`, then requests until the end of the stream or
/// the first error. Every request read is checked with [`check_request`].
pub fn daemon_reads(bytes: &[u8], chunk: usize) -> usize {
    let mut stream = Chunked::new(bytes, chunk);
    let mut frames = FrameBuf::new(MAX_REQUEST_FRAME);
    match frames.read_frame(&mut stream, decode_request::<Hello>) {
        Ok(hello) => check_round_trip(&hello, MAX_REQUEST_FRAME, decode_request),
        Err(FrameError::Closed) => return 0,
        Err(e) => return check_refusal(e, MAX_REQUEST_FRAME),
    }
    let mut count = 0;
    loop {
        match frames.read_frame(&mut stream, decode_request::<Request>) {
            Ok(request) => {
                check_request(&request);
                count += 1;
            }
            Err(FrameError::Closed) => return count,
            Err(e) => return check_refusal(e, MAX_REQUEST_FRAME) + count,
        }
    }
}

/// The client's side, read as the client library reads: a `HelloReply`,
/// then responses until the end of the stream or the first error.
pub fn client_reads(bytes: &[u8], chunk: usize) -> usize {
    let mut stream = Chunked::new(bytes, chunk);
    let mut frames = FrameBuf::new(MAX_RESPONSE_FRAME);
    match frames.read_frame(&mut stream, decode_response::<HelloReply>) {
        Ok(reply) => check_round_trip(&reply, MAX_RESPONSE_FRAME, decode_response),
        Err(e) => return check_refusal(e, MAX_RESPONSE_FRAME),
    }
    let mut count = 0;
    loop {
        match frames.read_frame(&mut stream, decode_response::<Response>) {
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
