# A FHIR Subscriptions websocket client (README, "Quickstart: FHIR Subscriptions"):
# python3 fhir_ws_client.py BROKER_URL ACCESS_TOKEN SUBSCRIPTION_ID [NOTIFICATIONS]
import asyncio, json, sys, urllib.error, urllib.request
import websockets  # pip install websockets

base, token, sub = sys.argv[1:4]
limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
req = urllib.request.Request(f"{base}/fhir/Subscription/{sub}/$get-ws-binding-token",
                             headers={"Authorization": f"Bearer {token}"})
try:
    params = {p["name"]: p for p in json.load(urllib.request.urlopen(req))["parameter"]}
except urllib.error.HTTPError as refused:  # an OperationOutcome says why
    sys.exit(refused.read().decode())

async def main(seen=0):
    async with websockets.connect(params["websocket-url"]["valueUrl"]) as ws:
        await ws.send("bind-with-token " + params["token"]["valueString"])
        async for text in ws:
            msg = json.loads(text)
            if msg.get("resourceType") != "Bundle":  # an OperationOutcome: a refusal
                print(text, flush=True)
                continue
            status = msg["entry"][0]["resource"]
            events = [(e["eventNumber"], e.get("focus", {}).get("reference"))
                      for e in status.get("notificationEvent", [])]
            print(status["type"], status["eventsSinceSubscriptionStart"], events, flush=True)
            seen += 1
            if seen == limit:
                return

asyncio.run(main())
