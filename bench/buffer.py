"""Record store benchmark: append cost on an empty store and at a large backlog.

    python -m bench.buffer [--backlog 1000000] [--batch 100] [--batches 300]

Prints docs/s and ms per batch (p50, p99) appending ``--batch``-doc batches of ~300-byte records
to an empty store, then builds a backlog of ``--backlog`` records (in segment-sized batches, to
be quick) and prints the same figures at that backlog, their ratio, the bytes on disk and the
time to open the store (writer and read-only), to list the newest 20 records and to scan every
record with an rx filter (as the gateway does at start-up). Every
append is durable (fsync'd) as in production. The store lives in a temporary directory under
the repository (``/tmp`` may be RAM) and is deleted afterwards.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from gateway.buffer.store import RecordStore, StoreConfig

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0
TEMPLATE = {"rx": T0, "device": "351358810263514", "kind": "data", "wire": "protobuf", "ts": 1_700_000_000,
            "digest": "9f" * 32, "trust": "secure-element",
            "payload": "CAEQAhi4gqa0BiIbCAoQnAIY9gMgACgAMJ4BOABAAEgAUABYAGAAaABwAA=="}


def make_docs(start: int, n: int) -> list[dict]:
    """Records shaped like the gateway's (about 300 bytes of JSON), distinct per index."""
    return [{**TEMPLATE, "rx": T0 + i * 0.01, "ts": 1_700_000_000 + i, "device": f"35135881{i % 5000:07d}"}
            for i in range(start, start + n)]


def record_bytes() -> int:
    return len(json.dumps(make_docs(0, 1)[0], separators=(",", ":")))


def measure(store: RecordStore, start: int, batch: int, batches: int) -> dict:
    """Append ``batches`` pre-built batches, timing each append (durable on return)."""
    work = [make_docs(start + b * batch, batch) for b in range(batches)]
    times = []
    t_all = time.perf_counter()
    for docs in work:
        t = time.perf_counter()
        result = store.append(docs)
        times.append(time.perf_counter() - t)
        assert not result.refused
    elapsed = time.perf_counter() - t_all
    times.sort()
    return {"docs_s": batch * batches / elapsed, "mean_ms": 1000 * elapsed / batches,
            "p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * times[int(0.99 * (len(times) - 1))]}


def line(label: str, m: dict) -> str:
    return (f"{label:<22} {m['docs_s']:>9,.0f} docs/s   {m['mean_ms']:6.2f} ms/batch mean, "
            f"p50 {m['p50_ms']:.2f}, p99 {m['p99_ms']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--batches", type=int, default=300, help="timed batches per measurement")
    args = ap.parse_args()
    timed = args.batch * args.batches
    config = StoreConfig(max_records=args.backlog + 2 * timed)
    work = Path(tempfile.mkdtemp(prefix=".bench-buffer-", dir=ROOT))
    try:
        print(f"record store: segments of {config.segment_records} records, batches of {args.batch}, "
              f"~{record_bytes()} B/record, in {work}")
        with RecordStore(work / "empty", config) as store:
            empty = measure(store, 0, args.batch, args.batches)
        print(line("empty store", empty))

        path = work / "backlog"
        t = time.perf_counter()
        with RecordStore(path, config) as store:
            step = config.segment_records
            for start in range(0, args.backlog, step):
                store.append(make_docs(start, min(step, args.backlog - start)))
        build = time.perf_counter() - t
        print(f"built a backlog of {args.backlog:,} records in {build:.1f} s "
              f"({args.backlog / build:,.0f} docs/s in {step}-record batches)")

        t = time.perf_counter()
        store = RecordStore(path, config)
        open_s = time.perf_counter() - t
        with store:
            at = measure(store, args.backlog, args.batch, args.batches)
            stats = store.stats()
        print(line(f"at {args.backlog:,}", at))
        print(f"ratio backlog/empty    mean {at['mean_ms'] / empty['mean_ms']:.2f}x, "
              f"p50 {at['p50_ms'] / empty['p50_ms']:.2f}x")
        t = time.perf_counter()
        reader = RecordStore(path, readonly=True)
        ro_open_s = time.perf_counter() - t
        t = time.perf_counter()
        newest = list(reader.iter_records(limit=20))
        list_s = time.perf_counter() - t
        t = time.perf_counter()
        recent = sum(1 for _ in reader.iter_records(since_rx=T0 + args.backlog * 0.01, newest_first=False))
        scan_s = time.perf_counter() - t
        reader.close()
        assert len(newest) == 20 and newest[0]["seq"] == stats["last_seq"]
        print(f"on disk                {stats['bytes'] / 1e6:,.1f} MB in {stats['segments']:,} segments "
              f"({stats['records']:,} records)")
        print(f"open at backlog        writer {1000 * open_s:.1f} ms, read-only {1000 * ro_open_s:.1f} ms; "
              f"newest 20 records read-only {1000 * list_s:.1f} ms")
        print(f"full scan              {scan_s:.1f} s to filter all {stats['records']:,} records by rx "
              f"({recent:,} match; the gateway's replay-state rebuild at start-up does this)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
