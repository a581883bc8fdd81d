"""Validates every FHIR resource a test saw from the broker (one JSON resource per line of the
file named on the command line) with validators no one here wrote: the PyPI `fhir.resources`
R4B models (structure and primitive types: counters must be strings) and `fhirpathpy` for the
Subscriptions Backport IG's notification invariants and Inferno's notification checks.

Prints how many resources passed; exits 1 with the first failure.
"""

import json
import re
import sys

from fhir.resources.R4B import get_fhir_model_class
from fhirpathpy import evaluate


def check_notification(b):
    """The backport-subscription-notification profile and Inferno's checks."""
    assert b["type"] == "history", "Bundle.type must be history"
    assert evaluate(b, "entry.first().resource.is(SubscriptionStatus)") == [True], \
        "backport-notification-bundle-1: the first entry is a SubscriptionStatus"
    assert evaluate(b, "entry.where(request.empty() or response.empty()).count()") == [0], \
        "every entry has request and response"
    status_entry = b["entry"][0]
    st = status_entry["resource"]
    sub_id = st["subscription"]["reference"].rsplit("/", 1)[-1]
    assert re.search(r"Subscription/%s/\$status$" % re.escape(sub_id), status_entry["request"]["url"]), \
        "status entry request.url ends Subscription/{id}/$status"
    assert isinstance(st["eventsSinceSubscriptionStart"], str), "counter is a string (R4B)"
    events = st.get("notificationEvent", [])
    for e in events:
        assert isinstance(e["eventNumber"], str), "eventNumber is a string (R4B)"
    if st["type"] in ("handshake", "heartbeat"):
        assert not events, "handshake and heartbeat carry no notificationEvent"
    others = b["entry"][1:]
    full_urls = {e["fullUrl"] for e in others}
    resources = [e for e in others if "resource" in e]
    focused = [e for e in events if "focus" in e]
    if not focused:
        # empty: no focus, no entry besides the status, no topic
        assert not others, "empty payload: only the status entry"
    elif resources:
        # full-resource: every focus resolves to an entry with its resource
        for e in focused:
            assert e["focus"]["reference"] in full_urls, "focus resolves to an entry"
        assert len(resources) == len(others)
    else:
        # id-only: entries have fullUrl, no resource
        for e in focused:
            assert e["focus"]["reference"] in full_urls, "id-only focus has its entry"


def main(path):
    n = 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            kind = r["resourceType"]
            try:
                get_fhir_model_class(kind).model_validate(r)
                if kind == "Bundle" and r.get("type") == "history":
                    check_notification(r)
            except Exception as e:  # noqa: BLE001 - report the resource with any failure
                print("INVALID %s: %s\n%s" % (kind, e, json.dumps(r)[:2000]), file=sys.stderr)
                sys.exit(1)
            n += 1
    print(n)


if __name__ == "__main__":
    main(sys.argv[1])
