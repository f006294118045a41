"""What encryption at rest costs the record store ([buffer] encrypt_at_rest).

    python -m bench.buffer_encryption [--records 20000] [--batch 100] [--rounds 3]

Appends ``--records`` gateway-shaped records (bench.buffer's, ~300 bytes) in ``--batch``-record
durable batches to a fresh store, then reads them all back through a read-only view (as the
anchorer, `w3gate records` and the dashboard do), once without and once with a cipher; prints
docs/s for each, the ratio, the bytes on disk per record, the cipher alone per record (seal and
open), and what opening the data key costs at start (unlocking the node key, then ECIES). Best
of ``--rounds``. The stores live in a temporary directory under the repository (``/tmp`` may be
RAM) and are deleted afterwards.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.buffer import ROOT, make_docs
from gateway.buffer.cipher import RecordCipher
from gateway.buffer.store import RecordStore, StoreConfig


def run(path: Path, records: int, batch: int, cipher: RecordCipher | None) -> dict:
    """Append then read back ``records``; docs/s of each and bytes on disk."""
    config = StoreConfig(max_records=2 * records)
    work = [make_docs(start, min(batch, records - start)) for start in range(0, records, batch)]
    t = time.perf_counter()
    with RecordStore(path, config, cipher=cipher) as store:
        for docs in work:
            store.append(docs)
        size = store.stats()["bytes"]
    append_s = time.perf_counter() - t
    t = time.perf_counter()
    with RecordStore(path, readonly=True, cipher=cipher) as reader:
        n = sum(1 for doc in reader.iter_records(newest_first=False) if doc["payload"])
    read_s = time.perf_counter() - t
    assert n == records
    return {"append": records / append_s, "read": records / read_s, "bytes": size / records}


def cipher_alone(n: int = 20000) -> tuple[float, float]:
    """Microseconds per record to seal and to open one payload, without the store."""
    cipher = RecordCipher(os.urandom(32))
    payload = make_docs(0, 1)[0]["payload"]
    t = time.perf_counter()
    sealed = [cipher.seal(i, "351358810263514", payload) for i in range(n)]
    seal_us = 1e6 * (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i, s in enumerate(sealed):
        cipher.open(i, "351358810263514", s)
    return seal_us, 1e6 * (time.perf_counter() - t) / n


def data_key_open(work: Path) -> tuple[float, float]:
    """Seconds to make and to open the data key the way `w3gate run` and the CLI do."""
    from gateway.chain.datakey import load_data_key
    from gateway.chain.keystore import load_key, new_key

    identity = new_key(work / "node-key.json", "bench passphrase")
    t = time.perf_counter()
    account = load_key(identity.path, "bench passphrase")
    load_data_key(work / "datakey.json", bytes(account.key), account.address, create=True)
    make_s = time.perf_counter() - t
    t = time.perf_counter()
    account = load_key(identity.path, "bench passphrase")
    load_data_key(work / "datakey.json", bytes(account.key), account.address, create=False)
    return make_s, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix=".bench-encryption-", dir=ROOT))
    try:
        print(f"record store, {args.records:,} records in durable batches of {args.batch}, best of {args.rounds}")
        best: dict[str, dict] = {}
        for r in range(args.rounds):
            for label, cipher in (("clear", None), ("encrypted", RecordCipher(os.urandom(32)))):
                m = run(work / f"{label}-{r}", args.records, args.batch, cipher)
                shutil.rmtree(work / f"{label}-{r}")
                old = best.setdefault(label, m)
                best[label] = {k: max(old[k], m[k]) if k != "bytes" else m[k] for k in m}
        clear, enc = best["clear"], best["encrypted"]
        for label, m in best.items():
            print(f"{label:<10} append {m['append']:>9,.0f} docs/s   read back {m['read']:>9,.0f} docs/s   "
                  f"{m['bytes']:.0f} B/record on disk")
        print(f"encrypted/clear  append {enc['append'] / clear['append']:.2f}x, read {enc['read'] / clear['read']:.2f}x, "
              f"disk {enc['bytes'] / clear['bytes']:.2f}x")
        seal_us, open_us = cipher_alone()
        print(f"cipher alone     seal {seal_us:.1f} us, open {open_us:.1f} us per record")
        make_s, open_s = data_key_open(work)
        print(f"data key         made in {1000 * make_s:.0f} ms, opened in {1000 * open_s:.0f} ms "
              "(node key unlock, scrypt n=2^15, then ECIES)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
