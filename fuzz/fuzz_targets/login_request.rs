//! The browser-login listener's request head (`snctl`'s
//! `login/request.rs`, included as it is: the binary's modules are not a
//! library). First byte: how the connection's bytes are cut into reads (1
//! to 64 bytes each); the rest: the bytes. Checks: no panic; the head is
//! read when its end comes within `MAX_HEAD` bytes, refused as too large
//! when `MAX_HEAD` bytes come without it, and otherwise still awaited; an
//! accepted request line is the connection's first line. Then the
//! round trip: a redirect built from the same bytes as code and state
//! yields exactly that code and state.

#![no_main]

#[allow(dead_code)]
#[path = "../../client/src/bin/snctl/login/request.rs"]
mod request;

use libfuzzer_sys::fuzz_target;
use request::{parse_request_line, read_head, Params, Refusal, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut % 64) + 1;
    let verdict = read_head(bytes.chunks(cut));
    let window = &bytes[..bytes.len().min(MAX_HEAD)];
    let ended = window.windows(4).any(|w| w == b"\r\n\r\n");
    match verdict {
        Some(Ok(line)) => {
            assert!(ended);
            assert!(bytes.starts_with(line.as_bytes()));
            assert!(!line.contains('\r'));
            if let Some((_, _, query)) = parse_request_line(&line) {
                let params = Params::parse(query);
                let empty = |v: &Option<String>| v.as_deref() == Some("");
                assert!(!empty(&params.state) && !empty(&params.error));
                assert!(params.code.as_ref().is_none_or(|c| !c.expose().is_empty()));
            }
        }
        Some(Err(Refusal::Malformed)) => assert!(ended),
        Some(Err(Refusal::TooLarge)) => assert!(!ended && bytes.len() >= MAX_HEAD),
        None => assert!(!ended && bytes.len() < MAX_HEAD),
    }

    // The round trip: the input split into a code and a state (as text),
    // encoded as the instance encodes its redirect.
    let text = String::from_utf8_lossy(bytes);
    let (code, state) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i));
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("state", state)
        .append_pair("code", code)
        .finish();
    let head = format!("GET /callback?{query} HTTP/1.1\r\nHost: 127.0.0.1:8751\r\n\r\n");
    let Some(Ok(line)) = read_head(head.as_bytes().chunks(cut)) else {
        // Only a redirect longer than the head allows is refused.
        assert!(head.len() > MAX_HEAD);
        return;
    };
    let (method, path, query) = parse_request_line(&line).expect("a request line");
    assert_eq!((method, path), ("GET", "/callback"));
    let params = Params::parse(query);
    assert_eq!(params.code.as_ref().map(|c| c.expose()), Some(code).filter(|c| !c.is_empty()));
    assert_eq!(params.state.as_deref(), Some(state).filter(|s| !s.is_empty()));
});
