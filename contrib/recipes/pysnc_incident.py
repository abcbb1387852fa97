"""Reads one incident with pysnc, the token from snctld.

    python3 pysnc_incident.py prod INC0010001

pysnc takes any requests AuthBase as `auth`; SnctlAuth (snctl_auth.py,
beside this file) asks `snctl token` for the token and again when it is
about to expire.
"""

import sys

from pysnc import ServiceNowClient

from snctl_auth import SnctlAuth

name, number = sys.argv[1], sys.argv[2]
auth = SnctlAuth(name)
auth.token()  # also learns the instance URL from snctld
client = ServiceNowClient(auth.instance_url, auth)
incident = client.GlideRecord("incident")
incident.add_query("number", number)
incident.query()
if not incident.next():
    sys.exit(f"no incident {number}")
print(incident.number, incident.short_description)
