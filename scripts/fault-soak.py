#!/usr/bin/env python3
"""Fault and soak runs against the real `scopecast` release binary (not part of CI).

Each scenario starts its own broker (durable log, its own data folder, port 0), drives it
over real sockets, observes it from outside (/proc for RSS and open files, /metrics, the HTTP
API), and prints one JSON object per scenario; `--out FILE` also writes them all as JSON.
docs/FAULTS.md reports a run.

    cargo build --release -p scopecast-cli
    pip install -r tests/python/requirements.txt
    python3 scripts/fault-soak.py                       # all scenarios, 10-minute churn
    python3 scripts/fault-soak.py --minutes 1 --only churn,unread

Scenarios:
  churn   connections opening, authenticating, subscribing and closing in a loop for
          --minutes; broker RSS and open files sampled every 10 s must stay flat.
  unread  a subscriber that never reads while a publisher streams 20,000 events of 4 KiB
          (2,000/s): the
          broker closes it (4008); a reading subscriber misses nothing; 5 s later the RSS is
          within 64 MiB of where it started (page cache 32 MiB + two 8 MiB queues + room).
  kill    SIGKILL the broker while 4 connections publish, restart it, check every
          acknowledged event (seq, id, payload) and that no seq is reused; several rounds.
  disk    the event log on a 24 MiB tmpfs that fills up: publishes get 503 `unavailable`
          (nothing stored, no crash), space comes back, publishes succeed again, and after a
          restart every acknowledged event is there (needs root for `mount`).
  jwks    an external issuer's JWKS endpoint goes down: tokens with a cached key still
          connect, tokens with an unknown `kid` are refused (401), without a fetch per request.
"""

import argparse
import asyncio
import base64
import http.server
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "scopecast")
SUBPROTOCOL = "scopecast.v1"


class Broker:
    """A `scopecast serve` process on 127.0.0.1:0 with a durable log."""

    def __init__(self, data_dir, config=None, env=None):
        self.data_dir = data_dir
        self.config = config
        self.env = dict(os.environ, RUST_LOG="warn,scopecast=info", **(env or {}))
        self.proc = None
        self.url = None

    def start(self):
        args = [BIN, "serve", "--listen", "127.0.0.1:0", "--log", "durable",
                "--data-dir", self.data_dir]
        if self.config:
            args += ["--config", self.config]
        self.proc = subprocess.Popen(args, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        found = threading.Event()

        def pump():
            for line in self.proc.stderr:
                m = re.search(r"local=(\S+)", line)
                if m and not found.is_set():
                    self.url = "http://" + m.group(1)
                    found.set()
        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(30):
            raise RuntimeError("the broker did not start")
        return self

    @property
    def ws_url(self):
        return self.url.replace("http://", "ws://") + "/v1/stream"

    def admin_token(self):
        with open(os.path.join(self.data_dir, "admin.token")) as f:
            return f.read().strip()

    def admin(self, method, path, body=None):
        r = requests.request(method, self.url + "/admin/v1" + path, json=body,
                             headers={"Authorization": "Bearer " + self.admin_token()},
                             timeout=30)
        r.raise_for_status()
        return r.json()

    def client(self, name, scope):
        """Registers an application and activates its non-production client ID."""
        app = self.admin("POST", "/applications", {"name": name, "vendor": "Soak", "scope": scope})
        c = app["clients"]["non_production"]
        self.admin("POST", f"/clients/{c['client_id']}/activate", {"reason": "soak"})
        return c["client_id"], c["client_secret"]

    def token(self, client):
        r = requests.post(self.url + "/oauth2/token", data={"grant_type": "client_credentials"},
                          auth=client, timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def open_files(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metric(self, name):
        text = requests.get(self.url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def headers(token):
    return {"Authorization": "Bearer " + token}


async def ws_connect(broker, token, **kw):
    ws = await connect(broker.ws_url, subprotocols=[SUBPROTOCOL],
                       additional_headers=headers(token), **kw)
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return ws


def history(broker, token, pattern="soak.>"):
    """Every retained event of `pattern`, paging through GET /v1/events."""
    out, since = [], 0
    while True:
        r = requests.get(broker.url + "/v1/events", params={"topic": pattern, "since": since,
                         "limit": 1000}, headers=headers(token), timeout=30)
        r.raise_for_status()
        page = r.json()
        out += page["events"]
        if page["next_since"] <= since or page["next_since"] >= page["head_seq"]:
            return out
        since = page["next_since"]


# --- churn -------------------------------------------------------------------------------

def churn(work, minutes):
    broker = Broker(os.path.join(work, "churn")).start()
    client = broker.client("Churn", "subscribe:soak.>")
    token = {"t": broker.token(client), "at": time.time()}
    samples, cycles, errors = [], [0], [0]
    deadline = time.time() + minutes * 60

    async def worker():
        while time.time() < deadline:
            if time.time() - token["at"] > 60:
                token["t"], token["at"] = broker.token(client), time.time()
            try:
                ws = await ws_connect(broker, token["t"])
                await ws.send(json.dumps({"type": "subscribe", "id": "s", "topic": "soak.>"}))
                answer = json.loads(await ws.recv())
                assert answer["type"] == "subscribed", answer
                await ws.close()
                cycles[0] += 1
            except Exception:  # noqa: BLE001 - counted and reported
                errors[0] += 1
                await asyncio.sleep(0.1)

    async def sampler():
        start = time.time()
        while time.time() < deadline:
            samples.append({"t_s": round(time.time() - start), "rss_kib": broker.rss_kib(),
                            "open_files": broker.open_files()})
            await asyncio.sleep(10)

    async def main():
        await asyncio.gather(sampler(), *[worker() for _ in range(16)])

    asyncio.run(main())
    time.sleep(1)
    final = {"rss_kib": broker.rss_kib(), "open_files": broker.open_files(),
             "connections": broker.metric("scopecast_connections")}
    broker.stop()
    warm = next((s for s in samples if s["t_s"] >= 60), samples[len(samples) // 2])
    grew = final["rss_kib"] - warm["rss_kib"]
    return {"scenario": "churn", "minutes": minutes, "cycles": cycles[0],
            "cycles_per_s": round(cycles[0] / (minutes * 60)), "errors": errors[0],
            "rss_kib_first": samples[0]["rss_kib"], "rss_kib_after_warmup": warm["rss_kib"],
            "rss_kib_max": max(s["rss_kib"] for s in samples), "final": final,
            "samples": samples,
            "ok": errors[0] == 0 and final["connections"] == 0
            and grew <= max(4096, warm["rss_kib"] // 10)
            and final["open_files"] <= samples[0]["open_files"] + 2}


# --- unread ------------------------------------------------------------------------------

def unread(work):
    broker = Broker(os.path.join(work, "unread"),
                    env={"SCOPECAST_LIMITS__PUBLISH_RATE_PER_SEC": "0"}).start()
    sub = broker.client("Sleeper", "subscribe:soak.>")
    pub = broker.client("Streamer", "publish:soak.>")
    sub_token, pub_token = broker.token(sub), broker.token(pub)
    rss_before = broker.rss_kib()
    result = {}

    async def main():
        # max_queue=1 and a small read limit: the client library stops reading the socket
        # once one frame is buffered, so the broker sees a peer that never reads.
        sleeper = await ws_connect(broker, sub_token, max_queue=1, max_size=2 ** 20)
        await sleeper.send(json.dumps({"type": "subscribe", "id": "s", "topic": "soak.>"}))
        reader = await ws_connect(broker, sub_token)
        await reader.send(json.dumps({"type": "subscribe", "id": "s", "topic": "soak.>"}))
        assert json.loads(await reader.recv())["type"] == "subscribed"
        publisher = await ws_connect(broker, pub_token)
        payload = {"pad": "x" * 4000}
        n, acked, rss_max, closed_at = 20_000, 0, 0, None
        start = time.time()

        async def read_all():
            got = 0
            while got < n:
                f = json.loads(await reader.recv())
                if f["type"] == "event":
                    got += 1
            return got

        reading = asyncio.create_task(read_all())
        for i in range(n):
            # 2,000 events/s: the reading subscriber (Python) keeps up; the sleeper's queue
            # (8 MiB) fills within about a second.
            lag = start + i / 2000 - time.time()
            if lag > 0:
                await asyncio.sleep(lag)
            await publisher.send(json.dumps({"type": "publish", "id": f"p{i}",
                                             "topic": "soak.unread", "data": payload}))
            if i % 100 == 99:
                while acked < i - 200:
                    f = json.loads(await publisher.recv())
                    acked += f["type"] == "published"
                rss_max = max(rss_max, broker.rss_kib())
                if closed_at is None and broker.metric("scopecast_slow_consumer_closes_total") > 0:
                    closed_at = time.time() - start
        while acked < n:
            f = json.loads(await publisher.recv())
            acked += f["type"] == "published"
        got = await asyncio.wait_for(reading, 60)
        code = None
        try:
            while True:
                await asyncio.wait_for(sleeper.recv(), 10)
        except ConnectionClosed as e:
            # Without a readable close frame: the broker gave up writing to a peer that never
            # reads, after deciding the close (the metric below counts it).
            code = e.rcvd.code if e.rcvd else "closed without a readable close frame"
        except asyncio.TimeoutError:
            code = "still open"
        result.update({"published": n, "acked": acked, "reader_got": got,
                       "sleeper_close_code": code, "closed_after_s": closed_at,
                       "rss_kib_before": rss_before, "rss_kib_max": rss_max,
                       "slow_consumer_closes": broker.metric("scopecast_slow_consumer_closes_total")})

    asyncio.run(main())
    time.sleep(5)
    result["rss_kib_5s_after"] = broker.rss_kib()
    broker.stop()
    result.update({"scenario": "unread", "ok": result["sleeper_close_code"] != "still open"
                   and result["slow_consumer_closes"] == 1
                   and result["reader_got"] == result["published"] == result["acked"]
                   # The bounded parts: the log's page cache (32 MiB), two outbound queues
                   # (8 MiB each), and some room for the allocator.
                   and result["rss_kib_5s_after"] - result["rss_kib_before"] < 64 * 1024})
    return result


# --- kill --------------------------------------------------------------------------------

def kill(work, rounds):
    data = os.path.join(work, "kill")
    broker = Broker(data).start()
    pub = broker.client("Killed", "publish:soak.> subscribe:soak.>")
    acked = {}
    report = []
    for r in range(rounds):
        token = broker.token(pub)
        stop_after = random.uniform(1.0, 3.0)

        async def publisher(k):
            try:
                ws = await ws_connect(broker, token)
                i = 0
                while True:
                    eid = f"r{r}-c{k}-{i}"
                    await ws.send(json.dumps({"type": "publish", "id": eid, "topic": "soak.kill",
                                              "data": {"round": r, "i": i}, "event_id": eid}))
                    f = json.loads(await ws.recv())
                    if f["type"] == "published":
                        acked[f["seq"]] = (eid, {"round": r, "i": i})
                    i += 1
            except (ConnectionClosed, OSError):
                return

        async def main():
            tasks = [asyncio.create_task(publisher(k)) for k in range(4)]
            await asyncio.sleep(stop_after)
            broker.kill()
            await asyncio.gather(*tasks, return_exceptions=True)

        before = len(acked)
        asyncio.run(main())
        broker.start()
        stored = {e["seq"]: (e["id"], e["data"]) for e in history(broker, broker.token(pub))}
        missing = [s for s in acked if s not in stored]
        wrong = [s for s in acked if s in stored and stored[s] != acked[s]]
        report.append({"round": r, "killed_after_s": round(stop_after, 2),
                       "acked_this_round": len(acked) - before, "missing": len(missing),
                       "wrong": len(wrong)})
    # A seq is never reused: the next publish gets a seq above every acknowledged one.
    token = broker.token(pub)
    r = requests.post(broker.url + "/v1/events/soak.kill", json={"after": True},
                      headers=headers(token), timeout=10)
    next_seq = r.json()["seq"]
    broker.stop()
    return {"scenario": "kill", "rounds": report, "acked_total": len(acked),
            "next_seq": next_seq, "max_acked_seq": max(acked) if acked else 0,
            "ok": all(x["missing"] == 0 and x["wrong"] == 0 for x in report)
            and next_seq > max(acked, default=0)}


# --- disk --------------------------------------------------------------------------------

def disk(work):
    mnt = os.path.join(work, "tmpfs")
    os.makedirs(mnt, exist_ok=True)
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt],
                       capture_output=True, text=True)
    if m.returncode != 0:
        return {"scenario": "disk", "ok": None, "skipped": m.stderr.strip()}
    try:
        data = os.path.join(mnt, "data")
        broker = Broker(data).start()
        pub = broker.client("Filler", "publish:soak.> subscribe:soak.>")
        token = broker.token(pub)
        # A filler file that can be removed to give space back.
        filler = os.path.join(mnt, "filler")
        free = shutil.disk_usage(mnt).free
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - 6 * 2 ** 20))
        payload = {"pad": "y" * 8000}
        acked, refusals, first_refusal = [], 0, None
        for i in range(4000):
            r = requests.post(broker.url + "/v1/events/soak.disk", json=payload,
                              headers=dict(headers(token), **{"Idempotency-Key": f"d{i}"}),
                              timeout=30)
            if r.status_code == 201:
                acked.append(r.json()["seq"])
            else:
                refusals += 1
                first_refusal = first_refusal or {"status": r.status_code, "body": r.json(),
                                                  "after_acked": len(acked)}
                if refusals >= 20:
                    break
        alive_when_full = broker.alive()
        healthz = requests.get(broker.url + "/healthz", timeout=10).status_code
        os.remove(filler)
        after_space = []
        for i in range(20):
            r = requests.post(broker.url + "/v1/events/soak.disk", json={"i": i},
                              headers=headers(token), timeout=30)
            after_space.append(r.status_code)
            if r.status_code == 201:
                acked.append(r.json()["seq"])
            time.sleep(0.1)
        broker.stop()
        broker.start()
        stored = {e["seq"] for e in history(broker, broker.token(pub))}
        missing = [s for s in acked if s not in stored]
        broker.stop()
        return {"scenario": "disk", "acked": len(acked), "first_refusal": first_refusal,
                "refusals": refusals, "alive_when_full": alive_when_full,
                "healthz_when_full": healthz, "statuses_after_space_back": after_space,
                "missing_after_restart": len(missing),
                "ok": first_refusal is not None and first_refusal["status"] == 503
                and alive_when_full and 201 in after_space and not missing}
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


# --- jwks --------------------------------------------------------------------------------

def b64u(n, length):
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()


def jwks_scenario(work):
    key = ec.generate_private_key(ec.SECP256R1())
    nums = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": b64u(nums.x, 32), "y": b64u(nums.y, 32),
           "kid": "soak-1", "alg": "ES256", "use": "sig"}
    fetches = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            fetches[0] += 1
            body = json.dumps({"keys": [jwk]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    issuer = "https://login.soak.example"
    config = os.path.join(work, "jwks.toml")
    with open(config, "w") as f:
        f.write(f'[[oauth.external_issuers]]\nissuer = "{issuer}"\naudience = "scopecast"\n'
                f'jwks_uri = "http://127.0.0.1:{server.server_address[1]}/jwks.json"\n'
                f'require_typ = false\n')
    broker = Broker(os.path.join(work, "jwks"), config=config).start()
    client_id, _ = broker.client("Foreign", "subscribe:soak.>")

    def foreign_token(kid, signer=key):
        now = int(time.time())
        return jwt.encode({"iss": issuer, "aud": "scopecast", "client_id": client_id,
                           "sub": client_id, "scope": "subscribe:soak.>", "iat": now,
                           "exp": now + 300, "jti": str(uuid.uuid4())},
                          signer, algorithm="ES256", headers={"kid": kid})

    async def attempt(token):
        try:
            ws = await ws_connect(broker, token)
            await ws.close()
            return 101
        except InvalidStatus as e:
            return e.response.status_code

    async def main():
        up = await attempt(foreign_token("soak-1"))
        server.shutdown()
        server.server_close()
        down_cached = [await attempt(foreign_token("soak-1")) for _ in range(20)]
        stranger = ec.generate_private_key(ec.SECP256R1())
        down_unknown = [await attempt(foreign_token(f"k{i}", stranger)) for i in range(200)]
        return up, down_cached, down_unknown

    up, cached, unknown = asyncio.run(main())
    broker.stop()
    return {"scenario": "jwks", "with_endpoint_up": up,
            "cached_kid_while_down": sorted(set(cached)),
            "unknown_kid_while_down": sorted(set(unknown)), "jwks_fetches": fetches[0],
            "ok": up == 101 and set(cached) == {101} and set(unknown) == {401}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10, help="length of the churn run")
    p.add_argument("--rounds", type=int, default=5, help="SIGKILL rounds")
    p.add_argument("--only", default="churn,unread,kill,disk,jwks")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p scopecast-cli")
    results = []
    with tempfile.TemporaryDirectory(prefix="scopecast-soak-") as work:
        for name in args.only.split(","):
            started = time.time()
            if name == "churn":
                r = churn(work, args.minutes)
            elif name == "unread":
                r = unread(work)
            elif name == "kill":
                r = kill(work, args.rounds)
            elif name == "disk":
                r = disk(work)
            elif name == "jwks":
                r = jwks_scenario(work)
            else:
                sys.exit(f"unknown scenario {name}")
            r["seconds"] = round(time.time() - started, 1)
            print(json.dumps(r), flush=True)
            results.append(r)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=2)
    sys.exit(0 if all(r.get("ok") is not False for r in results) else 1)


if __name__ == "__main__":
    main()
