//! Hostile or broken clients on the socket never stop others.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use snctl_shared::frame::{self, MAX_REQUEST_FRAME};
use snctl_shared::protocol::Hello;
use snctl_tests::harness::{self, fake, test_config, TestDaemon};

use crate::{add_request, Prod};

fn hello_bytes() -> Vec<u8> {
    frame::encode(
        &Hello {
            protocol_version: snctl::PROTOCOL_VERSION,
            client_version: "test".into(),
        },
        MAX_REQUEST_FRAME,
    )
    .unwrap()
}

/// Reads until the daemon closes the connection; true if it did.
fn closed_by_daemon(stream: &mut UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn bad_frames_end_only_their_connection() {
    let Prod {
        dir: _dir,
        fake: _fake,
        daemon,
    } = Prod::start();
    let mut good = daemon.client();

    // A 4 GiB length header, as the first frame and after a valid hello.
    let mut s = UnixStream::connect(daemon.socket()).unwrap();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(closed_by_daemon(&mut s));
    let mut s = UnixStream::connect(daemon.socket()).unwrap();
    s.write_all(&hello_bytes()).unwrap();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(closed_by_daemon(&mut s));

    // Random bytes.
    let mut rng = rand::thread_rng();
    for _ in 0..20 {
        let mut junk = vec![0u8; 64];
        rng.fill_bytes(&mut junk);
        let mut s = UnixStream::connect(daemon.socket()).unwrap();
        let _ = s.write_all(&junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        assert!(closed_by_daemon(&mut s));
    }

    // A half-written frame from a client that then vanishes.
    let mut s = UnixStream::connect(daemon.socket()).unwrap();
    s.write_all(&hello_bytes()[..3]).unwrap();
    drop(s);

    // The long-lived client and new ones are served throughout.
    assert!(good.token("prod").is_ok());
    assert!(daemon.client().token("prod").is_ok());
}

#[test]
fn slow_and_idle_clients_do_not_block_others_and_time_out() {
    let Prod {
        dir: _dir,
        fake: _fake,
        daemon,
    } = Prod::with(
        |_| {},
        |c| {
            c.limits.read_timeout = Duration::from_millis(500);
            c.limits.idle_timeout = Duration::from_secs(1);
        },
    );

    // Started a frame, never finishes it.
    let mut slow = UnixStream::connect(daemon.socket()).unwrap();
    slow.write_all(&hello_bytes()[..2]).unwrap();
    // Connected, never says anything.
    let mut idle = UnixStream::connect(daemon.socket()).unwrap();

    assert!(daemon.client().token("prod").is_ok());
    assert!(closed_by_daemon(&mut slow), "a stalled frame is cut off");
    assert!(closed_by_daemon(&mut idle), "an idle connection is closed");
    assert!(daemon.client().token("prod").is_ok());
}

#[test]
fn a_connection_idle_between_requests_is_parked_then_served_and_still_times_out() {
    let Prod {
        dir: _dir,
        fake,
        daemon,
    } = Prod::with(
        |_| {},
        |c| {
            c.limits.park_after = Duration::from_millis(100);
            c.limits.idle_timeout = Duration::from_secs(2);
        },
    );
    let mut client = daemon.client();
    let first = client.token("prod").unwrap();
    // Idle past `park_after`: the connection waits on the poller, its
    // thread given back; the next request on it is served as before,
    // twice (parked once more in between).
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(400));
        let again = client.token("prod").unwrap();
        assert_eq!(again.access_token.expose(), first.access_token.expose());
    }
    assert_eq!(fake.tokens_issued(), 1, "answered from the token in hand");
    // Greeted, then silent: parked, and closed once its idle time is over.
    let mut idle = UnixStream::connect(daemon.socket()).unwrap();
    idle.write_all(&hello_bytes()).unwrap();
    assert!(closed_by_daemon(&mut idle), "a parked connection times out");
    // A parked connection ends with the daemon.
    let mut parked = UnixStream::connect(daemon.socket()).unwrap();
    parked.write_all(&hello_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    drop(daemon);
    assert!(
        closed_by_daemon(&mut parked),
        "a stop ends parked connections"
    );
}

#[test]
fn connections_past_the_cap_are_closed_and_the_rest_served() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_connections = 4;
    let daemon = TestDaemon::start(config).unwrap();
    // The test is an admin to the daemon (root, or the daemon's own user):
    // it has the admins' reserve on top of the cap.
    let cap = 4 + snctld::server::ADMIN_RESERVE;
    let mut clients: Vec<_> = (0..cap).map(|_| daemon.client()).collect();
    clients[0].add(add_request("prod", &fake.url())).unwrap();
    // The next is closed during the handshake, with a clear error.
    let err = snctl::Client::connect(daemon.socket())
        .err()
        .expect("refused");
    assert_eq!(err.kind().exit_code(), 3, "{err}");
    for client in &mut clients {
        assert!(client.token("prod").is_ok());
    }
    drop(clients.pop());
    assert!(snctl_tests::harness::wait_until(
        Duration::from_secs(5),
        || { snctl::Client::connect(daemon.socket()).is_ok() }
    ));
}

#[test]
fn the_socket_is_private_and_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    let socket = daemon.socket().to_path_buf();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second daemon on the same socket refuses to start.
    let err = TestDaemon::start(test_config(dir.path()))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("already serving"), "{err}");
    daemon.stop().unwrap();
    assert!(!socket.exists());
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    // A socket file nobody listens on, as a killed daemon leaves behind.
    let listener = std::os::unix::net::UnixListener::bind(&config.socket).unwrap();
    drop(listener);
    assert!(config.socket.exists());
    let daemon = TestDaemon::start(config).unwrap();
    assert!(daemon.client().status().is_ok());
}

#[test]
fn the_system_daemon_makes_its_socket_directory_and_socket_open_to_their_group() {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: snctld runs in system mode (socket 0660, directory 0755) only as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // snctld's umask is 077; the modes must come out as asked all the same.
    let socket = dir.path().join("run").join("snctld.sock");
    let config = dir.path().join("snctld.toml");
    std::fs::write(&config, "[access]\nsocket_group = \"0\"\n").unwrap();
    let mut daemon = std::process::Command::new(snctl_tests::harness::bin("snctld"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let served = snctl_tests::harness::wait_until(Duration::from_secs(20), || {
        snctl::Client::connect(&socket).is_ok()
    });
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    let modes = (mode(socket.parent().unwrap()).ok(), mode(&socket).ok());
    // SAFETY: kill with a pid we spawned and have not reaped.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let _ = daemon.wait();
    assert!(served, "snctld did not serve");
    assert_eq!(modes, (Some(0o755), Some(0o660)));
}

#[test]
fn a_socket_directory_others_may_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut config = test_config(dir.path());
    config.socket = open.join("snctld.sock");
    let err = TestDaemon::start(config)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("is writable by everyone"), "{err}");
    assert!(!open.join("snctld.sock").exists());
}

/// The frames of a hello and a `refresh NAME` request, as a client sends them.
fn refresh_request_bytes(name: &str) -> Vec<u8> {
    use snctl_shared::protocol::{NameRequest, Request};
    let mut bytes = hello_bytes();
    let request = Request::Refresh(NameRequest {
        name: name.to_string(),
    });
    bytes.extend(frame::encode(&request, MAX_REQUEST_FRAME).unwrap());
    bytes
}

/// Every kind of misbehaving client at once — one byte a second, idle,
/// half a frame then gone, a request then gone while the instance is slow
/// to answer it — and a well-behaved client is served throughout; the
/// abandoned refresh still completes and is kept.
#[test]
fn a_crowd_of_misbehaving_clients_never_stops_a_token() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let Prod {
        dir: _dir,
        fake,
        daemon,
    } = Prod::with(
        |_| {},
        |c| {
            c.limits.read_timeout = Duration::from_secs(2);
            c.limits.idle_timeout = Duration::from_secs(3);
        },
    );
    let socket = daemon.socket().to_path_buf();
    let before = daemon.client().token("prod").unwrap();
    let issued = fake.tokens_issued();

    // One byte a second: cut off once the frame is late.
    let stop = Arc::new(AtomicBool::new(false));
    let trickles: Vec<_> = (0..8)
        .map(|_| {
            let (socket, stop) = (socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).unwrap();
                let mut sent = 0;
                for byte in refresh_request_bytes("prod") {
                    if stop.load(Ordering::Relaxed) || s.write_all(&[byte]).is_err() {
                        break;
                    }
                    sent += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                (sent, closed_by_daemon(&mut s))
            })
        })
        .collect();
    // Connected and silent.
    let mut idle: Vec<_> = (0..8)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    // Half a frame, then gone.
    let whole = refresh_request_bytes("prod");
    for cut in 1..whole.len() {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(&whole[..cut]).unwrap();
    }
    // A whole refresh request while the instance takes its time, then gone
    // before the answer.
    fake.push_fault(snctl_tests::fake::Fault::Delay(Duration::from_millis(1500)));
    {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(&refresh_request_bytes("prod")).unwrap();
        assert!(snctl_tests::harness::wait_until(
            Duration::from_secs(10),
            || fake.token_requests() > 1
        ));
    }

    // Meanwhile a well-behaved client, new connection each time, is served.
    for _ in 0..50 {
        assert!(daemon.client().token("prod").is_ok());
        std::thread::sleep(Duration::from_millis(20));
    }

    for s in &mut idle {
        assert!(closed_by_daemon(s), "an idle connection is closed");
    }
    for trickle in trickles {
        let (sent, closed) = trickle.join().unwrap();
        assert!(closed, "a trickling client is cut off");
        assert!(sent < whole.len(), "cut off before its frame was whole");
    }
    // The refresh whose client vanished completed and was kept.
    assert!(snctl_tests::harness::wait_until(
        Duration::from_secs(10),
        || fake.tokens_issued() > issued
    ));
    let after = daemon.client().token("prod").unwrap();
    assert_ne!(after.access_token, before.access_token);
    assert!(fake.is_access_token_valid(after.access_token.expose()));
    stop.store(true, Ordering::Relaxed);
}

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// `dir/sticky` (mode 1777, like /tmp) holding `name`, a symbolic link to
/// `target` owned by nobody: what another user may put in a shared
/// directory and later point elsewhere.
fn nobodys_link(dir: &Path, name: &str, target: &Path) -> PathBuf {
    let sticky = dir.join("sticky");
    if !sticky.exists() {
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let link = sticky.join(name);
    std::os::unix::fs::symlink(target, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    link
}

#[test]
fn socket_and_state_paths_through_another_users_link_are_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to give a link to another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = nobodys_link(dir.path(), "run", &real);
    let mut config = test_config(&dir.path().join("state"));
    config.socket = link.join("snctld.sock");
    let err = TestDaemon::start(config)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("symbolic link owned by uid 65534"), "{err}");
    assert!(!real.join("snctld.sock").exists());

    let link = nobodys_link(dir.path(), "state", &real);
    let mut config = test_config(&link);
    config.socket = dir.path().join("sock").join("snctld.sock");
    let err = TestDaemon::start(config)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("symbolic link owned by uid 65534"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&real)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A socket server running as nobody at `socket` that counts the bytes a
/// client sends it and prints the count once the client is gone.
fn listen_as_nobody(socket: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
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
    let mut command = std::process::Command::new("/usr/bin/python3");
    command
        .args(["-c", script])
        .arg(socket)
        .stdout(std::process::Stdio::piped());
    // SAFETY: between fork and exec only system calls, on no memory.
    unsafe {
        command.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
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

/// What the server of [`listen_as_nobody`] received, once the client is gone.
fn bytes_received(child: std::process::Child) -> usize {
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn clients_send_nothing_to_a_socket_another_user_could_have_swapped_in() {
    if !is_root() {
        eprintln!("skipped: needs root to serve a socket as another user");
        return;
    }
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: needs /usr/bin/python3 to serve a socket as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobodys = dir.path().join("nobodys");
    std::fs::create_dir(&nobodys).unwrap();
    std::os::unix::fs::chown(&nobodys, Some(NOBODY), Some(NOBODY)).unwrap();
    let add = [
        "add",
        "prod",
        "--instance",
        "https://acme.service-now.com",
        "--client-id",
        "id",
        "--client-secret-stdin",
    ];

    // Through a link another user owns: the admin's client secret must not
    // reach the socket at its end.
    let link = nobodys_link(dir.path(), "snctld", &nobodys);
    let server = listen_as_nobody(&nobodys.join("snctld.sock"));
    let out = harness::snctl(&link.join("snctld.sock"), &add, Some("s3cret-value\n"));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to talk to"), "{stderr}");
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert_eq!(bytes_received(server), 0);

    // The same server on a path only root controls, in its own directory:
    // that user is trusted as the socket's owner (a system daemon running
    // as its own user binds its socket so).
    std::fs::remove_file(nobodys.join("snctld.sock")).unwrap();
    let server = listen_as_nobody(&nobodys.join("snctld.sock"));
    let out = harness::snctl(&nobodys.join("snctld.sock"), &["status"], None);
    assert!(!out.status.success());
    assert!(bytes_received(server) > 0);
}
