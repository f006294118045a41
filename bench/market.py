"""What delivering a purchase costs the gateway per reading, and the buyer per reading.

    python -m bench.market [--readings 20000]

Gateway side, per reading: turning the stored record into what the buyer receives (its leaf
recomputed, the plaintext JSON), sealing it (ChaCha20-Poly1305 under the purchase's key), and
appending its entry to the delivery log (one fsync per round of deliveries: measured at 1 and at
50 readings a round). Buyer side: opening a message and checking it against its leaf. The MQTT
publish itself is paho's and the broker's, measured by bench/publisher.py. Prints µs per reading
and the readings per second one core sustains, for a Pi-class gateway to scale from.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.market.delivery import DeliveryLog, check_reading, reading
from gateway.market.seal import Sealer, ephemeral_key, open_message, public_bytes

MARKET = "0x" + "ab" * 20


def sample_records(count: int) -> list[dict]:
    """Legacy-sensor records as the store holds them (their leaf needs no protobuf decoding)."""
    docs = []
    for seq in range(1, count + 1):
        frame = b"\x01\x01" + bytes(8) + seq.to_bytes(4, "big") + b'{"temperature":21.5,"humidity":40.1}' + bytes(20)
        docs.append({"seq": seq, "rx": 1_764_500_000 + seq / 10, "device": "a1b2c3d4e5f60718", "kind": "data",
                     "wire": "legacy", "ts": 1_764_500_000, "device_seq": seq, "trust": "gateway-attested",
                     "digest": hashlib.sha256(frame).hexdigest(), "attestation": "11" * 65,
                     "address": "0x" + "22" * 20, "payload": base64.b64encode(frame).decode(), "state": "accepted"})
    return docs


def per_reading_us(fn, items) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - started) / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=20_000)
    args = parser.parse_args()
    docs = sample_records(args.readings)
    buyer = X25519PrivateKey.generate()
    sealer = Sealer(ephemeral_key(b"node key", 4689, MARKET, 1), public_bytes(buyer), 4689, MARKET, 1)

    made: list[tuple[bytes, bytes]] = []
    t_reading = per_reading_us(lambda d: made.append(reading(d, d["address"])), docs)
    sealed: list[bytes] = []
    t_seal = per_reading_us(lambda i: sealed.append(sealer.seal(i, made[i][0], made[i][1])), range(len(made)))
    with tempfile.TemporaryDirectory() as tmp:
        log = DeliveryLog(Path(tmp) / "1.log")
        entries = [(d["seq"], leaf) for d, (leaf, _) in zip(docs, made)]
        n = min(2_000, len(entries))
        t_log_1 = per_reading_us(lambda e: log.append([e]), entries[:n])
        rounds = [entries[i:i + 50] for i in range(0, len(entries), 50)]
        t_log_50 = per_reading_us(log.append, rounds) / 50
    t_open = per_reading_us(lambda raw: open_message(buyer, raw, chain_id=4689, market=MARKET, purchase=1), sealed)
    opened = [open_message(buyer, raw, chain_id=4689, market=MARKET, purchase=1) for raw in sealed[:2000]]
    t_check = per_reading_us(lambda o: check_reading(o["plaintext"], o["leaf"]), opened)

    gateway = t_reading + t_seal + t_log_50
    rows = [("reading (leaf + plaintext JSON)", t_reading), ("seal (X25519 key, ChaCha20-Poly1305)", t_seal),
            ("delivery log, fsync per reading", t_log_1), ("delivery log, fsync per 50", t_log_50),
            ("gateway per reading (50 a round)", gateway), ("buyer: open", t_open), ("buyer: check leaf", t_check)]
    print(f"market delivery, {args.readings} readings of {len(sealed[0])} bytes sealed")
    for name, us in rows:
        print(f"  {name:<40} {us:8.1f} µs   {1e6 / us:10,.0f} /s")


if __name__ == "__main__":
    main()
