#!/usr/bin/env python3
"""Helpers of bench/soak.sh (standard library only).

  soakbot.py bot    --port P --secret S     a forward bot: verifies X-Coexist-Signature, answers
                                            each `message` event with one text reply
                                            "soak <received_at> <event id>", anything else with {}
  soakbot.py graph  --port P --token T      a fake Graph API: POST …/messages answers
                                            {"messages":[{"id":"wamid.soak<N>"}]} and measures
                                            now_ms - received_at (from the reply text): ingress
                                            accepted -> reply at the Graph API
  soakbot.py sample --out CSV …             once a second: RSS and CPU of every process, Redis
                                            memory, queue lag, the fake's latency, one CSV row

The two servers are a hand-rolled HTTP/1.1 keep-alive loop on asyncio (Content-Length bodies
only: what reqwest sends), so that at ~2,500 requests/s they take a small share of one core and
are not the bottleneck of the soak. Both answer GET /_stats with their counters (JSON).
"""
import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

CL = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)
SIG = re.compile(rb"\r\nx-coexist-signature: *(sha256=[0-9a-f]+)", re.I)
AUTH = re.compile(rb"\r\nauthorization: *Bearer +(\S+)", re.I)
SOAK = re.compile(rb"soak (\d+) ([^\"\\]+)")


class Http(asyncio.Protocol):
    """One keep-alive connection; `handler(head, body) -> (status, bytes)`."""

    def __init__(self, handler):
        self.handler = handler
        self.buf = bytearray()
        self.t = None

    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.buf += data
        out = []
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                break
            head = bytes(self.buf[:i + 2])
            m = CL.search(head)
            n = int(m.group(1)) if m else 0
            if len(self.buf) < i + 4 + n:
                break
            body = bytes(self.buf[i + 4:i + 4 + n])
            del self.buf[:i + 4 + n]
            status, payload = self.handler(head, body)
            out.append(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                       % (status, len(payload)))
            out.append(payload)
        if out:
            self.t.write(b"".join(out))


def serve(port, handler):
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: Http(handler), "127.0.0.1", port, backlog=1024))
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, loop.stop)
    return loop, server


# ------------------------------------------------------------------ forward bot
def run_bot(a):
    secret = a.secret.encode()
    st = {"events": 0, "messages": 0, "bad_signature": 0, "bad_json": 0, "types": {}}

    def handle(head, body):
        if head.startswith(b"GET /_stats"):
            return 200, json.dumps(st).encode()
        st["events"] += 1
        m = SIG.search(head)
        want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not m or not hmac.compare_digest(m.group(1).decode(), want):
            st["bad_signature"] += 1
            return 403, b"{}"
        try:
            ev = json.loads(body)
        except ValueError:
            st["bad_json"] += 1
            return 400, b"{}"
        t = ev.get("type", "?")
        st["types"][t] = st["types"].get(t, 0) + 1
        if t == "outbound.failed":  # a reply that could not be sent: count why
            o = ev.get("outbound") or {}
            code = "%s/%s" % (o.get("code"), o.get("provider_code"))
            st.setdefault("failed", {})[code] = st.setdefault("failed", {}).get(code, 0) + 1
            if st["failed"][code] <= 3:
                print("outbound.failed: " + json.dumps(o)[:600], file=sys.stderr, flush=True)
        if t != "message":
            return 200, b"{}"
        st["messages"] += 1
        text = "soak %d %s" % (ev.get("received_at", 0), ev.get("id", ""))
        return 200, json.dumps({"replies": [{"type": "text", "text": text}]}).encode()

    loop, _ = serve(a.port, handle)
    loop.run_forever()
    print(json.dumps(st), file=sys.stderr)


# ------------------------------------------------------------------ fake Graph API
def run_graph(a):
    token = a.token.encode()
    st = {"requests": 0, "replies": 0, "duplicates": 0, "unauthorized": 0, "unparsed": 0,
          "sec": 0, "n": 0, "p50": None, "p99": None, "max": None, "lat_total_ms": 0}
    seen = set()
    cur = {"sec": int(time.time()), "lat": []}
    all_lat = []  # every latency in ms (1 int per reply; a few MB for a 10-minute soak)
    lat_log = open(a.lat_out, "w") if a.lat_out else None

    def roll(now_sec):
        lat = sorted(cur["lat"])
        if lat_log is not None:
            lat_log.write("%d,%d,%s,%s,%s\n" % (cur["sec"], len(lat),
                          pct(lat, 0.5), pct(lat, 0.99), lat[-1] if lat else ""))
            lat_log.flush()
        st.update(sec=cur["sec"], n=len(lat), p50=pct(lat, 0.5), p99=pct(lat, 0.99),
                  max=lat[-1] if lat else None)
        cur["sec"] = now_sec
        cur["lat"] = []

    def handle(head, body):
        now = time.time()
        sec = int(now)
        if sec != cur["sec"]:
            roll(sec)
        if head.startswith(b"GET /_stats"):
            out = dict(st)
            if a.overall:
                s = sorted(all_lat)
                out.update(all_n=len(s), all_p50=pct(s, 0.5), all_p99=pct(s, 0.99),
                           all_p999=pct(s, 0.999), all_max=s[-1] if s else None)
            return 200, json.dumps(out).encode()
        st["requests"] += 1
        m = AUTH.search(head)
        if not m or m.group(1) != token:
            st["unauthorized"] += 1
            return 401, b'{"error":{"message":"Invalid OAuth access token","type":"OAuthException","code":190}}'
        m = SOAK.search(body)
        if m:
            lat = int(now * 1000) - int(m.group(1))
            cur["lat"].append(lat)
            all_lat.append(lat)
            st["lat_total_ms"] += lat
            h = hash(m.group(2))
            if h in seen:
                st["duplicates"] += 1
            else:
                seen.add(h)
        else:
            st["unparsed"] += 1
        st["replies"] += 1
        return 200, b'{"messaging_product":"whatsapp","messages":[{"id":"wamid.soak%d"}]}' % st["requests"]

    async def ticker():  # roll seconds even when no request comes
        while True:
            await asyncio.sleep(1 - time.time() % 1 + 0.001)
            s = int(time.time())
            if s != cur["sec"]:
                roll(s)

    loop, _ = serve(a.port, handle)
    loop.create_task(ticker())
    loop.run_forever()
    print(json.dumps({k: v for k, v in st.items()}), file=sys.stderr)


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


# ------------------------------------------------------------------ sampler
def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])  # utime + stime
    except OSError:
        return None


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v), v[3] + v[4]


def redis_info(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"$"):
                n = int(data[1:data.index(b"\r\n")])
                if len(data) >= data.index(b"\r\n") + 2 + n:
                    break
        s.close()
        for line in data.decode().splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
    except (OSError, ValueError):
        return None
    return None


def http_get(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except Exception:  # noqa: BLE001 — a missed sample is an empty cell
        return None


METRIC = re.compile(r"^(coexist_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


def metric_sums(text, names):
    out = dict.fromkeys(names, 0.0)
    for m in METRIC.finditer(text):
        if m.group(1) in out:
            out[m.group(1)] += float(m.group(3))
    return out


def run_sample(a):
    procs = [p.split("=", 1) for p in a.proc]  # name=pid
    procs = [(n, int(p)) for n, p in procs]
    hz = os.sysconf("SC_CLK_TCK")
    cols = ["t", "elapsed_s"]
    for n, _ in procs:
        cols += ["rss_mb_" + n, "cpu_" + n]
    cols += ["machine_busy_cores", "redis_used_mb", "enqueued", "handled", "lag_events",
             "outbound_queued", "sent", "outbound_backlog",
             "q_length", "q_pending", "q_lag", "q_dead", "q_out_backlog", "q_out_oldest_ms",
             "replies", "lat_n", "lat_p50_ms", "lat_p99_ms", "lat_max_ms", "bot_events"]
    out = open(a.out, "w")
    out.write(",".join(cols) + "\n")
    out.flush()
    prev_cpu = {pid: cpu_ticks(pid) for _, pid in procs}
    prev_m = machine_busy()
    start = time.time()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    prev_t = time.time()
    while not stop["now"]:
        time.sleep(max(0.0, 1 - time.time() % 1))
        now = time.time()
        dt = now - prev_t
        prev_t = now
        row = {"t": "%.0f" % now, "elapsed_s": "%.0f" % (now - start)}
        for n, pid in procs:
            r = rss_kb(pid)
            c = cpu_ticks(pid)
            row["rss_mb_" + n] = "%.1f" % (r / 1024) if r is not None else ""
            if c is not None and prev_cpu.get(pid) is not None:
                row["cpu_" + n] = "%.2f" % ((c - prev_cpu[pid]) / hz / dt)
            prev_cpu[pid] = c
        m = machine_busy()
        tot = m[0] - prev_m[0]
        row["machine_busy_cores"] = "%.2f" % ((tot - (m[1] - prev_m[1])) / tot * os.cpu_count()) if tot else ""
        prev_m = m
        if a.redis_port:
            u = redis_info(a.redis_port)
            row["redis_used_mb"] = "%.1f" % (u / 1048576) if u is not None else ""
        # counters: enqueued by the ingress, handled by the workers (every /metrics page summed)
        names = ["coexist_events_enqueued_total", "coexist_events_handled_total",
                 "coexist_outbound_queued_total", "coexist_messages_sent_total"]
        sums = dict.fromkeys(names, 0.0)
        ok = True
        for url in a.metrics:
            body = http_get(url)
            if body is None:
                ok = False
                continue
            for k, v in metric_sums(body.decode(), names).items():
                sums[k] += v
        if ok:
            row["enqueued"] = "%d" % sums[names[0]]
            row["handled"] = "%d" % sums[names[1]]
            row["lag_events"] = "%d" % (sums[names[0]] - sums[names[1]])
            row["outbound_queued"] = "%d" % sums[names[2]]
            row["sent"] = "%d" % sums[names[3]]
            row["outbound_backlog"] = "%d" % (sums[names[2]] - sums[names[3]])
        if a.queues_cmd:
            try:
                q = json.loads(subprocess.run(a.queues_cmd, shell=True, capture_output=True,
                                              timeout=5).stdout)
                agg = {"length": 0, "pending": 0, "lag": 0, "dead": 0}
                ob, oldest = 0, 0
                outbound = {}  # one row per partition; the channel's outbound repeats in each
                for p in q:
                    for k in agg:
                        agg[k] += int(p.get(k) or 0)
                    outbound[p.get("channel")] = p.get("outbound") or {}
                for o in outbound.values():
                    ob += int(o.get("backlog") or 0)
                    oldest = max(oldest, int(o.get("oldest_ms") or 0))
                for k, v in agg.items():
                    row["q_" + k] = str(v)
                row["q_out_backlog"] = str(ob)
                row["q_out_oldest_ms"] = str(oldest)
            except Exception:  # noqa: BLE001
                pass
        g = http_get(a.graph + "/_stats")
        if g:
            g = json.loads(g)
            row["replies"] = str(g["replies"])
            if g["sec"] == int(now) - 1:
                row["lat_n"] = str(g["n"])
                for k in ("p50", "p99", "max"):
                    row["lat_%s_ms" % k] = "" if g[k] is None else str(g[k])
        b = http_get(a.bot + "/_stats")
        if b:
            row["bot_events"] = str(json.loads(b)["events"])
        out.write(",".join(row.get(c, "") for c in cols) + "\n")
        out.flush()


def run_redis_keys(a):
    """Keys by kind (the key with ids and numbers blanked) from 20,000 RANDOMKEY samples scaled
    to DBSIZE (a SCAN of millions of keys takes minutes on a busy Redis), and each kind's memory
    from MEMORY USAGE of up to 50 of its sampled keys."""
    def cli(cmds):
        return subprocess.run(["redis-cli", "-p", str(a.port)], input="".join(cmds).encode(),
                              capture_output=True).stdout.decode().splitlines()
    total = int(cli(["DBSIZE\n"])[0])
    sampled = cli(["RANDOMKEY\n"] * a.samples)
    kinds = {}
    for k in sampled:
        if not k:
            continue
        parts = k.split(":")
        kind = ":".join(parts[:3]) + (":*" if len(parts) > 3 else "")
        kind = re.sub(r"\d+$", "N", kind)
        kinds.setdefault(kind, []).append(k)
    rows = []
    n_sampled = sum(len(v) for v in kinds.values()) or 1
    for kind, keys in kinds.items():
        uniq = sorted(set(keys))[:50]
        sizes = [int(x) for x in cli(["MEMORY USAGE %s\n" % k for k in uniq]) if x.isdigit()]
        avg = sum(sizes) / len(sizes) if sizes else 0
        n = len(keys) * total / n_sampled
        rows.append((avg * n, kind, n, avg))
    rows.sort(reverse=True)
    print("%d keys; by kind from %d RANDOMKEY samples (kinds of few keys are missed)" % (total, a.samples))
    print("%-40s %12s %12s %10s" % ("kind", "keys (est.)", "bytes/key", "MB (est.)"))
    for est, kind, n, avg in rows:
        print("%-40s %12.0f %12.0f %10.1f" % (kind, n, avg, est / 1048576))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bot")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--secret", default=os.environ.get("FORWARD_SECRET", ""))
    g = sub.add_parser("graph")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--token", default=os.environ.get("SOAK_WABA_TOKEN", ""))
    g.add_argument("--lat-out", help="CSV of per-second latency (sec,n,p50,p99,max)")
    g.add_argument("--overall", action="store_true", help="GET /_stats also gives overall percentiles")
    s = sub.add_parser("sample")
    s.add_argument("--out", required=True)
    s.add_argument("--proc", action="append", default=[], help="name=pid (repeat)")
    s.add_argument("--redis-port", type=int)
    s.add_argument("--metrics", action="append", default=[], help="a /metrics URL (repeat; summed)")
    s.add_argument("--queues-cmd", help="shell command printing `coexist queues --json`")
    s.add_argument("--graph", required=True)
    s.add_argument("--bot", required=True)
    k = sub.add_parser("redis-keys")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--samples", type=int, default=20000)
    a = ap.parse_args()
    {"bot": run_bot, "graph": run_graph, "sample": run_sample, "redis-keys": run_redis_keys}[a.cmd](a)


if __name__ == "__main__":
    main()
