//! The commands that change what the daemon holds: `add`, `update`,
//! `refresh`, `remove`, and `backup`, which copies it.

use std::path::Path;

use snctl::protocol::{AddRequest, AuthState, Grant, StartLoginRequest, UpdateRequest};

use super::connect;
use super::login::browser_login;
use crate::cli;
use crate::failure::{other, usage, Failure};
use crate::output::{
    print_login_deadline, print_login_user, print_proxy, print_verifier_help, time_or_dash,
};
use crate::prompt::{new_client_secret, read_secret, read_user, write_new_file, StdinLines};

/// A lifespan under a day is legal but usually a unit mix-up.
fn note_short_lifespan(secs: Option<u64>) {
    if let Some(secs) = secs.filter(|s| *s < 86_400) {
        eprintln!(
            "note: a refresh-token lifespan of {secs} s is unusually short; the record's Refresh \
             Token Lifespan is in seconds (ServiceNow's default 8640000 is 100 days)"
        );
    }
}

/// `snctl add`: checks the options against the grant, reads the secrets,
/// and has the daemon save the authentication once it has a token (for a
/// person, after the login).
pub fn add(socket: Option<&Path>, args: cli::Add) -> Result<(), Failure> {
    let cli::Add {
        name,
        instance,
        client_id,
        grant,
        scope,
        client_auth,
        client_secret_stdin,
        login,
        jwt,
        redirect_port,
        refresh_token_lifespan,
        readers,
        proxy,
    } = args;
    snctl_shared::name::validate(&name).map_err(usage)?;
    note_short_lifespan(refresh_token_lifespan);
    let grant = Grant::from(grant);
    login.check(grant)?;
    let key_path = jwt
        .jwt_key
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let jwt = jwt.settings(grant)?;
    if let Some((_, key)) = &jwt {
        print_verifier_help(key, &key_path);
    }
    let mut stdin = StdinLines;
    let secret = read_secret(
        &mut stdin,
        client_secret_stdin,
        &format!("Client secret for {name}: "),
        "client secret",
    )?;
    let mut request = AddRequest {
        name: name.clone(),
        instance_url: instance,
        grant,
        client_id,
        client_secret: secret,
        client_auth: client_auth.into(),
        scope,
        user: None,
        redirect_port,
        refresh_lifespan_secs: refresh_token_lifespan,
        readers: readers.readers(),
        jwt: jwt.map(|(settings, _)| settings),
        proxy,
    };
    let summary = match grant {
        Grant::ClientCredentials | Grant::JwtBearer => connect(socket)?.add(request)?,
        Grant::Password => {
            eprintln!(
                "note: the password grant is deprecated by the OAuth security BCP (RFC 9700); \
                 prefer authorization-code for people, client-credentials for services"
            );
            request.user = Some(read_user(&mut stdin, &login, None)?);
            connect(socket)?.add(request)?
        }
        Grant::AuthorizationCode => {
            let start = StartLoginRequest {
                name: name.clone(),
                add: Some(request),
                client_secret: None,
            };
            browser_login(socket, start, &login)?
        }
    };
    println!(
        "added {}: {} token valid until {}",
        summary.name,
        summary.grant.as_str(),
        time_or_dash(summary.access_expires_at)
    );
    print_login_user(&summary);
    print_login_deadline(&summary);
    match proxy {
        true => print_proxy(&summary),
        false => Ok(()),
    }
}

/// `snctl update`: the daemon changes the authentication once the new
/// settings have worked.
pub fn update(socket: Option<&Path>, args: cli::Update) -> Result<(), Failure> {
    let cli::Update {
        name,
        instance,
        client_id,
        client_secret_stdin,
        client_secret_prompt,
        client_auth,
        scope,
        redirect_port,
        refresh_token_lifespan,
        readers,
        allow_anyone,
        proxy,
    } = args;
    note_short_lifespan(refresh_token_lifespan);
    let readers = readers.readers();
    let readers = (allow_anyone || !readers.is_empty()).then_some(readers);
    let client_secret = new_client_secret(
        &mut StdinLines,
        &name,
        client_secret_stdin,
        client_secret_prompt,
    )?;
    let summary = connect(socket)?.update(UpdateRequest {
        name,
        instance_url: instance,
        client_id,
        client_secret,
        client_auth: client_auth.map(Into::into),
        scope,
        redirect_port,
        refresh_lifespan_secs: refresh_token_lifespan,
        readers,
        proxy: proxy.map(cli::Switch::is_on),
    })?;
    if summary.state == AuthState::NeedsLogin {
        println!(
            "updated {0}; it still needs a new login: run `snctl login {0}`",
            summary.name
        );
    } else {
        println!(
            "updated {}: token valid until {}",
            summary.name,
            time_or_dash(summary.access_expires_at)
        );
    }
    if let Some(uri) = summary
        .login
        .as_ref()
        .and_then(|l| l.redirect_uri.as_ref())
        .filter(|_| redirect_port.is_some())
    {
        println!("register this Redirect URL on the Application Registry record: {uri}");
    }
    print_login_deadline(&summary);
    match proxy {
        Some(_) => print_proxy(&summary),
        None => Ok(()),
    }
}

/// `snctl refresh`: a new access token now.
pub fn refresh(socket: Option<&Path>, args: cli::Refresh) -> Result<(), Failure> {
    let summary = connect(socket)?.refresh(&args.name)?;
    println!(
        "refreshed {}: token valid until {}",
        summary.name,
        time_or_dash(summary.access_expires_at)
    );
    Ok(())
}

/// `snctl remove`: revoked at the instance unless `--keep-upstream`, then
/// deleted; a failed revocation is reported, not fatal.
pub fn remove(socket: Option<&Path>, args: cli::Remove) -> Result<(), Failure> {
    let cli::Remove {
        name,
        keep_upstream,
    } = args;
    let reply = connect(socket)?.remove(&name, keep_upstream)?;
    match (&reply.revoke_error, keep_upstream) {
        (Some(error), _) => println!("removed {name}; revoking at the instance failed: {error}"),
        (None, true) => println!("removed {name}; its tokens were left valid at the instance"),
        (None, false) => println!(
            "removed {name}; {} token(s) revoked at the instance",
            reply.revoked
        ),
    }
    Ok(())
}

/// `snctl backup`: the daemon's database written to a new file (mode
/// 0600), and where the master key it needs is.
pub fn backup(socket: Option<&Path>, args: cli::Backup) -> Result<(), Failure> {
    let cli::Backup { file, force } = args;
    if !force && file.symlink_metadata().is_ok() {
        return Err(other(format!(
            "{} exists: give --force to replace it",
            file.display()
        )));
    }
    let backup = connect(socket)?.backup()?;
    write_new_file(&file, &backup.bytes, force)
        .map_err(|e| other(format!("cannot write {}: {e}", file.display())))?;
    println!(
        "wrote a backup of {} bytes to {}: sealed secrets only",
        backup.bytes.len(),
        file.display()
    );
    println!(
        "the master key is not in it: it is {} on snctld's host; keep a copy of that key apart from the backup (whoever has both can read every secret)",
        backup.key.display()
    );
    Ok(())
}
