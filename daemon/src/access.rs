//! Who may do what.
//!
//! The socket is the security boundary, and the kernel says who is on the
//! other end: `SO_PEERCRED` gives the caller's uid, gid and pid,
//! `SO_PEERGROUPS` its supplementary groups, both as they were when it
//! connected. Where the caller runs in a systemd unit, the unit's name comes
//! from its cgroup.
//!
//! Admin requests (add, update, remove, logins, refresh, doctor, listing
//! every authentication) are for root, the daemon's own user and members of
//! the admin group. A token is for the authentication's readers (users,
//! groups, units) and admins; with no readers set, for anyone who can open
//! the socket. Every refusal says which rule refused and what to do; a
//! refused reader is not told who the readers are (admins see them with
//! `snctl show`).

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid, User};
use serde::Deserialize;

use snctl_shared::protocol::Readers;
use snctl_shared::Error;

use crate::settings::{optional, Applies, Changes};

/// The process on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<u32>,
    /// Supplementary groups, primary group included.
    pub groups: Vec<u32>,
    /// The systemd unit the process runs in, e.g. `sync.service`.
    pub unit: Option<String>,
}

impl Peer {
    /// Reads the peer of a connected Unix socket.
    pub fn of(socket: &(impl AsFd + AsRawFd)) -> std::io::Result<Peer> {
        let cred = getsockopt(socket, PeerCredentials)?;
        let mut groups = peer_groups(socket.as_raw_fd()).unwrap_or_default();
        if !groups.contains(&cred.gid()) {
            groups.push(cred.gid());
        }
        let pid = u32::try_from(cred.pid()).ok().filter(|p| *p > 0);
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups,
            unit: pid.and_then(unit_of),
        })
    }
}

impl fmt::Display for Peer {
    /// "uid 1001 (bob), pid 4242, unit sync.service", for refusals and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.uid)?;
        if let Some(name) = user_name(self.uid) {
            write!(f, " ({name})")?;
        }
        if let Some(pid) = self.pid {
            write!(f, ", pid {pid}")?;
        }
        if let Some(unit) = &self.unit {
            write!(f, ", unit {unit}")?;
        }
        Ok(())
    }
}

/// `SO_PEERGROUPS` (Linux 4.13), which nix does not wrap.: the peer's supplementary groups at connect.
const SO_PEERGROUPS: libc::c_int = 59;

fn peer_groups(fd: RawFd) -> std::io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the buffer,
        // which is that large.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = std::io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` says how large to make it.
        if error.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(error);
    }
}

/// The systemd unit of process `pid`, from its cgroup path (cgroup v2's
/// `0::` line, else v1's `name=systemd` hierarchy).
fn unit_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| {
            text.lines()
                .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
        })?;
    unit_in(path)
}

/// The first `.service` or `.scope` component from the root: the unit
/// systemd itself placed the process in. Below it, a unit with
/// `Delegate=` (every user's `user@UID.service` among them) names cgroups
/// as it likes, so a deeper component proves nothing.
fn unit_in(cgroup: &str) -> Option<String> {
    cgroup
        .split('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_string)
}

fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// A group by name or number: its gid, or `None` when there is no group
/// of that name. A number is taken as it is, existing group or not. The
/// one place names of groups become ids (readers, the admin group, the
/// socket's group).
pub fn group_id(name: &str) -> Option<u32> {
    let name = name.trim();
    match name.parse::<u32>() {
        Ok(gid) => Some(gid),
        Err(_) => Group::from_name(name)
            .ok()
            .flatten()
            .map(|group| group.gid.as_raw()),
    }
}

fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

/// Readers as the daemon keeps them: numeric ids, so that a renamed user
/// stays a reader and a reused name does not become one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaderIds {
    pub users: Vec<u32>,
    pub groups: Vec<u32>,
    pub units: Vec<String>,
}

impl ReaderIds {
    /// Resolves names (or numbers) as given on the command line.
    pub fn resolve(readers: &Readers) -> Result<ReaderIds, Error> {
        let users = readers
            .users
            .iter()
            .map(|u| {
                let u = u.trim();
                match u.parse::<u32>() {
                    Ok(uid) => Ok(uid),
                    Err(_) => User::from_name(u)
                        .ok()
                        .flatten()
                        .map(|user| user.uid.as_raw())
                        .ok_or_else(|| Error::invalid(format!("no user named {u:?} on this host"))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let groups = readers
            .groups
            .iter()
            .map(|g| {
                group_id(g).ok_or_else(|| {
                    Error::invalid(format!("no group named {:?} on this host", g.trim()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let units = readers
            .units
            .iter()
            .map(|u| {
                let u = u.trim();
                // systemd's unit name characters only: no separator of
                // the stored list, no path.
                let valid = (u.ends_with(".service") || u.ends_with(".scope"))
                    && u.len() <= 255
                    && u.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ":_.\\@-".contains(c));
                if valid {
                    Ok(u.to_string())
                } else {
                    Err(Error::invalid(format!(
                        "{u:?} is not a unit name: give one like sync.service"
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids = ReaderIds {
            users,
            groups,
            units,
        };
        ids.users.sort_unstable();
        ids.users.dedup();
        ids.groups.sort_unstable();
        ids.groups.dedup();
        ids.units.sort();
        ids.units.dedup();
        Ok(ids)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty() && self.units.is_empty()
    }

    /// The readers by name, for admins to read (numbers where no name).
    pub fn names(&self) -> Readers {
        Readers {
            users: self
                .users
                .iter()
                .map(|u| user_name(*u).unwrap_or_else(|| u.to_string()))
                .collect(),
            groups: self
                .groups
                .iter()
                .map(|g| group_name(*g).unwrap_or_else(|| g.to_string()))
                .collect(),
            units: self.units.clone(),
        }
    }

    fn admits(&self, peer: &Peer) -> bool {
        self.is_empty()
            || self.users.contains(&peer.uid)
            || peer.groups.iter().any(|g| self.groups.contains(g))
            || peer.unit.as_ref().is_some_and(|u| self.units.contains(u))
    }
}

/// Who may do what, by group name (resolved when the daemon starts):
/// `[access]` in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessConfig {
    /// Members may run admin requests, besides root and the daemon's user.
    pub admin_group: Option<String>,
    /// Group that owns the socket file (system mode: `snctl`).
    pub socket_group: Option<String>,
}

/// `[access]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    admin_group: Option<String>,
    socket_group: Option<String>,
}

impl AccessConfig {
    /// The defaults of the system daemon.
    pub fn system() -> AccessConfig {
        AccessConfig {
            admin_group: Some("snctl-admin".into()),
            socket_group: Some("snctl".into()),
        }
    }

    /// Reads `[access]` over these settings; an empty name turns the
    /// default off.
    pub fn apply(&mut self, section: AccessSection) {
        let group = |name: String| Some(name).filter(|n| !n.trim().is_empty());
        if let Some(name) = section.admin_group {
            self.admin_group = group(name);
        }
        if let Some(name) = section.socket_group {
            self.socket_group = group(name);
        }
    }

    /// What differs in `new`: the admin group applies at once (SIGHUP
    /// builds new [`Access`] rules), the socket's group when it is bound.
    pub fn changes(&self, new: &AccessConfig) -> Changes {
        let mut changes = Changes::default();
        changes
            .compare(
                "access.admin_group",
                Applies::Now,
                &self.admin_group,
                &new.admin_group,
                optional,
            )
            .compare(
                "access.socket_group",
                Applies::NextStart,
                &self.socket_group,
                &new.socket_group,
                optional,
            );
        changes
    }
}

/// The daemon's access rules.
#[derive(Debug, Clone)]
pub struct Access {
    daemon_uid: u32,
    admin_group: Option<(String, u32)>,
    /// The admin group configured but not found on the host: a refusal
    /// says to create it.
    missing_group: Option<String>,
}

impl Access {
    /// Resolves the admin group; one that does not exist is left out, with
    /// a warning.
    pub fn new(config: &AccessConfig) -> Access {
        let admin_group = config
            .admin_group
            .as_ref()
            .and_then(|name| match group_id(name) {
                Some(gid) => Some((group_name(gid).unwrap_or_else(|| name.clone()), gid)),
                None => {
                    tracing::warn!(
                        group = %name,
                        "the admin group does not exist: only root and snctld's own user are admins"
                    );
                    None
                }
            });
        let missing_group = config.admin_group.clone().filter(|_| admin_group.is_none());
        Access {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            admin_group,
            missing_group,
        }
    }

    /// Root, the daemon's own user, or a member of the admin group.
    pub fn is_admin(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.daemon_uid
            || self
                .admin_group
                .as_ref()
                .is_some_and(|(_, gid)| peer.groups.contains(gid))
    }

    /// Refuses a non-admin, saying who the admins are and how to become one.
    pub fn require_admin(&self, peer: &Peer, what: &str) -> Result<(), Error> {
        if self.is_admin(peer) {
            return Ok(());
        }
        let (group, join) = match (&self.admin_group, &self.missing_group) {
            (Some((name, _)), _) => (
                format!(" and members of group {name}"),
                format!(", or to add you to group {name}"),
            ),
            (None, Some(name)) => (
                String::new(),
                format!(
                    ", or to create group {name} (the admin group of snctld.toml), add you to \
                     it and reload snctld"
                ),
            ),
            (None, None) => (
                String::new(),
                ", or to name an admin group ([access] admin_group in snctld.toml) and add you \
                 to it"
                    .to_string(),
            ),
        };
        let daemon = match (self.daemon_uid, user_name(self.daemon_uid)) {
            (0, _) => String::new(),
            (uid, Some(name)) => format!(", {name} (uid {uid})"),
            (uid, None) => format!(", uid {uid}"),
        };
        Err(Error::Forbidden {
            reason: format!(
                "{what} is for admins: root{daemon}{group}; {peer} is none of them: ask an admin \
                 to do it{join}"
            ),
        })
    }

    /// Whether `peer` may get the tokens of an authentication read by `readers`.
    pub fn may_read(&self, peer: &Peer, readers: &ReaderIds) -> bool {
        readers.admits(peer) || self.is_admin(peer)
    }

    /// Refuses a peer that may not read `name`'s tokens. Who may is not
    /// said: the readers' names tell a stranger whose account to go after.
    /// Only admins are never refused, and they see the readers with
    /// `snctl show`.
    pub fn require_reader(
        &self,
        peer: &Peer,
        name: &str,
        readers: &ReaderIds,
    ) -> Result<(), Error> {
        if self.may_read(peer, readers) {
            return Ok(());
        }
        Err(Error::Forbidden {
            reason: format!(
                "{peer} is not one of {name}'s readers: ask an admin to add you (they see the \
                 readers with `snctl show {name}` and set them with `snctl update {name} \
                 --allow-…`)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, groups: &[u32], unit: Option<&str>) -> Peer {
        Peer {
            uid,
            gid: groups.first().copied().unwrap_or(uid),
            pid: Some(1),
            groups: groups.to_vec(),
            unit: unit.map(str::to_string),
        }
    }

    #[test]
    fn units_come_from_the_first_unit_in_the_cgroup_path() {
        assert_eq!(
            unit_in("/system.slice/sync.service").as_deref(),
            Some("sync.service")
        );
        // A user's own units live in cgroups the user may name freely.
        assert_eq!(
            unit_in("/user.slice/user-1000.slice/user@1000.service/app.slice/sync.service")
                .as_deref(),
            Some("user@1000.service")
        );
        assert_eq!(
            unit_in("/system.slice/docker.service/sync.service").as_deref(),
            Some("docker.service")
        );
        assert_eq!(
            unit_in("/user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(unit_in("/"), None);
    }

    #[test]
    fn readers_admit_by_user_group_or_unit_and_empty_admits_all() {
        let readers = ReaderIds {
            users: vec![1001],
            groups: vec![2000],
            units: vec!["sync.service".into()],
        };
        assert!(readers.admits(&peer(1001, &[1001], None)));
        assert!(readers.admits(&peer(1002, &[1002, 2000], None)));
        assert!(readers.admits(&peer(1003, &[1003], Some("sync.service"))));
        assert!(!readers.admits(&peer(1004, &[1004], Some("other.service"))));
        assert!(ReaderIds::default().admits(&peer(1004, &[1004], None)));
    }

    #[test]
    fn an_admin_refusal_without_an_admin_group_says_how_to_get_one() {
        let stranger = peer(65534, &[65534], None);
        // None configured (a user's daemon, or `admin_group = ""`).
        let err = Access::new(&AccessConfig::default())
            .require_admin(&stranger, "refresh")
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(
                "ask an admin to do it, or to name an admin group ([access] admin_group in \
                 snctld.toml) and add you to it"
            ),
            "{err}"
        );
        // Configured, but no such group on the host.
        let config = AccessConfig {
            admin_group: Some("snctl-no-such-group".into()),
            socket_group: None,
        };
        let err = Access::new(&config)
            .require_admin(&stranger, "refresh")
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(
                "ask an admin to do it, or to create group snctl-no-such-group (the admin \
                 group of snctld.toml), add you to it and reload snctld"
            ),
            "{err}"
        );
    }

    #[test]
    fn admins_are_root_the_daemon_user_and_the_admin_group() {
        let access = Access {
            daemon_uid: 990,
            admin_group: Some(("snctl-admin".into(), 3000)),
            missing_group: None,
        };
        assert!(access.is_admin(&peer(0, &[0], None)));
        assert!(access.is_admin(&peer(990, &[990], None)));
        assert!(access.is_admin(&peer(1001, &[1001, 3000], None)));
        let err = access
            .require_admin(&peer(1002, &[1002], None), "add")
            .unwrap_err();
        assert_eq!(err.kind().exit_code(), 6);
        assert!(err.to_string().contains("group snctl-admin"), "{err}");
        assert!(
            err.to_string()
                .ends_with("ask an admin to do it, or to add you to group snctl-admin"),
            "{err}"
        );
        let readers = ReaderIds {
            users: vec![1001],
            ..ReaderIds::default()
        };
        let err = access
            .require_reader(&peer(1002, &[1002], None), "prod", &readers)
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("uid 1002, pid 1 is not one of prod's readers"),
            "{message}"
        );
        assert!(!message.contains("1001"), "no reader named: {message}");
        assert!(access.may_read(&peer(990, &[990], None), &readers));
    }

    #[test]
    fn numeric_readers_resolve_and_bad_units_are_refused() {
        let ids = ReaderIds::resolve(&Readers {
            users: vec!["0".into(), "root".into()],
            groups: vec!["0".into()],
            units: vec!["sync.service".into()],
        })
        .unwrap();
        assert_eq!(ids.users, vec![0]);
        assert_eq!(ids.groups, vec![0]);
        for unit in [
            "../etc.service",
            "x.service,sync.service",
            "a b.service",
            "x.socket",
        ] {
            assert!(
                ReaderIds::resolve(&Readers {
                    units: vec![unit.into()],
                    ..Readers::default()
                })
                .is_err(),
                "{unit}"
            );
        }
        assert!(ReaderIds::resolve(&Readers {
            units: vec!["user@1000.service".into(), "getty@tty1.service".into()],
            ..Readers::default()
        })
        .is_ok());
        assert!(ReaderIds::resolve(&Readers {
            users: vec!["no-such-user-snctl".into()],
            ..Readers::default()
        })
        .is_err());
    }
}
