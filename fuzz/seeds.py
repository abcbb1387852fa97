#!/usr/bin/env python3
"""Writes seed corpora for the fuzz targets: valid frames (frame target) and
valid request payloads (request and handler targets), hand-encoded in the
wire format documented in shared/src/frame.rs. Run from fuzz/:
`python3 seeds.py`. The corpora are not committed."""

import os
import struct


def uint(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def sint(n):
    return uint((n << 1) ^ (n >> 63) if n >= 0 else ((-n) << 1) - 1)


def text(s):
    b = s.encode()
    return uint(len(b)) + b


def opt(value):
    return b"\x00" if value is None else b"\x01" + value


def seq(items):
    return uint(len(items)) + b"".join(items)


def frame(payload):
    return struct.pack("<I", len(payload)) + payload


readers = seq([text("alice")]) + seq([text("ops")]) + seq([text("sync.service")])
no_readers = b"\x00\x00\x00"


def add(name, url, grant, jwt=False):
    return (
        text(name) + text(url) + uint(grant) + text("client-id") + text("client-secret")
        + uint(0) + opt(text("useraccount"))
        + opt(text("abel.tuter") + text("password") if grant == 1 else None)
        + opt(uint(8751) if grant == 2 else None) + opt(uint(86400))
        + (readers if grant else no_readers)
        + opt(text("MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg") + text("svc") + opt(text("kid")) if jwt else None)
    )


requests = {
    "token": uint(0) + text("prod") + uint(300),
    "list": uint(1),
    "show": uint(2) + text("prod"),
    "add-cc": uint(3) + add("prod", "https://acme.service-now.com", 0),
    "add-password": uint(3) + add("dev-2", "http://127.0.0.1:9", 1),
    "add-code": uint(3) + add("code", "https://[::1]:8443", 2),
    "add-jwt": uint(3) + add("jwt", "https://acme.service-now.com/", 3, jwt=True),
    "update": uint(4) + text("prod") + opt(text("https://b.service-now.com")) + opt(text("id2"))
    + opt(text("s2")) + opt(uint(1)) + opt(text("")) + opt(uint(9000)) + opt(uint(3600)) + opt(readers),
    "remove": uint(5) + text("prod") + b"\x01",
    "refresh": uint(6) + text("prod"),
    "status": uint(7),
    "start-login": uint(8) + text("code") + opt(add("code", "https://acme.service-now.com", 2)) + opt(text("s3")),
    "login-password": uint(9) + text("prod") + uint(0) + text("abel.tuter") + text("pw") + opt(None),
    "login-code": uint(9) + text("code") + uint(1) + text("the-code") + text("the-state") + opt(text("s4")),
    "doctor": uint(10) + text("prod"),
    "backup-first": uint(11) + opt(None) + uint(0),
    "backup-next": uint(11) + opt(uint(1)) + uint(4 << 20),
}

hello = uint(3) + text("0.1.0")
summary = (
    text("prod") + text("https://acme.service-now.com") + uint(1) + text("cid") + uint(0)
    + opt(text("useraccount")) + uint(0) + opt(None) + opt(sint(1_700_000_000)) + opt(sint(1_699_999_000))
    + opt(None) + sint(1_600_000_000)
    + opt(opt(text("abel.tuter")) + opt(sint(1)) + opt(sint(2)) + uint(8_640_000) + opt(None))
    + readers
)
responses = [
    uint(0) + uint(0) + text("tok") + sint(1_700_000_000) + text("https://a"),
    uint(0) + uint(1) + seq([summary, summary]),
    uint(0) + uint(2) + summary,
    uint(0) + uint(3) + uint(2) + opt(text("revoked elsewhere")),
    uint(0) + uint(4) + text("0.1.0") + uint(3) + uint(4242) + uint(99) + text("/run/snctld.sock")
    + text("/var/lib/snctld") + uint(2) + uint(1) + opt(text("prod") + sint(5)) + uint(1) + uint(0) + opt(None),
    uint(0) + uint(5) + text("https://a/oauth_auth.do") + text("http://127.0.0.1:8751/callback") + text("st") + sint(9),
    uint(0) + uint(6) + text("prod") + seq([text("instance reachable") + uint(0) + text("200")]) + b"\x00" + opt(text("c")) + opt(None) + b"\x01",
    uint(0) + uint(7) + uint(1) + uint(10) + uint(0) + seq([b"\x01"] * 10) + text("/k"),
    uint(1) + uint(0) + text("x"),
    uint(1) + uint(4) + uint(0) + opt(uint(401)) + text("denied") + opt(sint(7)),
    uint(1) + uint(7) + uint(2) + uint(3),
]


def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


for name, payload in requests.items():
    write("corpus/request", name, payload)
    write("corpus/handler", name, payload)
    # A connection: hello, then the request, twice.
    write("corpus/frame", "conn-" + name, b"\x02" + frame(hello) + frame(payload) * 2)
    write("corpus/frame", "payload-" + name, b"\x00" + payload)
for i, payload in enumerate(responses):
    write("corpus/frame", "resp-%d" % i, b"\x03" + frame(hello) + frame(payload))
    write("corpus/frame", "payload-resp-%d" % i, b"\x00" + payload)

# The login listener: a browser's redirect, a favicon request, an error
# redirect; the first byte is the read size.
for i, head in enumerate([
    b"GET /callback?code=c0de%2F1&state=st4te-Xyz HTTP/1.1\r\nHost: 127.0.0.1:8751\r\n"
    b"Accept: text/html\r\nCookie: a=b\r\n\r\n",
    b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1:8751\r\n\r\n",
    b"GET /callback?error=access_denied&error_description=The+user+denied&state=s HTTP/1.1\r\n\r\n",
    b"POST /callback HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
]):
    write("corpus/login_request", "head-%d" % i, bytes([i * 17]) + head)

# The configuration: the README's example, section by section and whole.
example = b"""[server]
max_connections = 512
max_connections_per_user = 64
idle_timeout_secs = 120
read_timeout_secs = 10

[refresh]
ahead = 0.75
jitter = 0.05
backoff_min_secs = 2
backoff_max_secs = 300

[login]
redirect_port = 8751
timeout_secs = 600

[http]
ca_file = "/etc/ssl/private/proxy-ca.pem"
connect_timeout_secs = 10
request_timeout_secs = 30

[access]
admin_group = "snctl-admin"
socket_group = "snctl"

[master_key]
file = "/etc/snctld/master.key"

[log]
filter = "info,snctld::tokens=debug"

[proxy]
names = ["prod", "dev.eu-1"]
all = false
dir = "/run/snctld/proxy"
on_rate_limit = "hold"
hold_max_secs = 30
tcp_port = 8752

[metrics]
listen = "127.0.0.1:9474"
"""
write("corpus/config", "example", example)
for i, section in enumerate(example.split(b"\n\n")):
    write("corpus/config", "section-%d" % i, section + b"\n")
