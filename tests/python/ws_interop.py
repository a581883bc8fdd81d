"""Interop check with a WebSocket client not written here (Python's `websockets`).

Connects to /v1/stream with the scopecast.v1 subprotocol and a Bearer token, reads `welcome`,
subscribes to an allowed pattern and to a forbidden one, prints READY, waits for one event, and
prints one JSON summary line. Run by tests/tests/interop_python.rs, which publishes the event.
"""

import argparse
import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def next_frame(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="ws://host:port/v1/stream")
    parser.add_argument("--token", required=True)
    parser.add_argument("--allowed", required=True)
    parser.add_argument("--forbidden", required=True)
    args = parser.parse_args()

    headers = {"Authorization": f"Bearer {args.token}"}
    async with connect(args.url, subprotocols=["scopecast.v1"], additional_headers=headers) as ws:
        if ws.subprotocol != "scopecast.v1":
            raise SystemExit(f"subprotocol {ws.subprotocol!r}")
        welcome = await next_frame(ws)
        assert welcome["type"] == "welcome", welcome
        await ws.send(json.dumps({"type": "subscribe", "id": "ok", "topic": args.allowed}))
        subscribed = await next_frame(ws)
        assert subscribed["type"] == "subscribed" and subscribed["id"] == "ok", subscribed
        await ws.send(json.dumps({"type": "subscribe", "id": "no", "topic": args.forbidden}))
        refused = await next_frame(ws)
        assert refused["type"] == "error" and refused["id"] == "no", refused
        print("READY", flush=True)
        event = await next_frame(ws, timeout=20)
        assert event["type"] == "event", event
        print(json.dumps({"welcome_client_id": welcome["client_id"], "refused": refused, "event": event}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
