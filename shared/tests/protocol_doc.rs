//! PROTOCOL.md, the wire format written for clients in other languages, is
//! held to the code here so that it cannot drift:
//!
//! - every ```` ```layout ```` block names a message type with its fields
//!   (structs) or its variants and their indices (enums), and these must be
//!   the ones serde sees in the Rust type, in order; every type that crosses
//!   the socket must have its block;
//! - every ```` ```hex NAME ```` block is an annotated frame (the hex before
//!   each `#` on a line), and must be the bytes the encoder makes of the
//!   value named NAME below;
//! - every `Error` variant is named beside its `ErrorKind` and exit code,
//!   and every `ErrorKind` beside its exit code;
//! - the document names the current `PROTOCOL_VERSION`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use snctl_shared::frame::{encode, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use snctl_shared::protocol::*;
use snctl_shared::Secret;

fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fenced blocks of `doc` whose info string starts with `tag`: the rest
/// of the info string, and the lines inside.
fn blocks<'a>(doc: &'a str, tag: &str) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut found = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut words = info.splitn(2, ' ');
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        if words.next() == Some(tag) {
            found.push((words.next().unwrap_or("").trim(), body));
        }
    }
    found
}

// ---------------------------------------------------------------------------
// What serde sees: a deserializer that answers nothing and records the
// struct's fields or the enum's variants it is asked for.

/// A type's shape as its `Deserialize` declares it.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    Struct(Vec<String>),
    /// Variant names, in index order.
    Enum(Vec<String>),
}

#[derive(Debug)]
struct Seen(String, Shape);

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Seen {}

impl de::Error for Seen {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Seen(msg.to_string(), Shape::Struct(vec![]))
    }
}

struct Probe;

impl<'de> Deserializer<'de> for Probe {
    type Error = Seen;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Seen> {
        Err(de::Error::custom("not a struct or an enum"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Seen> {
        let fields = fields.iter().map(|f| f.to_string()).collect();
        Err(Seen(name.into(), Shape::Struct(fields)))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Seen> {
        let variants = variants.iter().map(|v| v.to_string()).collect();
        Err(Seen(name.into(), Shape::Enum(variants)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map identifier ignored_any
    }
}

fn shape_of<T: for<'de> Deserialize<'de>>() -> (String, Shape) {
    match T::deserialize(Probe) {
        Err(Seen(name, shape)) => (name, shape),
        Ok(_) => unreachable!("the probe answers nothing"),
    }
}

/// Every type that crosses the socket, by its name in PROTOCOL.md.
/// `Response` is `Result<Reply, Error>`, which serde names `Result`.
fn wire_types() -> BTreeMap<String, Shape> {
    let shapes = [
        shape_of::<Hello>(),
        shape_of::<HelloReply>(),
        shape_of::<Request>(),
        shape_of::<Response>(),
        shape_of::<Reply>(),
        shape_of::<Error>(),
        shape_of::<TokenRequest>(),
        shape_of::<MinValid>(),
        shape_of::<NameRequest>(),
        shape_of::<TokenReply>(),
        shape_of::<ClientAuth>(),
        shape_of::<Grant>(),
        shape_of::<UserLogin>(),
        shape_of::<AddRequest>(),
        shape_of::<JwtSettings>(),
        shape_of::<Readers>(),
        shape_of::<StartLoginRequest>(),
        shape_of::<LoginChallenge>(),
        shape_of::<LoginRequest>(),
        shape_of::<LoginProof>(),
        shape_of::<UpdateRequest>(),
        shape_of::<RemoveRequest>(),
        shape_of::<RemoveReply>(),
        shape_of::<AuthState>(),
        shape_of::<AuthSummary>(),
        shape_of::<ProxySocket>(),
        shape_of::<LoginSummary>(),
        shape_of::<DaemonStatus>(),
        shape_of::<Diagnosis>(),
        shape_of::<Check>(),
        shape_of::<CheckOutcome>(),
        shape_of::<BackupRequest>(),
        shape_of::<BackupChunk>(),
        shape_of::<UpstreamKind>(),
        shape_of::<UpstreamError>(),
    ];
    shapes
        .into_iter()
        .map(|(name, shape)| match name.as_str() {
            "Result" => ("Response".to_string(), shape),
            _ => (name, shape),
        })
        .collect()
}

/// The `layout` blocks: `struct NAME {` then one `field: type,` a line, or
/// `enum NAME {` then one `INDEX Variant…` a line, each closed by `}`;
/// comments after `#`.
fn documented_types(doc: &str) -> BTreeMap<String, Shape> {
    let mut types = BTreeMap::new();
    for (_, body) in blocks(doc, "layout") {
        // What follows a `#` on a line is a comment.
        let mut lines = body
            .iter()
            .map(|l| l.split('#').next().unwrap().trim())
            .filter(|l| !l.is_empty());
        while let Some(head) = lines.next() {
            let head = head.strip_suffix('{').unwrap_or(head).trim();
            let (kind, name) = head.split_once(' ').unwrap_or((head, ""));
            let items: Vec<&str> = lines.by_ref().take_while(|l| *l != "}").collect();
            let shape = match kind {
                "struct" => Shape::Struct(
                    items
                        .iter()
                        .map(|l| l.split(':').next().unwrap().trim().to_string())
                        .collect(),
                ),
                "enum" => Shape::Enum(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, l)| {
                            let (index, rest) = l.split_once(' ').unwrap_or((l, ""));
                            assert_eq!(index, i.to_string(), "{name}: index of {l:?}");
                            let end = rest
                                .find(|c: char| !c.is_alphanumeric() && c != '_' && c != '-')
                                .unwrap_or(rest.len());
                            rest[..end].to_string()
                        })
                        .collect(),
                ),
                other => panic!("layout block: {other:?} is neither struct nor enum"),
            };
            assert!(
                types.insert(name.to_string(), shape).is_none(),
                "{name} is laid out twice"
            );
        }
    }
    types
}

#[test]
fn every_message_type_is_laid_out_as_the_code_has_it() {
    let doc = document();
    // A new version is a new document: it is read again when bumped.
    let version = format!("`PROTOCOL_VERSION` is {PROTOCOL_VERSION}.");
    assert!(
        doc.contains(&version),
        "PROTOCOL.md does not say {version:?}"
    );
    let documented = documented_types(&doc);
    let code = wire_types();
    let mut wrong = Vec::new();
    for (name, shape) in &code {
        match documented.get(name) {
            None => wrong.push(format!("{name} has no layout block: {shape:?}")),
            Some(written) if written != shape => wrong.push(format!(
                "{name}: PROTOCOL.md says {written:?}, the code {shape:?}"
            )),
            Some(_) => {}
        }
    }
    for name in documented.keys() {
        if !code.contains_key(name) {
            wrong.push(format!("{name} is laid out but is no wire type"));
        }
    }
    assert!(wrong.is_empty(), "PROTOCOL.md:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// Annotated frames.

/// The values whose frames PROTOCOL.md shows, by the name of their block.
fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let request = |r: &Request| encode(r, MAX_REQUEST_FRAME).unwrap();
    let response = |r: Response| encode(&r, MAX_RESPONSE_FRAME).unwrap();
    vec![
        (
            "hello",
            encode(
                &Hello {
                    protocol_version: 5,
                    client_version: "0.1.0".into(),
                },
                MAX_REQUEST_FRAME,
            )
            .unwrap(),
        ),
        (
            "hello-reply",
            encode(
                &HelloReply {
                    protocol_version: 5,
                    daemon_version: "0.1.0".into(),
                },
                MAX_RESPONSE_FRAME,
            )
            .unwrap(),
        ),
        (
            "token-request",
            request(&Request::Token(TokenRequest {
                name: "prod".into(),
                min_valid: MinValid::Default(60),
            })),
        ),
        (
            "token-request-required",
            request(&Request::Token(TokenRequest {
                name: "prod".into(),
                min_valid: MinValid::Required(300),
            })),
        ),
        ("status-request", request(&Request::Status)),
        (
            "show-request",
            request(&Request::Show(NameRequest {
                name: "prod".into(),
            })),
        ),
        (
            "token-reply",
            response(Ok(Reply::Token(TokenReply {
                access_token: Secret::new("tok".into()),
                expires_at: 1_700_000_000,
                instance_url: "https://a".into(),
            }))),
        ),
        (
            "removed-reply",
            response(Ok(Reply::Removed(RemoveReply {
                revoked: 2,
                revoke_error: None,
            }))),
        ),
        (
            "error-not-found",
            response(Err(Error::NotFound { name: "x".into() })),
        ),
        (
            "error-forbidden",
            response(Err(Error::Forbidden { reason: "r".into() })),
        ),
        (
            "error-upstream",
            response(Err(Error::Upstream(UpstreamError {
                kind: UpstreamKind::RateLimited,
                status: Some(429),
                message: "m".into(),
                retry_at: Some(1_700_000_120),
            }))),
        ),
        (
            "error-mismatch",
            response(Err(Error::ProtocolMismatch {
                daemon: 5,
                client: 4,
            })),
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_annotated_frame_is_what_the_encoder_makes() {
    let doc = document();
    let shown = blocks(&doc, "hex");
    let mut wrong = Vec::new();
    let examples = examples();
    for (name, body) in &shown {
        let written: String = body
            .iter()
            .map(|l| l.split('#').next().unwrap())
            .flat_map(|l| l.split_whitespace())
            .collect::<Vec<_>>()
            .concat()
            .to_lowercase();
        match examples.iter().find(|(n, _)| n == name) {
            None => wrong.push(format!("hex block {name:?} names no example of this test")),
            Some((_, bytes)) if hex(bytes) != written => wrong.push(format!(
                "{name}: PROTOCOL.md shows {written}, the encoder makes {}",
                hex(bytes)
            )),
            Some(_) => {}
        }
    }
    for (name, bytes) in &examples {
        let times = shown.iter().filter(|(n, _)| n == name).count();
        if times != 1 {
            let bytes = hex(bytes);
            wrong.push(format!("example {name} ({bytes}) is shown {times} times"));
        }
    }
    assert!(wrong.is_empty(), "PROTOCOL.md:\n{}", wrong.join("\n"));
}

#[test]
fn every_error_is_named_with_its_kind_and_exit_code() {
    let upstream = UpstreamError {
        kind: UpstreamKind::Timeout,
        status: None,
        message: "m".into(),
        retry_at: None,
    };
    let errors = [
        Error::NotFound { name: "x".into() },
        Error::AlreadyExists { name: "x".into() },
        Error::NeedsLogin { name: "x".into() },
        Error::Forbidden { reason: "r".into() },
        Error::Upstream(upstream),
        Error::invalid("m"),
        Error::Unavailable {
            message: "m".into(),
        },
        Error::ProtocolMismatch {
            daemon: 1,
            client: 2,
        },
        Error::Internal {
            message: "m".into(),
        },
    ];
    // Fails to compile when a variant is added without a case above.
    let covered: Vec<(usize, &str)> = errors
        .iter()
        .map(|e| match e {
            Error::NotFound { .. } => (0, "NotFound"),
            Error::AlreadyExists { .. } => (1, "AlreadyExists"),
            Error::NeedsLogin { .. } => (2, "NeedsLogin"),
            Error::Forbidden { .. } => (3, "Forbidden"),
            Error::Upstream(_) => (4, "Upstream"),
            Error::InvalidRequest { .. } => (5, "InvalidRequest"),
            Error::Unavailable { .. } => (6, "Unavailable"),
            Error::ProtocolMismatch { .. } => (7, "ProtocolMismatch"),
            Error::Internal { .. } => (8, "Internal"),
        })
        .collect();
    let doc = document();
    let has_row = |row: String| {
        assert!(
            doc.lines().any(|l| l.starts_with(&row)),
            "PROTOCOL.md has no row starting {row:?}"
        );
    };
    for (error, (index, name)) in errors.iter().zip(covered) {
        has_row(format!("| {index} | `{name}` | `{:?}` |", error.kind()));
    }
    let kinds = [
        ErrorKind::Other,
        ErrorKind::Usage,
        ErrorKind::Unreachable,
        ErrorKind::NotFound,
        ErrorKind::NeedsLogin,
        ErrorKind::Forbidden,
        ErrorKind::Upstream,
    ];
    for kind in kinds {
        // Fails to compile when a kind is added without a case above.
        match kind {
            ErrorKind::Other
            | ErrorKind::Usage
            | ErrorKind::Unreachable
            | ErrorKind::NotFound
            | ErrorKind::NeedsLogin
            | ErrorKind::Forbidden
            | ErrorKind::Upstream => {}
        }
        has_row(format!("| `{kind:?}` | {} |", kind.exit_code()));
    }
}
