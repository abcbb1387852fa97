"""Reads one incident through snctld's local proxy, standard library only.

    python3 proxy_incident.py /run/snctld/proxy/prod.sock INC0010001

The proxy puts the token on the request: this process holds none.
"""

import http.client
import json
import socket
import sys
import urllib.parse


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket; the host name is only for the Host header."""

    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


path, number = sys.argv[1], sys.argv[2]
query = urllib.parse.urlencode({"sysparm_query": f"number={number}", "sysparm_limit": 1})
connection = UnixHTTPConnection(path)
connection.request("GET", f"/api/now/table/incident?{query}", headers={"Accept": "application/json"})
response = connection.getresponse()
body = response.read()
if response.status != 200:
    sys.exit(f"HTTP {response.status}: {body.decode(errors='replace')}")
for record in json.loads(body)["result"]:
    print(record["number"], record["short_description"])
