"""Python requests through snctld's local proxy (a Unix socket).

    python3 requests_proxy.py /run/snctld/proxy/prod.sock INC0010001

`UnixSocketAdapter` sends every request of a requests.Session to the proxy
socket; the URL's host is only the Host header. The proxy puts the token on
each request, so this process never holds one. Needs requests (and the
urllib3 2 it brings); no other package.
"""

import socket
import sys

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool


class _UnixConnection(HTTPConnection):
    def __init__(self, path, **kwargs):
        super().__init__("localhost", **kwargs)
        self._unix_path = path

    def _new_conn(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.timeout, (int, float)):
            sock.settimeout(self.timeout)
        sock.connect(self._unix_path)
        return sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, path, **kwargs):
        super().__init__("localhost", **kwargs)
        self._unix_path = path

    def _new_conn(self):
        return _UnixConnection(self._unix_path, timeout=self.timeout.connect_timeout)


class UnixSocketAdapter(HTTPAdapter):
    """A transport adapter whose every connection is to `path`."""

    def __init__(self, path, **kwargs):
        self._pool = _UnixPool(path)
        super().__init__(**kwargs)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def get_connection(self, url, proxies=None):  # requests before 2.32
        return self._pool

    def close(self):
        self._pool.close()
        super().close()


def session(path):
    """A requests.Session whose http://snctl/… requests go to the proxy."""
    s = requests.Session()
    s.mount("http://snctl/", UnixSocketAdapter(path))
    return s


if __name__ == "__main__":
    path, number = sys.argv[1], sys.argv[2]
    with session(path) as s:
        response = s.get(
            "http://snctl/api/now/table/incident",
            params={"sysparm_query": f"number={number}", "sysparm_limit": 1},
            headers={"Accept": "application/json"},
            timeout=30,
        )
        response.raise_for_status()
        for record in response.json()["result"]:
            print(record["number"], record["short_description"])
