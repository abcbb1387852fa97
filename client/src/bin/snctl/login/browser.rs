//! Opening the user's browser on the authorize URL, on a thread of its
//! own; a failure is reported to the wait, which then asks for a paste.

use std::sync::mpsc::Sender;
use std::thread;

use super::wait::Event;

/// Opens the browser on a thread of its own (a text browser runs until it
/// exits, and the listener must answer it meanwhile); reports a failure.
pub(super) fn spawn_browser(url: String, events: Sender<Event>) {
    thread::spawn(move || {
        if let Err(why) = open_browser(&url) {
            let _ = events.send(Event::BrowserFailed(why));
        }
    });
}

/// Opens `url` in the user's browser: `$BROWSER` first, then the desktop's.
pub(super) fn open_browser(url: &str) -> Result<(), String> {
    if headless() {
        return Err("no display: DISPLAY and WAYLAND_DISPLAY are unset".to_owned());
    }
    webbrowser::open(url).map_err(|e| e.to_string())
}

/// Whether this is a Linux or BSD host with no graphical session and no
/// `$BROWSER`: an opener like xdg-open would seem to succeed there while
/// showing nothing.
pub(super) fn headless() -> bool {
    let set = |name| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    cfg!(all(unix, not(target_os = "macos")))
        && !["BROWSER", "DISPLAY", "WAYLAND_DISPLAY", "WSL_DISTRO_NAME"]
            .into_iter()
            .any(set)
}
