//! Who opened a connection to the listener: the redirect counts only from
//! the user running snctl, root, or under sudo the user who ran sudo. The
//! `state` the redirect carries is no secret from other local users (the
//! authorize URL is on the browser's command line), so on Linux the kernel
//! is asked whose the other end is: its socket in `/proc/net/tcp`.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};

/// The users whose processes may deliver the redirect: snctl's own user,
/// root (who could read the code from snctl's memory anyway) and, under
/// sudo, the user who ran sudo (whose browser it is).
#[derive(Debug, Clone)]
pub(super) struct Senders(Vec<u32>);

impl Senders {
    pub(super) fn of_this_process() -> Senders {
        let mut uids = vec![0];
        uids.push(own_uid());
        uids.extend(
            std::env::var("SUDO_UID")
                .ok()
                .and_then(|uid| uid.trim().parse::<u32>().ok()),
        );
        Senders(uids)
    }

    /// Who opened `stream`, when that is not one of these users: why the
    /// connection does not count.
    pub(super) fn refuse(&self, stream: &TcpStream) -> Option<String> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        match peer_uid(stream) {
            Ok(uid) if self.0.contains(&uid) => None,
            Ok(uid) => Some(format!("a process of another user (uid {uid})")),
            Err(why) => Some(format!("a process whose user cannot be told ({why})")),
        }
    }
}

/// The effective uid of this process.
pub(super) fn own_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Why the owner of a connection's other end cannot be told.
#[derive(Debug, thiserror::Error)]
pub(super) enum PeerError {
    /// The connection's own addresses cannot be read.
    #[error("{0}")]
    Addresses(io::Error),
    /// A socket table cannot be read.
    #[error("cannot read {table}: {source}")]
    Table {
        table: &'static str,
        source: io::Error,
    },
    /// No socket in the tables matches.
    #[error("its socket is not in /proc/net/tcp")]
    NotFound,
    /// The sending process closed its socket already: the kernel keeps
    /// the connection, but no longer says whose it was (uid 0, no inode).
    #[error("it closed its end before it could be told whose it was")]
    Closed,
}

/// The uid owning the other end of a loopback connection: its socket is
/// the one in `/proc/net/tcp` (or `tcp6`) whose local address is our
/// peer's and whose remote address is ours.
pub(super) fn peer_uid(stream: &TcpStream) -> Result<u32, PeerError> {
    let ours = stream.local_addr().map_err(PeerError::Addresses)?;
    let theirs = stream.peer_addr().map_err(PeerError::Addresses)?;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(PeerError::Table { table, source }),
        };
        match socket_owner(&text, canonical(theirs), canonical(ours)) {
            Some(Owner::Uid(uid)) => return Ok(uid),
            Some(Owner::Closed) => return Err(PeerError::Closed),
            None => {}
        }
    }
    Err(PeerError::NotFound)
}

/// Whose a socket in `/proc/net/tcp` is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Owner {
    Uid(u32),
    /// Closed by its process (no inode): the table shows uid 0 for it,
    /// which must not pass for root's.
    Closed,
}

/// The owner of the socket from `local` to `remote` in a `/proc/net/tcp`
/// table.
pub(super) fn socket_owner(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<Owner> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ends = (proc_address(fields.get(1)?)?, proc_address(fields.get(2)?)?);
        if ends != (local, remote) {
            return None;
        }
        match *fields.get(9)? {
            "0" => Some(Owner::Closed),
            _ => fields.get(7)?.parse().ok().map(Owner::Uid),
        }
    })
}

/// An address as `/proc/net/tcp` writes it: the IP as 32-bit words in hex,
/// each as the host stores it, then `:` and the port in hex.
pub(super) fn proc_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if ip.len() % 8 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(16);
    for word in 0..ip.len() / 8 {
        let word = u32::from_str_radix(ip.get(word * 8..word * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

/// An IPv4 address mapped into IPv6 as plain IPv4.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn proc_net_tcp_addresses_are_read() {
        let v4 = proc_address("0100007F:1F4F").unwrap();
        assert_eq!(v4, "127.0.0.1:8015".parse().unwrap());
        let mapped = proc_address("0000000000000000FFFF00000100007F:0050").unwrap();
        assert_eq!(mapped, "127.0.0.1:80".parse().unwrap());
        let v6 = proc_address("00000000000000000000000001000000:0050").unwrap();
        assert_eq!(v6, "[::1]:80".parse().unwrap());
        assert_eq!(proc_address("0100007:1F4F"), None);
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 0100007F:1F4F 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1 1\n   \
             1: 0100007F:D431 0100007F:1F4F 01 00000000:00000000 00:00000000 00000000 65534        0 2 1\n";
        let (theirs, ours) = (
            "127.0.0.1:54321".parse().unwrap(),
            "127.0.0.1:8015".parse().unwrap(),
        );
        assert_eq!(socket_owner(table, theirs, ours), Some(Owner::Uid(65534)));
        assert_eq!(socket_owner(table, ours, theirs), Some(Owner::Uid(0)));
        assert_eq!(socket_owner(table, theirs, theirs), None);
        // A socket its process closed shows uid 0 and no inode.
        let closed = table.replace("65534        0 2 1", "    0        0 0 1");
        assert_eq!(socket_owner(&closed, theirs, ours), Some(Owner::Closed));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_sender_that_closed_before_being_accepted_cannot_be_told() {
        use std::io::Write;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"GET /callback HTTP/1.1\r\n\r\n").unwrap();
        drop(client);
        let (accepted, _) = listener.accept().unwrap();
        assert!(matches!(peer_uid(&accepted), Err(PeerError::Closed)));
        assert!(Senders::of_this_process()
            .refuse(&accepted)
            .unwrap()
            .contains("closed its end"));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_owner_of_a_loopback_peer_is_found() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(peer_uid(&accepted).unwrap(), own_uid());
        assert_eq!(Senders::of_this_process().refuse(&accepted), None);
        assert_eq!(
            Senders(vec![u32::MAX]).refuse(&accepted),
            Some(format!("a process of another user (uid {})", own_uid()))
        );
    }
}
