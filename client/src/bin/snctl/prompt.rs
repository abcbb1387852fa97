//! What the CLI reads and writes besides the socket: secrets and user
//! names from standard input or a no-echo prompt (never argv), and the
//! backup file written atomically.

use std::io::{BufRead, IsTerminal, Write};

use snctl::protocol::UserLogin;
use snctl::Secret;

use crate::cli::LoginArgs;
use crate::failure::{other, usage, Failure};

/// Writes `bytes` to `path` (mode 0600) through a synced temporary file in
/// the same directory, so that `path` is never half written; an existing
/// `path` is replaced only when `replace`.
pub fn write_new_file(path: &std::path::Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    write_file(path, bytes, replace, 0o600)
}

/// [`write_new_file`] with the file's `mode`.
pub fn write_file(
    path: &std::path::Path,
    bytes: &[u8],
    replace: bool,
    mode: u32,
) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have cut the mode.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if replace {
            std::fs::rename(&tmp, path)
        } else {
            // Fails when `path` appeared meanwhile: never overwritten.
            std::fs::hard_link(&tmp, path).and_then(|()| std::fs::remove_file(&tmp))
        }
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

/// Standard input read one line at a time, so that a script can pipe the
/// client secret and a password in one stream.
pub struct StdinLines;

impl StdinLines {
    pub fn next(&mut self, what: &str) -> Result<zeroize::Zeroizing<String>, Failure> {
        let mut line = zeroize::Zeroizing::new(String::new());
        let read = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| other(format!("cannot read the {what} from standard input: {e}")))?;
        if read == 0 {
            return Err(usage(format!(
                "standard input ended before the {what}: give one per line"
            )));
        }
        let trimmed = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(trimmed);
        Ok(line)
    }
}

/// A secret from standard input (for scripts) or a no-echo prompt; never argv.
pub fn read_secret(
    stdin: &mut StdinLines,
    from_stdin: bool,
    prompt: &str,
    what: &str,
) -> Result<Secret, Failure> {
    let secret = if from_stdin {
        stdin.next(what)?.to_string()
    } else {
        if !std::io::stdin().is_terminal() {
            return Err(usage(format!(
                "no terminal to prompt for the {what}: pipe it in with --{}-stdin",
                what.replace(' ', "-")
            )));
        }
        rpassword::prompt_password(prompt)
            .map_err(|e| other(format!("cannot read the {what}: {e}")))?
    };
    if secret.is_empty() {
        return Err(usage(format!("the {what} is empty")));
    }
    Ok(Secret::new(secret))
}

/// A new client secret, when asked for with `--client-secret-stdin` or
/// `--client-secret-prompt`.
pub fn new_client_secret(
    stdin: &mut StdinLines,
    name: &str,
    from_stdin: bool,
    prompt: bool,
) -> Result<Option<Secret>, Failure> {
    if !(from_stdin || prompt) {
        return Ok(None);
    }
    let prompt = format!("New client secret for {name}: ");
    read_secret(stdin, from_stdin, &prompt, "client secret").map(Some)
}

/// The user name (argument, prompt, or the one used last) and password.
pub fn read_user(
    stdin: &mut StdinLines,
    login: &LoginArgs,
    known: Option<&str>,
) -> Result<UserLogin, Failure> {
    let username = match (&login.username, known) {
        (Some(name), _) => name.trim().to_string(),
        (None, Some(name)) => name.to_string(),
        (None, None) if std::io::stdin().is_terminal() => {
            eprint!("ServiceNow user name: ");
            let mut name = String::new();
            std::io::stdin()
                .read_line(&mut name)
                .map_err(|e| other(format!("cannot read the user name: {e}")))?;
            name.trim().to_string()
        }
        (None, None) => return Err(usage("give the ServiceNow user with --username")),
    };
    if username.is_empty() {
        return Err(usage("the user name is empty: give --username"));
    }
    let password = read_secret(
        stdin,
        login.password_stdin,
        &format!("Password for {username}: "),
        "password",
    )?;
    Ok(UserLogin { username, password })
}
