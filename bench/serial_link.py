"""Serial bridge benchmark: sensor frames → pty pair (socat) → `w3gate run` (deframe, MAC, seq,
attest with the node key, durable buffer).

Writer processes play sensors on the far end of each link, sending pre-made frames as fast as
the line takes them (a pty has no baud rate, so this measures the bridge, not the wire). Also
measured: how long after a replug the first frame is buffered again.

    python -m bench.serial_link [--frames 20000] [--links 1,4]

Prints frames/s per link and in total, the gateway's peak RSS, replug → first frame, and what a
real 115200-baud UART could carry with the same frames, for comparison.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import tempfile
import time
from pathlib import Path

import serial

from bench.ingest import vm_hwm_kb
from device_fw import frame as wire
from gateway.layout import DataDir
from gateway.legacy.registry import LegacyRegistry, new_legacy_device
from rig.broker import start_broker
from tests.support.gateway import GatewayProcess, cli


def _write(path: str, frames: list[bytes], go) -> None:
    go.wait()
    with serial.Serial(path, timeout=1) as port:
        blob = b"".join(frames)
        for i in range(0, len(blob), 4096):
            port.write(blob[i:i + 4096])


def _vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def plug(by_id: Path, name: str) -> tuple[subprocess.Popen, Path]:
    gw_end, dev_end = by_id / f"usb-bench_{name}-if00", by_id.parent / f"{name}-device"
    proc = subprocess.Popen(["socat", f"PTY,raw,echo=0,link={gw_end}", f"PTY,raw,echo=0,link={dev_end}"])
    while not (gw_end.exists() and dev_end.exists()):
        time.sleep(0.01)
    return proc, dev_end


def accepted(gw: GatewayProcess) -> int:
    return gw.status().get("accepted", {}).get("legacy_data", 0)


def run(links: int, frames: int, workdir: Path, broker_port: int) -> dict:
    by_id = workdir / "serial" / "by-id"
    by_id.mkdir(parents=True)
    passphrase = workdir / "passphrase"
    passphrase.write_text("bench passphrase\n")
    gw = GatewayProcess(workdir, broker_port, chain__key_passphrase_file=str(passphrase),
                        serial__ports=[str(by_id / "usb-*")], serial__rescan_s=0.2,
                        legacy__rate=1e9, legacy__burst=1e9)
    cli("key", "new", "--passphrase-file", str(passphrase), data_dir=gw.data_dir)
    registry = LegacyRegistry(DataDir(gw.data_dir).legacy_devices)
    sensors = [new_legacy_device(f"bench{n}", transport="serial") for n in range(links)]
    for s in sensors:
        registry.add(s)
    cables = [plug(by_id, s.name) for s in sensors]
    trace = workdir / "trace.txt"
    gw.start("--trace", str(trace))
    gw.wait_for(lambda st: len((st.get("legacy") or {}).get("serial", {}).get("ports", {})) == links,
                what="every port open")
    per_link = frames // links
    payload = json.dumps({"temperature": 21.53, "humidity": 45.2, "pressure": 1013.25, "up": 3600},
                         separators=(",", ":")).encode()
    go = multiprocessing.Event()
    writers = []
    for sensor, (_, dev_end) in zip(sensors, cables):
        made = [wire.encode(wire.READING, bytes.fromhex(sensor.device_id), seq, payload, sensor.key_bytes)
                for seq in range(1, per_link + 1)]
        writers.append(multiprocessing.Process(target=_write, args=(str(dev_end), made, go)))
    frame_bytes = len(made[0])
    for w in writers:
        w.start()
    start = time.monotonic()
    go.set()
    total = per_link * links
    while accepted(gw) < total:
        time.sleep(0.02)
        if time.monotonic() - start > 300:
            raise SystemExit(f"only {accepted(gw)} of {total} frames after 300 s:\n{gw.log_text()[-2000:]}")
    elapsed = time.monotonic() - start
    for w in writers:
        w.join()
    rss_mb = vm_hwm_kb(gw.proc.pid) / 1024  # includes unlocking the node key: scrypt takes 256 MB, then frees it
    steady_mb = _vm_rss_kb(gw.proc.pid) / 1024
    # replug: unplug the first cable, plug it again, time to the next buffered frame
    proc, dev_end = cables[0]
    proc.terminate()
    proc.wait()
    gw.wait_for(lambda st: len(st["legacy"]["serial"]["ports"]) == links - 1, what="port closed")
    replugged = time.time()
    cables[0] = plug(by_id, sensors[0].name)
    with serial.Serial(str(cables[0][1]), timeout=1) as port:
        seq = per_link + 1
        while accepted(gw) < total + 1:  # a frame every 10 ms until one is buffered
            port.write(wire.encode(wire.READING, bytes.fromhex(sensors[0].device_id), seq, payload,
                                   sensors[0].key_bytes))
            seq += 1
            time.sleep(0.01)
    durable = [float(line.split()[2]) for line in trace.read_text().splitlines()]
    replug_s = min(t for t in durable if t > replugged) - replugged
    rows = [(float(a), float(b)) for _, a, b in (line.split() for line in trace.read_text().splitlines())]
    latencies = sorted(b - a for a, b in rows[:total])
    elapsed = max(b for _, b in rows[:total]) - min(a for a, _ in rows[:total])  # first received -> last durable
    status = gw.status()
    gw.stop()  # flushes the trace
    for proc, _ in cables:
        proc.terminate()
    return {"links": links, "frames": total, "frame_bytes": frame_bytes, "seconds": elapsed,
            "frames_per_s": total / elapsed, "per_link": total / elapsed / links, "rss_mb": rss_mb, "steady_mb": steady_mb,
            "replug_s": replug_s, "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000, "rejected": status.get("rejected", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20000, help="frames per run, over all links")
    parser.add_argument("--links", default="1,4", help="comma-separated link counts, one run each")
    args = parser.parse_args()
    for links in [int(n) for n in args.links.split(",")]:
        with tempfile.TemporaryDirectory(prefix="w3gate-bench-serial-") as tmp:
            broker = start_broker(Path(tmp))
            try:
                r = run(links, args.frames, Path(tmp), broker.port)
            finally:
                broker.stop()
        uart = 115200 / 10 / (r["frame_bytes"] + 0)  # 8N1: 10 bits a byte
        print(f"{r['links']} link(s): {r['frames']} frames of {r['frame_bytes']} B in {r['seconds']:.2f} s = "
              f"{r['frames_per_s']:,.0f} frames/s verified, attested and durable "
              f"({r['per_link']:,.0f} per link); gateway RSS {r['steady_mb']:.0f} MB after the run "
              f"(peak {r['rss_mb']:.0f} MB while scrypt unlocked the node key at start); "
              f"receive -> durable p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms (flat out); "
              f"replug -> next frame durable {r['replug_s'] * 1000:.0f} ms (rescan every 0.2 s); "
              f"rejected {r['rejected'] or 'none'}")
        print(f"   (a 115200-baud UART carries at most {uart:,.0f} of these frames/s: the wire, not the "
              f"bridge, limits a real link)")


if __name__ == "__main__":
    main()
