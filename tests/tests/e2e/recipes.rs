//! The README's recipes for the clients ServiceNow admins use, run as
//! written (the files under `contrib/recipes/`) against the fake instance:
//! pysnc with `snctl token`, Python's and Node's standard libraries through
//! the proxy socket, Ansible with what `snctl exec` provides.
//!
//! A client that is not installed here is skipped with the reason printed,
//! unless `SNCTL_TEST_REQUIRE_CLIENTS` is set (CI sets it, after installing
//! them), which makes that a failure. `SNCTL_TEST_PYTHON` names the Python
//! with pysnc and ansible-core (CI: a venv under target/); without it,
//! `target/pyenv/bin/python` when it exists, else `python3`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use snctl_tests::fake::FakeInstance;
use snctl_tests::harness::{bin, runtime, snctl, test_config, TestDaemon};
use snctl_tests::harness::{CLIENT_ID, CLIENT_SECRET};

use crate::{add_request, Prod};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn recipes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/recipes")
}

/// Whether `program args` runs and exits 0; else the skip (or, when CI
/// requires the clients, the failure) with `why`.
fn available(program: &Path, args: &[&str], why: &str) -> bool {
    let ran = Command::new(program).args(args).output();
    if ran.as_ref().is_ok_and(|out| out.status.success()) {
        return true;
    }
    let detail = match ran {
        Ok(out) => text(&out.stderr).lines().last().unwrap_or("").to_owned(),
        Err(e) => e.to_string(),
    };
    assert!(
        std::env::var_os("SNCTL_TEST_REQUIRE_CLIENTS").is_none(),
        "{why}: {} {args:?} failed ({detail}); .ci/run installs it",
        program.display()
    );
    eprintln!(
        "skipped: {why}: {} {args:?} failed ({detail})",
        program.display()
    );
    false
}

fn python() -> PathBuf {
    snctl_tests::harness::python()
}

/// PATH with the built `snctl` first, as a recipe's user has it installed.
fn path_with_snctl() -> OsString {
    let dir = bin("snctl").parent().unwrap().to_path_buf();
    let mut dirs = vec![dir];
    // The Python running a recipe brings its own tools (ansible-playbook).
    if let Some(py_dir) = python().parent().filter(|d| !d.as_os_str().is_empty()) {
        dirs.push(py_dir.to_path_buf());
    }
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

fn run(command: &mut Command) -> Output {
    let out = command.output().expect("the recipe runs");
    assert!(
        out.status.success(),
        "{command:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

#[test]
fn exec_sets_the_names_clients_read() {
    let prod = Prod::start();
    let out = snctl(prod.daemon.socket(), &["exec", "prod", "--", "env"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env = text(&out.stdout);
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in:\n{env}"))
            .to_owned()
    };
    let url = prod.fake.url();
    assert_eq!(var("SN_INSTANCE_URL"), url);
    // Ansible's servicenow.itsm: instance.host from SN_HOST, a URL with
    // its scheme; the access token from SN_ACCESS_TOKEN.
    assert_eq!(var("SN_HOST"), url);
    assert!(prod.fake.is_access_token_valid(&var("SN_ACCESS_TOKEN")));
}

/// pysnc refuses a plain-http instance, so this one is the HTTPS fake,
/// its CA given to snctld (`[http] ca_file`) and to requests.
#[test]
fn pysnc_reads_an_incident_with_snctl_token() {
    let python = python();
    if !available(&python, &["-c", "import pysnc"], "pysnc is not installed") {
        return;
    }
    let fake = runtime().block_on(FakeInstance::start_tls()).unwrap();
    fake.add_client(CLIENT_ID, CLIENT_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("instance-ca.pem");
    std::fs::write(&ca, fake.ca_pem().unwrap()).unwrap();
    let mut config = test_config(dir.path());
    config.http.ca_file = Some(ca.clone());
    let daemon = TestDaemon::start(config).unwrap();
    daemon
        .client()
        .add(add_request("prod", &fake.url()))
        .unwrap();

    let out = run(Command::new(&python)
        .arg(recipes().join("pysnc_incident.py"))
        .args(["prod", "INC0010001"])
        .env("PATH", path_with_snctl())
        .env("SNCTL_SOCKET", daemon.socket())
        .env("REQUESTS_CA_BUNDLE", &ca));
    assert_eq!(text(&out.stdout), "INC0010001 fake incident\n");
    let authorization = fake.last_table_authorization().unwrap();
    let token = authorization.strip_prefix("Bearer ").unwrap();
    assert!(fake.is_access_token_valid(token));
    assert_eq!(
        fake.tokens_issued(),
        1,
        "the daemon's token, not one of its own"
    );
}

/// SnctlAuth keeps the token while it lasts the margin, and asks snctl
/// again once it does not.
#[test]
fn snctl_auth_asks_again_for_a_token_about_to_expire() {
    let python = python();
    if !available(
        &python,
        &["-c", "import requests"],
        "requests is not installed",
    ) {
        return;
    }
    let prod = Prod::start();
    let script = "import subprocess, sys, time\n\
        sys.path.insert(0, sys.argv[1])\n\
        from snctl_auth import SnctlAuth\n\
        auth = SnctlAuth('prod')\n\
        first = auth.token()\n\
        subprocess.run(['snctl', 'refresh', 'prod'], check=True, stdout=subprocess.DEVNULL)\n\
        kept = auth.token()\n\
        auth._expires_at = time.time() + 30  # as if only 30 s were left\n\
        renewed = auth.token()\n\
        print(first == kept, renewed != first)\n";
    let out = run(Command::new(&python)
        .args(["-c", script])
        .arg(recipes())
        .env("PATH", path_with_snctl())
        .env("SNCTL_SOCKET", prod.daemon.socket()));
    assert_eq!(text(&out.stdout), "True True\n");
    let renewed = prod.fake.issued_access_tokens().pop().unwrap();
    assert!(prod.fake.is_access_token_valid(&renewed));
}

fn proxied() -> Prod {
    Prod::with(|_| {}, |config| config.proxy.names = vec!["prod".into()])
}

#[test]
fn python_standard_library_reads_an_incident_through_the_proxy_socket() {
    let python = python();
    if !available(&python, &["--version"], "no python3") {
        return;
    }
    let prod = proxied();
    let socket = prod.dir.path().join("proxy").join("prod.sock");
    let out = run(Command::new(&python)
        .arg(recipes().join("proxy_incident.py"))
        .arg(&socket)
        .arg("INC0010001"));
    assert_eq!(text(&out.stdout), "INC0010001 fake incident\n");
    assert_eq!(prod.fake.table_requests(), 1);
}

#[test]
fn python_requests_reads_an_incident_through_the_proxy_socket() {
    let python = python();
    if !available(
        &python,
        &["-c", "import requests"],
        "no requests for python",
    ) {
        return;
    }
    let prod = proxied();
    let socket = prod.dir.path().join("proxy").join("prod.sock");
    let out = run(Command::new(&python)
        .arg(recipes().join("requests_proxy.py"))
        .arg(&socket)
        .arg("INC0010001"));
    assert_eq!(text(&out.stdout), "INC0010001 fake incident\n");
    assert_eq!(prod.fake.table_requests(), 1);
    let sent = prod.fake.last_table_authorization().unwrap();
    assert!(
        sent.starts_with("Bearer "),
        "the proxy put the token on: {sent}"
    );
}

#[test]
fn node_reads_an_incident_through_the_proxy_socket() {
    if !available(Path::new("node"), &["--version"], "no node") {
        return;
    }
    let prod = proxied();
    let socket = prod.dir.path().join("proxy").join("prod.sock");
    let out = run(Command::new("node")
        .arg(recipes().join("proxy_incident.mjs"))
        .arg(&socket)
        .arg("INC0010001"));
    assert_eq!(text(&out.stdout), "INC0010001 fake incident\n");
    assert_eq!(prod.fake.table_requests(), 1);
}

/// ansible-playbook under `snctl exec`, reading SN_HOST and SN_ACCESS_TOKEN.
#[test]
fn ansible_reads_an_incident_with_what_snctl_exec_provides() {
    let python = python();
    let playbook = python.with_file_name("ansible-playbook");
    let ansible = if playbook.exists() {
        playbook
    } else {
        PathBuf::from("ansible-playbook")
    };
    if !available(&ansible, &["--version"], "ansible-core is not installed") {
        return;
    }
    let prod = Prod::start();
    let home = tempfile::tempdir().unwrap();
    let out = run(Command::new(bin("snctl"))
        .args(["exec", "prod", "--"])
        .arg(&ansible)
        .args(["-i", "localhost,"])
        .arg(recipes().join("ansible/incident_uri.yml"))
        .args(["-e", "number=INC0010001"])
        .arg("-e")
        .arg(format!("ansible_python_interpreter={}", python.display()))
        .env("SNCTL_SOCKET", prod.daemon.socket())
        .env("PATH", path_with_snctl())
        // Its own state and temp files, none of the user's configuration.
        .env("HOME", home.path())
        .env("ANSIBLE_LOCAL_TEMP", home.path().join("tmp"))
        .env("ANSIBLE_NOCOLOR", "1"));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("\"msg\": \"INC0010001 fake incident\""),
        "{stdout}"
    );
    let token = prod.fake.issued_access_tokens().pop().unwrap();
    assert!(
        !stdout.contains(&token),
        "the token stays out of the output"
    );
    assert_eq!(prod.fake.table_requests(), 1);
}
