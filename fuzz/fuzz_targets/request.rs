//! One request payload: decoded as the daemon decodes it and, when it
//! decodes, put through the checks the daemon makes before anything has a
//! side effect that are reachable from outside the daemon crate:
//! authentication names (`snctl_shared::name::validate`), instance URLs
//! (`snctld::servicenow::normalize_instance_url`), readers
//! (`snctld::access::ReaderIds::resolve`). Each check must
//! not panic, and what it accepts must have the shape it promises.

#![no_main]

use libfuzzer_sys::fuzz_target;
use snctl_fuzz::check_request;
use snctl_shared::frame::{decode_request, encode, HEADER_LEN, MAX_REQUEST_FRAME};
use snctl_shared::name::{self, MAX_NAME_LEN};
use snctl_shared::protocol::{AddRequest, LoginProof, Readers, Request};
use snctld::access::ReaderIds;
use snctld::servicenow::normalize_instance_url;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode_request::<Request>(data) else {
        return;
    };
    check_request(&request);
    // The canonical encoding is never longer than what was read (bincode
    // also takes integers in a longer form than needed).
    let canonical = encode(&request, MAX_REQUEST_FRAME).unwrap();
    assert!(canonical.len() - HEADER_LEN <= data.len());

    match &request {
        Request::Token(r) => check_name(&r.name),
        Request::Show(r) | Request::Refresh(r) | Request::Doctor(r) => check_name(&r.name),
        Request::Remove(r) => check_name(&r.name),
        Request::Add(r) => check_add(r),
        Request::Update(r) => {
            check_name(&r.name);
            if let Some(url) = &r.instance_url {
                check_url(url);
            }
            if let Some(readers) = &r.readers {
                check_readers(readers);
            }
        }
        Request::StartLogin(r) => {
            check_name(&r.name);
            if let Some(add) = &r.add {
                check_add(add);
            }
        }
        Request::Login(r) => {
            check_name(&r.name);
            if let LoginProof::Password(user) = &r.proof {
                let _ = user.username.trim();
            }
        }
        Request::List | Request::Status | Request::Backup(_) => {}
    }
});

fn check_add(r: &AddRequest) {
    check_name(&r.name);
    check_url(&r.instance_url);
    check_readers(&r.readers);
}

/// An accepted name is 1 to 64 bytes of the documented alphabet.
fn check_name(name: &str) {
    if name::validate(name).is_ok() {
        assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN, "{name:?}");
        assert!(name.as_bytes()[0].is_ascii_alphanumeric(), "{name:?}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
            "{name:?}"
        );
    }
}

/// An accepted instance URL comes out as `scheme://host[:port]`, https or
/// loopback http, and normalising it again changes nothing.
fn check_url(input: &str) {
    let Ok(url) = normalize_instance_url(input) else {
        return;
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("{input:?} normalised to {url:?}: not https or http"));
    assert!(!rest.is_empty(), "{input:?} normalised to {url:?}: no host");
    assert!(
        !rest.contains(['/', '?', '#', '@']),
        "{input:?} normalised to {url:?}: more than a host and a port"
    );
    assert_eq!(
        normalize_instance_url(&url).as_deref(),
        Ok(url.as_str()),
        "normalising {input:?} twice changes it"
    );
}

/// Resolved readers are sorted, without duplicates, and units are systemd
/// unit names that cannot carry the stored list's separator or a path.
fn check_readers(readers: &Readers) {
    let Ok(ids) = ReaderIds::resolve(readers) else {
        return;
    };
    assert!(ids.users.windows(2).all(|w| w[0] < w[1]));
    assert!(ids.groups.windows(2).all(|w| w[0] < w[1]));
    assert!(ids.units.windows(2).all(|w| w[0] < w[1]));
    for unit in &ids.units {
        assert!(
            unit.ends_with(".service") || unit.ends_with(".scope"),
            "{unit:?}"
        );
        assert!(!unit.contains(['/', ',', ' ', '\n']), "{unit:?}");
    }
    assert_eq!(ids.is_empty(), readers.is_empty());
}
