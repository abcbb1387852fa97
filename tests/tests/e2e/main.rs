//! End-to-end tests: the daemon (in-process or the built binary), real Unix
//! sockets, a real SQLite file in a temp dir, and the fake ServiceNow
//! instance over real HTTP on loopback.

mod cli;
mod faults;
mod refresh;
mod socket;
mod storage;

use snctl::protocol::{AddRequest, ClientAuth, Grant};
use snctl::Secret;
use snctl_tests::harness::{CLIENT_ID, CLIENT_SECRET};

/// An add request for the fake's registered client.
pub fn add_request(name: &str, instance: &str) -> AddRequest {
    AddRequest {
        name: name.to_string(),
        instance_url: instance.to_string(),
        grant: Grant::ClientCredentials,
        client_id: CLIENT_ID.to_string(),
        client_secret: Secret::new(CLIENT_SECRET.to_string()),
        client_auth: ClientAuth::Form,
        scope: None,
    }
}
