//! What each command does: one function per command, each connecting to
//! the daemon, asking, and printing the answer (with [`crate::output`]).
//! `main` only dispatches to them.

mod check;
mod inspect;
mod login;
mod manage;
mod token;

use std::path::Path;

use snctl::Client;

use crate::failure::Failure;

pub use check::{check, unknown};
pub use inspect::{doctor, list, metrics, show, status};
pub use login::login;
pub use manage::{add, backup, refresh, remove, update};
pub use token::{exec, token};

/// A connection to the daemon at `--socket`, or where it is found the
/// usual way. Pipelined: the hello goes out with the first request.
fn connect(socket: Option<&Path>) -> Result<Client, Failure> {
    let path = snctl_shared::paths::client_socket(socket);
    Ok(Client::connect_pipelined(&path)?)
}
