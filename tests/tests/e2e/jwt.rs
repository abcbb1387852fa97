//! The JWT-bearer grant: `snctl add --grant jwt-bearer` with a key file,
//! tokens from fresh signed assertions, and the private key kept sealed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use snctl_tests::harness::{contains, files_under, snctl, TestDaemon, CLIENT_ID, CLIENT_SECRET};

const SUBJECT: &str = "svc.sync";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A new P-256 key, PKCS#8 DER.
fn ec_key() -> Vec<u8> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Writes `pkcs8` as a PEM file, mode 0600.
fn write_pem(dir: &Path, pkcs8: &[u8]) -> PathBuf {
    let path = dir.join("jwt-key.pem");
    let encoded = STANDARD.encode(pkcs8);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    writeln!(
        file,
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----",
        lines.join("\n")
    )
    .unwrap();
    path
}

fn add_jwt(socket: &Path, instance: &str, name: &str, key: &Path) -> std::process::Output {
    let key = key.to_str().unwrap();
    let args = [
        "add",
        name,
        "--grant",
        "jwt-bearer",
        "--jwt-key",
        key,
        "--jwt-subject",
        SUBJECT,
        "--jwt-kid",
        "snctl-1",
        "--instance",
        instance,
        "--client-id",
        CLIENT_ID,
        "--client-secret-stdin",
    ];
    snctl(socket, &args, Some(&format!("{CLIENT_SECRET}\n")))
}

#[test]
fn jwt_bearer_gets_tokens_from_fresh_assertions_and_keeps_the_key_sealed() {
    let fake = snctl_tests::harness::fake();
    fake.add_user(SUBJECT, "unused-password");
    let key = ec_key();
    fake.add_jwt_key(CLIENT_ID, &key);
    let keys = tempfile::tempdir().unwrap();
    let pem = write_pem(keys.path(), &key);
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());

    let out = add_jwt(daemon.socket(), &fake.url(), "svc", &pem);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("-----BEGIN PUBLIC KEY-----"), "{stdout}");
    assert!(stdout.contains("JWT Verifier Map"), "{stdout}");
    assert!(stdout.contains("openssl req -new -x509 -key"), "{stdout}");
    assert!(stdout.contains("added svc: jwt-bearer token"), "{stdout}");
    assert_eq!(fake.jwt_grants(), 1);

    let out = snctl(daemon.socket(), &["token", "svc"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = text(&out.stdout).trim().to_string();
    assert!(fake.is_access_token_valid(&first));

    // No refresh token: a refresh signs a new assertion (a new jti, or the
    // fake would refuse it as a replay).
    let out = snctl(daemon.socket(), &["refresh", "svc"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fake.jwt_grants(), 2);
    let out = snctl(daemon.socket(), &["token", "svc"], None);
    let second = text(&out.stdout).trim().to_string();
    assert_ne!(first, second);
    assert!(fake.is_access_token_valid(&second));

    let encoded = STANDARD.encode(&key);
    let needles: [&[u8]; 3] = [&key, encoded.as_bytes(), &encoded.as_bytes()[..64]];
    for command in [&["show", "svc", "--json"][..], &["list", "--json"]] {
        let out = snctl(daemon.socket(), command, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        for needle in needles {
            assert!(!contains(&out.stdout, needle), "{command:?} shows the key");
        }
    }
    // The certificate is removed from the Verifier Map: doctor says so.
    fake.clear_jwt_keys(CLIENT_ID);
    let out = snctl(daemon.socket(), &["doctor", "svc"], None);
    assert_ne!(out.status.code(), Some(0));
    let report = text(&out.stdout);
    assert!(report.contains("JWT Verifier Map"), "{report}");
    assert!(!report.contains("client-credentials"), "{report}");

    let files = files_under(dir.path());
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        for needle in needles {
            assert!(
                !contains(bytes, needle),
                "{} holds the key in clear",
                path.display()
            );
        }
    }
}

#[test]
fn jwt_bearer_with_a_key_the_verifier_map_lacks_saves_nothing() {
    let fake = snctl_tests::harness::fake();
    fake.add_user(SUBJECT, "unused-password");
    fake.add_jwt_key(CLIENT_ID, &ec_key());
    let keys = tempfile::tempdir().unwrap();
    let pem = write_pem(keys.path(), &ec_key());
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());

    let out = add_jwt(daemon.socket(), &fake.url(), "svc", &pem);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("JWT Verifier Map"), "{stderr}");
    assert!(stderr.contains("nothing was saved"), "{stderr}");
    // The public key is still printed: it is what the admin must upload.
    assert!(text(&out.stdout).contains("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(
        snctl(daemon.socket(), &["show", "svc"], None).status.code(),
        Some(4)
    );
    assert_eq!(fake.jwt_grants(), 0);
}

#[test]
fn jwt_flags_are_checked_before_the_daemon_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let base = ["add", "svc", "--instance", "https://acme.service-now.com"];
    let cases: [(&[&str], &str); 3] = [
        (&["--client-id", "x", "--grant", "jwt-bearer"], "--jwt-key"),
        (
            &["--client-id", "x", "--jwt-subject", "u"],
            "only applies to the jwt-bearer",
        ),
        (
            &[
                "--client-id",
                "x",
                "--grant",
                "jwt-bearer",
                "--jwt-subject",
                "u",
                "--jwt-key",
                "/nonexistent/key.pem",
            ],
            "cannot read",
        ),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = snctl(&socket, &args, Some("secret\n"));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(expected),
            "{}",
            text(&out.stderr)
        );
    }
}
