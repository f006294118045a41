"""Proof benchmark: records anchored on a local chain (anvil) by the anchorer, at several batch sizes.

For each batch size: a fresh buffer with records shaped as the gateway stores them, the proof
registry deployed, and the anchorer run until every record is anchored (anvil mines each
transaction at once, one confirmation). Prints gas per anchored record, records/s from the
first step to the last record anchored, and the cost of building one record's proof.

    python -m bench.proofs [--sizes 1,100,1000,10000] [--records 10000]

``--pace`` asks whether anchoring keeps up with ingest instead: anvil mines a block every
``--block-time`` seconds (5, as IoTeX), records arrive at ``--rate`` per second (10,000) for
``--seconds``, and the anchorer runs as the gateway runs it (default [chain] settings: 1,000 to
50,000 records a batch, 8 batches in flight, 2 confirmations, a step a second). Every 10 s it
prints the backlog (records stored, not yet anchored) and the batch sizes chosen; then gas per
record. The backlog is bounded when its size stops growing from one interval to the next.

    python -m bench.proofs --pace [--rate 10000] [--block-time 5] [--seconds 120]
"""
from __future__ import annotations

import argparse
import base64
import shutil
import tempfile
import time
from pathlib import Path

from eth_account import Account
from web3 import Web3

from gateway.buffer.store import RecordStore, StoreConfig
from gateway.chain.sender import SenderConfig, TxSender, connect
from gateway.codec import pebble
from gateway.proofs.anchorer import AnchorConfig, Anchorer
from rig.chain import DEV_KEYS, deploy_registry, start_anvil

ROOT = Path(__file__).resolve().parents[1]


def records(n: int, rx0: float) -> list[dict]:
    """Docs as the buffer holds them (the anchorer commits to the evidence, it does not re-check it)."""
    docs = []
    for i in range(n):
        sig = Web3.keccak(text=f"r{i}") + Web3.keccak(text=f"s{i}")
        payload = pebble.encode_binpackage(pebble.BinPackage(pebble.PackageType.DATA, b"\x08\x01" * 40,
                                                             int(rx0) + i, sig))
        docs.append({"rx": rx0 + i * 0.001, "device": f"35{i % 100:013d}",
                     "address": Web3.to_checksum_address(Web3.keccak(text=f"device {i % 100}")[:20]),
                     "kind": "data", "wire": "protobuf", "ts": int(rx0) + i, "digest": "00" * 32,
                     "trust": "secure-element", "payload": base64.b64encode(payload).decode()})
    return docs


def run(size: int, n: int, work: Path) -> dict:
    chain = start_anvil(work / "anvil")
    try:
        gateway = Account.from_key(DEV_KEYS[1])
        registry = deploy_registry(chain.url, DEV_KEYS[0], [gateway.address])
        store = RecordStore(work / "records", StoreConfig(segment_records=1000, max_records=10 * n))
        rx0 = time.time() - 3600
        for start in range(0, n, 5000):
            store.append(records(min(5000, n - start), rx0 + start))
        store.mark_processed(n)
        sender = TxSender(connect(chain.url), gateway, work / "txjournal.json",
                          SenderConfig(confirmations=1, resubmit_after_s=3600))
        anchorer = Anchorer(store, sender, registry, work / "proofs", lambda d: d["address"],
                            AnchorConfig(batch_size=size, max_age_s=0, max_inflight=64, max_seal_per_step=64))
        w3 = Web3(Web3.HTTPProvider(chain.url))
        start_block = w3.eth.block_number
        t = time.perf_counter()
        while store.stats()["anchored_upto"] < n:
            anchorer.step()
        elapsed = time.perf_counter() - t
        gas = sum(w3.eth.get_block(b, full_transactions=True)["gasUsed"]
                  for b in range(start_block + 1, w3.eth.block_number + 1))
        t = time.perf_counter()
        anchorer.proof_for(n // 2)
        proof_ms = (time.perf_counter() - t) * 1000
        store.close()
        return {"batch": size, "records": n, "batches": len(anchorer.batches), "gas_per_record": gas / n,
                "records_per_s": n / elapsed, "proof_ms": proof_ms}
    finally:
        chain.stop()
        shutil.rmtree(work, ignore_errors=True)


def pace(rate: int, block_time: float, seconds: float, work: Path) -> None:
    """Ingest at ``rate`` while anchoring on a chain with ``block_time`` blocks (see the module doc)."""
    chain = start_anvil(work / "anvil", "--block-time", f"{block_time:g}")
    try:
        gateway = Account.from_key(DEV_KEYS[1])
        registry = deploy_registry(chain.url, DEV_KEYS[0], [gateway.address])
        store = RecordStore(work / "records", StoreConfig(segment_records=5000, max_records=10 * rate * int(seconds)))
        sender = TxSender(connect(chain.url), gateway, work / "txjournal.json", SenderConfig(confirmations=2))
        anchorer = Anchorer(store, sender, registry, work / "proofs", lambda d: d["address"], AnchorConfig())
        w3 = Web3(Web3.HTTPProvider(chain.url))
        start_block = w3.eth.block_number
        pool = records(1000, time.time())
        print(f"pace: {rate} records/s for {seconds:g} s, a block every {block_time:g} s, 2 confirmations, "
              f"batches {AnchorConfig().batch_size}..{AnchorConfig().batch_max}, {AnchorConfig().max_inflight} "
              "in flight")
        print(f"  {'t':>5} {'stored':>9} {'anchored':>9} {'backlog':>8} {'batches':>8}  sizes sealed in the interval")
        t0 = next_step = next_report = time.monotonic()
        wall0 = time.time()
        appended, sizes_seen, backlogs = 0, 0, []
        while (now := time.monotonic()) - t0 < seconds:
            due = int((now - t0) * rate) - appended  # the ingest that is due by now
            if due > 0:  # each record received at its own time: no two batches alike
                store.append([{**pool[(appended + i) % len(pool)], "rx": wall0 + (appended + i) / rate}
                              for i in range(due)])
                appended += due
            if now >= next_step:
                anchorer.step()
                next_step = now + 1.0
            if now >= next_report + 10:
                next_report = now
                stats = store.stats()
                backlog = stats["last_seq"] - stats["anchored_upto"]
                backlogs.append(backlog)
                sizes = [b.count for b in anchorer.batches[sizes_seen:]]
                sizes_seen = len(anchorer.batches)
                print(f"  {now - t0:>5.0f} {stats['last_seq']:>9} {stats['anchored_upto']:>9} {backlog:>8} "
                      f"{len(anchorer.batches):>8}  {sizes}", flush=True)
            time.sleep(0.02)
        anchored = store.stats()["anchored_upto"]
        gas = sum(w3.eth.get_block(b)["gasUsed"] for b in range(start_block + 1, w3.eth.block_number + 1))
        half = backlogs[len(backlogs) // 2:]
        print(f"  anchored {anchored} of {appended}; {gas / max(anchored, 1):.1f} gas per anchored record; "
              f"backlog in the second half {min(half)}..{max(half)} records "
              f"({max(half) / rate:.1f} s of ingest)")
        store.close()
    finally:
        chain.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,1000,10000", help="batch sizes (records per anchor)")
    parser.add_argument("--records", type=int, default=10_000, help="records per size (batch size 1: 200)")
    parser.add_argument("--pace", action="store_true", help="does anchoring keep up with ingest? (see above)")
    parser.add_argument("--rate", type=int, default=10_000, help="--pace: records per second")
    parser.add_argument("--block-time", type=float, default=5.0, help="--pace: seconds between blocks")
    parser.add_argument("--seconds", type=float, default=120.0, help="--pace: how long records arrive")
    args = parser.parse_args()
    if args.pace:
        return pace(args.rate, args.block_time, args.seconds, Path(tempfile.mkdtemp(prefix="bench-pace-", dir=ROOT)))
    print("anchoring on a local anvil chain (automine, 1 confirmation), records as the buffer holds them")
    print(f"  {'batch':>6} {'records':>8} {'anchors':>8} {'gas/record':>11} {'records/s':>10} {'proof':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        n = 200 if size == 1 else max(size, args.records)
        r = run(size, n, Path(tempfile.mkdtemp(prefix="bench-proofs-", dir=ROOT)))
        print(f"  {r['batch']:>6} {r['records']:>8} {r['batches']:>8} {r['gas_per_record']:>11.1f} "
              f"{r['records_per_s']:>10.0f} {r['proof_ms']:>6.1f}ms", flush=True)


if __name__ == "__main__":
    main()
