//! The configuration file: any bytes, as UTF-8 text (invalid UTF-8 is
//! refused before parsing, by `std::fs::read_to_string`), read over the
//! defaults as `snctld` reads `snctld.toml`. Checks: no panic; an error is
//! one line that names the file and says what to do; an accepted file keeps
//! every range the documentation promises (`Config::broken_invariants`),
//! and reading it again over the result changes nothing.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use snctld::config::Config;

const FILE: &str = "/etc/snctld/snctld.toml";
const SECTIONS: &[&str] = &[
    "server", "refresh", "access", "master_key", "login", "http", "log", "proxy", "metrics",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut config = Config::under(Path::new("/nonexistent"));
    match config.apply_toml(text, Path::new(FILE)) {
        Ok(()) => {
            let broken = config.broken_invariants();
            assert!(broken.is_empty(), "{text:?} accepted, breaking {broken:?}");
            let once = format!("{config:?}");
            config.apply_toml(text, Path::new(FILE)).expect("accepted twice");
            assert_eq!(once, format!("{config:?}"), "reading it again changed it");
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.chars().any(char::is_control), "{message:?}");
            assert!(message.contains(FILE), "{message}");
            assert!(message.contains("snctld check-config"), "{message}");
            let names_where = message.contains(": line ")
                || SECTIONS.iter().any(|s| message.contains(&format!("{s}.")));
            assert!(names_where, "names neither the line nor the key: {message}");
        }
    }
});
