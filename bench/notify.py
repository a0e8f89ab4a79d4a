#!/usr/bin/env python3
"""Notification latency: transfers created at a steady rate through
/ingest/dokument, delivered by the gateway's rest-hook Subscription to a
local receiver; reports p50/p99/max from the moment the push was
acknowledged (201) to the moment the notification arrived.

    bench/notify.sh  (builds, starts the gateway, runs this)
    bench/notify.py --base http://127.0.0.1:PORT --token TOKEN [--rate 100] [--seconds 20]
"""
import argparse, json, threading, time, urllib.request, http.server, statistics, sys, os

ap = argparse.ArgumentParser()
ap.add_argument("--base", required=True)
ap.add_argument("--token", required=True)
ap.add_argument("--rate", type=float, default=100.0)
ap.add_argument("--seconds", type=float, default=20.0)
ap.add_argument("--testdata", default=os.path.join(os.path.dirname(__file__), "../../shared/testdata/dokument-utskrivning.json"))
args = ap.parse_args()

arrived = {}
lock = threading.Lock()

class Hook(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        now = time.monotonic()
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        task = self.path.rsplit("/", 1)[-1]
        with lock:
            arrived.setdefault(task, now)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    do_POST = do_PUT
    def log_message(self, *a):
        pass

class Receiver(http.server.ThreadingHTTPServer):
    # The default listen backlog (5) drops connection attempts when the gateway
    # delivers a batch in parallel; the client's SYN retry then costs 1 s.
    request_queue_size = 128

server = Receiver(("127.0.0.1", 0), Hook)
threading.Thread(target=server.serve_forever, daemon=True).start()
hook = f"http://127.0.0.1:{server.server_address[1]}/hook"

def call(method, path, body, ctype="application/fhir+json"):
    req = urllib.request.Request(args.base + path, data=json.dumps(body).encode(), method=method,
                                 headers={"authorization": "Bearer " + args.token, "content-type": ctype})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.load(r)

status, sub = call("POST", "/fhir/Subscription", {
    "resourceType": "Subscription", "status": "requested", "reason": "latency benchmark",
    "criteria": "Task?status=requested",
    "channel": {"type": "rest-hook", "endpoint": hook, "payload": "application/fhir+json"}})
assert status == 201, sub
record = json.load(open(args.testdata, encoding="utf-8"))
created = {}
interval = 1.0 / args.rate
start = time.monotonic()
n = 0
while time.monotonic() - start < args.seconds:
    due = start + n * interval
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    record["recordId"] = f"notify-bench-{start}-{n}"
    status, receipt = call("POST", "/ingest/dokument", record, "application/json")
    assert status == 201, receipt
    task = next(r.split("/", 1)[1] for r in receipt["resources"] if r.startswith("Task/"))
    created[task] = time.monotonic()
    n += 1
sent_seconds = time.monotonic() - start
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    with lock:
        if all(t in arrived for t in created):
            break
    time.sleep(0.05)
with lock:
    lat = sorted((arrived[t] - c) * 1000 for t, c in created.items() if t in arrived)
missing = len(created) - len(lat)
def pct(p):
    return lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else float("nan")
result = {"transfers": len(created), "achieved_rate": round(len(created) / sent_seconds, 1), "missing": missing,
          "p50_ms": round(pct(50), 1), "p99_ms": round(pct(99), 1), "max_ms": round(lat[-1], 1) if lat else None,
          "mean_ms": round(statistics.mean(lat), 1) if lat else None}
print(json.dumps(result))
sys.exit(1 if missing else 0)
