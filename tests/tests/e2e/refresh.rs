//! Refreshing: ahead of expiry with no caller, and one upstream request
//! however many callers wait.

use std::sync::Barrier;
use std::time::Duration;

use snctl_tests::fake::Fault;
use snctl_tests::harness::{fake, snctl, wait_until, TestDaemon};

use crate::{add_request, Prod};

#[test]
fn tokens_are_refreshed_ahead_of_expiry_with_no_caller() {
    let Prod {
        dir: _dir,
        fake,
        daemon,
    } = Prod::with(|f| f.set_access_lifetime(2), |_| {});
    let first = daemon.client().show("prod").unwrap();
    assert_eq!(fake.tokens_issued(), 1);
    // Nobody asks; the scheduler refreshes at ~75 % of each 2 s lifetime.
    assert!(
        wait_until(Duration::from_secs(15), || fake.tokens_issued() >= 3),
        "proactive refreshes seen: {}",
        fake.tokens_issued() - 1
    );
    let token = daemon.client().token_with("prod", Duration::ZERO).unwrap();
    assert!(fake.is_access_token_valid(token.access_token.expose()));
    let now = daemon.client().show("prod").unwrap();
    assert!(now.last_refresh_at >= first.last_refresh_at);
    assert!(now.next_refresh_at.is_some());
}

#[test]
fn five_hundred_callers_on_an_expired_token_cause_one_upstream_request() {
    let fake = fake();
    fake.set_access_lifetime(1);
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::in_dir(dir.path());
    daemon
        .client()
        .add(add_request("prod", &fake.url()))
        .unwrap();
    drop(daemon);
    // The stored token expires while the daemon is down.
    std::thread::sleep(Duration::from_millis(1200));
    fake.set_access_lifetime(1800);
    // A slow answer keeps every caller waiting on the same refresh.
    fake.push_fault(Fault::Delay(Duration::from_millis(800)));
    let before = fake.token_requests();

    let daemon = TestDaemon::in_dir(dir.path());
    let callers = 500;
    let barrier = Barrier::new(callers);
    let tokens: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                s.spawn(|| {
                    let mut client = daemon.client();
                    barrier.wait();
                    client
                        .token("prod")
                        .expect("token")
                        .access_token
                        .expose()
                        .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let upstream = fake.token_requests() - before;
    println!(
        "{callers} concurrent callers on an expired token: {upstream} upstream token request(s)"
    );
    assert_eq!(upstream, 1);
    assert!(tokens.iter().all(|t| t == &tokens[0]));
    assert!(fake.is_access_token_valid(&tokens[0]));
}

#[test]
fn min_valid_forces_a_refresh_and_impossible_asks_are_refused() {
    let Prod {
        dir: _dir,
        fake,
        daemon,
    } = Prod::with(|f| f.set_access_lifetime(10), |_| {});
    let mut client = daemon.client();
    std::thread::sleep(Duration::from_millis(1100));
    // Under 9 s left is less than asked: refresh first.
    let token = client.token_with("prod", Duration::from_secs(9)).unwrap();
    assert_eq!(fake.tokens_issued(), 2);
    assert!(fake.is_access_token_valid(token.access_token.expose()));
    // A token can never be valid for longer than its lifetime.
    let err = client
        .token_with("prod", Duration::from_secs(600))
        .unwrap_err();
    assert_eq!(err.kind().exit_code(), 2, "{err}");
    assert_eq!(fake.tokens_issued(), 2);
}

#[test]
fn asking_for_nearly_the_whole_lifetime_does_not_refresh_on_every_call() {
    let prod = Prod::with(|fake| fake.set_access_lifetime(20), |_| {});
    let mut client = prod.client();
    // Older than a tenth of its lifetime: the first ask refreshes.
    std::thread::sleep(Duration::from_millis(2100));
    let before = prod.fake.token_requests();
    let mut calls = 0;
    // Three seconds of asking: room for a refresh at the start and one when
    // that token is two seconds old, whatever the machine's load.
    let window = std::time::Instant::now();
    while window.elapsed() < Duration::from_secs(3) {
        let token = client.token_with("prod", Duration::from_secs(19)).unwrap();
        assert!(prod.fake.is_access_token_valid(token.access_token.expose()));
        calls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // At most one refresh per tenth of the lifetime, not one per call: in
    // between, the freshest token there is.
    let upstream = prod.fake.token_requests() - before;
    assert!((1..=2).contains(&upstream), "{upstream} upstream requests");
    assert!(calls > upstream, "{calls} calls");
}

#[test]
fn tokens_that_live_seconds_are_served_unless_the_caller_demands_more() {
    // The registry record allows any Access Token Lifespan, a few seconds
    // included: the defaults of `snctl token`, `snctl exec` and the
    // library must bend to it, and only an explicit minimum is refused.
    let Prod {
        dir: _dir,
        fake,
        daemon,
    } = Prod::with(|f| f.set_access_lifetime(3), |_| {});
    for _ in 0..3 {
        let out = snctl(daemon.socket(), &["token", "prod"], None);
        assert!(out.status.success(), "{out:?}");
        let token = String::from_utf8(out.stdout).unwrap();
        assert!(fake.is_access_token_valid(token.trim()), "{token}");
        let token = daemon.client().token("prod").unwrap();
        assert!(fake.is_access_token_valid(token.access_token.expose()));
        let exec = snctl(
            daemon.socket(),
            &[
                "exec",
                "prod",
                "--",
                "sh",
                "-c",
                "test -n \"$SN_ACCESS_TOKEN\"",
            ],
            None,
        );
        assert!(exec.status.success(), "{exec:?}");
        std::thread::sleep(Duration::from_millis(700));
    }
    let out = snctl(
        daemon.socket(),
        &["token", "prod", "--min-valid", "60"],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokens live 3 s"), "{stderr}");
    let err = daemon
        .client()
        .token_with("prod", Duration::from_secs(60))
        .unwrap_err();
    assert_eq!(err.kind().exit_code(), 2, "{err}");
}
