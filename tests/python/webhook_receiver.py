"""A webhook receiver for the end-to-end tests: it verifies every request with PyPI's
`standardwebhooks` (a verifier no one here wrote), and `v1a` (ed25519) signatures with PyNaCl
over the raw bytes (no Standard Webhooks library verifies `v1a`), and answers as the test
planned.

Prints `port <n>` on its first line, then serves on the address given as its first argument
(127.0.0.1 by default) until its stdin closes.

Control (JSON over HTTP, for the test only):
- `POST /_control/secrets` `{"secrets": ["whsec_..."], "public_keys": ["whpk_..."]}`: the
  secrets and `v1a` public keys to verify with (each one verifies on its own; a request
  verifies when any does).
- `POST /_control/plan` `{"answers": [{"status": 500}, {"status": 429, "retry_after": "2"},
  {"status": 302, "location": "http://..."}, {"sleep_s": 3, "status": 200}]}`: the answers of
  the next requests, in order; after them, 200.
- `GET /_control/log`: every request received: `webhook_id`, `timestamp`, `signature`,
  `body` (text), `verified_by` (indexes of the secrets that verify it), `tampered_rejected`
  (a copy with one body byte changed fails every secret), `v1a_verified_by` (indexes of the
  public keys one of whose `v1a` signatures verifies, timestamp within 5 minutes),
  `v1a_tampered_rejected`, `status` (answered), `at` (receive time, s), `path`.
- Any other path under `/_control/` is a trap: fetching it is recorded as `trap_hits`.
"""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

LOCK = threading.Lock()
STATE = {"secrets": [], "public_keys": [], "plan": [], "log": [], "trap_hits": 0}
TOLERANCE_S = 300


def verify(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except WebhookVerificationError:
        return False


def verify_v1a(public_key, body, headers):
    """Standard Webhooks `v1a`: ed25519 over `id.timestamp.body`, the key `whpk_<base64>`."""
    key = VerifyKey(base64.b64decode(public_key.removeprefix("whpk_")))
    try:
        timestamp = int(headers["webhook-timestamp"])
    except ValueError:
        return False
    if abs(time.time() - timestamp) > TOLERANCE_S:
        return False
    content = f"{headers['webhook-id']}.{timestamp}.".encode() + body
    for entry in headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(content, base64.b64decode(signature))
            return True
        except (BadSignatureError, ValueError):
            continue
    return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path == "/_control/log":
            with LOCK:
                body = json.dumps(
                    {"log": STATE["log"], "trap_hits": STATE["trap_hits"]}
                ).encode()
            self.answer(200, body, {"Content-Type": "application/json"})
            return
        with LOCK:
            STATE["trap_hits"] += 1
        self.answer(200, b"trap")

    def do_POST(self):
        body = self.read_body()
        if self.path == "/_control/secrets":
            with LOCK:
                control = json.loads(body)
                STATE["secrets"] = control["secrets"]
                STATE["public_keys"] = control.get("public_keys", [])
            self.answer(204)
            return
        if self.path == "/_control/plan":
            with LOCK:
                STATE["plan"] = json.loads(body)["answers"]
            self.answer(204)
            return
        if self.path.startswith("/_control/"):
            with LOCK:
                STATE["trap_hits"] += 1
            self.answer(200, b"trap")
            return
        received = time.time()
        headers = {
            "webhook-id": self.headers.get("webhook-id", ""),
            "webhook-timestamp": self.headers.get("webhook-timestamp", ""),
            "webhook-signature": self.headers.get("webhook-signature", ""),
        }
        with LOCK:
            secrets = list(STATE["secrets"])
            public_keys = list(STATE["public_keys"])
            plan = STATE["plan"].pop(0) if STATE["plan"] else {}
        verified_by = [i for i, s in enumerate(secrets) if verify(s, body, headers)]
        tampered = bytearray(body)
        if tampered:
            tampered[len(tampered) // 2] ^= 0x01
        tampered_rejected = not any(verify(s, bytes(tampered), headers) for s in secrets)
        v1a_verified_by = [
            i for i, k in enumerate(public_keys) if verify_v1a(k, body, headers)
        ]
        v1a_tampered_rejected = not any(
            verify_v1a(k, bytes(tampered), headers) for k in public_keys
        )
        if plan.get("sleep_s"):
            time.sleep(plan["sleep_s"])
        status = plan.get("status", 200)
        extra = {}
        if "retry_after" in plan:
            extra["Retry-After"] = plan["retry_after"]
        if "location" in plan:
            extra["Location"] = plan["location"]
        with LOCK:
            STATE["log"].append(
                {
                    "path": self.path,
                    "webhook_id": headers["webhook-id"],
                    "timestamp": headers["webhook-timestamp"],
                    "signature": headers["webhook-signature"],
                    "content_type": self.headers.get("Content-Type", ""),
                    "api_key": self.headers.get("X-Api-Key", ""),
                    "body": body.decode("utf-8"),
                    "verified_by": verified_by,
                    "tampered_rejected": tampered_rejected,
                    "v1a_verified_by": v1a_verified_by,
                    "v1a_tampered_rejected": v1a_tampered_rejected,
                    "status": status,
                    "at": received,
                }
            )
        try:
            self.answer(status, b"ok", extra)
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    if len(sys.argv) > 3:
        # HTTPS with the given certificate chain and key (an internal CA's, made by the test).
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"port {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Stop with the test: it holds our stdin.
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
