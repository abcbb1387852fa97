//! Shared between `snctld` and its clients: the wire protocol, the frame
//! codec, authentication names, the secret wrapper and socket paths.
//!
//! This crate is deliberately small and synchronous: the client library
//! depends on it, and a program that asks for a token must not pull an async
//! runtime or an HTTP stack.

#![warn(missing_docs)]

pub mod frame;
#[cfg(feature = "jwt-key")]
pub mod jwtkey;
pub mod name;
pub mod paths;
pub mod protocol;
pub mod secret;
pub mod time;

pub use frame::FrameError;
pub use protocol::{Error, ErrorKind, Reply, Request, Response, PROTOCOL_VERSION};
pub use secret::Secret;
