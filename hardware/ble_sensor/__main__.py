"""python -m hardware.ble_sensor --transport tcp-client:127.0.0.1:PORT --name w3-beehive --state F"""
from __future__ import annotations

import argparse
import asyncio

from hardware.ble_sensor.peripheral import serve


def main() -> None:
    parser = argparse.ArgumentParser(description="An emulated BLE legacy sensor (bumble peripheral).")
    parser.add_argument("--transport", required=True, help="bumble HCI transport, e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument("--name", required=True, help="advertised name")
    parser.add_argument("--state", required=True, help="state file (identity, seqs, settings)")
    parser.add_argument("--period-ms", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--id", help="provision with this id (16 hex) instead of waiting to be paired")
    parser.add_argument("--key", help="... and this key (64 hex)")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
