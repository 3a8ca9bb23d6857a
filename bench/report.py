"""The results as text tables and as PNG plots (matplotlib, Agg backend)."""

import os


def _fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(title, header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    lines = [title, "  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _integrity(result):
    parts = [f"lost {result['lost']}", f"dup {result['duplicates']}"]
    if result.get("strays"):
        parts.append(f"stray {result['strays']}")
    if result.get("reordered"):
        parts.append(f"reorder {result['reordered']}")
    if result.get("other_frames"):
        parts.append(f"other {result['other_frames']}")
    if result.get("closed"):
        parts.append(f"closed {result['closed']}")
    return ", ".join(parts)


def _per_delivery(step, key="server_cpu_us_per_delivery"):
    """Server CPU per delivery, where there were enough deliveries for the 10 ms CPU-time
    ticks and the idle loops (pings, sweeps) not to dominate it."""
    if step.get("received", 0) < 1000:
        return "-"
    return _fmt(step.get(key))


def _fate(fate):
    text = f"received {fate['received']}/{fate['expected']}"
    if fate.get("connection_ended"):
        code = fate["close_code"]
        how = f"close frame {code}" if code is not None else "no close frame (TCP closed: 1006)"
        text += f"; dropped by the server ({how})"
    else:
        text += "; still connected (not dropped)"
    if not fate.get("got_gapless_prefix", True):
        text += "; NOT a gapless prefix of what was sent"
    return text


def tables(results):
    out = []
    cap = results.get("capacity")
    if cap and not cap.get("error"):
        rows = []
        for s in cap["steps"]:
            b = s["broadcast"]
            rows.append([
                s["connections"], s["connect_failures"], _fmt(s["connects_per_s"], 0),
                _fmt(s["rss_kb"] / 1024), _fmt(s["rss_per_conn_kb"]), _fmt(s["marginal_kb_per_conn"]),
                f"{b['received']}/{b['expected']}", _fmt(b["latency_ms"]["p50"]), _fmt(b["latency_ms"]["p99"]),
                _fmt(b["latency_ms"]["max"]), _integrity(b),
            ])
        out.append(_table(
            f"(a) capacity: idle WebSockets ({cap['cluster']}); baseline RSS "
            f"{cap['baseline_rss_kb'] / 1024:.1f} MiB",
            ["conns", "failed", "conn/s", "RSS MiB", "kB/conn", "marginal kB", "broadcast", "p50 ms", "p99 ms",
             "max ms", "integrity"],
            rows,
        ))
    for key, name in (("fanout_ws", "(b) fan-out to WebSockets"), ("fanout_sse", "(d) fan-out to SSE streams")):
        fan = results.get(key)
        if fan and not fan.get("error"):
            rows = []
            for s in fan["sizes"]:
                lat, comp = s["latency_ms"], s["completion_ms"]
                rows.append([
                    s["size"], s["messages"], f"{s['received']}/{s['expected']}", _fmt(lat["p50"]),
                    _fmt(lat["p99"]), _fmt(lat["max"]), _fmt(comp["p50"]), _per_delivery(s),
                    _integrity(s),
                ])
            out.append(_table(
                f"{name} ({fan['cluster']}); one message at a time",
                ["members", "msgs", "delivered", "p50 ms", "p99 ms", "max ms", "all-in p50 ms", "srv us/deliv",
                 "integrity"],
                rows,
            ))
    tp = results.get("throughput")
    if tp:
        rows = []
        for run in tp.get("runs", []):
            if run.get("error"):
                rows.append([run["config"], run.get("shape", ""), "error", run["error"][:60]] + [""] * 7)
                continue
            for s in run["steps"]:
                rows.append([
                    run["config"], f"{run['rooms']}x{run['per_room']}", s["offered_deliveries_per_s"],
                    _fmt(s["deliveries_per_s"], 0), _fmt(s["latency_ms"]["p50"]), _fmt(s["latency_ms"]["p99"]),
                    _per_delivery(s), _per_delivery(s, "redis_db_cpu_us_per_delivery"),
                    "/".join(_fmt(p, 0) for p in s.get("worker_cpu_pct", [])),
                    _fmt(s["loadgen_cpu_pct"], 0),
                    "ok" if s["passed"] else "FAIL " + "; ".join(s["problems"]),
                ])
        out.append(_table(
            "(c) throughput: 2 senders per room, rising offered load (deliveries/s)",
            ["config", "rooms", "offered/s", "delivered/s", "p50 ms", "p99 ms", "srv us/deliv", "redis+db us",
             "worker CPU%", "gen CPU%", "verdict"],
            rows,
        ))
        summary = [
            [run["config"], f"{run['rooms']}x{run['per_room']}", _fmt(run["max_sustained_deliveries_per_s"], 0),
             _fmt((run.get("at_best") or {}).get("p99_ms")),
             _fmt((run.get("at_best") or {}).get("server_cpu_us_per_delivery")), run["stop_reason"][:70]]
            for run in tp.get("runs", []) if not run.get("error")
        ]
        out.append(_table("(c) max sustained deliveries/s", ["config", "rooms", "max/s", "p99 ms", "srv us/deliv",
                                                             "stopped by"], summary))
    slow = results.get("slow_client")
    if slow and not slow.get("error"):
        fate = slow["slow_client"]
        rows = []
        for tag in ("absent", "present"):
            r = slow[tag]
            rows.append([tag, f"{r['received']}/{r['expected']}", _fmt(r["latency_ms"]["p50"]),
                         _fmt(r["latency_ms"]["p99"]), _fmt(r["latency_ms"]["max"]), _integrity(r)])
        out.append(_table(
            f"(e) one slow client ({slow['members']} members, {slow['rate_messages_per_s']} msg/s of "
            f"~{slow['approx_frame_bytes']} B for {slow['seconds']}s; {slow['cluster']})",
            ["slow client", "delivered", "p50 ms", "p99 ms", "max ms", "integrity (others)"],
            rows,
        ) + "\n  the slow client itself: " + _fate(fate))
    peers = results.get("peers")
    if peers and not peers.get("error"):
        out.append(_peers_table(peers))
    errors = [f"{k}: {v['error']}" for k, v in results.items() if isinstance(v, dict) and v.get("error")]
    if errors:
        out.append("errors:\n  " + "\n  ".join(errors))
    return "\n\n".join(out)


def _peers_table(peers):
    """(f): one row per server and offered load, with idle memory per socket."""
    rows = []
    efficiency = {}
    for entry in peers["servers"]:
        tp, idle = entry.get("throughput") or {}, entry.get("idle") or {}
        idle_steps = [] if idle.get("error") else idle.get("steps", [])
        idle_kb = _fmt(idle_steps[-1]["rss_per_conn_kb"]) if idle_steps else "-"
        idle_n = idle_steps[-1]["connections"] if idle_steps else "-"
        if tp.get("error"):
            rows.append([entry["server"], "error", tp["error"][:60]] + [""] * 7 + [idle_n, idle_kb])
            continue
        for step in tp.get("steps", []):
            us = step.get("server_cpu_us_per_delivery")
            per_cpu_s = round(1e6 / us) if us else None
            efficiency.setdefault(step["offered_deliveries_per_s"], []).append((entry["server"], per_cpu_s))
            rows.append([
                entry["server"], step["offered_deliveries_per_s"], _fmt(step["deliveries_per_s"], 0),
                _fmt(step["latency_ms"]["p50"]), _fmt(step["latency_ms"]["p99"]), _per_delivery(step),
                _fmt(per_cpu_s), "/".join(_fmt(p, 0) for p in step.get("worker_cpu_pct", [])),
                _integrity(step), "ok" if step["passed"] else "FAIL", idle_n, idle_kb,
            ])
    text = _table(
        f"(f) beside Flask-SocketIO: {peers['shape']} rooms x members, {peers['workers']} gevent workers each, "
        f"Redis, {'PostgreSQL' if peers.get('db') == 'pg' else 'SQLite'} for this project (SQLite for the peer); "
        "idle sockets on one worker",
        ["server", "offered/s", "delivered/s", "p50 ms", "p99 ms", "srv us/deliv", "deliv/CPU-s", "worker CPU%",
         "integrity", "verdict", "idle conns", "idle kB/conn"],
        rows,
    )
    for offered, pairs in efficiency.items():
        values = dict(pairs)
        ours, peer = values.get("this project"), values.get("Flask-SocketIO")
        if ours and peer:
            text += f"\n  at {offered}/s: {ours / peer:.2f}x Flask-SocketIO's deliveries per CPU-second"
    return text


def plots(results, directory):
    """Write the PNGs; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    # Latency percentiles vs room size.
    fans = [(results.get(k), label) for k, label in (("fanout_ws", "WebSocket"), ("fanout_sse", "SSE"))]
    fans = [(f, label) for f, label in fans if f and not f.get("error") and f.get("sizes")]
    if fans:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for fan, label in fans:
            sizes = [s["size"] for s in fan["sizes"]]
            for stat, style in (("p50", "-o"), ("p99", "--s"), ("max", ":^")):
                ax.plot(sizes, [s["latency_ms"][stat] for s in fan["sizes"]], style, label=f"{label} {stat}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _label(ax, "room size (members)", "delivery latency (ms)", "Fan-out: latency vs room size", grid="both")
        written.append(_save(fig, directory, "latency_vs_room_size.png"))

    # Deliveries/s vs offered load.
    tp = results.get("throughput")
    runs = [r for r in (tp or {}).get("runs", []) if not r.get("error") and r.get("steps")]
    if runs:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        top = 0
        for run in runs:
            label = f"{run['config']} {run['rooms']}x{run['per_room']}"
            steps = sorted(run["steps"], key=lambda s: s["offered_deliveries_per_s"])  # refining steps come last
            offered = [s["offered_deliveries_per_s"] for s in steps]
            got = [s["deliveries_per_s"] or 0 for s in steps]
            top = max(top, *offered, *got)
            line, = ax.plot(offered, got, "-o", label=label)
            for s in steps:
                if not s["passed"]:
                    ax.plot([s["offered_deliveries_per_s"]], [s["deliveries_per_s"] or 0], "x", color="red", ms=10)
            ax2.plot(offered, [s["latency_ms"]["p99"] for s in steps], "-o", color=line.get_color(), label=label)
        ax.plot([0, top], [0, top], ":", color="grey", label="delivered = offered")
        _label(ax, "offered deliveries/s", "delivered deliveries/s", "Throughput (x: step failed)", legend_size=7)
        limit = results.get("meta", {}).get("parameters", {}).get("p99_limit", 250.0)
        ax2.axhline(limit, color="red", ls=":", label=f"p99 limit {limit:.0f} ms")
        ax2.set_yscale("log")
        _label(ax2, "offered deliveries/s", "p99 latency (ms)", "p99 latency vs offered load", legend_size=7,
               grid="both")
        written.append(_save(fig, directory, "throughput.png"))

    # Memory vs connections.
    cap = results.get("capacity")
    if cap and not cap.get("error") and cap.get("steps"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        conns = [0] + [s["connections"] for s in cap["steps"]]
        rss = [cap["baseline_rss_kb"] / 1024] + [s["rss_kb"] / 1024 for s in cap["steps"]]
        ax.plot(conns, rss, "-o", label="worker RSS (MiB)")
        ax.set_xlabel("idle WebSocket connections on one worker")
        ax.set_ylabel("RSS (MiB)")
        ax.grid(True, alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(conns[1:], [s["rss_per_conn_kb"] for s in cap["steps"]], "--s", color="tab:orange",
                 label="kB per connection")
        ax2.set_ylabel("kB per connection (RSS - baseline) / connections")
        ax2.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()
        handles2 = ax2.get_legend_handles_labels()
        ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc="upper left")
        ax.set_title("Memory vs connections")
        written.append(_save(fig, directory, "memory_vs_connections.png"))
    return written


def _label(ax, xlabel, ylabel, title, legend_size=8, grid="major"):
    """Axis labels, title, a light grid and the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which=grid, alpha=0.3)
    ax.legend(fontsize=legend_size)


def _save(fig, directory, name):
    path = os.path.join(directory, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
