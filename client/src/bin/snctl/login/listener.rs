//! The loopback HTTP listener the browser is redirected to. It answers
//! each connection on a thread of its own with a one-sentence page, and
//! bounds what a connection can hold: each has [`HEAD_DEADLINE`] from
//! being accepted to send its whole request head, and at most
//! [`MAX_HANDLERS`] wait for theirs at once: one more pushes out the one
//! that has waited longest, so a flood of idle connections never keeps the
//! browser's redirect waiting.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::error::CallbackError;
use super::peer::Senders;
use super::redirect::{Expected, Params, Verdict};
use super::request::{parse_request_line, HeadBuf, Progress, Refusal};

/// The most connections waiting for their request heads at once. A
/// browser opens one or two (a preconnect, the redirect) and sends its head
/// at once; one more connection pushes out the one that has waited
/// longest.
pub(super) const MAX_HANDLERS: usize = 64;

/// How long a connection has, from being accepted, to send its whole
/// request head: in all, not per read, so that trickling bytes does not
/// hold a handler. A browser sends it at once.
pub(super) const HEAD_DEADLINE: Duration = Duration::from_secs(2);

/// How long each write of the answer may take. The answer fits in the
/// socket's buffer, so this bounds only a connection that cannot take it.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The listener on `127.0.0.1:PORT`, and what it needs to answer a
/// redirect: what counts, and from whom.
pub(super) struct Listener {
    socket: TcpListener,
    /// The authentication's name, for the errors.
    name: String,
    port: u16,
    expected: Arc<Expected>,
    /// The connections waiting for their request heads.
    handlers: Handlers,
    /// Whose connections count.
    senders: Arc<Senders>,
}

impl Listener {
    /// Binds the loopback listener, non-blocking so that the wait can poll
    /// it.
    pub(super) fn bind(
        port: u16,
        name: &str,
        expected: Arc<Expected>,
        senders: Senders,
    ) -> Result<Listener, CallbackError> {
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
        let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(failed)?;
        socket.set_nonblocking(true).map_err(failed)?;
        Ok(Listener {
            socket,
            name: name.to_owned(),
            port,
            expected,
            handlers: Handlers::default(),
            senders: Arc::new(senders),
        })
    }

    /// Hands each pending connection to a thread of its own, so that an
    /// idle connection (a browser's preconnect) holds nothing up; past
    /// [`MAX_HANDLERS`] waiting for their heads, the longest waiting is
    /// dropped. What a GET of the redirect path means goes to `deliver`.
    pub(super) fn accept_pending<F>(&self, deliver: F) -> Result<(), CallbackError>
    where
        F: Fn(Verdict) + Clone + Send + 'static,
    {
        loop {
            match self.socket.accept() {
                Ok((stream, _)) => {
                    let deadline = Instant::now() + HEAD_DEADLINE;
                    let Some(slot) = self.handlers.start(&stream) else {
                        continue;
                    };
                    let expected = Arc::clone(&self.expected);
                    let senders = Arc::clone(&self.senders);
                    let deliver = deliver.clone();
                    thread::spawn(move || {
                        let refused = senders.refuse(&stream);
                        if let Some(verdict) = serve(stream, deadline, &expected, refused, slot) {
                            deliver(verdict);
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(source) => {
                    return Err(CallbackError::Listen {
                        name: self.name.clone(),
                        port: self.port,
                        source,
                    })
                }
            }
        }
    }
}

/// The connections waiting for their request heads, oldest first, to keep
/// them to [`MAX_HANDLERS`].
#[derive(Default)]
pub(super) struct Handlers {
    waiting: Arc<Mutex<VecDeque<(u64, TcpStream)>>>,
    next: AtomicU64,
}

impl Handlers {
    /// Registers a connection that waits for its head; past
    /// [`MAX_HANDLERS`], shuts the longest waiting one down, which ends its
    /// read. None when the connection cannot be registered (it is dropped).
    pub(super) fn start(&self, stream: &TcpStream) -> Option<HandlerSlot> {
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
}

/// A connection's place among those waiting for their heads; given up
/// once its head is read, or when dropped (even by a panic).
pub(super) struct HandlerSlot {
    waiting: Arc<Mutex<VecDeque<(u64, TcpStream)>>>,
    id: u64,
}

impl Drop for HandlerSlot {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|(id, _)| *id != self.id);
    }
}

/// An answer of the listener: status line and the page's one sentence.
pub(super) struct Page {
    status: &'static str,
    text: &'static str,
}

pub(super) const LOGGED_IN: Page = Page {
    status: "200 OK",
    text: "Logged in — snctl has the authorization; you may close this tab.",
};

pub(super) const NOT_GRANTED: Page = Page {
    status: "403 Forbidden",
    text: "Access was not granted — snctl did not get the authorization; \
           see the terminal where it runs.",
};

pub(super) const OTHER_USER: Page = Page {
    status: "403 Forbidden",
    text: "snctl takes the redirect only from processes of the user running it, and this \
           connection does not come from one (or its user cannot be told): it is ignored; \
           snctl goes on waiting.",
};

pub(super) const NOT_THIS_LOGIN: Page = Page {
    status: "400 Bad Request",
    text: "This is not the login snctl is waiting for (the redirect does not carry its \
           state); snctl goes on waiting for it.",
};

pub(super) const NO_CODE: Page = Page {
    status: "400 Bad Request",
    text: "This redirect carries no authorization code; see the terminal where snctl runs.",
};

pub(super) const NOT_FOUND: Page = Page {
    status: "404 Not Found",
    text: "Not found.",
};

pub(super) const BAD_REQUEST: Page = Page {
    status: "400 Bad Request",
    text: "Bad request.",
};

pub(super) const TOO_LARGE: Page = Page {
    status: "431 Request Header Fields Too Large",
    text: "Request header fields too large.",
};

/// Why a request head could not be read.
pub(super) enum HeadError {
    /// Refused for what it is ([`Refusal`]).
    Refused(Refusal),
    /// The connection failed, closed, or did not send the head by the
    /// deadline.
    Io,
}

/// Answers one connection, which must send its request head by `deadline`
/// (unless `slot` is shut down first); the verdict when it was a GET of the
/// redirect path. `refused` says why its sender may not deliver it.
pub(super) fn serve(
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
        Err(HeadError::Refused(Refusal::TooLarge)) => (&TOO_LARGE, None),
        Err(HeadError::Refused(Refusal::Malformed)) => (&BAD_REQUEST, None),
        Err(HeadError::Io) => return None,
    };
    respond(&mut stream, page);
    verdict
}

/// The page answering a request line; the verdict when it is a GET of the
/// redirect path. A sender that may not deliver the redirect gets nothing
/// checked.
pub(super) fn answer(
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
/// its first line. What the bytes make of a head is [`HeadBuf`]'s to say:
/// at most [`super::request::MAX_HEAD`] of them are read.
pub(super) fn read_request_line(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<Zeroizing<String>, HeadError> {
    let mut head = HeadBuf::default();
    while head.progress() == Progress::More {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Io);
        }
        match stream.read(head.space()) {
            Ok(0) | Err(_) => return Err(HeadError::Io),
            Ok(n) => head.filled(n),
        };
    }
    head.request_line().map_err(HeadError::Refused)
}

/// Sends `page` and closes the connection.
pub(super) fn respond(stream: &mut TcpStream, page: &Page) {
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

#[cfg(test)]
mod tests {
    use super::*;

    impl Handlers {
        /// How many connections wait for their heads.
        fn len(&self) -> usize {
            self.waiting.lock().unwrap_or_else(|p| p.into_inner()).len()
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
}
