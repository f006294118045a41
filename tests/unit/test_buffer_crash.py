"""kill -9 at random moments: every acknowledged record is still there, exactly, and the store opens.

A writer process appends random-size batches and prints each acknowledgement once ``append()``
has returned. It is SIGKILLed at a random moment, many times over the same store (so each run
also starts from a store a kill left behind); then the store is opened and checked.
"""
from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.buffer.store import RecordStore
from tests.unit.crash_writer import config, make_doc

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("crash_writer.py")


def run_and_kill(path: Path, run: int, mode: str, rng: random.Random) -> list[str]:
    """Start the writer, let it acknowledge at least one batch, SIGKILL it at a random moment."""
    proc = subprocess.Popen([sys.executable, str(WRITER), str(path), str(run), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the writer acknowledged nothing within 20 s"
        first = proc.stdout.readline()
        time.sleep(rng.uniform(0, 0.15))
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the writer died on its own: {err}"
    lines = (first + rest).split("\n")
    return lines[:-1]  # the last piece is empty or a line cut by the kill: never acknowledged


def acknowledged(lines: list[str]) -> dict[int, dict]:
    acked = {}
    for line in lines:
        if line.startswith("ack "):
            first, last, run, k = map(int, line.split()[1:])
            for seq in range(first, last + 1):
                acked[seq] = make_doc(run, k + seq - first)
    return acked


def held(store: RecordStore) -> dict[int, dict]:
    docs = {}
    for doc in store.iter_records(newest_first=False):
        seq = doc.pop("seq")
        doc.pop("state")
        docs[seq] = doc
    return docs


def test_acknowledged_records_survive_sigkill(tmp_path):
    rng = random.Random(1)
    acked: dict[int, dict] = {}
    mid_write = 0  # kills that landed between creating a temp file and replacing the segment
    for run in range(30):
        acked.update(acknowledged(run_and_kill(tmp_path, run, "append", rng)))
        mid_write += any(tmp_path.rglob("*.tmp"))
    assert len(acked) > 500 and mid_write > 0
    with RecordStore(tmp_path, config("append")) as store:
        docs = held(store)
        assert list(docs) == list(range(1, store.stats()["last_seq"] + 1))  # gap-free from 1
        assert store.stats()["records"] == len(docs)
        for seq, doc in acked.items():
            assert docs.get(seq) == doc, f"acknowledged record {seq} lost or changed"
        assert store.append([{"rx": 0.0}]).seqs == [len(docs) + 1]
    assert not list(tmp_path.rglob("*.tmp"))


def test_cursors_drops_and_expiry_survive_sigkill(tmp_path):
    rng = random.Random(2)
    acked: dict[int, dict] = {}
    anchored = 0
    for run in range(12):
        lines = run_and_kill(tmp_path, run, "anchor", rng)
        acked.update(acknowledged(lines))
        anchored = max([anchored] + [int(x.split()[1]) for x in lines if x.startswith("anchored ")])
    with RecordStore(tmp_path, config("anchor")) as store:
        stats = store.stats()
        docs = held(store)
        assert stats["anchored_upto"] >= anchored > 0
        assert stats["dropped_total"] + stats["expired_total"] > 0  # the kills hit those paths too
        assert list(docs) == list(range(stats["first_seq"], stats["last_seq"] + 1))
        assert len(docs) == stats["records"] <= store.config.max_records
        for seq, doc in acked.items():
            if seq >= stats["first_seq"]:
                assert docs[seq] == doc, f"acknowledged record {seq} lost or changed"
            else:  # gone: only ever because it was anchored
                assert seq <= stats["anchored_upto"]
