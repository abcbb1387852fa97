"""Bearer tokens from snctld for Python HTTP clients (requests, pysnc).

`SnctlAuth("prod")` is a `requests.auth.AuthBase`: every request gets
`Authorization: Bearer TOKEN`, the token from `snctl token prod --json`,
kept while it stays valid a margin longer and asked for again after that
(snctld refreshes it at the instance; this process never sees a client
secret). Standard library and requests only; copy it next to your script.
"""

import json
import os
import subprocess
import time

import requests


class SnctlAuth(requests.auth.AuthBase):
    """requests / pysnc authentication that asks snctld for the token."""

    def __init__(self, name, margin=60, snctl=None):
        self.name = name
        # Ask again once the token in hand has less than this left.
        self.margin = margin
        self.snctl = snctl or os.environ.get("SNCTL", "snctl")
        self._token = None
        self._expires_at = 0
        self.instance_url = None

    def token(self):
        """The access token, from memory while it lasts, else from snctld."""
        if self._token is None or time.time() >= self._expires_at - self.margin:
            done = subprocess.run(
                [self.snctl, "token", self.name, "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            if done.returncode != 0:
                # snctl's one-line error says what happened and what to do.
                raise RuntimeError(done.stderr.strip() or f"snctl exited {done.returncode}")
            reply = json.loads(done.stdout)
            self._token = reply["access_token"]
            self._expires_at = reply["expires_at"]
            self.instance_url = reply["instance_url"]
        return self._token

    def __call__(self, request):
        request.headers["Authorization"] = "Bearer " + self.token()
        return request
