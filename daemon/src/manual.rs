//! The man pages of the daemon, written by `snctld generate man DIR` for
//! packages: snctld(8) and one page per command from the command line's
//! own clap definitions (so they list exactly the options there are), and
//! snctld.toml(5), written by hand in `daemon/man/` from the README's
//! configuration section, which a test holds it to.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// snctld.toml(5), as installed.
pub const CONFIG_PAGE: &str = include_str!("../man/snctld.toml.5");

/// Writes snctld.8 and snctld-COMMAND.8 for every visible command of `cmd`
/// (snctld's command line) into `root`/man8, and snctld.toml.5 into
/// `root`/man5, creating them; returns the files written.
pub fn write(cmd: clap::Command, root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = root.join("man8");
    std::fs::create_dir_all(&dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let source = format!("snctld {}", env!("CARGO_PKG_VERSION"));
    let mut written = vec![];
    let pages = std::iter::once(cmd.clone()).chain(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .cloned()
            .collect::<Vec<_>>(),
    );
    for (i, page) in pages.enumerate() {
        let versioned = page.get_version().is_some();
        let man = Man::new(page)
            .section("8")
            .manual("snctl manual")
            .source(source.clone());
        let mut text = vec![];
        man.render_title(&mut text)?;
        man.render_name_section(&mut text)?;
        man.render_synopsis_section(&mut text)?;
        man.render_description_section(&mut text)?;
        man.render_options_section(&mut text)?;
        let see_also = if i == 0 {
            man.render_subcommands_section(&mut text)?;
            signals().to_writer(&mut text)?;
            "snctl(1), snctld.toml(5)"
        } else {
            "snctld(8)"
        };
        Roff::new()
            .control("SH", ["SEE ALSO"])
            .text([roman(see_also)])
            .to_writer(&mut text)?;
        if versioned {
            man.render_version_section(&mut text)?;
        }
        let path = dir.join(man.get_filename());
        std::fs::File::create(&path)?.write_all(&text)?;
        written.push(path);
    }
    let config = root.join("man5");
    std::fs::create_dir_all(&config)?;
    let config = config.join("snctld.toml.5");
    std::fs::write(&config, CONFIG_PAGE)?;
    written.push(config);
    Ok(written)
}

/// What the daemon does on each signal (README, "As a system service").
fn signals() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["SIGNALS"]);
    for (signal, does) in [
        ("SIGTERM, SIGINT", "Stop serving and exit."),
        (
            "SIGHUP",
            "Read the configuration again (systemctl reload snctld); see snctld.toml(5) for what applies at once.",
        ),
    ] {
        roff.control("TP", []).text([bold(signal)]).text([roman(does)]);
    }
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `[section]` and `key =` of the TOML blocks of the README's
    /// configuration and proxy sections.
    fn readme_settings() -> Vec<String> {
        let readme = include_str!("../../README.md");
        let mut settings = vec![];
        let mut in_toml = false;
        for line in readme.lines() {
            match line.trim() {
                "```toml" => in_toml = true,
                "```" => in_toml = false,
                text if in_toml => {
                    let text = text.split('#').next().unwrap_or("").trim();
                    if text.starts_with('[') {
                        settings.push(text.to_string());
                    } else if let Some((key, _)) = text.split_once('=') {
                        settings.push(key.trim().to_string());
                    }
                }
                _ => {}
            }
        }
        settings
    }

    #[test]
    fn the_configuration_page_describes_every_setting_the_readme_shows() {
        let settings = readme_settings();
        for must in [
            "[server]",
            "[proxy]",
            "tcp_port",
            "admin_group",
            "filter",
            "[metrics]",
            "listen",
        ] {
            assert!(settings.iter().any(|s| s == must), "README lost {must}");
        }
        for setting in settings {
            // roff escapes the minus sign; settings are headings (.SH) or
            // the bold terms (.B, .BR) of paragraphs.
            let roff = setting.replace('-', "\\-");
            assert!(
                CONFIG_PAGE.lines().any(|line| {
                    line.starts_with(".SH ") && line[4..] == roff
                        || line.starts_with(".B")
                            && line.split([' ', ',', '"']).any(|word| word == roff)
                }),
                "snctld.toml.5 does not describe {setting}"
            );
        }
    }
}
