//! The pure-Python protocol client (`contrib/python/snctl_protocol.py`,
//! written from PROTOCOL.md alone) against a real daemon and the fake
//! instance: it gets a token the instance accepts and reads a record with
//! it, ends with `snctl token`'s exit codes for an unknown name and a name
//! the caller may not read, and sends nothing to a socket another user
//! could have put in its way.
//!
//! Callers of other uids and a listener of another uid need root, and
//! `/usr/bin/python3` (the Python of the test's own user may lie out of
//! their reach); without them those tests say so and pass.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use snctl::protocol::Readers;
use snctl_tests::harness::{fake, test_config, TestDaemon};

use crate::{add_request, Prod};

fn client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/python/snctl_protocol.py")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `python3 snctl_protocol.py ARGS` with the daemon's socket in
/// `SNCTL_SOCKET`.
fn run(socket: &Path, args: &[&str]) -> Output {
    Command::new("python3")
        .arg(client())
        .args(args)
        .env("SNCTL_SOCKET", socket)
        .output()
        .expect("python3 runs")
}

const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Whether this test may run processes as other users; prints why not.
fn can_switch_users(test: &str) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: {test} needs root to run processes as other uids");
        return false;
    }
    if !Path::new(SYSTEM_PYTHON).exists() {
        eprintln!("skipped: {test} needs {SYSTEM_PYTHON} for processes of other uids");
        return false;
    }
    true
}

/// Makes `command` run as `uid` (and gid `uid`, no other groups).
fn as_user(command: &mut Command, uid: u32) -> &mut Command {
    // SAFETY: between fork and exec only system calls, on no memory.
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A temp dir of mode 0755, so that other users can reach what is in it.
fn public_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("snctl-pyclient-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A copy of the client in `dir` (the repository may be out of other
/// users' reach).
fn public_client(dir: &Path) -> PathBuf {
    let copy = dir.join("snctl_protocol.py");
    std::fs::copy(client(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    copy
}

#[test]
fn the_python_client_gets_a_token_and_reads_a_record_with_it() {
    let prod = Prod::start();
    let out = run(prod.daemon.socket(), &["prod"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token = text(&out.stdout);
    assert!(
        prod.fake.is_access_token_valid(token.trim_end()),
        "not a token of the instance: {out:?}"
    );
    // The caller's own minimum, and the socket named on the command line.
    let out = Command::new("python3")
        .arg(client())
        .arg("--socket")
        .arg(prod.daemon.socket())
        .args(["--min-valid", "300", "prod"])
        .env_remove("SNCTL_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(prod
        .fake
        .is_access_token_valid(text(&out.stdout).trim_end()));

    // As a module: the token and the instance URL, used on the Table API.
    let script = "import json, sys, urllib.request\n\
        sys.path.insert(0, sys.argv[1])\n\
        from snctl_protocol import get_token\n\
        t = get_token('prod')\n\
        url = t.instance_url + '/api/now/table/incident?sysparm_query=number%3DINC0010001&sysparm_limit=1'\n\
        request = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + t.access_token})\n\
        found = json.load(urllib.request.urlopen(request))['result'][0]\n\
        print(found['number'], found['short_description'])\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(client().parent().unwrap())
        .env("SNCTL_SOCKET", prod.daemon.socket())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "INC0010001 fake incident\n");
    assert_eq!(prod.fake.table_requests(), 1);
}

#[test]
fn the_python_client_exits_as_snctl_token_does() {
    let prod = Prod::start();
    let out = run(prod.daemon.socket(), &["nope"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "snctl_protocol.py: no authentication named \"nope\": see `snctl list`, or add it with `snctl add nope`\n"
    );
    assert!(out.stdout.is_empty());

    // What snctl itself says and exits with, beside it.
    let snctl = snctl_tests::harness::snctl(prod.daemon.socket(), &["token", "nope"], None);
    assert_eq!(snctl.status.code(), Some(4));
    assert_eq!(
        text(&snctl.stderr).strip_prefix("snctl: "),
        text(&out.stderr).strip_prefix("snctl_protocol.py: ")
    );

    // No daemon: exit 3, saying where it looked.
    let gone = prod.dir.path().join("gone.sock");
    let out = run(&gone, &["prod"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        text(&out.stderr).contains("snctld is not running at"),
        "{out:?}"
    );

    // A usage error: exit 2.
    let out = run(prod.daemon.socket(), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_python_client_is_refused_a_name_it_may_not_read() {
    if !can_switch_users("the_python_client_is_refused_a_name_it_may_not_read") {
        return;
    }
    let fake = fake();
    let dir = public_dir();
    let mut config = test_config(dir.path());
    config.socket_mode = 0o666;
    let daemon = TestDaemon::start(config).unwrap();
    for (name, reader) in [("mine", "4001"), ("theirs", "4002")] {
        let mut request = add_request(name, &fake.url());
        request.readers = Readers {
            users: vec![reader.into()],
            ..Readers::default()
        };
        daemon.client().add(request).unwrap();
    }
    let client = public_client(dir.path());
    let as_4001 = |name: &str| {
        as_user(
            Command::new(SYSTEM_PYTHON)
                .arg(&client)
                .arg(name)
                .env("SNCTL_SOCKET", daemon.socket())
                .current_dir(dir.path()),
            4001,
        )
        .output()
        .unwrap()
    };
    let out = as_4001("mine");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(fake.is_access_token_valid(text(&out.stdout).trim_end()));

    let out = as_4001("theirs");
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("snctl_protocol.py: forbidden: "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}

/// A listener of uid nobody at `socket` that prints how many bytes its one
/// caller sent, once the caller is gone.
fn listen_as_nobody(socket: &Path) -> std::process::Child {
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.bind(sys.argv[1]); s.listen(1)\n\
        print('ready', flush=True)\n\
        c, _ = s.accept(); c.settimeout(5); n = 0\n\
        try:\n\
        \x20   while True:\n\
        \x20       b = c.recv(65536)\n\
        \x20       if not b: break\n\
        \x20       n += len(b)\n\
        except OSError: pass\n\
        print(n, flush=True)\n";
    let mut child = as_user(
        Command::new(SYSTEM_PYTHON)
            .args(["-c", script])
            .arg(socket)
            .stdout(Stdio::piped()),
        65534,
    )
    .spawn()
    .unwrap();
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
    child
}

fn bytes_received(child: std::process::Child) -> usize {
    let out = child.wait_with_output().unwrap();
    text(&out.stdout).trim().parse().unwrap()
}

#[test]
fn the_python_client_sends_nothing_to_a_socket_another_user_could_have_put_there() {
    if !can_switch_users(
        "the_python_client_sends_nothing_to_a_socket_another_user_could_have_put_there",
    ) {
        return;
    }
    let dir = public_dir();
    // A directory anyone may write (sticky, like /tmp): its socket, bound
    // by nobody, could be anyone's.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = shared.join("snctld.sock");
    let server = listen_as_nobody(&socket);
    let out = run(&socket, &["prod"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("refusing to talk to"), "{stderr}");
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    assert_eq!(bytes_received(server), 0);

    // Nobody's own directory on a path only root controls, the socket
    // nobody's too: a system daemon running as its own user. Trusted, as
    // the Rust library trusts it: the hello goes out.
    let own = dir.path().join("nobodys");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(65534), Some(65534)).unwrap();
    let server = listen_as_nobody(&own.join("snctld.sock"));
    let out = run(&own.join("snctld.sock"), &["prod"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        text(&out.stderr).contains("closed the connection"),
        "{out:?}"
    );
    assert!(bytes_received(server) > 0);
}
