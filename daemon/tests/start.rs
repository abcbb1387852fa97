//! The `snctld` binary's start-up refusals: each stops with one clear line
//! and a failure exit before serving anything.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn snctld(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_snctld"))
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "off")
        .output()
        .expect("snctld runs")
}

#[test]
fn an_exposed_key_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let key = state.join("snctld.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = snctld(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("readable by group or others"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!dir.path().join("s.sock").exists());
}

#[test]
fn a_bad_config_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("snctld.toml");
    std::fs::write(&config, "[server]\nmax_connections = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snctld"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_connections must be at least 1"));
}
