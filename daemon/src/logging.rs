//! `[log]`: the log filter the configuration file sets. The log itself is
//! set up by `main` (through a writer thread); `RUST_LOG` and `-v` win over
//! the file, and SIGHUP applies a changed filter through a
//! [`SetLogFilter`].
//!
//! Where lines go: stderr, unless stderr is the journal stream systemd
//! connected ([`stderr_is_journal`]); then each line is a journal entry of
//! its own ([`JournalLayer`]), with the level's priority and the line's
//! fields as journal fields, which stderr cannot carry. `--log-file` is
//! stderr too, opened again on SIGHUP ([`reopen_log_file`]).

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::settings::{optional, Applies, Changes, InvalidSetting};

/// `[log]` in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// The log filter when neither `RUST_LOG` nor `-v` say.
    pub filter: Option<String>,
}

/// `[log]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    filter: Option<String>,
}

impl LogConfig {
    /// Reads `[log]` over this setting; the filter must parse.
    pub fn apply(&mut self, section: LogSection) -> Result<(), InvalidSetting> {
        if let Some(written) = section.filter {
            let filter = tidy_filter(&written);
            if let Err(e) = parse_filter(&filter) {
                return Err(InvalidSetting(format!(
                    "log.filter {written:?} is not a valid filter: {e}"
                )));
            }
            self.filter = Some(filter).filter(|f| !f.is_empty());
        }
        Ok(())
    }

    /// What differs in `new`: the filter applies at once.
    pub fn changes(&self, new: &LogConfig) -> Changes {
        let mut changes = Changes::default();
        changes.compare(
            "log.filter",
            Applies::Now,
            &self.filter,
            &new.filter,
            optional,
        );
        changes
    }
}

/// A log filter with each comma-separated directive trimmed and the empty
/// ones dropped: what `EnvFilter` makes of it, but safe to hand to it.
/// Its directive parser trims a directive, then indexes the untrimmed text
/// with the trimmed one's positions, and panics when they fall inside a
/// character (`" é=debug"`); a trimmed directive is the same either way.
pub fn tidy_filter(filter: &str) -> String {
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a log filter, with field values matched as plain text rather
/// than compiled as regular expressions: a short value such as
/// `[{f=.&ppp….={x|}}]` compiles to a DFA of gigabytes (found by the
/// `config` fuzz target), and a filter is read at start and on SIGHUP.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    EnvFilter::builder()
        .with_regex(false)
        .parse(tidy_filter(filter))
}

/// Why a log filter could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    #[error("{0:?} is not a valid log filter: {1}")]
    Parse(String, String),
    #[error("cannot change the log filter: {0}")]
    Reload(String),
}

/// Applies `[log] filter` from a (re)read configuration: `Ok(false)` when
/// `RUST_LOG` or `-v` decide the filter instead.
pub type SetLogFilter = Box<dyn Fn(Option<&str>) -> Result<bool, LogFilterError> + Send + Sync>;

/// Whether `JOURNAL_STREAM` (systemd's "device:inode" of the stream it
/// connected) names the file that stderr is, `stderr` being its device and
/// inode: an inherited variable with stderr sent elsewhere does not count.
pub fn is_journal_stream(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|s| s.split_once(':')) else {
        return false;
    };
    match stderr {
        Some((stderr_dev, stderr_ino)) => {
            dev.parse() == Ok(stderr_dev) && ino.parse() == Ok(stderr_ino)
        }
        // Without a way to look at stderr, trust the variable.
        None => true,
    }
}

/// Whether log lines on stderr get ANSI colours: on a terminal only, never
/// for the journal, and not when `NO_COLOR` is set to anything but the
/// empty string (<https://no-color.org>), as `snctl` does.
pub fn colours(terminal: bool, journal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && !journal && no_color.is_none_or(|value| value.is_empty())
}

/// Whether stderr is the journal stream systemd connected.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let variable = std::env::var("JOURNAL_STREAM").ok();
    // fstat, not /proc/self/fd/2: once snctld is non-dumpable, its /proc
    // entries belong to root and its own user cannot read them.
    let stderr = nix::sys::stat::fstat(std::io::stderr().as_fd())
        .ok()
        .map(|stat| (stat.st_dev, stat.st_ino));
    is_journal_stream(variable.as_deref(), stderr)
}

/// journald's socket for structured entries (its native protocol).
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The prefix of the journal fields that carry an event's fields:
/// `name` is `SNCTL_NAME`, `uid` is `SNCTL_UID`, so that
/// `journalctl SNCTL_NAME=prod` finds one authentication's lines.
pub const FIELD_PREFIX: &str = "SNCTL_";

/// One journal entry per event, in journald's native protocol: `MESSAGE`
/// is the line stderr would show (message and fields, without time and
/// level, which the journal records itself), `PRIORITY` follows the level
/// (error 3, warning 4, info 6, debug and trace 7), and every field of the
/// event is a field of its own ([`FIELD_PREFIX`]). Entries are made on the
/// logging thread and handed to `W`, whose every write is one entry (a
/// [`JournalSocket`] behind a non-blocking writer).
pub struct JournalLayer<W> {
    make_writer: W,
}

impl<W> JournalLayer<W> {
    pub fn new(make_writer: W) -> Self {
        JournalLayer { make_writer }
    }
}

impl<S, W> tracing_subscriber::Layer<S> for JournalLayer<W>
where
    S: tracing::Subscriber,
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        use std::io::Write;
        let entry = journal_entry(event);
        // A lost entry cannot be reported anywhere better than the journal.
        let _ = self.make_writer.make_writer().write_all(&entry);
    }
}

/// The native-protocol datagram for `event`.
fn journal_entry(event: &tracing::Event<'_>) -> Vec<u8> {
    use tracing_subscriber::field::{MakeVisitor, VisitOutput};
    use tracing_subscriber::fmt::format::{DefaultFields, Writer};
    let meta = event.metadata();
    let mut line = String::new();
    let mut visitor = DefaultFields::new().make_visitor(Writer::new(&mut line));
    event.record(&mut visitor);
    let _ = visitor.finish();
    let priority = match *meta.level() {
        tracing::Level::ERROR => "3",
        tracing::Level::WARN => "4",
        tracing::Level::INFO => "6",
        _ => "7",
    };
    let mut entry = Vec::new();
    put_field(&mut entry, "MESSAGE", line.as_bytes());
    put_field(&mut entry, "PRIORITY", priority.as_bytes());
    put_field(&mut entry, "SYSLOG_IDENTIFIER", b"snctld");
    put_field(&mut entry, "SNCTL_TARGET", meta.target().as_bytes());
    let mut fields = JournalFields(&mut entry);
    event.record(&mut fields);
    entry
}

/// Appends `NAME\n`, the value's length (64-bit little-endian), the value
/// and `\n`: the form that allows any bytes, newlines too, in the value.
fn put_field(entry: &mut Vec<u8>, name: &str, value: &[u8]) {
    entry.extend_from_slice(name.as_bytes());
    entry.push(b'\n');
    entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    entry.extend_from_slice(value);
    entry.push(b'\n');
}

/// The journal name of an event field: [`FIELD_PREFIX`] and the name in
/// upper case, with anything but letters, digits and `_` left out.
pub fn journal_field_name(field: &str) -> String {
    let mut name = String::from(FIELD_PREFIX);
    name.extend(
        field
            .chars()
            .map(|c| if c == '.' { '_' } else { c })
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .map(|c| c.to_ascii_uppercase()),
    );
    name
}

/// Writes every field but `message` (which is in `MESSAGE`) as a field of
/// its own.
struct JournalFields<'a>(&'a mut Vec<u8>);

impl tracing::field::Visit for JournalFields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() != "message" {
            put_field(self.0, &journal_field_name(field.name()), value.as_bytes());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() != "message" {
            let value = format!("{value:?}");
            put_field(self.0, &journal_field_name(field.name()), value.as_bytes());
        }
    }
}

/// How long the log thread waits after writing what had queued before it
/// takes more: one wake-up per batch of lines instead of one per line.
pub const LOG_PACE: std::time::Duration = std::time::Duration::from_millis(2);

/// The log thread's writer: writes as `W`, and after each batch (the
/// thread flushes once it has taken every queued line) waits [`LOG_PACE`].
/// Lines logged meanwhile queue without waking the thread; under a load
/// that logs a line per request (the proxy's audit lines) the thread wakes
/// a few hundred times a second instead of once per line. Lines reach the
/// log at most [`LOG_PACE`] later; none is dropped (the queue is bounded
/// and its writers wait when it is full).
pub struct Paced<W>(pub W);

impl<W: std::io::Write> std::io::Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.0.flush();
        std::thread::sleep(LOG_PACE);
        flushed
    }
}

/// journald's socket as a writer: every write is sent as one entry.
pub struct JournalSocket {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl JournalSocket {
    /// A socket that sends to `path` ([`JOURNAL_SOCKET`] but in tests);
    /// fails when nothing listens there.
    pub fn connect(path: &std::path::Path) -> std::io::Result<JournalSocket> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        // journald drops an empty datagram: a probe that it listens.
        socket.send_to(&[], path)?;
        Ok(JournalSocket {
            socket,
            path: path.to_path_buf(),
        })
    }
}

impl std::io::Write for JournalSocket {
    fn write(&mut self, entry: &[u8]) -> std::io::Result<usize> {
        self.socket.send_to(entry, &self.path)?;
        Ok(entry.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log file `--daemon --log-file` put on stderr, to open again on
/// SIGHUP ([`reopen_log_file`]).
static LOG_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Remembers that stderr is the log file at `path`.
pub fn set_log_file(path: &std::path::Path) {
    let _ = LOG_FILE.set(path.to_path_buf());
}

/// Opens the log file again and makes it stderr, so that a file moved away
/// (logrotate without copytruncate) is followed by a new one at the path.
/// Nothing to do without `--log-file`.
pub fn reopen_log_file() -> Result<(), LogFileError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = LOG_FILE.get() else {
        return Ok(());
    };
    let error = |source| LogFileError {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    // SAFETY: dup2 between two descriptors this process has open; stderr
    // stays open throughout, now on the new file.
    if unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
        return Err(error(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Why the log file could not be opened again.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the log file {} again, still writing to the old one: {source}", path.display())]
pub struct LogFileError {
    path: std::path::PathBuf,
    source: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::net::UnixDatagram;
    use tracing_subscriber::layer::SubscriberExt;

    /// The fields of one native-protocol entry (values length-encoded).
    fn fields(mut entry: &[u8]) -> HashMap<String, String> {
        let mut fields = HashMap::new();
        while !entry.is_empty() {
            let newline = entry.iter().position(|b| *b == b'\n').unwrap();
            let name = String::from_utf8(entry[..newline].to_vec()).unwrap();
            let rest = &entry[newline + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8(rest[8..8 + len].to_vec()).unwrap();
            assert_eq!(rest[8 + len], b'\n', "{name} ends with a newline");
            assert!(fields.insert(name.clone(), value).is_none(), "{name} twice");
            entry = &rest[8 + len + 1..];
        }
        fields
    }

    /// Logs one event through a [`JournalLayer`] to a socket standing in
    /// for journald's; returns the entry it received.
    fn journal_entry_of(log: impl FnOnce()) -> HashMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journald = UnixDatagram::bind(&path).unwrap();
        let socket = JournalSocket::connect(&path).unwrap();
        let mut probe = [0u8; 16];
        assert_eq!(journald.recv(&mut probe).unwrap(), 0, "the empty probe");
        let layer = JournalLayer::new(std::sync::Mutex::new(socket));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, log);
        let mut entry = vec![0u8; 65536];
        let len = journald.recv(&mut entry).unwrap();
        fields(&entry[..len])
    }

    #[test]
    fn a_warning_reaches_the_journal_at_its_priority_with_filterable_fields() {
        let entry = journal_entry_of(|| {
            tracing::warn!(
                name = "prod",
                uid = 4006u32,
                pid = Some(42u32),
                unit = None::<&str>,
                "refresh failed: HTTP 503\nretrying"
            )
        });
        assert_eq!(entry["PRIORITY"], "4");
        assert_eq!(entry["SYSLOG_IDENTIFIER"], "snctld");
        assert_eq!(entry["SNCTL_NAME"], "prod");
        assert_eq!(entry["SNCTL_UID"], "4006");
        assert_eq!(entry["SNCTL_PID"], "42");
        assert!(!entry.contains_key("SNCTL_UNIT"), "{entry:?}");
        assert!(!entry.contains_key("SNCTL_MESSAGE"), "{entry:?}");
        // The message reads as the stderr line would, fields included.
        assert_eq!(
            entry["MESSAGE"],
            "refresh failed: HTTP 503\nretrying name=\"prod\" uid=4006 pid=42"
        );
    }

    #[test]
    fn levels_map_to_journal_priorities() {
        let priority = |log: fn()| journal_entry_of(log)["PRIORITY"].clone();
        assert_eq!(priority(|| tracing::error!("e")), "3");
        assert_eq!(priority(|| tracing::info!(unit = "sync.service", "i")), "6");
        assert_eq!(priority(|| tracing::debug!("d")), "7");
        let entry = journal_entry_of(|| tracing::info!(unit = "sync.service", "i"));
        assert_eq!(entry["SNCTL_UNIT"], "sync.service");
    }

    #[test]
    fn only_the_stream_systemd_connected_counts_as_the_journal() {
        assert!(is_journal_stream(Some("8:42"), Some((8, 42))));
        assert!(!is_journal_stream(Some("8:42"), Some((8, 43))));
        assert!(!is_journal_stream(Some("8:42"), Some((9, 42))));
        assert!(!is_journal_stream(None, Some((8, 42))));
        assert!(!is_journal_stream(Some("garbage"), Some((8, 42))));
        assert!(is_journal_stream(Some("8:42"), None));
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, false, None));
        assert!(colours(true, false, Some(OsStr::new(""))));
        assert!(!colours(true, false, Some(OsStr::new("1"))));
        assert!(!colours(false, false, None));
        assert!(!colours(true, true, None));
    }

    #[test]
    fn journal_field_names_are_prefixed_upper_case() {
        assert_eq!(journal_field_name("name"), "SNCTL_NAME");
        assert_eq!(journal_field_name("valid_secs"), "SNCTL_VALID_SECS");
        assert_eq!(journal_field_name("a.b-c"), "SNCTL_A_BC");
    }
}
