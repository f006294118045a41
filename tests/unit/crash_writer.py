"""Crash-test writer: appends to a RecordStore until it is killed, reporting each acknowledgement.

    python crash_writer.py <store dir> <run id> append|anchor

After each ``append()`` returns it prints ``ack <first seq> <last seq> <run> <k>``: seqs
first..last hold ``make_doc(run, k)``, ``make_doc(run, k + 1)``, ... In ``anchor`` mode the store
is small and drops anchored records when full, and the writer also moves the anchored cursor
(printing ``anchored <upto>`` once that is durable) and expires anchored segments.
"""
from __future__ import annotations

import random
import sys

from gateway.buffer.store import FullPolicy, RecordStore, StoreConfig


def make_doc(run: int, k: int) -> dict:
    rng = random.Random(run * 1_000_003 + k)
    return {"rx": 1.7e9 + k, "device": f"dev{rng.randrange(5)}", "run": run, "k": k,
            "pad": "x" * rng.randrange(400), "v": rng.random()}


def config(mode: str) -> StoreConfig:
    if mode == "anchor":
        return StoreConfig(segment_records=20, max_records=200, full_policy=FullPolicy.DROP_ANCHORED,
                           retention_s=0)
    return StoreConfig(segment_records=20)


def main() -> None:
    path, run, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    store = RecordStore(path, config(mode))
    rng = random.Random(run)
    k = 0
    while True:
        n = rng.randint(1, 45)
        seqs = store.append([make_doc(run, k + i) for i in range(n)]).seqs
        if seqs:
            sys.stdout.write(f"ack {seqs[0]} {seqs[-1]} {run} {k}\n")
            sys.stdout.flush()
        k += n
        if mode == "anchor" and rng.random() < 0.3:
            store.mark_anchored(rng.randint(0, store.stats()["last_seq"]))
            sys.stdout.write(f"anchored {store.stats()['anchored_upto']}\n")
            sys.stdout.flush()
            if rng.random() < 0.3:
                store.expire(now=2e9)


if __name__ == "__main__":
    main()
