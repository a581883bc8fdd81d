"""Validates the access audit's FHIR export (a Bundle of AuditEvents, read from the file named
on the command line) with the PyPI `fhir.resources` R4B models, and the IHE Basic Audit Log
Patterns' basics: every AuditEvent has a type, an action, `recorded`, an outcome, an agent
naming the client ID, and a source observer.

Prints how many AuditEvents passed; exits 1 with the first failure.
"""

import json
import sys

from fhir.resources.R4B.bundle import Bundle


def main():
    with open(sys.argv[1]) as f:
        raw = json.load(f)
    bundle = Bundle.model_validate(raw)
    assert bundle.type == "collection", "a collection Bundle"
    n = 0
    for entry in raw.get("entry", []):
        e = entry["resource"]
        assert e["resourceType"] == "AuditEvent", e["resourceType"]
        assert e["type"]["system"] == "http://dicom.nema.org/resources/ontology/DCM", "a DICOM event type"
        assert e["action"] in ("C", "R", "U", "D", "E"), "an action"
        assert e["outcome"] in ("0", "4", "8", "12"), "an outcome"
        assert e["recorded"], "recorded"
        who = e["agent"][0]["who"]["identifier"]
        assert who["system"] == "urn:scopecast:client-id" and who["value"], "the agent names a client ID"
        assert e["source"]["observer"]["identifier"]["value"], "the broker observes"
        n += 1
    print(f"{n} AuditEvents valid (fhir.resources R4B)")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - the test reads the message
        print(f"invalid: {exc}", file=sys.stderr)
        sys.exit(1)
