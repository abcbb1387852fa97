//! The `snctl` binary against the in-process daemon: every command, exit
//! codes and messages.

use snctl_tests::harness::{fake, snctl, TestDaemon, CLIENT_ID, CLIENT_SECRET};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn add_list_show_token_refresh_update_exec_remove() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let sock = daemon.socket();
    let url = fake.url();

    let out = crate::add_by_secret(sock, &url, "prod");
    assert!(out.status.success(), "add: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("added prod"));
    assert_eq!(fake.tokens_issued(), 1);

    let out = snctl(sock, &["list"], None);
    assert!(out.status.success());
    let list = text(&out.stdout);
    assert!(
        list.contains("prod") && list.contains(&url) && list.contains("client-credentials"),
        "{list}"
    );

    let out = snctl(sock, &["list", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["name"], "prod");
    assert_eq!(json[0]["state"], "ok");
    assert!(!text(&out.stdout).contains(CLIENT_SECRET));

    let out = snctl(sock, &["show", "prod", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["client_id"], CLIENT_ID);
    assert_eq!(json["grant"], "client-credentials");
    let out = snctl(sock, &["show", "prod"], None);
    assert!(text(&out.stdout).contains("token expires:"));

    // The token is only the token, newline-terminated, and the instance takes it.
    let out = snctl(sock, &["token", "prod"], None);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.ends_with('\n') && stdout.lines().count() == 1);
    let token = stdout.trim_end().to_string();
    assert!(fake.is_access_token_valid(&token));
    let table = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{url}/api/now/table/incident?sysparm_limit=1"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(table.status(), 200);
    assert_eq!(fake.tokens_issued(), 1, "the token came from memory");

    let out = snctl(sock, &["token", "prod", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["access_token"], token.as_str());
    assert_eq!(json["instance_url"], url.as_str());

    let out = snctl(sock, &["refresh", "prod"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fake.tokens_issued(), 2);
    let refreshed = text(&snctl(sock, &["token", "prod"], None).stdout)
        .trim_end()
        .to_string();
    assert_ne!(refreshed, token);

    // exec hands the token and instance to the child.
    let out = snctl(
        sock,
        &[
            "exec",
            "prod",
            "--",
            "sh",
            "-c",
            "printf '%s %s' \"$SN_INSTANCE_URL\" \"$SN_ACCESS_TOKEN\"",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{url} {refreshed}"));

    // A rotated secret: update verifies the new one before saving it.
    fake.set_client_secret(CLIENT_ID, "rotated-secret");
    let out = snctl(
        sock,
        &["update", "prod", "--client-secret-stdin"],
        Some("wrong-secret\n"),
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("previous settings stay in use"));
    let out = snctl(
        sock,
        &["update", "prod", "--client-secret-stdin"],
        Some("rotated-secret\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let current = text(&snctl(sock, &["token", "prod"], None).stdout)
        .trim_end()
        .to_string();
    let out = snctl(sock, &["remove", "prod"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fake.revoke_requests(), 1);
    assert!(
        !fake.is_access_token_valid(&current),
        "remove revoked the token"
    );
    let out = snctl(sock, &["token", "prod"], None);
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains("no authentication named \"prod\""));
}

#[test]
fn a_wrong_secret_saves_nothing_and_says_why() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let out = snctl(
        daemon.socket(),
        &[
            "add",
            "prod",
            "--instance",
            &fake.url(),
            "--client-id",
            CLIENT_ID,
            "--client-secret-stdin",
        ],
        Some("not-the-secret"),
    );
    assert_eq!(out.status.code(), Some(7));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("glide.oauth.inbound.client.credential.grant_type.enabled"),
        "{stderr}"
    );
    assert!(stderr.contains("OAuth Application User"), "{stderr}");
    assert!(stderr.contains("nothing was saved"), "{stderr}");
    let out = snctl(daemon.socket(), &["list", "--json"], None);
    assert_eq!(text(&out.stdout).trim(), "[]");
    drop(daemon);
    // Nor after a restart.
    let daemon = TestDaemon::in_dir(dir.path());
    assert!(daemon.client().list().unwrap().is_empty());
}

#[test]
fn usage_errors_and_bad_urls_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let out = snctl(daemon.socket(), &["token"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = snctl(
        daemon.socket(),
        &[
            "add",
            "prod",
            "--instance",
            "http://acme.service-now.com",
            "--client-id",
            "x",
            "--client-secret-stdin",
        ],
        Some("s"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("plain http"));
    let out = snctl(
        daemon.socket(),
        &[
            "add",
            "bad/name",
            "--instance",
            "https://a.service-now.com",
            "--client-id",
            "x",
            "--client-secret-stdin",
        ],
        Some("s"),
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn no_daemon_exits_3_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = snctl(&dir.path().join("none.sock"), &["token", "prod"], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("snctld is not running"));
}

/// A daemon of another protocol version: `snctl` (which sends its first
/// request without waiting for the hello's answer) and the library's
/// `connect` both say so, whatever became of the request.
#[test]
fn a_daemon_of_another_protocol_version_is_named() {
    use snctl_shared::frame::{self, MAX_RESPONSE_FRAME};
    use snctl_shared::protocol::HelloReply;
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let answered = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().unwrap();
            let mut hello = [0u8; 64];
            let _ = stream.read(&mut hello).unwrap();
            let reply = HelloReply {
                protocol_version: snctl::PROTOCOL_VERSION + 7,
                daemon_version: "9.9.9".into(),
            };
            stream
                .write_all(&frame::encode(&reply, MAX_RESPONSE_FRAME).unwrap())
                .unwrap();
            // An older daemon closes after its answer.
        }
    });
    let out = snctl(&socket, &["token", "prod"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "snctl speaks protocol {} but snctld speaks {}",
            snctl::PROTOCOL_VERSION,
            snctl::PROTOCOL_VERSION + 7
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!out.status.success());
    let err = snctl::Client::connect(&socket).err().expect("refused");
    assert!(
        err.to_string().contains("install matching versions"),
        "{err}"
    );
    answered.join().unwrap();
}

#[test]
fn the_binaries_write_their_man_pages_and_completions() {
    use snctl_tests::harness::bin;
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    for program in ["snctl", "snctld"] {
        let out = Command::new(bin(program))
            .args(["generate", "man"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{program}: {}", text(&out.stderr));
    }
    let page = |name: &str| {
        let section = &name[name.len() - 1..];
        std::fs::read_to_string(dir.path().join(format!("man{section}")).join(name)).unwrap()
    };
    let snctl_1 = page("snctl.1");
    for command in ["add", "token", "update", "exec", "backup", "doctor"] {
        assert!(
            snctl_1.contains(&format!("snctl\\-{command}(1)")),
            "{command}"
        );
        assert!(page(&format!("snctl-{command}.1")).contains(".SH OPTIONS"));
    }
    assert!(snctl_1.contains("EXIT STATUS") && snctl_1.contains("upstream error"));
    let snctld_8 = page("snctld.8");
    assert!(snctld_8.contains(".TH snctld 8"), "{snctld_8:.300}");
    assert!(snctld_8.contains("snctld\\-rekey(8)") && snctld_8.contains("snctld\\-restore(8)"));
    assert!(page("snctld-restore.8").contains("trust\\-old\\-backup"));
    assert!(page("snctld.toml.5").contains(".SH [proxy]"));

    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin("snctl"))
            .args(["generate", "completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for command in ["add", "login", "token", "update", "remove", "backup"] {
            assert!(script.contains(command), "{shell}: no {command}");
        }
    }
    let out = Command::new(bin("snctl"))
        .args(["generate", "completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let help = Command::new(bin("snctl")).arg("--help").output().unwrap();
    let help = text(&help.stdout);
    assert!(help.contains("Exit codes:") && help.contains("3  daemon unreachable"));
    assert!(help.contains("snctl token prod"));
    assert!(!help.contains("generate"), "{help}");
}

#[test]
fn bash_completes_authentication_names_from_the_daemon() {
    use snctl_tests::harness::bin;
    use std::process::Command;
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let sock = daemon.socket();
    for name in ["prod", "preprod", "dev"] {
        let out = crate::add_by_secret(sock, &fake.url(), name);
        assert!(out.status.success(), "add: {}", text(&out.stderr));
    }
    let out = snctl(sock, &["list", "--names"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut names: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    names.sort();
    assert_eq!(names, ["dev", "preprod", "prod"]);

    let script = Command::new(bin("snctl"))
        .args(["generate", "completions", "bash"])
        .output()
        .unwrap()
        .stdout;
    let script_path = dir.path().join("snctl.bash");
    std::fs::write(&script_path, script).unwrap();
    // What bash offers for the words typed, as its completion would ask.
    let complete = |words: &[&str]| -> Vec<String> {
        let line = words.join(" ");
        let program = format!(
            r#"source "$1"
COMP_WORDS=({line}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
[[ "{line}" == *" " ]] && {{ COMP_WORDS+=(""); COMP_CWORD=$(( COMP_CWORD + 1 )); }}
cur="${{COMP_WORDS[COMP_CWORD]}}"; prev="${{COMP_WORDS[COMP_CWORD-1]}}"
$(complete -p snctl | sed 's/.*-F \([^ ]*\).*/\1/') snctl "$cur" "$prev"
printf '%s\n' "${{COMPREPLY[@]}}""#
        );
        let path = format!(
            "{}:{}",
            bin("snctl").parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .args(["-c", &program, "bash"])
            .arg(&script_path)
            .env("SNCTL_SOCKET", sock)
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut offered: Vec<String> = text(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        offered.sort();
        offered
    };
    assert!(complete(&["snctl", "to"]).contains(&"token".to_string()));
    assert_eq!(complete(&["snctl", "token", "pr"]), ["preprod", "prod"]);
    assert_eq!(complete(&["snctl", "show", "d"]), ["dev"]);
    let socket = sock.display().to_string();
    assert_eq!(
        complete(&["snctl", "--socket", &socket, "remove", "p"]),
        ["preprod", "prod"]
    );
    // Options still complete as before.
    assert!(complete(&["snctl", "token", "--mi"]).contains(&"--min-valid".to_string()));
    // `list` takes no name.
    assert!(!complete(&["snctl", "list", " "]).contains(&"prod".to_string()));
}

/// Whether `shell` is installed; says so when it is not.
fn have_shell(shell: &str) -> bool {
    let found = std::process::Command::new(shell)
        .args(["-c", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("SNCTL_TEST_REQUIRE_CLIENTS").is_none(),
            "{shell} is required here (SNCTL_TEST_REQUIRE_CLIENTS): apt-get install {shell}"
        );
        eprintln!("skipped for {shell}: not installed (apt-get install {shell})");
    }
    found
}

#[test]
fn fish_and_zsh_complete_authentication_names_from_the_daemon() {
    use snctl_tests::harness::bin;
    use std::process::Command;
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let sock = daemon.socket();
    for name in ["prod", "preprod", "dev"] {
        let out = crate::add_by_secret(sock, &fake.url(), name);
        assert!(out.status.success(), "add: {}", text(&out.stderr));
    }
    let path = format!(
        "{}:{}",
        bin("snctl").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = |shell: &str| {
        let out = Command::new(bin("snctl"))
            .args(["generate", "completions", shell])
            .output()
            .unwrap();
        let file = dir.path().join(format!("snctl.{shell}"));
        std::fs::write(&file, out.stdout).unwrap();
        file
    };
    let run = |shell: &str, program: &str, script: &std::path::Path| -> Vec<String> {
        let mut command = Command::new(shell);
        command.args(["-c", program]);
        // zsh, like bash, takes the next word as $0; fish has no $0.
        if shell == "zsh" {
            command.arg(shell);
        }
        let out = command
            .arg(script)
            .env("SNCTL_SOCKET", sock)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let mut offered: Vec<String> = text(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        offered.sort();
        offered
    };

    if have_shell("fish") {
        let file = script("fish");
        // fish's own completion of a command line, as a <TAB> would ask.
        let complete = |line: &str| {
            let program = format!("source $argv[1]; complete -C '{line}'");
            run("fish", &program, &file)
        };
        assert_eq!(complete("snctl token pr"), ["preprod", "prod"]);
        assert_eq!(complete("snctl show d"), ["dev"]);
        let socket = sock.display().to_string();
        assert_eq!(
            complete(&format!("snctl --socket {socket} remove p")),
            ["preprod", "prod"]
        );
        assert!(complete("snctl to").contains(&"token".to_string()));
        assert!(!complete("snctl add ").contains(&"prod".to_string()));
    }

    if have_shell("zsh") {
        let file = script("zsh");
        // The script as zsh reads it, with compsys's helpers standing in:
        // what `_snctl_auth_names` offers for the words typed.
        let complete = |words: &str| {
            let program = format!(
                r#"compdef() {{ }}
_call_program() {{ shift; "$@" }}
_describe() {{ print -rl -- ${{(P)${{@[-1]}}}} }}
source "$1"
words=({words})
_snctl_auth_names"#
            );
            run("zsh", &program, &file)
        };
        assert_eq!(complete("snctl token ''"), ["dev", "preprod", "prod"]);
        let socket = sock.display().to_string();
        assert_eq!(
            complete(&format!("snctl --socket {socket} show ''")),
            ["dev", "preprod", "prod"]
        );
        // The NAME of each command that takes an existing one, never add's.
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = text.matches(":_snctl_auth_names'").count();
        assert!(uses >= 8, "{uses} commands complete names");
        let add = text
            .split("(add)\n")
            .nth(1)
            .unwrap()
            .split(";;")
            .next()
            .unwrap();
        assert!(!add.contains("_snctl_auth_names"), "{add}");
    }
}

#[test]
fn exec_exits_126_and_127_as_a_shell_does_and_else_with_the_commands_status() {
    use std::os::unix::fs::PermissionsExt;
    let prod = crate::Prod::start();
    let sock = prod.daemon.socket();
    let exec = |command: &str| snctl(sock, &["exec", "prod", "--", command], None);

    let out = snctl(sock, &["exec", "prod", "--", "sh", "-c", "exit 42"], None);
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));

    let out = exec("snctl-no-such-command");
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot run snctl-no-such-command"),
        "{stderr}"
    );
    assert!(stderr.contains("PATH"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = exec(script.to_str().unwrap());
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("chmod +x"), "{stderr}");

    let help = text(&snctl(sock, &["exec", "--help"], None).stdout);
    assert!(
        help.contains("126") && help.contains("127") && help.contains("the command's own"),
        "{help}"
    );
}

#[test]
fn versions_name_the_git_revision_they_were_built_from() {
    use snctl_tests::harness::bin;
    use std::process::Command;
    let checkout = env!("CARGO_MANIFEST_DIR");
    let head = Command::new("git")
        .args(["-C", checkout, "rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| text(&out.stdout).trim().to_string());
    for program in ["snctl", "snctld"] {
        let out = Command::new(bin(program))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let line = text(&out.stdout);
        let line = line.trim_end();
        let rest = line
            .strip_prefix(&format!("{program} {}", env!("CARGO_PKG_VERSION")))
            .unwrap_or_else(|| panic!("{line}"));
        match &head {
            // e.g. `snctl 0.1.0 (abc1234)`, or `(abc1234-dirty)`.
            Some(head) => {
                let rev = rest
                    .strip_prefix(" (")
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("no revision: {line}"));
                assert_eq!(rev.strip_suffix("-dirty").unwrap_or(rev), head, "{line}");
            }
            // Not built from a git checkout: the crate's version alone.
            None => assert_eq!(rest, "", "{line}"),
        }
    }
}
