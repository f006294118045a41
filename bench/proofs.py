"""Proof benchmark: records anchored on a local chain (anvil) by the anchorer, at several batch sizes.

For each batch size: a fresh buffer with records shaped as the gateway stores them, the proof
registry deployed, and the anchorer run until every record is anchored (anvil mines each
transaction at once, one confirmation). Prints gas per anchored record, records/s from the
first step to the last record anchored, and the cost of building one record's proof.

    python -m bench.proofs [--sizes 1,100,1000,10000] [--records 10000]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,1000,10000", help="batch sizes (records per anchor)")
    parser.add_argument("--records", type=int, default=10_000, help="records per size (batch size 1: 200)")
    args = parser.parse_args()
    print("anchoring on a local anvil chain (automine, 1 confirmation), records as the buffer holds them")
    print(f"  {'batch':>6} {'records':>8} {'anchors':>8} {'gas/record':>11} {'records/s':>10} {'proof':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        n = 200 if size == 1 else max(size, args.records)
        r = run(size, n, Path(tempfile.mkdtemp(prefix="bench-proofs-", dir=ROOT)))
        print(f"  {r['batch']:>6} {r['records']:>8} {r['batches']:>8} {r['gas_per_record']:>11.1f} "
              f"{r['records_per_s']:>10.0f} {r['proof_ms']:>6.1f}ms", flush=True)


if __name__ == "__main__":
    main()
