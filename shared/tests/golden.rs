//! Golden bytes of every message kind: a change in how any request, reply
//! or error is laid out on the wire fails here, so that it is made on
//! purpose, together with [`PROTOCOL_VERSION`] (see `shared/src/protocol.rs`
//! for the compatibility rules and `shared/src/frame.rs` for the framing).
//!
//! Each message is a representative value with every optional field set,
//! so that each field's place is pinned. The exhaustive matches below fail
//! to compile when a kind is added without a golden of its own.

use snctl_shared::frame::{encode, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use snctl_shared::protocol::*;
use snctl_shared::Secret;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn readers() -> Readers {
    Readers {
        users: vec!["alice".into()],
        groups: vec!["etl".into()],
        units: vec!["sync.service".into()],
    }
}

fn user() -> UserLogin {
    UserLogin {
        username: "abel".into(),
        password: Secret::new("pw".into()),
    }
}

fn add() -> AddRequest {
    AddRequest {
        name: "prod".into(),
        instance_url: "https://a".into(),
        grant: Grant::JwtBearer,
        client_id: "id".into(),
        client_secret: Secret::new("s".into()),
        client_auth: ClientAuth::Basic,
        scope: Some("sc".into()),
        user: Some(user()),
        redirect_port: Some(8751),
        refresh_lifespan_secs: Some(8_640_000),
        readers: readers(),
        jwt: Some(JwtSettings {
            key: Secret::new("k".into()),
            subject: "svc".into(),
            kid: Some("kid".into()),
        }),
        proxy: true,
    }
}

fn summary() -> AuthSummary {
    AuthSummary {
        name: "prod".into(),
        instance_url: "https://a".into(),
        grant: Grant::AuthorizationCode,
        client_id: "id".into(),
        client_auth: ClientAuth::Form,
        scope: Some("sc".into()),
        state: AuthState::NeedsLogin,
        last_error: Some("e".into()),
        access_expires_at: Some(1_700_000_000),
        last_refresh_at: Some(1_700_000_001),
        next_refresh_at: Some(1_700_000_002),
        created_at: 1_600_000_000,
        login: Some(LoginSummary {
            username: Some("abel".into()),
            refresh_issued_at: Some(1_690_000_000),
            refresh_expires_at: Some(1_790_000_000),
            refresh_lifespan_secs: 8_640_000,
            redirect_uri: Some("http://127.0.0.1:8751/callback".into()),
        }),
        readers: readers(),
        proxy: true,
        proxy_socket: Some(ProxySocket {
            path: "/p".into(),
            error: Some("e".into()),
        }),
    }
}

/// One request of each kind, with its golden frame.
fn requests() -> Vec<(Request, &'static str)> {
    let cases = vec![
        (
            Request::Token(TokenRequest {
                name: "prod".into(),
                min_valid: MinValid::Default(60),
            }),
            "08000000000470726f64013c",
        ),
        (Request::List, "0100000001"),
        (
            Request::Show(NameRequest {
                name: "prod".into(),
            }),
            "06000000020470726f64",
        ),
        (Request::Add(add()), "55000000030470726f640968747470733a2f2f61030269640173010102736301046162656c02707701fb2f2201fc00d683000105616c696365010365746c010c73796e632e7365727669636501016b0373766301036b696401"),
        (
            Request::Update(UpdateRequest {
                name: "prod".into(),
                instance_url: Some("https://b".into()),
                client_id: Some("id2".into()),
                client_secret: Some(Secret::new("s2".into())),
                client_auth: Some(ClientAuth::Form),
                scope: Some(String::new()),
                redirect_port: Some(9000),
                refresh_lifespan_secs: Some(3600),
                readers: Some(readers()),
                proxy: Some(true),
            }),
            "43000000040470726f64010968747470733a2f2f620103696432010273320100010001fb282301fb100e010105616c696365010365746c010c73796e632e736572766963650101",
        ),
        (
            Request::Remove(RemoveRequest {
                name: "prod".into(),
                keep_upstream: true,
            }),
            "07000000050470726f6401",
        ),
        (
            Request::Refresh(NameRequest {
                name: "prod".into(),
            }),
            "06000000060470726f64",
        ),
        (Request::Status, "0100000007"),
        (
            Request::StartLogin(StartLoginRequest {
                name: "desk".into(),
                add: Some(add()),
                client_secret: Some(Secret::new("s3".into())),
            }),
            "5f00000008046465736b010470726f640968747470733a2f2f61030269640173010102736301046162656c02707701fb2f2201fc00d683000105616c696365010365746c010c73796e632e7365727669636501016b0373766301036b69640101027333",
        ),
        (
            Request::Login(LoginRequest {
                name: "desk".into(),
                proof: LoginProof::AuthorizationCode {
                    code: Secret::new("code".into()),
                    state: "st".into(),
                },
                client_secret: Some(Secret::new("s4".into())),
            }),
            "1300000009046465736b0104636f646502737401027334",
        ),
        (
            Request::Doctor(NameRequest {
                name: "prod".into(),
            }),
            "060000000a0470726f64",
        ),
        (
            Request::Backup(BackupRequest {
                snapshot: Some(7),
                offset: 4096,
            }),
            "060000000b0107fb0010",
        ),
        (Request::Metrics, "010000000c"),
    ];
    // Fails to compile when a request kind is added without a case above.
    let covered: Vec<usize> = cases
        .iter()
        .map(|(r, _)| match r {
            Request::Token(_) => 0,
            Request::List => 1,
            Request::Show(_) => 2,
            Request::Add(_) => 3,
            Request::Update(_) => 4,
            Request::Remove(_) => 5,
            Request::Refresh(_) => 6,
            Request::Status => 7,
            Request::StartLogin(_) => 8,
            Request::Login(_) => 9,
            Request::Doctor(_) => 10,
            Request::Backup(_) => 11,
            Request::Metrics => 12,
        })
        .collect();
    assert_eq!(covered, (0..13).collect::<Vec<_>>());
    cases
}

/// One answer of each kind, with its golden frame.
fn responses() -> Vec<(Response, &'static str)> {
    let replies = vec![
        (
            Reply::Token(TokenReply {
                access_token: Secret::new("tok".into()),
                expires_at: 1_700_000_000,
                instance_url: "https://a".into(),
            }),
            "15000000000003746f6bfc00e2a7ca0968747470733a2f2f61",
        ),
        (Reply::List(vec![summary()]), "900000000001010470726f640968747470733a2f2f610202696400010273630301016501fc00e2a7ca01fc02e2a7ca01fc04e2a7cafc0020bcbe0101046162656c01fc00b576c901fc007762d5fc00d68300011e687474703a2f2f3132372e302e302e313a383735312f63616c6c6261636b0105616c696365010365746c010c73796e632e736572766963650101022f70010165"),
        (Reply::Auth(Box::new(summary())), "8f00000000020470726f640968747470733a2f2f610202696400010273630301016501fc00e2a7ca01fc02e2a7ca01fc04e2a7cafc0020bcbe0101046162656c01fc00b576c901fc007762d5fc00d68300011e687474703a2f2f3132372e302e302e313a383735312f63616c6c6261636b0105616c696365010365746c010c73796e632e736572766963650101022f70010165"),
        (
            Reply::Removed(RemoveReply {
                revoked: 2,
                revoke_error: Some("e".into()),
            }),
            "06000000000302010165",
        ),
        (
            Reply::Status(DaemonStatus {
                version: "0.1.0".into(),
                protocol_version: PROTOCOL_VERSION,
                pid: 42,
                uptime_secs: 3600,
                socket: "/run/snctld/snctld.sock".into(),
                state_dir: "/var/lib/snctld".into(),
                authentications: 3,
                unhealthy: 1,
                next_refresh: Some(("prod".into(), 1_700_000_000)),
                connections: 5,
                needs_login: 1,
                next_login_deadline: Some(("desk".into(), 1_790_000_000)),
            }),
            "4f000000000405302e312e30052afb100e172f72756e2f736e63746c642f736e63746c642e736f636b0f2f7661722f6c69622f736e63746c640301010470726f64fc00e2a7ca050101046465736bfc007762d5",
        ),
        (
            Reply::LoginChallenge(LoginChallenge {
                authorize_url: "https://a/oauth_auth.do?x".into(),
                redirect_uri: "http://127.0.0.1:8751/callback".into(),
                state: "st".into(),
                expires_at: 1_700_000_600,
            }),
            "4300000000051968747470733a2f2f612f6f617574685f617574682e646f3f781e687474703a2f2f3132372e302e302e313a383735312f63616c6c6261636b027374fcb0e6a7ca",
        ),
        (
            Reply::Diagnosis(Diagnosis {
                name: "prod".into(),
                checks: vec![Check {
                    what: "w".into(),
                    outcome: CheckOutcome::Fail,
                    detail: "d".into(),
                }],
                works: false,
                cause: Some("c".into()),
                fix: Some("f".into()),
                needs_login: true,
            }),
            "1500000000060470726f640101770101640001016301016601",
        ),
        (
            Reply::Backup(BackupChunk {
                snapshot: 7,
                total: 8192,
                offset: 4096,
                bytes: vec![1, 2, 3],
                key: "/var/lib/snctld/snctld.key".into(),
            }),
            "28000000000707fb0020fb0010030102031a2f7661722f6c69622f736e63746c642f736e63746c642e6b6579",
        ),
        (Reply::Metrics("# EOF\n".into()), "090000000008062320454f460a"),
    ];
    let errors = vec![
        (Error::NotFound { name: "x".into() }, "0400000001000178"),
        (
            Error::AlreadyExists { name: "x".into() },
            "0400000001010178",
        ),
        (Error::NeedsLogin { name: "x".into() }, "0400000001020178"),
        (Error::Forbidden { reason: "r".into() }, "0400000001030172"),
        (
            Error::Upstream(UpstreamError {
                kind: UpstreamKind::RateLimited,
                status: Some(429),
                message: "m".into(),
                retry_at: Some(1_700_000_120),
            }),
            "0f00000001040101fbad01016d01fcf0e2a7ca",
        ),
        (Error::invalid("bad"), "06000000010503626164"),
        (
            Error::Unavailable {
                message: "m".into(),
            },
            "040000000106016d",
        ),
        (
            Error::ProtocolMismatch {
                daemon: 3,
                client: 4,
            },
            "0400000001070304",
        ),
        (
            Error::Internal {
                message: "m".into(),
            },
            "040000000108016d",
        ),
    ];
    let replies_covered: Vec<usize> = replies
        .iter()
        .map(|(r, _)| match r {
            Reply::Token(_) => 0,
            Reply::List(_) => 1,
            Reply::Auth(_) => 2,
            Reply::Removed(_) => 3,
            Reply::Status(_) => 4,
            Reply::LoginChallenge(_) => 5,
            Reply::Diagnosis(_) => 6,
            Reply::Backup(_) => 7,
            Reply::Metrics(_) => 8,
        })
        .collect();
    assert_eq!(replies_covered, (0..9).collect::<Vec<_>>());
    let errors_covered: Vec<usize> = errors
        .iter()
        .map(|(e, _)| match e {
            Error::NotFound { .. } => 0,
            Error::AlreadyExists { .. } => 1,
            Error::NeedsLogin { .. } => 2,
            Error::Forbidden { .. } => 3,
            Error::Upstream(_) => 4,
            Error::InvalidRequest { .. } => 5,
            Error::Unavailable { .. } => 6,
            Error::ProtocolMismatch { .. } => 7,
            Error::Internal { .. } => 8,
        })
        .collect();
    assert_eq!(errors_covered, (0..9).collect::<Vec<_>>());
    replies
        .into_iter()
        .map(|(r, g)| (Ok(r), g))
        .chain(errors.into_iter().map(|(e, g)| (Err(e), g)))
        .collect()
}

#[test]
fn every_request_kind_has_its_golden_bytes() {
    let mut wrong = vec![];
    for (request, golden) in requests() {
        let frame = hex(&encode(&request, MAX_REQUEST_FRAME).unwrap());
        if frame != golden {
            wrong.push(format!("{}: {frame}", request.kind()));
        }
    }
    assert!(wrong.is_empty(), "layout changed:\n{}", wrong.join("\n"));
}

#[test]
fn every_reply_and_error_kind_has_its_golden_bytes() {
    let mut wrong = vec![];
    for (response, golden) in responses() {
        let frame = hex(&encode(&response, MAX_RESPONSE_FRAME).unwrap());
        if frame != golden {
            wrong.push(format!("{response:?}: {frame}"));
        }
    }
    assert!(wrong.is_empty(), "layout changed:\n{}", wrong.join("\n"));
}
