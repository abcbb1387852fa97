//! Puts the git revision the binary is built from in its version
//! (`snctl --version`: `snctl 0.1.0 (abc1234)`, `abc1234-dirty` with
//! uncommitted changes), so that a bug report names the build. Outside a
//! git checkout (a source package, `cargo package`) or without git, the
//! version is the crate's alone.
//!
//! The same file is `daemon/build.rs`, but for the `cli` feature; keep
//! the two alike.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `env!` reads: `" (REV)"`, or empty.
const VARIABLE: &str = "SNCTL_BUILD_REVISION";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Only the snctl command has a version to show; a program using the
    // library runs no git.
    if std::env::var_os("CARGO_FEATURE_CLI").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        println!("cargo:rustc-env={VARIABLE}=");
        return;
    };
    let suffix = revision(&dir)
        .map(|rev| format!(" ({rev})"))
        .unwrap_or_default();
    println!("cargo:rustc-env={VARIABLE}={suffix}");
}

/// `git -C dir ARGS`'s output, trimmed, when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn revision(dir: &Path) -> Option<String> {
    // A checkout this crate is part of: the copy `cargo package` builds
    // lies inside the repository's tree (under target/) but is not in it.
    git(dir, &["ls-files", "--error-unmatch", "Cargo.toml"])?;
    let rev = git(dir, &["rev-parse", "--short", "HEAD"])?;
    // Run again when a commit or a checkout moves HEAD, and when the
    // sources change (they may make the tree dirty, or clean again); not on
    // every build.
    let mut watched = vec!["HEAD".to_string()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
        watched.push("packed-refs".into());
    }
    for name in watched {
        // Relative to `dir` unless absolute (a worktree's are).
        if let Some(path) = git(dir, &["rev-parse", "--git-path", &name]).map(|p| dir.join(p)) {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for sources in ["src", "../shared/src"] {
        if dir.join(sources).is_dir() {
            println!("cargo:rerun-if-changed={sources}");
        }
    }
    let dirty = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["diff", "--quiet", "HEAD", "--"])
        .status()
        .is_ok_and(|status| status.code() == Some(1));
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}
