//! `snctl generate`: the man pages and shell completions, written from the
//! same clap definitions that parse the command line, so that they cannot
//! describe options the binary does not have. Packages run it at build
//! time; it is not listed in `--help` or the completions.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

use crate::cli::{Cli, EXAMPLES, EXIT_CODES};
use crate::failure::{other, Failure};

/// `snctl generate`, read on its own (see `main`).
#[derive(Parser, Debug)]
#[command(
    name = "snctl generate",
    about = "Write snctl's man pages or completions"
)]
pub struct Generate {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Write snctl.1 and snctl-COMMAND.1 for every command into DIR/man1.
    Man {
        /// The man page root, e.g. /usr/share/man (DIR/man1 is created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on standard output.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: Shell,
    },
}

/// Does what `generate` asks.
pub fn run(generate: Generate) -> Result<(), Failure> {
    match generate.what {
        What::Man { dir } => {
            let written = man_pages(&dir).map_err(|e| {
                other(format!(
                    "cannot write the man pages into {}: {e}: check that it is a writable directory",
                    dir.display()
                ))
            })?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(())
        }
        What::Completions { shell } => {
            // Into memory first: clap_complete panics on a failed write
            // (a closed pipe), and this says what happened instead.
            let mut script = vec![];
            completions(shell, &mut script);
            std::io::stdout()
                .write_all(&script)
                .map_err(|e| other(format!("cannot write the completions: {e}")))
        }
    }
}

/// Writes snctl.1 (every command, the exit status, an example) and one
/// page per command, as git does, into `root`/man1; returns the files
/// written.
pub fn man_pages(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = root.join("man1");
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = vec![];
    let main = dir.join("snctl.1");
    std::fs::write(&main, main_page(&cmd)?)?;
    written.push(main);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Built under snctl, a command's display name is snctl-NAME.
        let page = Man::new(sub.clone())
            .manual("snctl manual")
            .source(source());
        let mut text = vec![];
        page.render(&mut text)?;
        see_also(&["snctl(1)"]).to_writer(&mut text)?;
        let path = dir.join(page.get_filename());
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// snctl.1: clap_mangen's sections, then what a reader looks for in any
/// man page: the environment, the exit status, an example, related pages.
fn main_page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let man = Man::new(cmd.clone())
        .manual("snctl manual")
        .source(source());
    let mut text = vec![];
    man.render_title(&mut text)?;
    man.render_name_section(&mut text)?;
    man.render_synopsis_section(&mut text)?;
    man.render_description_section(&mut text)?;
    man.render_options_section(&mut text)?;
    man.render_subcommands_section(&mut text)?;
    let mut roff = Roff::new();
    roff.control("SH", ["ENVIRONMENT"])
        .control("TP", [])
        .text([bold("SNCTL_SOCKET")])
        .text([roman(
            "The daemon's socket when --socket is not given. Without either, \
             the user daemon's socket if it exists, else /run/snctld/snctld.sock.",
        )])
        .control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_CODES {
        roff.control("TP", [])
            .text([bold(code.to_string())])
            .text([roman(meaning)]);
    }
    roff.control("PP", [])
        .text([roman(
            "Errors are one line on standard error saying what happened and what to do.",
        )])
        .control("PP", [])
        .text([roman(
            "snctl exec exits with the command's own status once it runs: 126 when the \
             command cannot be run (not executable), 127 when it is not found, as a shell does.",
        )])
        .control("SH", ["EXAMPLES"])
        .text([roman(
            "Register a client (the secret is prompted for), then use a token:",
        )]);
    roff.control("PP", [])
        .control("RS", ["4"])
        .control("nf", []);
    for line in EXAMPLES {
        roff.text([roman(line)]);
    }
    roff.control("fi", []).control("RE", []);
    roff.to_writer(&mut text)?;
    see_also(&["snctld(8)", "snctld.toml(5)"]).to_writer(&mut text)?;
    man.render_version_section(&mut text)?;
    Ok(text)
}

/// A SEE ALSO section naming `pages`.
fn see_also(pages: &[&str]) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"])
        .text([roman(pages.join(", "))]);
    roff
}

fn source() -> String {
    format!("snctl {}", env!("CARGO_PKG_VERSION"))
}

/// The completion script of `shell` for every command and option; bash's,
/// zsh's and fish's also complete the names of authentications, asking
/// the daemon (`snctl list --names`).
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "snctl", &mut script);
    let script = String::from_utf8_lossy(&script);
    let commands = taking_names(&cmd);
    let script = match shell {
        Shell::Bash => format!("{script}{}", bash_names(&commands)),
        Shell::Zsh => zsh_names(&script, &commands),
        Shell::Fish => format!("{script}{}", fish_names(&commands)),
        _ => script.into_owned(),
    };
    let _ = out.write_all(script.as_bytes());
}

/// The commands whose first argument is the name of an existing
/// authentication: every command with a NAME but `add`.
fn taking_names(cmd: &clap::Command) -> Vec<&str> {
    cmd.get_subcommands()
        .filter(|sub| sub.get_name() != "add")
        .filter(|sub| sub.get_positionals().any(|arg| arg.get_id() == "name"))
        .map(|sub| sub.get_name())
        .collect()
}

/// Zsh: clap's script with the NAME of those commands completed by
/// `_snctl_auth_names` instead of file names (the socket is `--socket`
/// when typed before the command, else `SNCTL_SOCKET` or the default).
fn zsh_names(script: &str, commands: &[&str]) -> String {
    const NAME: &str = "':name -- ";
    let mut out = String::with_capacity(script.len() + 1024);
    let mut command = "";
    for line in script.lines() {
        let trimmed = line.trim();
        if let Some(label) = trimmed.strip_prefix('(').and_then(|l| l.strip_suffix(')')) {
            command = label;
        }
        if trimmed.starts_with(NAME) && commands.contains(&command) {
            out.push_str(&line.replace(":_default'", ":_snctl_auth_names'"));
        } else {
            if trimmed.starts_with("if [ \"$funcstack[1]\" = \"_snctl\" ]") {
                out.push_str(ZSH_NAMES);
            }
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

const ZSH_NAMES: &str = r#"(( $+functions[_snctl_auth_names] )) ||
_snctl_auth_names() {
    local -a names socket
    local i
    for (( i = 1; i < ${#words}; i++ )); do
        case $words[i] in
            --socket) socket=(--socket "$words[i+1]") ;;
            --socket=*) socket=(--socket "${words[i]#--socket=}") ;;
        esac
    done
    names=(${(f)"$(_call_program names snctl $socket list --names 2>/dev/null)"})
    _describe -t names 'authentication' names
}

"#;

/// Fish: after one of those commands, the names; the socket as for zsh.
fn fish_names(commands: &[&str]) -> String {
    format!(
        r#"
# Authentication names, from the daemon, right after the commands that take one.
function __fish_snctl_auth_names
    set -l words (commandline -opc)
    set -l at (contains -i -- --socket $words)
    if test -n "$at"
        snctl --socket $words[(math $at + 1)] list --names 2>/dev/null
    else
        snctl list --names 2>/dev/null
    end
end
function __fish_snctl_wants_name
    set -l words (commandline -opc)
    contains -- $words[-1] {commands}
end
complete -c snctl -n __fish_snctl_wants_name -f -a "(__fish_snctl_auth_names)"
"#,
        commands = commands.join(" ")
    )
}

/// Bash: where a command takes the name of an existing authentication,
/// the word right after it completes from `snctl list --names`, with the
/// `--socket` typed before the command; everything else is clap's
/// completion.
fn bash_names(commands: &[&str]) -> String {
    format!(
        r#"
# Authentication names, from the daemon, after the commands that take one.
_snctl_names() {{
    local i word socket="" command="" at=0 cur="${{COMP_WORDS[COMP_CWORD]}}"
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in
            --socket) socket="${{COMP_WORDS[i+1]}}"; i=$(( i + 1 )) ;;
            --socket=*) socket="${{word#--socket=}}" ;;
            -*) ;;
            *) if [[ -z $command ]]; then command="$word"; at=$i; fi ;;
        esac
    done
    if [[ $at -gt 0 && $COMP_CWORD -eq $(( at + 1 )) && $cur != -* ]]; then
        case "$command" in
            {commands})
                COMPREPLY=( $(compgen -W "$(snctl ${{socket:+--socket "$socket"}} list --names 2>/dev/null)" -- "$cur") )
                return 0
                ;;
        esac
    fi
    _snctl "$@"
}}

if [[ "${{BASH_VERSINFO[0]}}" -eq 4 && "${{BASH_VERSINFO[1]}}" -ge 4 || "${{BASH_VERSINFO[0]}}" -gt 4 ]]; then
    complete -F _snctl_names -o nosort -o bashdefault -o default snctl
else
    complete -F _snctl_names -o bashdefault -o default snctl
fi
"#,
        commands = commands.join("|")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commands snctl has, from its own definitions.
    fn commands() -> Vec<String> {
        Cli::command()
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect()
    }

    #[test]
    fn the_man_pages_name_every_command_and_the_exit_codes() {
        let root = tempfile::tempdir().unwrap();
        let written = man_pages(root.path()).unwrap();
        let dir = root.path().join("man1");
        let main = std::fs::read_to_string(dir.join("snctl.1")).unwrap();
        assert!(main.starts_with(".ie"), "not roff: {main:.200}");
        assert!(commands().len() >= 12);
        for command in commands() {
            assert!(
                main.contains(&format!("snctl\\-{command}(1)")),
                "{command} not in snctl.1"
            );
            let page = dir.join(format!("snctl-{command}.1"));
            assert!(written.contains(&page), "{} not written", page.display());
            let text = std::fs::read_to_string(&page).unwrap();
            assert!(
                text.contains(".SH OPTIONS"),
                "{command}: no options:\n{text}"
            );
        }
        assert!(main.contains(".SH \"EXIT STATUS\""), "{main}");
        for (code, meaning) in EXIT_CODES {
            assert!(
                main.contains(&format!("\\fB{code}\\fR\n{meaning}")),
                "{code} {meaning}"
            );
        }
        assert!(main.contains(".SH EXAMPLES"));
        assert!(main.contains("snctl token prod"));
        assert!(main.contains("SNCTL_SOCKET"));
        // Every option of a command is on its page, described.
        let update = std::fs::read_to_string(dir.join("snctl-update.1")).unwrap();
        assert!(update.contains("New client ID"), "{update}");
        // `generate` itself is not a command a user looks up.
        assert!(!dir.join("snctl-generate.1").exists());
    }

    #[test]
    fn completions_offer_every_command_in_bash_zsh_and_fish() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = vec![];
            completions(shell, &mut out);
            let script = String::from_utf8(out).unwrap();
            for command in commands() {
                assert!(script.contains(&command), "{shell}: no {command}");
            }
            assert!(script.contains("min-valid"), "{shell}: no option of token");
            assert!(!script.contains("generate"), "{shell} offers generate");
        }
    }
}
