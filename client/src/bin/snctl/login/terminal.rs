//! What the person sees on the terminal during a browser login: where to
//! log in, how to paste the redirect back from another machine, and the
//! "Waiting for the browser… 4m 32s left" spinner.

use std::time::Duration;

use indicatif::ProgressBar;

use super::Authorize;
use crate::output::human;

/// Tells the user a browser opens, and where to go if none does.
pub(super) fn announce_browser(request: &Authorize) {
    eprintln!("Opening a browser to log in…");
    eprintln!("If no browser opens, visit:");
    eprintln!("  {}", request.authorize_url);
}

/// Tells the user to log in from any browser and paste the redirect address.
pub(super) fn announce_no_browser(request: &Authorize, port: u16) {
    eprintln!("Open this address in a browser on any machine, log in and allow access:");
    eprintln!("  {}", request.authorize_url);
    paste_instructions(request, port);
}

/// How to bring the redirect back from a browser on another machine.
pub(super) fn paste_instructions(request: &Authorize, port: u16) {
    eprintln!(
        "The browser then goes to {}?…, which may fail to load on that machine:",
        request.redirect_uri
    );
    eprintln!(
        "copy the whole address from its address bar, paste it here and press Enter \
         (within {}).",
        human(request.timeout)
    );
    eprintln!(
        "(In a browser on this host, or with the port forwarded by \
         `ssh -L {port}:127.0.0.1:{port} HOST`, snctl gets the redirect by itself.)"
    );
}

/// The "Waiting for the browser… 4m 32s left" line on stderr, drawn only
/// on a terminal; cleared when dropped.
pub(super) struct Spinner(ProgressBar);

impl Spinner {
    /// A spinner that shows.
    pub(super) fn start() -> Spinner {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner(bar)
    }

    /// No spinner: while the user may be pasting, a redrawn line would
    /// clobber what they type.
    pub(super) fn none() -> Spinner {
        Spinner(ProgressBar::hidden())
    }

    /// Updates the time left.
    pub(super) fn show_left(&self, left: Duration) {
        self.0
            .set_message(format!("Waiting for the browser… {} left", human(left)));
    }

    /// Prints a line on stderr above the spinner.
    pub(super) fn say(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }

    /// Clears the spinner for good.
    pub(super) fn stop(&mut self) {
        self.0.finish_and_clear();
        self.0 = ProgressBar::hidden();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
