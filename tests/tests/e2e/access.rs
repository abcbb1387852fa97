//! Who may do what: the daemon reads each caller's uid, groups and unit
//! from the kernel, keeps admin requests for admins, hands an
//! authentication's tokens only to its readers, refuses with exit 6 naming
//! the rule, and logs every token it hands out (never the token).
//!
//! The callers here are other users: the built `snctl`, copied where anyone
//! may run it, is started as numeric uids and gids that do not exist on the
//! host (4001…, groups 5001…; the daemon takes numbers). That needs root;
//! without it these tests say so and pass.

use std::ffi::{CStr, CString};
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use snctl::protocol::Readers;
use snctl_tests::fake::FakeInstance;
use snctl_tests::harness::{
    self, bin, fake, test_config, wait_until, DaemonProcess, TestDaemon, CLIENT_ID, CLIENT_SECRET,
};

use crate::{add_by_password, add_request};

/// Whether the test can act as other users; prints why not when it cannot.
fn can_switch_users(test: &str) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("skipped: {test} needs root to run snctl as other uids and groups");
    false
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A temp dir (0755) that every user can reach: under the usual temp dir
/// when every directory on the way lets others through, else under /tmp.
fn public_dir() -> tempfile::TempDir {
    let reachable = |dir: &Path| {
        dir.ancestors()
            .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    let base = Some(std::env::temp_dir())
        .filter(|d| reachable(d))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let dir = tempfile::Builder::new()
        .prefix("snctl-access-")
        .tempdir_in(base)
        .unwrap();
    set_mode(dir.path(), 0o755);
    dir
}

/// A copy of the built `snctl` in `dir/bin` (0755): the workspace's target
/// directory may be out of other users' reach (under /root, say).
fn public_snctl(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    set_mode(&bin_dir, 0o755);
    let copy = bin_dir.join("snctl");
    // Copied by another process: a file this process held open for writing
    // would be inherited by children that other tests fork meanwhile, and
    // running it could then fail with ETXTBSY.
    let copied = Command::new("cp")
        .arg(bin("snctl"))
        .arg(&copy)
        .status()
        .expect("cp runs");
    assert!(copied.success(), "cp snctl: {copied}");
    set_mode(&copy, 0o755);
    copy
}

/// Whom to run `snctl` as.
#[derive(Debug, Clone)]
struct Caller {
    uid: u32,
    gid: u32,
    /// Supplementary groups (the primary group need not be among them).
    groups: Vec<u32>,
    /// A cgroup v2 directory to move into, while still root.
    cgroup: Option<PathBuf>,
    /// One to move into afterwards, as the caller (a cgroup delegated to it).
    own_cgroup: Option<PathBuf>,
}

impl Caller {
    /// `uid`, with a primary group of the same number and no others.
    fn user(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: Vec::new(),
            cgroup: None,
            own_cgroup: None,
        }
    }

    fn with_gid(self, gid: u32) -> Caller {
        Caller { gid, ..self }
    }

    fn with_groups(self, groups: &[u32]) -> Caller {
        Caller {
            groups: groups.to_vec(),
            ..self
        }
    }

    fn in_cgroup(self, dir: &Path) -> Caller {
        Caller {
            cgroup: Some(dir.to_path_buf()),
            ..self
        }
    }

    /// Moves, as the caller itself, on into `dir` (as a user may within a
    /// cgroup delegated to them).
    fn then_moving_to(self, dir: &Path) -> Caller {
        Caller {
            own_cgroup: Some(dir.to_path_buf()),
            ..self
        }
    }

    /// Makes `command`'s process this caller.
    ///
    /// All of it happens in `pre_exec`: std applies `CommandExt::uid` and
    /// `gid` *before* running `pre_exec` closures (and, for `uid`, clears the
    /// supplementary groups), and once the uid is dropped neither
    /// `setgroups` nor joining a root-owned cgroup is allowed. So, as root:
    /// join the cgroup, set the supplementary groups, then the gid, and the
    /// uid last; then, unprivileged, any move of the caller's own.
    fn apply(&self, command: &mut Command) {
        let (uid, gid) = (self.uid, self.gid);
        let groups: Vec<libc::gid_t> = self.groups.clone();
        let procs_of = |dir: &Option<PathBuf>| {
            dir.as_ref().map(|dir| {
                CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).expect("no NUL")
            })
        };
        let (procs, own_procs) = (procs_of(&self.cgroup), procs_of(&self.own_cgroup));
        // SAFETY: the closure runs in the child between fork and exec; it
        // only makes system calls on memory prepared before the fork, and
        // allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if let Some(procs) = &procs {
                    join_cgroup(procs)?;
                }
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(procs) = &own_procs {
                    join_cgroup(procs)?;
                }
                Ok(())
            });
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs`. Runs after fork: no allocation, the pid written from a stack
/// buffer.
fn join_cgroup(procs: &CStr) -> std::io::Result<()> {
    // SAFETY: getpid cannot fail and touches no memory.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    // SAFETY: `procs` is a NUL-terminated path; the buffer written is
    // `digits[start..]`, in bounds; the descriptor is closed once.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, digits[start..].as_ptr().cast(), digits.len() - start);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written < 0 {
            return Err(error);
        }
    }
    Ok(())
}

/// What one `snctl` run did.
#[derive(Debug)]
struct Ran {
    pid: u32,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Asserts exit 6 and a refusal message containing `says`.
    fn refused(&self, says: &str) {
        assert_eq!(self.code, Some(6), "{self:#?}");
        assert!(self.stderr.starts_with("snctl: forbidden: "), "{self:#?}");
        assert!(self.stderr.contains(says), "expected {says:?} in {self:#?}");
    }

    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        &self.stdout
    }

    /// The names `snctl list --json` printed.
    fn names(&self) -> Vec<String> {
        let list: serde_json::Value = serde_json::from_str(self.ok()).expect("JSON list");
        list.as_array()
            .expect("a JSON array")
            .iter()
            .map(|a| a["name"].as_str().expect("a name").to_string())
            .collect()
    }
}

/// Runs `snctl` (at `snctl`) as `caller` against `socket`, with `stdin`
/// piped in.
fn run_snctl(
    snctl: &Path,
    socket: &Path,
    caller: &Caller,
    args: &[&str],
    stdin: Option<&str>,
) -> Ran {
    let mut command = Command::new(snctl);
    command
        .args(args)
        .env("SNCTL_SOCKET", socket)
        .current_dir(snctl.parent().expect("bin dir"))
        .stdin(harness::stdin_for(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    caller.apply(&mut command);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("snctl as {caller:?}: {e}"));
    let pid = child.id();
    harness::feed(&mut child, stdin);
    let out = child.wait_with_output().expect("snctl finishes");
    Ran {
        pid,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fake instance, and a daemon (in-process, as root) whose socket (mode
/// 0666 unless tuned) lies in a directory any user can reach, with a copy
/// of `snctl` beside it. Fields drop in order: the daemon stops before its
/// directory goes.
struct World {
    daemon: TestDaemon,
    _dir: tempfile::TempDir,
    fake: FakeInstance,
    snctl: PathBuf,
}

impl World {
    fn start(tune: impl FnOnce(&mut snctld::Config)) -> World {
        let fake = fake();
        let dir = public_dir();
        let mut config = test_config(dir.path());
        config.socket_mode = 0o666;
        tune(&mut config);
        let daemon = TestDaemon::start(config).unwrap();
        let snctl = public_snctl(dir.path());
        World {
            daemon,
            _dir: dir,
            fake,
            snctl,
        }
    }

    fn socket(&self) -> &Path {
        self.daemon.socket()
    }

    /// Adds `name` (client credentials, the fake's client) as root.
    fn add(&self, name: &str, readers: Readers) {
        let mut request = add_request(name, &self.fake.url());
        request.readers = readers;
        self.daemon.client().add(request).unwrap();
    }

    /// `snctl ARGS` as `caller`.
    fn snctl(&self, caller: &Caller, args: &[&str], stdin: Option<&str>) -> Ran {
        run_snctl(&self.snctl, self.socket(), caller, args, stdin)
    }

    /// Asserts that `ran` printed a token the instance accepts.
    fn assert_valid_token(&self, ran: &Ran) {
        let token = ran.ok().trim_end();
        assert!(
            self.fake.is_access_token_valid(token),
            "not a token of the instance: {ran:#?}"
        );
    }
}

fn users(ids: &[&str]) -> Readers {
    Readers {
        users: ids.iter().map(|s| s.to_string()).collect(),
        ..Readers::default()
    }
}

/// What the instance has been asked, to show that refused requests never
/// reached it.
fn upstream_calls(fake: &FakeInstance) -> [u64; 4] {
    [
        fake.token_requests(),
        fake.revoke_requests(),
        fake.table_requests(),
        fake.authorize_requests(),
    ]
}

#[test]
fn another_uid_needs_the_socket_mode_and_then_is_refused_admin_requests() {
    if !can_switch_users("another_uid_needs_the_socket_mode_and_then_is_refused_admin_requests") {
        return;
    }
    const USER: &str = "abel.tuter";
    const PASSWORD: &str = "password-canary-Ac5";
    let world = World::start(|c| c.socket_mode = 0o600);
    let url = world.fake.url();
    world.add("prod", Readers::default());
    world.fake.add_user(USER, PASSWORD);
    let out = add_by_password(world.socket(), &url, "desk", Some(USER), PASSWORD, &[]);
    assert!(out.status.success(), "{out:?}");
    let stranger = Caller::user(4001);

    // 0600: the kernel refuses the connection; the daemon never hears of it.
    let ran = world.snctl(&stranger, &["token", "prod"], None);
    assert_eq!(ran.code, Some(3), "{ran:#?}");
    assert!(
        ran.stderr.contains(&format!(
            "no permission to open {}",
            world.socket().display()
        )),
        "{ran:#?}"
    );

    // 0666: it gets through, and the daemon refuses every admin request,
    // saying who the admins are and who asked.
    set_mode(world.socket(), 0o666);
    let mut root = world.daemon.client();
    let before = root.list().unwrap();
    let calls = upstream_calls(&world.fake);
    let secret = format!("{CLIENT_SECRET}\n");
    let password = format!("{PASSWORD}\n");
    let attempts: [(&[&str], Option<&str>, &str); 7] = [
        (
            &[
                "add",
                "mine",
                "--instance",
                url.as_str(),
                "--client-id",
                CLIENT_ID,
                "--client-secret-stdin",
            ],
            Some(&secret),
            "add",
        ),
        (&["update", "prod", "--allow-user", "4001"], None, "update"),
        (
            &["update", "prod", "--scope", "useraccount"],
            None,
            "update",
        ),
        (&["remove", "prod"], None, "remove"),
        (&["refresh", "prod"], None, "refresh"),
        (&["doctor", "prod"], None, "doctor"),
        (
            &["login", "desk", "--password-stdin"],
            Some(&password),
            "login",
        ),
    ];
    for (args, stdin, what) in attempts {
        let ran = world.snctl(&stranger, args, stdin);
        ran.refused(&format!("forbidden: {what} is for admins: root"));
        ran.refused(&format!("; uid 4001, pid {} is none of them", ran.pid));
        ran.refused(": ask an admin to do it");
    }

    // Nothing changed, and the instance was not asked anything.
    assert_eq!(root.list().unwrap(), before);
    assert_eq!(upstream_calls(&world.fake), calls);

    // The same caller may read what has no readers set, and see it listed.
    world.assert_valid_token(&world.snctl(&stranger, &["token", "prod"], None));
    let names = world.snctl(&stranger, &["list", "--json"], None).names();
    assert_eq!(names, ["desk", "prod"]);
}

#[test]
fn readers_by_uid_get_tokens_and_others_neither_get_nor_see_them() {
    if !can_switch_users("readers_by_uid_get_tokens_and_others_neither_get_nor_see_them") {
        return;
    }
    let world = World::start(|_| {});
    world.add("prod", users(&["4001"]));
    world.add("open", Readers::default());
    let reader = Caller::user(4001);
    let other = Caller::user(4002);

    world.assert_valid_token(&world.snctl(&reader, &["token", "prod"], None));
    let shown = world.snctl(&reader, &["show", "prod"], None);
    assert!(shown.ok().contains("readers:       users 4001; and admins"));
    assert_eq!(
        world.snctl(&reader, &["list", "--json"], None).names(),
        ["open", "prod"]
    );

    let ran = world.snctl(&other, &["token", "prod"], None);
    ran.refused(&format!(
        "forbidden: uid 4002, pid {} is not one of prod's readers: ask an admin to add you",
        ran.pid
    ));
    // Who the readers are is for admins to know, not for whoever is refused.
    assert!(!ran.stderr.contains("users 4001"), "{ran:#?}");
    assert!(ran.stdout.is_empty(), "{ran:#?}");
    let shown = world.snctl(&other, &["show", "prod"], None);
    shown.refused("is not one of prod's readers");
    assert!(!shown.stderr.contains("users 4001"), "{shown:#?}");
    let admin = world.snctl(&Caller::user(0), &["show", "prod"], None);
    assert!(
        admin.ok().contains("readers:       users 4001; and admins"),
        "{admin:#?}"
    );
    assert_eq!(
        world.snctl(&other, &["list", "--json"], None).names(),
        ["open"]
    );
    world.assert_valid_token(&world.snctl(&other, &["token", "open"], None));

    // Root is an admin and reads everything.
    world.assert_valid_token(&world.snctl(&Caller::user(0), &["token", "prod"], None));
}

/// `GET /metrics` on the Unix socket `socket`, as `caller`: the body.
fn metrics_over_http(socket: &Path, caller: &Caller) -> String {
    const GET: &str = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        s.sendall(b'GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n')\n\
        answer = b''\n\
        while chunk := s.recv(65536):\n    answer += chunk\n\
        sys.stdout.write(answer.decode())\n";
    let mut command = Command::new("python3");
    command.args(["-c", GET]).arg(socket).current_dir("/");
    caller.apply(&mut command);
    let out = command.output().expect("python3 runs");
    assert!(out.status.success(), "{out:?}");
    let answer = String::from_utf8(out.stdout).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

#[test]
fn metrics_show_each_caller_only_what_it_may_read() {
    if !can_switch_users("metrics_show_each_caller_only_what_it_may_read") {
        return;
    }
    let world = World::start(|c| {
        let path = c.socket.with_file_name("metrics.sock");
        c.metrics.listen = Some(snctld::config::MetricsListen::Unix(path));
    });
    world.add("prod", users(&["4001"]));
    world.add("open", Readers::default());
    let metrics_socket = world.socket().with_file_name("metrics.sock");
    let shown = |text: &str| -> Vec<&str> {
        ["open", "prod"]
            .into_iter()
            .filter(|name| text.contains(&format!("snctl_auth_state{{name=\"{name}\"")))
            .collect()
    };
    for (caller, sees) in [
        (Caller::user(4001), &["open", "prod"][..]),
        (Caller::user(4002), &["open"][..]),
        (Caller::user(0), &["open", "prod"][..]),
    ] {
        let ran = world.snctl(&caller, &["metrics"], None);
        assert_eq!(shown(ran.ok()), sees, "{caller:?}: {ran:#?}");
        // The daemon's own metrics are everyone's.
        assert!(ran.ok().contains("snctl_build_info{"), "{ran:#?}");
        let served = metrics_over_http(&metrics_socket, &caller);
        assert_eq!(shown(&served), sees, "{caller:?} over /metrics: {served}");
    }
}

#[test]
fn readers_by_group_count_supplementary_and_primary_groups() {
    if !can_switch_users("readers_by_group_count_supplementary_and_primary_groups") {
        return;
    }
    let world = World::start(|_| {});
    world.add(
        "prod",
        Readers {
            groups: vec!["5001".into()],
            ..Readers::default()
        },
    );

    let member = Caller::user(4003).with_groups(&[5002, 5001]);
    world.assert_valid_token(&world.snctl(&member, &["token", "prod"], None));
    let by_primary = Caller::user(4003).with_gid(5001);
    world.assert_valid_token(&world.snctl(&by_primary, &["token", "prod"], None));

    let outsider = Caller::user(4003).with_groups(&[5002]);
    let ran = world.snctl(&outsider, &["token", "prod"], None);
    ran.refused(&format!(
        "forbidden: uid 4003, pid {} is not one of prod's readers",
        ran.pid
    ));
}

#[test]
fn the_admin_group_may_add_and_list_everything_and_no_one_else() {
    if !can_switch_users("the_admin_group_may_add_and_list_everything_and_no_one_else") {
        return;
    }
    let world = World::start(|c| c.access.admin_group = Some("5100".into()));
    world.add("prod", users(&["4001"]));
    let url = world.fake.url();
    let add = |name: &'static str| {
        [
            "add",
            name,
            "--instance",
            url.as_str(),
            "--client-id",
            CLIENT_ID,
            "--client-secret-stdin",
        ]
    };
    let secret = format!("{CLIENT_SECRET}\n");

    let admin = Caller::user(4004).with_groups(&[5100]);
    let ran = world.snctl(&admin, &add("second"), Some(&secret));
    assert!(ran.ok().starts_with("added second:"), "{ran:#?}");
    assert_eq!(
        world.snctl(&admin, &["list", "--json"], None).names(),
        ["prod", "second"]
    );
    world.assert_valid_token(&world.snctl(&admin, &["token", "prod"], None));

    let plain = Caller::user(4004);
    let ran = world.snctl(&plain, &add("third"), Some(&secret));
    ran.refused("forbidden: add is for admins: root");
    ran.refused(&format!(
        " and members of group 5100; uid 4004, pid {} is none of them",
        ran.pid
    ));
    ran.refused(": ask an admin to do it, or to add you to group 5100");
    assert_eq!(
        world.snctl(&plain, &["list", "--json"], None).names(),
        ["second"]
    );
    world
        .snctl(&plain, &["token", "prod"], None)
        .refused("is not one of prod's readers");

    let names = world.daemon.names();
    assert_eq!(names, ["prod", "second"]);
}

/// Directories made in the cgroup v2 hierarchy, removed (deepest first,
/// once their processes are gone) on drop.
struct Cgroups {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl Cgroups {
    /// Finds the cgroup v2 hierarchy, or says why there is none.
    fn new() -> Result<Cgroups, String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")
            .map_err(|e| format!("cannot read /proc/self/mounts: {e}"))?;
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == "cgroup2")
            .map(|f| PathBuf::from(f[1]))
            .ok_or("no cgroup v2 hierarchy is mounted")?;
        Ok(Cgroups {
            root,
            made: Vec::new(),
        })
    }

    /// Makes `path` (relative to the hierarchy's root) and checks that a
    /// process moved in shows it on the `0::` line of `/proc/PID/cgroup`,
    /// where the daemon reads the unit from; or says why it cannot.
    fn make(&mut self, path: &str) -> Result<PathBuf, String> {
        let dir = self.root.join(path);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot create the cgroup {}: {e}", dir.display()))?;
        self.made.push(dir.clone());
        let mut probe = Command::new("cat");
        probe.arg("/proc/self/cgroup");
        Caller::user(0).in_cgroup(&dir).apply(&mut probe);
        let out = probe
            .output()
            .map_err(|e| format!("cannot run a process in {}: {e}", dir.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("0::"));
        if !line.is_some_and(|l| l.ends_with(&format!("/{path}"))) {
            return Err(format!(
                "a process in {} shows {line:?} as its cgroup v2 path",
                dir.display()
            ));
        }
        Ok(dir)
    }

    /// Makes `path` and hands it to `uid`, as systemd does for a unit with
    /// `Delegate=yes` (every user's `user@UID.service`).
    fn make_delegated(&mut self, path: &str, uid: u32) -> Result<PathBuf, String> {
        let dir = self.make(path)?;
        for file in [
            "",
            "cgroup.procs",
            "cgroup.threads",
            "cgroup.subtree_control",
        ] {
            std::os::unix::fs::chown(dir.join(file), Some(uid), None)
                .map_err(|e| format!("cannot delegate {}: {e}", dir.display()))?;
        }
        Ok(dir)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // The kernel lets a cgroup go once its last process has exited.
            let removed = wait_until(Duration::from_secs(10), || match std::fs::remove_dir(dir) {
                Ok(()) => true,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            });
            if !removed {
                eprintln!("could not remove the cgroup {}", dir.display());
            }
        }
    }
}

#[test]
fn readers_by_unit_are_told_by_the_callers_cgroup() {
    let test = "readers_by_unit_are_told_by_the_callers_cgroup";
    if !can_switch_users(test) {
        return;
    }
    let tag: u32 = rand::random();
    let unit = format!("snctl-test-{tag:08x}.service");
    let other_unit = format!("snctl-test-{tag:08x}-other.service");
    let made = Cgroups::new().and_then(|mut cgroups| {
        let inside = cgroups.make(&unit)?;
        let elsewhere = cgroups.make(&other_unit)?;
        Ok((cgroups, inside, elsewhere))
    });
    let (_cgroups, inside, elsewhere) = match made {
        Ok(made) => made,
        Err(why) => {
            eprintln!("skipped: {test} needs cgroups to run processes in: {why}");
            return;
        }
    };
    let world = World::start(|_| {});
    world.add(
        "prod",
        Readers {
            units: vec![unit.clone()],
            ..Readers::default()
        },
    );

    let in_unit = Caller::user(4005).in_cgroup(&inside);
    world.assert_valid_token(&world.snctl(&in_unit, &["token", "prod"], None));

    // The same uid in another unit, and outside any of ours.
    let in_other = Caller::user(4005).in_cgroup(&elsewhere);
    let ran = world.snctl(&in_other, &["token", "prod"], None);
    ran.refused(&format!(
        "forbidden: uid 4005, pid {}, unit {other_unit} is not one of prod's readers",
        ran.pid
    ));
    world
        .snctl(&Caller::user(4005), &["token", "prod"], None)
        .refused("is not one of prod's readers");
}

#[test]
fn every_token_handed_out_is_logged_without_the_token() {
    if !can_switch_users("every_token_handed_out_is_logged_without_the_token") {
        return;
    }
    let fake = fake();
    let dir = public_dir();
    // An empty configuration file: the host's /etc/snctld/snctld.toml, if
    // any, stays out of it.
    let config = dir.path().join("snctld.toml");
    std::fs::write(&config, "").unwrap();
    let config = config.to_str().unwrap();
    let process =
        DaemonProcess::start_with_log_filter(dir.path(), &["--config", config], "info").unwrap();
    // snctld's own socket mode is 0600 (user mode): open it to the callers.
    set_mode(&process.socket, 0o666);
    let mut request = add_request("prod", &fake.url());
    request.readers = users(&["4006"]);
    snctl::Client::connect(&process.socket)
        .unwrap()
        .add(request)
        .unwrap();
    let snctl = public_snctl(dir.path());

    let ran = run_snctl(
        &snctl,
        &process.socket,
        &Caller::user(4006),
        &["token", "prod"],
        None,
    );
    let token = ran.ok().trim_end().to_string();
    assert!(fake.is_access_token_valid(&token), "{ran:#?}");
    let refused = run_snctl(
        &snctl,
        &process.socket,
        &Caller::user(4007),
        &["token", "prod"],
        None,
    );
    refused.refused("is not one of prod's readers");

    let audited = |log: &str| {
        log.lines()
            .find(|l| l.contains("token handed out"))
            .map(str::to_string)
    };
    let refusal = format!("uid 4007, pid {}", refused.pid);
    let refusal_logged = |log: &str| {
        log.lines()
            .any(|l| l.contains("refused") && l.contains(&refusal))
    };
    // The log is written by a thread of its own: wait for it to catch up.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = process.log_text();
            audited(&log).is_some() && refusal_logged(&log)
        }),
        "no audit line or no refusal in {}",
        process.log_text()
    );
    let log = process.log_text();
    let line = audited(&log).unwrap();
    assert!(line.contains("INFO"), "{line}");
    for field in [
        "name=prod".to_string(),
        "uid=4006".to_string(),
        format!("pid={} ", ran.pid),
        "valid_secs=".to_string(),
    ] {
        assert!(line.contains(&field), "{field} missing from {line}");
    }
    // A caller outside any unit has no unit field; values read as values.
    for noise in ["Some(", "None"] {
        assert!(!line.contains(noise), "{noise} in {line}");
    }
    assert_eq!(
        log.matches("token handed out").count(),
        1,
        "one token was handed out: {log}"
    );
    // The refusal is logged too, with the caller.
    assert!(refusal_logged(&log), "{log}");
    for issued in fake.issued_access_tokens() {
        assert!(!log.contains(&issued), "a token is in the log: {log}");
    }
    assert!(!log.contains(&token));
    assert!(!log.contains(CLIENT_SECRET));
}

/// Every user may make cgroups of any name below their own
/// `user@UID.service`, which systemd delegates to them (`systemd-run --user
/// --unit=NAME.service`): a unit named there must not pass for the system
/// unit of that name.
#[test]
fn a_unit_named_inside_a_users_delegated_cgroup_is_not_that_unit() {
    let test = "a_unit_named_inside_a_users_delegated_cgroup_is_not_that_unit";
    if !can_switch_users(test) {
        return;
    }
    let tag: u32 = rand::random();
    let unit = format!("snctl-test-{tag:08x}.service");
    // systemd's layout of a user's own units, under a slice of the test's.
    let manager = format!("snctl-test-{tag:08x}.slice/user-4009.slice/user@4009.service");
    let made = Cgroups::new().and_then(|mut cgroups| {
        cgroups.make(&format!("snctl-test-{tag:08x}.slice"))?;
        cgroups.make(&format!("snctl-test-{tag:08x}.slice/user-4009.slice"))?;
        let home = cgroups.make_delegated(&manager, 4009)?;
        cgroups.make_delegated(&format!("{manager}/app.slice"), 4009)?;
        let own = cgroups.make_delegated(&format!("{manager}/app.slice/{unit}"), 4009)?;
        Ok((cgroups, home, own))
    });
    let (_cgroups, home, own) = match made {
        Ok(made) => made,
        Err(why) => {
            eprintln!("skipped: {test} needs cgroups to run processes in: {why}");
            return;
        }
    };
    let world = World::start(|_| {});
    world.add(
        "prod",
        Readers {
            units: vec![unit.clone()],
            ..Readers::default()
        },
    );

    // The user moves itself, unprivileged, into the cgroup it named.
    let impostor = Caller::user(4009).in_cgroup(&home).then_moving_to(&own);
    world
        .snctl(&impostor, &["token", "prod"], None)
        .refused("is not one of prod's readers");
}

/// `main` sets the umask to 077 before binding, and the kernel masks the
/// socket's mode with it: the system daemon's socket must still come out
/// `socket_mode` 0660, or its group cannot connect.
#[test]
fn the_system_daemons_socket_is_open_to_the_socket_group() {
    if !can_switch_users("the_system_daemons_socket_is_open_to_the_socket_group") {
        return;
    }
    let dir = public_dir();
    let config = dir.path().join("snctld.toml");
    std::fs::write(&config, "[access]\nsocket_group = \"root\"\n").unwrap();
    let process =
        DaemonProcess::start(dir.path(), &["--config", config.to_str().unwrap()]).unwrap();
    let snctl = public_snctl(dir.path());

    let member = Caller::user(4010).with_groups(&[0]);
    let ran = run_snctl(&snctl, &process.socket, &member, &["status"], None);
    let mode = std::fs::metadata(&process.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        format!("{:o}", mode & 0o777),
        "660",
        "the socket's mode; {ran:#?}"
    );
    assert!(ran.ok().contains("authentications: 0"), "{ran:#?}");
}

/// Opens `count` connections as `caller`, says hello on each, and holds
/// them until its stdin closes; prints how many the daemon answered.
const FLOOD: &str = r#"
import socket, sys
path, count, hello = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
held, answered = [], 0
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(hello)
        if len(s.recv(4)) == 4:
            answered += 1
    except OSError:
        pass
    held.append(s)
print(answered, flush=True)
sys.stdin.read()
"#;

#[test]
fn one_user_flooding_the_socket_locks_out_neither_others_nor_admins() {
    if !can_switch_users("one_user_flooding_the_socket_locks_out_neither_others_nor_admins") {
        return;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: python3 is needed to hold many connections as another uid");
        return;
    }
    let world = World::start(|config| {
        config.limits.max_connections = 8;
        config.limits.max_per_uid = 4;
    });
    world.add("prod", Readers::default());
    let hello = snctl_shared::frame::encode(
        &snctl_shared::protocol::Hello {
            protocol_version: snctl::PROTOCOL_VERSION,
            client_version: "flood".into(),
        },
        snctl_shared::frame::MAX_REQUEST_FRAME,
    )
    .unwrap();
    let hex: String = hello.iter().map(|b| format!("{b:02x}")).collect();
    let mut command = Command::new("python3");
    command
        .args(["-c", FLOOD])
        .arg(world.socket())
        .args(["30", &hex])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Caller::user(4001).apply(&mut command);
    let mut flood = match command.spawn() {
        Ok(flood) => flood,
        Err(e) => {
            eprintln!("skipped: python3 does not run as uid 4001 here ({e})");
            return;
        }
    };
    let mut answered = String::new();
    BufReader::new(flood.stdout.take().unwrap())
        .read_line(&mut answered)
        .unwrap();
    assert_eq!(
        answered.trim(),
        "4",
        "the flooding user holds only its own share"
    );

    // While it holds them: another user and root are served.
    world
        .snctl(&Caller::user(4002), &["token", "prod"], None)
        .ok();
    world.daemon.client().token("prod").unwrap();
    drop(flood.stdin.take());
    let _ = flood.wait();
}

/// The audit line is written once per connection and authentication: a
/// process asking again on its connection is the same caller, and a new
/// connection (another `snctl token`) is audited again.
#[test]
fn token_handouts_are_audited_once_per_connection_and_authentication() {
    let fake = snctl_tests::harness::fake();
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_with_log_filter(dir.path(), &[], "info").unwrap();
    let mut client = snctl::Client::connect(&daemon.socket).unwrap();
    client.add(add_request("prod", &fake.url())).unwrap();
    client.add(add_request("dev", &fake.url())).unwrap();
    for _ in 0..5 {
        client.token("prod").unwrap();
        client.token("dev").unwrap();
    }
    let mut other = snctl::Client::connect(&daemon.socket).unwrap();
    other.token("prod").unwrap();
    other.token("prod").unwrap();
    let audited = |name: &str| {
        daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("token handed out") && l.contains(&format!("name={name}")))
            .count()
    };
    assert!(wait_until(Duration::from_secs(10), || audited("prod") == 2
        && audited("dev") == 1));
    // And not more, once the log has caught up.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        (audited("prod"), audited("dev")),
        (2, 1),
        "{}",
        daemon.log_text()
    );
}
