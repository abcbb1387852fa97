//! Opening the user's browser on the authorize URL, on a thread of its
//! own; a failure is reported to the wait, which then asks for a paste.

use std::io;
use std::thread;

/// Why no browser opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum BrowserError {
    /// No graphical session and no `$BROWSER`.
    #[error("no display: DISPLAY and WAYLAND_DISPLAY are unset")]
    Headless,
    /// The opener failed.
    #[error("{0}")]
    Open(io::Error),
}

/// Opens the browser on a thread of its own (a text browser runs until it
/// exits, and the listener must answer it meanwhile); a failure goes to
/// `report`.
pub(super) fn spawn_browser<F>(url: String, report: F)
where
    F: FnOnce(BrowserError) + Send + 'static,
{
    thread::spawn(move || {
        if let Err(why) = open_browser(&url) {
            report(why);
        }
    });
}

/// Opens `url` in the user's browser: `$BROWSER` first, then the desktop's.
fn open_browser(url: &str) -> Result<(), BrowserError> {
    if headless() {
        return Err(BrowserError::Headless);
    }
    webbrowser::open(url).map_err(BrowserError::Open)
}

/// Whether this is a Linux or BSD host with no graphical session and no
/// `$BROWSER`: an opener like xdg-open would seem to succeed there while
/// showing nothing.
fn headless() -> bool {
    let set = |name| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    cfg!(all(unix, not(target_os = "macos")))
        && !["BROWSER", "DISPLAY", "WAYLAND_DISPLAY", "WSL_DISTRO_NAME"]
            .into_iter()
            .any(set)
}
