//! Test support for snctl: a fake ServiceNow instance ([`fake`]) and
//! fixtures that run the daemon in-process or as the built binaries
//! ([`harness`]). Used by the end-to-end tests, the demo and benchmarks.

pub mod fake;
pub mod harness;
