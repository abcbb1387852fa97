//! Arbitrary bytes as a connection's stream, through the daemon's request
//! reads and the client's response reads; arbitrary bytes as a single
//! payload, through every decoder. Must never panic, abort or run out of
//! memory; whatever decodes must survive a round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use snctl_fuzz::{check_request, check_round_trip, client_reads, daemon_reads};
use snctl_shared::frame::{decode_request, decode_response, MAX_RESPONSE_FRAME};
use snctl_shared::protocol::{Hello, HelloReply, Request, Response};

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the stream is cut into reads.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut % 16) + 1;
    daemon_reads(stream, chunk);
    client_reads(stream, chunk);

    if let Ok(request) = decode_request::<Request>(stream) {
        check_request(&request);
    }
    if let Ok(response) = decode_response::<Response>(stream) {
        check_round_trip(&response, MAX_RESPONSE_FRAME, decode_response);
    }
    let _ = decode_request::<Hello>(stream);
    let _ = decode_response::<HelloReply>(stream);
});
