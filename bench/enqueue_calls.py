#!/usr/bin/env python3
"""Writes the Redis commands of one enqueue workload, as RESP, for bench/enqueue-cost.sh.

    enqueue_calls.py VARIANT CALLS EVENTS_PER_CALL [SHA] > commands.resp

Every variant writes the same events (normalized-event JSON of the size ingress writes, 70 %
messages and 30 % statuses, unique ids, 5,000 contacts over 4 partitions); only the commands
that carry them differ:

  xadd           one XADD per event                     (what a bare receiver pays)
  set-xadd       SET NX EX + XADD per event, pipelined  (the two writes, not atomic)
  script-writes  the same two writes inside one EVALSHA per call  (SHA: enqueue-writes.lua)
  enqueue        src/lua/enqueue.lua's own layout, one EVALSHA per call (SHA: enqueue.lua)
"""
import json
import random
import sys

PARTITIONS = 4
TTL = 8 * 24 * 3600
MAXLEN = 1_000_000
CHANNEL = "shop"


def resp(out, args):
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    out.write(b"*%d\r\n" % len(parts))
    for p in parts:
        out.write(b"$%d\r\n%s\r\n" % (len(p), p))


def event(n, rnd):
    contact = str(5511900000000 + rnd.randrange(5000))
    wamid = "wamid.HBgLNTUxMTE3MDM1NzcxFQIAEhgUAAAAAAAA%012dAAAAAAAAAgqcjUyI=" % n
    head = {"id": wamid, "channel": CHANNEL, "kind": "waba", "conversation": contact,
            "at": 1796456727000, "received_at": 1796456729779, "contact": {"wa_id": contact}}
    if rnd.random() < 0.3:
        status = {"message_id": wamid, "status": "delivered", "recipient": contact,
                  "pricing": {"billable": True, "category": "service", "pricing_model": "PMP",
                              "type": "regular"},
                  "conversation": {"id": "0c5661df0505a7c5ab86a0e9f097266f",
                                   "origin": {"type": "service"}}}
        body = dict(head, type="status", status=status,
                    raw=dict(status, recipient_id=contact, timestamp="1796456725"))
        body["id"] = wamid + ":delivered"
    else:
        text = "Olá, quero saber do pedido nº %d — obrigado!" % n
        body = dict(head, type="message",
                    message={"id": wamid, "type": "text", "text": text},
                    raw={"from": contact, "id": wamid, "text": {"body": text},
                         "timestamp": "1796456727", "type": "text"})
        body["contact"]["name"] = "Cliente %d" % (n % 977)
    return body["id"], contact, json.dumps(body, ensure_ascii=False).encode()


def main():
    variant, calls, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sha = sys.argv[4] if len(sys.argv) > 4 else ""
    rnd = random.Random(7)
    out = sys.stdout.buffer
    prefix = "cx:{%s}:" % CHANNEL
    n = 0
    for _ in range(calls):
        events = []
        for _ in range(per):
            n += 1
            events.append(event(n, rnd))
        if variant in ("script-writes", "enqueue"):
            keys = [prefix + "alias"] + [prefix + "in:%d" % p for p in range(PARTITIONS)]
            keys += [prefix + "seen:" + eid for eid, _, _ in events]
            argv = [TTL, MAXLEN, PARTITIONS]
            for _, contact, payload in events:
                argv += [payload, 1, contact, int(contact) % PARTITIONS]
            resp(out, ["EVALSHA", sha, len(keys)] + keys + argv)
            continue
        for eid, contact, payload in events:
            if variant == "set-xadd":
                resp(out, ["SET", prefix + "seen:" + eid, 1, "NX", "EX", TTL])
            elif variant != "xadd":
                sys.exit("unknown variant " + variant)
            stream = prefix + "in:%d" % (int(contact) % PARTITIONS)
            resp(out, ["XADD", stream, "MAXLEN", "~", MAXLEN, "*", "e", payload, "c", contact])


if __name__ == "__main__":
    main()
