#!/usr/bin/env python3
"""Summary and plot of one soak CSV (bench/soak.sh, bench/soakbot.py sample).

  soak_plot.py target/soak/soak-split.csv --png bench/soak/soak-split.png \
      [--loadgen soak-split-loadgen.json] [--graph soak-split-graph.json] [--json summary.json]

The load window is found from the ingress's counter (first second with events enqueued to the
last second it grew). "Warm-up" is the first minute of load (or the first 10 % of a shorter
run); the slopes are least-squares fits over the second half of the load window (minutes 5-10
of a 10-minute soak), in MB/min. The PNG needs matplotlib (the summary does not).
"""
import argparse
import csv
import json
import statistics
import sys


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def slope_per_min(xs, ys):
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(pts) < 3:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx * 60


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--png")
    ap.add_argument("--loadgen")
    ap.add_argument("--graph")
    ap.add_argument("--json")
    ap.add_argument("--title", default="")
    a = ap.parse_args()

    rows = list(csv.DictReader(open(a.csv)))
    if not rows:
        sys.exit("no samples")
    cols = rows[0].keys()
    t = [num(r["t"]) for r in rows]
    enq = [num(r.get("enqueued")) for r in rows]
    # load window: first sample with events enqueued .. last sample where the count grew
    start = next((i for i, e in enumerate(enq) if e), 0)
    end = start
    for i in range(start + 1, len(enq)):
        if enq[i] is not None and enq[i - 1] is not None and enq[i] > enq[i - 1]:
            end = i
    t0 = t[start]
    load_secs = t[end] - t0
    warm = t0 + min(60, 0.1 * load_secs)
    half = t0 + load_secs / 2
    rel = [(x - t0) / 60 for x in t]  # minutes since the load began

    def series(c):
        return [num(r.get(c)) for r in rows]

    def at(c, when):
        s = series(c)
        best = min(range(len(t)), key=lambda i: abs(t[i] - when) if s[i] is not None else 1e18)
        return s[best]

    procs = [c[len("rss_mb_"):] for c in cols if c.startswith("rss_mb_")]
    summary = {"csv": a.csv, "load_secs": load_secs, "samples": len(rows), "procs": {}}
    in_load = [i for i in range(len(t)) if t0 <= t[i] <= t[end]]
    late = [i for i in in_load if t[i] >= half]
    for p in procs + ["redis_used"]:
        c = "rss_mb_" + p if p != "redis_used" else "redis_used_mb"
        s = series(c)
        if all(v is None for v in s):
            continue
        cpu = [num(rows[i].get("cpu_" + p)) for i in in_load]
        cpu = [v for v in cpu if v is not None]
        summary["procs"][p] = {
            "mb_start": at(c, t0), "mb_after_warmup": at(c, warm), "mb_half": at(c, half),
            "mb_end": at(c, t[end]),
            "mb_max": max(v for v in s if v is not None),
            "slope_mb_per_min_2nd_half": slope_per_min([t[i] for i in late], [s[i] for i in late]),
            "cpu_cores_avg": round(statistics.mean(cpu), 3) if cpu else None,
        }

    def mx(c, idx=None):
        s = series(c)
        vals = [s[i] for i in (idx if idx is not None else range(len(s))) if s[i] is not None]
        return max(vals) if vals else None

    summary["lag"] = {
        "events_max": mx("lag_events", in_load), "events_after_drain": series("lag_events")[-1],
        "outbound_backlog_max": mx("outbound_backlog", in_load),
        "outbound_backlog_after_drain": series("outbound_backlog")[-1],
        "queues_lag_max": mx("q_lag", in_load), "queues_pending_max": mx("q_pending", in_load),
        "queues_length_max": mx("q_length", in_load),
        "queues_outbound_backlog_max": mx("q_out_backlog", in_load),
        "queues_outbound_oldest_ms_max": mx("q_out_oldest_ms", in_load),
        "dead_letters_end": series("q_dead")[-1],
    }
    p99 = series("lat_p99_ms")
    p50 = series("lat_p50_ms")
    first = [i for i in in_load if t[i] < half and p99[i] is not None]
    second = [i for i in in_load if t[i] >= half and p99[i] is not None]
    med = lambda s, idx: statistics.median([s[i] for i in idx]) if idx else None  # noqa: E731
    summary["latency_per_second"] = {
        "p50_median_1st_half_ms": med(p50, first), "p50_median_2nd_half_ms": med(p50, second),
        "p99_median_1st_half_ms": med(p99, first), "p99_median_2nd_half_ms": med(p99, second),
        "p99_slope_ms_per_min_2nd_half": slope_per_min([t[i] for i in second], [p99[i] for i in second]),
        "p99_worst_second_ms": mx("lat_p99_ms", in_load), "max_ms": mx("lat_max_ms", in_load),
        "seconds_with_p99_over_100ms": sum(1 for i in in_load if (p99[i] or 0) > 100),
        "seconds_with_p99_over_1s": sum(1 for i in in_load if (p99[i] or 0) > 1000),
    }
    busy = [num(rows[i].get("machine_busy_cores")) for i in in_load]
    busy = [b for b in busy if b is not None]
    summary["machine_busy_cores_avg"] = round(statistics.mean(busy), 2) if busy else None
    if a.loadgen:
        try:
            lg = json.load(open(a.loadgen))
            summary["loadgen"] = {k: lg.get(k) for k in ("rate", "measured_secs", "measured_requests",
                                                         "requests_per_sec", "ok_per_sec", "status",
                                                         "transport_errors", "unanswered",
                                                         "events_in_200_posts", "latency_ms",
                                                         "service_time_ms", "cpu_cores")}
        except (OSError, ValueError):
            pass
    if a.graph:
        try:
            summary["graph"] = json.load(open(a.graph))
        except (OSError, ValueError):
            pass
    enq_end = enq[-1]
    summary["counts"] = {"enqueued": enq_end, "handled": series("handled")[-1],
                         "outbound_queued": series("outbound_queued")[-1], "sent": series("sent")[-1],
                         "replies_at_graph": series("replies")[-1], "bot_events": series("bot_events")[-1]}
    text = json.dumps(summary, indent=1, default=str)
    print(text)
    if a.json:
        open(a.json, "w").write(text + "\n")

    if not a.png:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no PNG; PYTHON=/path/to/venv/bin/python)", file=sys.stderr)
        return
    fig, ax = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    for p in procs:
        if p in ("loadgen",):
            continue
        ax[0].plot(rel, series("rss_mb_" + p), label=p, lw=1)
    ax[0].set_ylabel("VmRSS (MB)")
    ax[0].legend(loc="upper left", fontsize=8, ncol=4)
    ax[0].set_title(a.title or "soak: " + a.csv.rsplit("/", 1)[-1])
    if any(v is not None for v in series("redis_used_mb")):
        ax[1].plot(rel, series("redis_used_mb"), label="Redis used_memory", color="tab:red", lw=1)
        ax[1].set_ylabel("Redis used_memory (MB)")
    else:
        ax[1].plot(rel, series("rss_mb_run"), label="run VmRSS", color="tab:red", lw=1)
        ax[1].set_ylabel("run VmRSS (MB)")
    ax[1].legend(loc="upper left", fontsize=8)
    ax[2].plot(rel, series("lag_events"), label="events enqueued - handled", lw=1)
    ax[2].plot(rel, series("outbound_backlog"), label="replies queued - sent", lw=1)
    if any(v is not None for v in series("q_pending")):
        ax[2].plot(rel, series("q_pending"), label="queues: pending", lw=1, ls=":")
    ax[2].set_ylabel("lag (entries)")
    ax[2].legend(loc="upper left", fontsize=8)
    ax[3].plot(rel, p99, label="p99", lw=1, color="tab:purple")
    ax[3].plot(rel, p50, label="p50", lw=1, color="tab:green")
    ax[3].set_yscale("symlog", linthresh=10)
    ax[3].set_ylabel("webhook -> reply at Graph (ms)")
    ax[3].set_xlabel("minutes since the load began")
    ax[3].legend(loc="upper left", fontsize=8)
    for x in ax:
        x.grid(alpha=0.3)
        x.axvline((half - t0) / 60, color="grey", lw=0.5, ls="--")
    fig.tight_layout()
    fig.savefig(a.png, dpi=80)
    print("plot: " + a.png, file=sys.stderr)


if __name__ == "__main__":
    main()
