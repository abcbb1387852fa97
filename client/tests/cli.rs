//! The `snctl` binary without a daemon: usage errors and an unreachable
//! daemon give the documented exit codes and one-line messages. (With a
//! daemon, see the end-to-end tests in `tests/`.)

use std::process::Command;

fn snctl(args: &[&str], socket: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_snctl"))
        .args(args)
        .env("SNCTL_SOCKET", socket)
        .output()
        .expect("snctl runs")
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    assert_eq!(snctl(&["token"], &sock).status.code(), Some(2));
    assert_eq!(snctl(&["frobnicate"], &sock).status.code(), Some(2));
    assert_eq!(snctl(&["exec", "prod"], &sock).status.code(), Some(2));
    assert_eq!(snctl(&["--help"], &sock).status.code(), Some(0));
}

#[test]
fn an_unreachable_daemon_exits_3_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = snctl(&["list"], &dir.path().join("none.sock"));
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("snctl: snctld is not running at "),
        "{stderr}"
    );
}

#[test]
fn the_secret_is_never_taken_from_argv() {
    let dir = tempfile::tempdir().unwrap();
    let out = snctl(
        &[
            "add",
            "prod",
            "--instance",
            "https://a.service-now.com",
            "--client-id",
            "x",
            "--client-secret",
            "s",
        ],
        &dir.path().join("none.sock"),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "there is no --client-secret flag"
    );
    // Without a terminal and without --client-secret-stdin there is nothing
    // to read (`output()` gives the child an empty stdin).
    let out = snctl(
        &[
            "add",
            "prod",
            "--instance",
            "https://a.service-now.com",
            "--client-id",
            "x",
        ],
        &dir.path().join("none.sock"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client-secret-stdin"));
}
