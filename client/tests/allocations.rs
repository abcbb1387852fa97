//! What a warm token costs the calling process in allocations: the two
//! strings it is handed, nothing else. Counted by this test binary's own
//! allocator, per thread, against a server on a real Unix socket that
//! answers as the daemon does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::os::unix::net::UnixListener;

use snctl_shared::frame::{self, FrameBuf, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use snctl_shared::protocol::{
    Error, Hello, HelloReply, Reply, Request, Response, TokenReply, PROTOCOL_VERSION,
};
use snctl_shared::Secret;

struct Counting;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Counts {
    alloc: u64,
    zeroed: u64,
    realloc: u64,
}

thread_local! {
    static COUNTS: Cell<Counts> = const {
        Cell::new(Counts { alloc: 0, zeroed: 0, realloc: 0 })
    };
}

fn count(f: impl FnOnce(&mut Counts)) {
    // Ignored while the thread's locals are being torn down.
    let _ = COUNTS.try_with(|c| {
        let mut counts = c.get();
        f(&mut counts);
        c.set(counts);
    });
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counters are thread-local cells, which allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(|c| c.alloc += 1);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(|c| c.zeroed += 1);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(|c| c.realloc += 1);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn this_threads_counts() -> Counts {
    COUNTS.with(Cell::get)
}

fn token() -> TokenReply {
    TokenReply {
        access_token: Secret::new("a".repeat(86)),
        expires_at: 1_900_000_000,
        instance_url: "https://acme.service-now.com".into(),
    }
}

/// Answers the hello, then every token request: `prod`'s token; for
/// `lying`, a token answer with a byte after it (a frame no daemon sends);
/// not-found for any other name.
fn serve(listener: UnixListener) {
    let (mut stream, _) = listener.accept().expect("accept");
    let mut frames = FrameBuf::new(MAX_REQUEST_FRAME);
    let hello: Hello = frames
        .read_frame(&mut stream, frame::decode_request)
        .unwrap();
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    let reply = HelloReply {
        protocol_version: PROTOCOL_VERSION,
        daemon_version: "test".into(),
    };
    stream
        .write_all(&frame::encode(&reply, MAX_RESPONSE_FRAME).unwrap())
        .unwrap();
    // Until the client closes the connection.
    while let Ok(request) = frames.read_frame(&mut stream, frame::decode_request) {
        let Request::Token(request) = request else {
            panic!("only token requests are sent here");
        };
        let response: Response = match request.name.as_str() {
            "prod" | "lying" => Ok(Reply::Token(token())),
            name => Err(Error::NotFound { name: name.into() }),
        };
        let mut answer = frame::encode(&response, MAX_RESPONSE_FRAME).unwrap();
        if request.name == "lying" {
            answer.push(0);
            let len = (answer.len() - frame::HEADER_LEN) as u32;
            answer[..frame::HEADER_LEN].copy_from_slice(&len.to_le_bytes());
        }
        stream.write_all(&answer).unwrap();
    }
}

#[test]
fn a_warm_token_allocates_only_the_two_strings_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snctld.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || serve(listener));

    let mut client = snctl::Client::connect(&path).unwrap();
    for _ in 0..10 {
        assert_eq!(client.token("prod").unwrap(), token());
    }
    const CALLS: u64 = 1000;
    let before = this_threads_counts();
    for _ in 0..CALLS {
        let token = client.token("prod").unwrap();
        assert_eq!(token.expires_at, 1_900_000_000);
    }
    let after = this_threads_counts();
    assert_eq!(
        Counts {
            alloc: after.alloc - before.alloc,
            zeroed: after.zeroed - before.zeroed,
            realloc: after.realloc - before.realloc,
        },
        // The access token and the instance URL; nothing zeroed (bincode's
        // owned strings come zeroed, from calloc, which takes glibc's arena
        // lock), nothing grown.
        Counts {
            alloc: 2 * CALLS,
            zeroed: 0,
            realloc: 0,
        }
    );

    // Any other answer is read whole, as before.
    let error = client.token("nope").unwrap_err();
    assert!(
        matches!(&error, snctl::ClientError::Daemon(Error::NotFound { name }) if name == "nope"),
        "{error}"
    );
    assert_eq!(client.token("prod").unwrap(), token());

    // A token answer that is not exactly one is refused, with the reason.
    let error = client.token("lying").unwrap_err().to_string();
    assert!(error.contains("1 trailing bytes"), "{error}");
    assert!(!error.contains(token().access_token.expose()), "{error}");
    drop(client);
    server.join().unwrap();
}
