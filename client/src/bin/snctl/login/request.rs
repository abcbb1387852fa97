//! What the listener makes of a connection's bytes, as pure functions with
//! no I/O: where the request head ends (within [`MAX_HEAD`], or it is
//! refused), its request line, and the redirect parameters of its query.
//!
//! Anyone on the machine, and any web page the user visits, can send the
//! listener bytes, so this is kept apart from the sockets: the fuzz target
//! `login_request` (`fuzz/`) includes this file as it is, and the property
//! tests below drive it with generated requests. It therefore uses nothing
//! of the `snctl` binary, only the library and its dependencies.

use snctl::Secret;
use zeroize::Zeroizing;

/// The most of a request head the listener reads. A browser's redirect,
/// with its code and state, is well under it.
pub(super) const MAX_HEAD: usize = 8 * 1024;

/// The end of a request head.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// What the bytes read so far make of a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// Not ended yet: read more into [`HeadBuf::space`].
    More,
    /// Ended: [`HeadBuf::request_line`] is there.
    Done,
    /// [`MAX_HEAD`] bytes without the end of the head: refused, whatever
    /// follows.
    TooLarge,
}

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No end within [`MAX_HEAD`] bytes (431).
    TooLarge,
    /// Not an HTTP request line (400).
    Malformed,
}

/// A request head as it is read: at most [`MAX_HEAD`] bytes, zeroed when
/// dropped (it may hold an authorization code).
pub(super) struct HeadBuf {
    bytes: Zeroizing<Vec<u8>>,
    len: usize,
    /// Where the search for the head's end goes on: everything before it
    /// was searched, so a head trickled a byte at a time costs linear time.
    searched: usize,
    /// Where the head ends (after its blank line), once it has.
    end: Option<usize>,
}

impl Default for HeadBuf {
    fn default() -> HeadBuf {
        HeadBuf {
            bytes: Zeroizing::new(vec![0; MAX_HEAD]),
            len: 0,
            searched: 0,
            end: None,
        }
    }
}

impl HeadBuf {
    /// Where the next read goes; empty once the head ended or is too large.
    pub(super) fn space(&mut self) -> &mut [u8] {
        if self.end.is_some() {
            return &mut [];
        }
        &mut self.bytes[self.len..]
    }

    /// Takes note that `n` more bytes were read into [`HeadBuf::space`],
    /// and says what the head is now.
    pub(super) fn filled(&mut self, n: usize) -> Progress {
        self.len = (self.len + n).min(MAX_HEAD);
        if self.end.is_none() {
            let from = self.searched.saturating_sub(HEAD_END.len() - 1);
            self.end = self.bytes[from..self.len]
                .windows(HEAD_END.len())
                .position(|w| w == HEAD_END)
                .map(|at| from + at + HEAD_END.len());
            self.searched = self.len;
        }
        self.progress()
    }

    /// What the head is so far.
    pub(super) fn progress(&self) -> Progress {
        match self.end {
            Some(_) => Progress::Done,
            None if self.len == MAX_HEAD => Progress::TooLarge,
            None => Progress::More,
        }
    }

    /// The head's first line, once it ended.
    pub(super) fn request_line(&self) -> Result<Zeroizing<String>, Refusal> {
        let end = match self.progress() {
            Progress::Done => self.end.unwrap_or(self.len),
            Progress::TooLarge => return Err(Refusal::TooLarge),
            Progress::More => return Err(Refusal::Malformed),
        };
        let head = &self.bytes[..end];
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        std::str::from_utf8(line)
            .map(|line| Zeroizing::new(line.to_owned()))
            .map_err(|_| Refusal::Malformed)
    }
}

/// A request head read from `chunks` as a connection would deliver them:
/// its request line, or why it is refused; `None` when the chunks end
/// before the head does (the connection closed early). What the listener
/// does with a socket, on bytes in memory: for the tests and the fuzz
/// target, the listener itself reading with a deadline.
#[allow(dead_code)]
pub(super) fn read_head<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Result<Zeroizing<String>, Refusal>> {
    let mut head = HeadBuf::default();
    let mut chunks = chunks.into_iter();
    loop {
        match head.progress() {
            Progress::Done => return Some(head.request_line()),
            Progress::TooLarge => return Some(Err(Refusal::TooLarge)),
            Progress::More => {}
        }
        let mut chunk = chunks.next()?;
        while !chunk.is_empty() && head.progress() == Progress::More {
            let space = head.space();
            let n = space.len().min(chunk.len());
            space[..n].copy_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            head.filled(n);
        }
    }
}

/// The method, path and query of a request line
/// (`GET /callback?code=…&state=… HTTP/1.1`); `None` when it is not one.
pub(super) fn parse_request_line(line: &str) -> Option<(&str, &str, &str)> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/") {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some((method, path, query))
}

/// The parameters of a redirect's query that matter; the first of each
/// counts and empty ones do not.
#[derive(Default)]
pub(super) struct Params {
    pub(super) code: Option<Secret>,
    pub(super) state: Option<String>,
    pub(super) error: Option<String>,
    pub(super) error_description: Option<String>,
}

impl Params {
    /// Reads an `application/x-www-form-urlencoded` query.
    pub(super) fn parse(query: &str) -> Params {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A browser's redirect to `/callback` carrying `code` and `state`,
    /// form-encoded as the instance does, with a few headers.
    fn redirect(code: &str, state: &str, extra: &str) -> Vec<u8> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("code", code)
            .append_pair("state", state)
            .finish();
        format!(
            "GET /callback?{query} HTTP/1.1\r\nHost: 127.0.0.1:8751\r\n{extra}\
             Accept: text/html\r\n\r\n"
        )
        .into_bytes()
    }

    /// `bytes` cut into reads of the sizes in `cuts`, cycled.
    fn chunked<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = bytes;
        for &cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(cut.clamp(1, rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        chunks
    }

    #[test]
    fn a_head_that_never_ends_is_refused_at_the_limit() {
        // One endless request line, then endless header lines.
        let endless_line = vec![b'a'; 1024 * 1024];
        let endless_headers = b"GET /callback HTTP/1.1\r\n"
            .iter()
            .chain(b"X-A: b\r\n".repeat(100_000).iter())
            .copied()
            .collect::<Vec<_>>();
        for bytes in [endless_line, endless_headers] {
            for cuts in [&[1][..], &[7, 4096], &[1 << 20]] {
                let mut read = 0;
                let chunks = chunked(&bytes, cuts)
                    .into_iter()
                    .inspect(|c| read += c.len());
                assert_eq!(read_head(chunks).unwrap().unwrap_err(), Refusal::TooLarge);
                // Reading stops at the limit (a chunk may straddle it).
                assert!(read <= MAX_HEAD + cuts[0].max(cuts[cuts.len() - 1]));
            }
        }
    }

    #[test]
    fn a_head_ending_exactly_at_the_limit_is_read() {
        let mut bytes = b"GET /callback?code=c&state=s HTTP/1.1\r\nX: ".to_vec();
        bytes.resize(MAX_HEAD - 4, b'x');
        bytes.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            read_head([&bytes[..]]).unwrap().unwrap().as_str(),
            "GET /callback?code=c&state=s HTTP/1.1"
        );
        bytes.insert(40, b'x');
        assert_eq!(
            read_head([&bytes[..]]).unwrap().unwrap_err(),
            Refusal::TooLarge
        );
    }

    #[test]
    fn request_lines_that_are_not_http_are_refused() {
        assert_eq!(
            read_head([&b"\xff\xfe /callback HTTP/1.1\r\n\r\n"[..]])
                .unwrap()
                .unwrap_err(),
            Refusal::Malformed
        );
        for line in [
            "",
            "GET",
            "GET /callback",
            "GET /callback FTP/1.0",
            "GET  /callback HTTP/1.1",
            "GET /callback HTTP/1.1 extra",
        ] {
            assert_eq!(parse_request_line(line), None, "{line:?}");
        }
        assert_eq!(read_head([&b"GET / HTTP/1.1\r\n"[..]]), None);
    }

    proptest! {
        /// Whatever arrives, however cut: no panic, never more than
        /// MAX_HEAD held, and the verdict is the one the bytes call for.
        #[test]
        fn any_bytes_any_cuts(
            bytes in proptest::collection::vec(any::<u8>(), 0..(MAX_HEAD + 64)),
            cuts in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let verdict = read_head(chunked(&bytes, &cuts));
            let window = &bytes[..bytes.len().min(MAX_HEAD)];
            let end = window.windows(4).position(|w| w == HEAD_END);
            match (end, verdict) {
                (Some(_), Some(Ok(line))) => {
                    prop_assert!(!line.contains(['\r']));
                    prop_assert!(bytes.starts_with(line.as_bytes()));
                }
                (Some(_), Some(Err(refusal))) => prop_assert_eq!(refusal, Refusal::Malformed),
                (None, Some(verdict)) => {
                    prop_assert!(bytes.len() >= MAX_HEAD);
                    prop_assert_eq!(verdict.unwrap_err(), Refusal::TooLarge);
                }
                (None, None) => prop_assert!(bytes.len() < MAX_HEAD),
                (Some(_), None) => prop_assert!(false, "a complete head was not read"),
            }
        }

        /// A redirect as the instance sends it yields exactly the code and
        /// state it carries, however the browser's writes are cut.
        #[test]
        fn a_redirect_yields_exactly_its_code_and_state(
            code in "\\PC{1,200}",
            state in "[A-Za-z0-9_~.-]{1,64}",
            cookie in "[ -~]{0,300}",
            cuts in proptest::collection::vec(1usize..512, 1..4),
        ) {
            let extra = format!("Cookie: {cookie}\r\n");
            let bytes = redirect(&code, &state, &extra);
            let line = read_head(chunked(&bytes, &cuts)).unwrap().unwrap();
            let (method, path, query) = parse_request_line(&line).unwrap();
            prop_assert_eq!((method, path), ("GET", "/callback"));
            let params = Params::parse(query);
            prop_assert_eq!(params.code.as_ref().map(|c| c.expose()), Some(code.as_str()));
            prop_assert_eq!(params.state.as_deref(), Some(state.as_str()));
            prop_assert!(params.error.is_none() && params.error_description.is_none());
        }

        /// Any query: what it yields is never empty, and a code or state is
        /// there only when the query names it.
        #[test]
        fn any_query_yields_only_what_it_names(query in "[a-z_=&0-9+]{0,200}") {
            let params = Params::parse(&query);
            for (value, key) in [
                (params.code.as_ref().map(|c| c.expose().to_owned()), "code="),
                (params.state.clone(), "state="),
                (params.error.clone(), "error="),
            ] {
                if let Some(value) = value {
                    prop_assert!(!value.is_empty());
                    prop_assert!(query.contains(key));
                }
            }
        }
    }
}
