#!/usr/bin/env python3
"""Get a ServiceNow access token from snctld over its Unix socket, in pure
Python (standard library only), written from PROTOCOL.md alone.

As a program it does what `snctl token` does, with the same exit codes:

    python3 snctl_protocol.py [--socket PATH] [--min-valid SECS] NAME

prints the token on stdout; 0 ok, 1 other, 2 usage, 3 daemon unreachable,
4 not found, 5 needs login, 6 forbidden, 7 upstream error, with one line on
stderr saying what happened. As a module:

    from snctl_protocol import get_token
    token = get_token("prod")   # .access_token, .expires_at, .instance_url
"""

import argparse
import collections
import errno
import os
import socket
import stat
import struct
import sys

PROTOCOL_VERSION = 5
CLIENT_VERSION = "snctl_protocol.py"
SYSTEM_SOCKET = "/run/snctld/snctld.sock"
MAX_RESPONSE_FRAME = 16 * 1024 * 1024
TIMEOUT_SECS = 90

Token = collections.namedtuple("Token", "access_token expires_at instance_url")


class SnctlError(Exception):
    """A failure, with the exit code `snctl` would end with."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def unreachable(message):
    return SnctlError(message, 3)


# --- Where the socket is, and whether its server can be trusted -----------

def socket_path(explicit=None):
    """--socket, $SNCTL_SOCKET, the user daemon's socket if it exists, else
    the system daemon's."""
    if explicit:
        return explicit
    if os.environ.get("SNCTL_SOCKET"):
        return os.environ["SNCTL_SOCKET"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        user = os.path.join(runtime, "snctld", "snctld.sock")
        if os.path.exists(user):
            return user
    return SYSTEM_SOCKET


def _components(path):
    parts = ["/"] if path.startswith("/") else []
    return parts + [p for p in path.split("/") if p not in ("", ".")]


def _walk(path, trusted):
    """Resolves `path` as the kernel does, refusing any directory passed
    through or link followed that an untrusted uid could change; returns
    the resolved path."""
    pending = collections.deque(_components(path))
    if not path.startswith("/"):
        pending.extendleft(reversed(_components(os.getcwd())))
    resolved, links = "/", 0
    while pending:
        name = pending.popleft()
        if name == "/":
            resolved = "/"
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)
            continue
        st = os.stat(resolved)
        if not trusted(st.st_uid):
            raise ValueError(f"{resolved} belongs to uid {st.st_uid}, who could replace what is in it")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise ValueError(f"{resolved} is writable by others (mode {st.st_mode & 0o7777:o})")
        step = os.path.join(resolved, name)
        st = os.lstat(step)
        if stat.S_ISLNK(st.st_mode):
            if not trusted(st.st_uid):
                raise ValueError(f"{step} is a symbolic link owned by uid {st.st_uid}, who could point it elsewhere")
            links += 1
            if links > 40:
                raise ValueError(f"{path} goes through more than 40 symbolic links")
            pending.extendleft(reversed(_components(os.readlink(step))))
        else:
            resolved = step
    return resolved


def check_server(sock, path):
    """Refuses a socket served by a uid that is not trusted to be snctld,
    before anything is sent (PROTOCOL.md, "Who serves the socket")."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, server, _gid = struct.unpack("iII", creds)
    me = os.geteuid()
    if server in (0, me):
        return

    def refuse(problem):
        return unreachable(f"refusing to talk to {path}: {problem}; nothing was sent. "
                           "Check --socket and SNCTL_SOCKET, and ask an admin who put that socket there")
    try:
        directory = _walk(os.path.dirname(path) or ".", lambda uid: uid in (0, me))
        st = os.lstat(os.path.join(directory, os.path.basename(path)))
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != server:
            raise ValueError(f"it is served by uid {server}, who is neither root, you (uid {me}) "
                             "nor the owner of the socket file")
        st = os.stat(directory)
        if st.st_uid not in (server, 0) or st.st_mode & 0o022:
            raise ValueError(f"it is served by uid {server}, and its directory {directory} "
                             "could be changed by others")
    except (OSError, ValueError) as e:
        raise refuse(str(e)) from None


# --- bincode 2, standard configuration ------------------------------------

def varint(n):
    if n < 251:
        return bytes([n])
    for marker, fmt in ((0xFB, "<H"), (0xFC, "<I"), (0xFD, "<Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([marker]) + struct.pack(fmt, n)
    raise ValueError("integer too large")


def string(s):
    data = s.encode("utf-8")
    return varint(len(data)) + data


def frame(payload):
    return struct.pack("<I", len(payload)) + payload


class Reader:
    """Decodes one payload; any misstep is a malformed frame."""

    WIDTHS = {0xFB: "<H", 0xFC: "<I", 0xFD: "<Q"}

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated message")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, width=8):
        first = self.take(1)[0]
        if first < 251:
            return first
        fmt = self.WIDTHS.get(first)
        if fmt is None or struct.calcsize(fmt) > width:
            raise ValueError(f"varint marker {first:#x} for a {width * 8}-bit integer")
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def int(self):
        n = self.uint()
        return -(n >> 1) - 1 if n & 1 else n >> 1

    def string(self):
        return self.take(self.uint()).decode("utf-8")

    def option(self, read):
        tag = self.take(1)[0]
        if tag > 1:
            raise ValueError(f"option tag {tag}")
        return read() if tag else None

    def end(self):
        if self.pos != len(self.data):
            raise ValueError(f"{len(self.data) - self.pos} trailing bytes after the message")


# The daemon's errors (PROTOCOL.md, "Errors"): each variant's fields, the
# line to print and the exit code.
def _read_error(r):
    variant = r.uint(4)
    if variant in (0, 1, 2):
        name = r.string()
        return [
            (f'no authentication named "{name}": see `snctl list`, or add it with `snctl add {name}`', 4),
            (f'an authentication named "{name}" already exists: use `snctl update {name}` '
             f"to change it, or `snctl remove {name}` first", 1),
            (f"authentication {name} needs a new login: run `snctl login {name}`", 5),
        ][variant]
    if variant == 3:
        return f"forbidden: {r.string()}", 6
    if variant == 4:
        _kind, _status = r.uint(4), r.option(lambda: r.uint(2))
        message, _retry_at = r.string(), r.option(r.int)
        return message, 7
    if variant == 5:
        return r.string(), 2
    if variant == 6:
        return f"the daemon cannot serve this request now: {r.string()}", 3
    if variant == 7:
        daemon, client = r.uint(4), r.uint(4)
        return (f"snctl speaks protocol {client} but snctld speaks {daemon}: "
                "snctl and snctld must come from the same release (README, \"Versions\"); "
                "install matching versions and restart snctld", 1)
    if variant == 8:
        return f"internal daemon error: {r.string()} (see the snctld log)", 1
    raise ValueError(f"unknown error variant {variant}")


# --- The exchange ----------------------------------------------------------

def _read_frame(sock, buffered, path):
    def fill(n):
        while len(buffered) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise unreachable(f"snctld at {path} closed the connection (it may be stopping "
                                  "or at its connection limit; see its log)")
            buffered.extend(chunk)
    fill(4)
    length = struct.unpack("<I", buffered[:4])[0]
    if length > MAX_RESPONSE_FRAME:
        raise unreachable(f"lost the connection to snctld at {path}: frame of {length} bytes "
                          f"exceeds the limit of {MAX_RESPONSE_FRAME} bytes")
    fill(4 + length)
    payload = bytes(buffered[4:4 + length])
    del buffered[:4 + length]
    return Reader(payload)


def get_token(name, path=None, min_valid=None):
    """An access token for authentication `name`: valid at least 60 s (or a
    quarter of its lifetime when shorter), or `min_valid` seconds exactly.
    Raises SnctlError."""
    path = socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_SECS)
    with sock:
        try:
            sock.connect(path)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise unreachable(f"snctld is not running at {path}: start it (systemctl start snctld), "
                                  "or point SNCTL_SOCKET or --socket at its socket") from None
            if e.errno == errno.EACCES:
                raise unreachable(f"no permission to open {path}: ask an admin to add you to "
                                  "the socket's group (usually snctl)") from None
            raise unreachable(f"cannot connect to snctld at {path}: {e}") from None
        check_server(sock, path)
        hello = varint(PROTOCOL_VERSION) + string(CLIENT_VERSION)
        # Request::Token (0), name, MinValid::Required (0) or Default (1).
        minimum = bytes([0]) + varint(min_valid) if min_valid is not None else bytes([1]) + varint(60)
        request = varint(0) + string(name) + minimum
        buffered = bytearray()
        try:
            # The hello and the request in one write: one round trip.
            sock.sendall(frame(hello) + frame(request))
            reply = _read_frame(sock, buffered, path)
            daemon_version = reply.uint(4)
            reply.string()
            reply.end()
            if daemon_version != PROTOCOL_VERSION:
                raise SnctlError(f"snctl speaks protocol {PROTOCOL_VERSION} but snctld speaks "
                                 f"{daemon_version}: snctl and snctld must come from the same "
                                 "release (README, \"Versions\"); install matching versions and "
                                 "restart snctld", 1)
            r = _read_frame(sock, buffered, path)
            outcome = r.uint(4)
            if outcome == 1:
                message, code = _read_error(r)
                r.end()
                raise SnctlError(message, code)
            if outcome != 0 or r.uint(4) != 0:
                raise ValueError("an answer that is not a token")
            token = Token(r.string(), r.int(), r.string())
            r.end()
            return token
        except (OSError, ValueError) as e:
            raise unreachable(f"lost the connection to snctld at {path}: {e}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print an access token from snctld.")
    parser.add_argument("--socket", help="the daemon's socket (default: $SNCTL_SOCKET, "
                        "the user daemon's, /run/snctld/snctld.sock)")
    parser.add_argument("--min-valid", type=int, metavar="SECS",
                        help="the token must stay valid this long")
    parser.add_argument("name", help="the authentication")
    args = parser.parse_args(argv)
    if args.min_valid is not None and not 0 <= args.min_valid < 1 << 32:
        parser.error("--min-valid takes seconds from 0 to 4294967295")
    try:
        token = get_token(args.name, args.socket, args.min_valid)
    except SnctlError as e:
        print(f"snctl_protocol.py: {e}", file=sys.stderr)
        return e.exit_code
    print(token.access_token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
