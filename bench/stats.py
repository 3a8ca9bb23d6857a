"""Exact delivery accounting and latency statistics.

A benchmark message's text is ``"<seq> <sender> <send time_ns>[ <padding>]"``: unique per
message (sender and sequence number) and carrying its own send time. ``Ledger`` records
which texts were sent to which room during one measurement; ``account`` then checks every
receiving client against it:

* expected: every text sent to the client's room during the measurement (all clients of a
  measurement are connected before its first send);
* received: expected texts that arrived at least once (latency counts the first arrival:
  read time minus the time embedded in the text);
* lost: expected texts that had not arrived when the drain period ended;
* duplicates: extra arrivals of a text the client already had;
* strays: texts that were not sent to that room in this measurement (e.g. a straggler of
  an earlier one);
* reordered: arrivals whose sequence number is lower than an earlier arrival from the
  same sender (each sender's messages are stored, hence delivered, in order);
* lost everywhere: expected texts that no client of the room received (a send the
  server refused or failed to store, rather than a delivery that went missing).
"""

import time
from collections import Counter

import numpy as np


def make_text(seq, sender, padding=""):
    """A message text for ``sender``'s message ``seq``, stamped now."""
    text = f"{seq} {sender} {time.time_ns()}"
    return f"{text} {padding}" if padding else text


def sent_ns(text):
    """The send time embedded in a text (bytes)."""
    return int(text.split(b" ", 3)[2])


class Ledger:
    """What was sent during one measurement, per room."""

    def __init__(self, labels=()):
        self.by_room = {label: [] for label in labels}
        self.first_ns = None
        self.last_ns = None

    def record(self, label, text):
        now = int(text.split(" ", 3)[2])
        self.by_room.setdefault(label, []).append(text.encode())
        if self.first_ns is None:
            self.first_ns = now
        self.last_ns = now

    def count(self, label):
        return len(self.by_room.get(label, ()))

    @property
    def total(self):
        return sum(len(texts) for texts in self.by_room.values())


def percentiles(values_ms):
    """p50/p90/p99/max/mean (ms) of a list of latencies, or Nones when it is empty."""
    if len(values_ms) == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None, "count": 0}
    arr = np.asarray(values_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "max": round(float(arr.max()), 3),
        "mean": round(float(arr.mean()), 3),
        "count": int(arr.size),
    }


def account(ledger, members, keep_latencies=False):
    """Check every client of ``members`` ({label: [client, ...]}) against ``ledger``.

    Returns a dict of totals, latency percentiles (ms), per-message completion times
    (last arrival minus send, ms) and the close codes and error frames seen.
    """
    send_time = {}
    totals = Counter()
    latencies = []
    last_arrival = {}  # text -> latest first-arrival time over the room's clients
    seen_anywhere = set()
    closes = Counter()
    errors = []
    first_recv = None
    last_recv = None
    for label, clients in members.items():
        sent = ledger.by_room.get(label, [])
        expected = set(sent)
        for text in sent:
            if text not in send_time:
                send_time[text] = sent_ns(text)
        for client in clients:
            counts = Counter()
            last_seq = {}
            now = 0
            for item in client.got:
                if item.__class__ is int:
                    now = item
                    continue
                counts[item] += 1
                if counts[item] > 1:
                    continue
                if item not in expected:
                    continue
                latencies.append(now - send_time[item])
                if now > last_arrival.get(item, 0):
                    last_arrival[item] = now
                seq, sender, _ = item.split(b" ", 2)
                seq = int(seq)
                if seq < last_seq.get(sender, -1):
                    totals["reordered"] += 1
                else:
                    last_seq[sender] = seq
            if now:
                last_recv = now if last_recv is None else max(last_recv, now)
                first = next((i for i in client.got if i.__class__ is int), None)
                if first is not None:
                    first_recv = first if first_recv is None else min(first_recv, first)
            received = sum(1 for text in expected if counts[text])
            totals["expected"] += len(sent)
            totals["received"] += received
            totals["lost"] += len(sent) - received
            totals["duplicates"] += sum(c - 1 for text, c in counts.items() if c > 1)
            totals["strays"] += sum(c for text, c in counts.items() if text not in expected)
            seen_anywhere.update(text for text in expected if counts[text])
            if client.close_code is not None or client.is_closed:
                closes[str(client.close_code if client.close_code is not None else "dropped")] += 1
            for payload in client.other:
                if len(errors) < 20:
                    errors.append(payload[:200].decode("utf-8", "replace"))
                totals["other_frames"] += 1
            totals["clients"] += 1
    lost_everywhere = sum(
        1 for label, sent in ledger.by_room.items() if members.get(label) for text in sent if text not in seen_anywhere
    )
    lat_ms = np.asarray(latencies, dtype=np.float64) / 1e6
    completion_ms = [(last_arrival[text] - send_time[text]) / 1e6 for text in last_arrival]
    result = {
        "sent": ledger.total,
        "clients": totals["clients"],
        "expected": totals["expected"],
        "received": totals["received"],
        "lost": totals["lost"],
        "lost_everywhere": lost_everywhere,
        "duplicates": totals["duplicates"],
        "strays": totals["strays"],
        "reordered": totals["reordered"],
        "other_frames": totals["other_frames"],
        "other_samples": errors[:5],
        "closed": dict(closes),
        "latency_ms": percentiles(lat_ms),
        "completion_ms": percentiles(completion_ms),
        "first_recv_ns": first_recv,
        "last_recv_ns": last_recv,
    }
    if keep_latencies:
        result["_latencies_ms"] = lat_ms
    return result


def clean(result):
    """``result`` without its private (underscore) keys, for JSON."""
    if isinstance(result, dict):
        return {k: clean(v) for k, v in result.items() if not str(k).startswith("_")}
    if isinstance(result, list):
        return [clean(v) for v in result]
    return result
