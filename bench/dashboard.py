"""Dashboard cost: ingest with the dashboard off, then with it open and scraped.

    python -m bench.dashboard [--messages 50000] [--rate 5000] [--devices 500] [--rounds 2]

Each round starts a fresh `w3gate run` (its own data directory) on one private mosquitto, once with
``[dashboard] enabled = false`` and once with it on and watched as a user and Prometheus would: the
page loaded once, its live stream (``/api/events``, server-sent events) read all along, ``/metrics``
scraped every 5 s. Rounds alternate off/on so drift on this shared machine falls on both. In each,
``--messages`` pre-signed Pebble messages are offered at ``--rate`` (achieved rate and publish →
durable p99), then as many flat out (saturation throughput). Prints both settings' figures, the
throughput drop and the growth of the gateway's peak RSS against the targets (< 5 %, < 15 MB).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.ingest import ROOT, Trace, pregenerate, run_phase, start_traced_gateway, vm_hwm_kb
from gateway.layout import DataDir
from hardware.process import stop_group
from rig.broker import start_broker

SCRAPE_EVERY_S = 5.0


class Watchers:
    """The page open (its assets once, its event stream read continuously) and a Prometheus scrape."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.scrapes = self.events = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._scrape, daemon=True),
                        threading.Thread(target=self._page, daemon=True)]

    def __enter__(self) -> Watchers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)

    def _scrape(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
                    r.read()
                self.scrapes += 1
            except OSError as e:
                self.errors.append(f"/metrics: {e}")
            self.stop.wait(SCRAPE_EVERY_S)

    def _page(self) -> None:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=10) as r:
                r.read()
            with urllib.request.urlopen(self.url + "/api/events", timeout=30) as stream:
                while not self.stop.is_set():
                    line = stream.readline()
                    if not line:
                        break
                    self.events += line.startswith(b"data:")
        except OSError as e:
            self.errors.append(f"page: {e}")


def one_round(work: Path, broker_port: int, fleet_dir: Path, messages: list, *, dashboard: bool, rate: float,
              index: int) -> dict:
    data_dir = work / f"data-{index}"
    env = {**os.environ, "W3GATE_LOG_LEVEL": "warning", "W3GATE_MQTT_PORT": str(broker_port),
           "W3GATE_MQTT_CLIENT_ID": f"w3gate-bench-{index}", "W3GATE_API_PORT": "0",
           "W3GATE_DASHBOARD_ENABLED": "true" if dashboard else "false", "W3GATE_DASHBOARD_PORT": "0",
           "W3GATE_VERIFY_MAX_AGE_S": "3600"}  # the same signed messages serve every round
    subprocess.run([sys.executable, "-m", "gateway", "device", "import", str(fleet_dir / "devices.json"),
                    "--data-dir", str(data_dir)], check=True, capture_output=True, env=env, cwd=ROOT)
    trace = Trace(work / f"trace-{index}.txt")
    gateway = start_traced_gateway(work, data_dir, env, trace.path)
    try:
        n = len(messages) // 2
        url = (json.loads(DataDir(data_dir).status.read_text()).get("dashboard") or {}).get("url")
        deadline = time.time() + 10
        while dashboard and not url and time.time() < deadline:
            time.sleep(0.1)
            url = (json.loads(DataDir(data_dir).status.read_text()).get("dashboard") or {}).get("url")
        watchers = Watchers(url) if dashboard else None
        if watchers:
            watchers.__enter__()
        try:
            live = run_phase(f"live{index}", work, broker_port, messages[:n], rate=rate, publishers=2, trace=trace,
                             timeout=120)
            flat = run_phase(f"flat{index}", work, broker_port, messages[n:], rate=0, publishers=2, trace=trace,
                             timeout=120)
        finally:
            if watchers:
                watchers.__exit__(None, None, None)
        return {"dashboard": dashboard, "live": live, "flat": flat, "rss_kb": vm_hwm_kb(gateway.pid),
                "scrapes": watchers.scrapes if watchers else 0, "events": watchers.events if watchers else 0,
                "errors": watchers.errors[:3] if watchers else []}
    finally:
        stop_group(gateway)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000, help="messages per phase")
    parser.add_argument("--rate", type=float, default=5_000, help="offered rate of the live phase (msg/s)")
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each setting, alternating")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-", dir=ROOT))
    broker = start_broker(work / "broker")
    try:
        from hardware.pebble.keystore import Keystore

        fleet_dir = work / "fleet"
        Keystore(fleet_dir).ensure(args.devices, profile="riverrock-1.0.14")
        print(f"pre-signing {2 * args.messages} messages from {args.devices} emulated Pebbles ...", flush=True)
        messages = pregenerate(fleet_dir, 2 * args.messages)
        results = []
        for i in range(2 * args.rounds):
            r = one_round(work, broker.port, fleet_dir, messages, dashboard=bool(i % 2), rate=args.rate, index=i)
            results.append(r)
            print(f"  round {i + 1}: dashboard {'on ' if r['dashboard'] else 'off'}: "
                  f"live {r['live']['throughput_per_s']} msg/s (p99 {r['live']['p99_ms']} ms), "
                  f"flat out {r['flat']['throughput_per_s']} msg/s, peak RSS {r['rss_kb'] / 1024:.1f} MB, "
                  f"lost {r['live']['missing'] + r['flat']['missing']}"
                  + (f", {r['scrapes']} scrapes, {r['events']} page updates" if r["dashboard"] else "")
                  + (f", errors {r['errors']}" if r["errors"] else ""), flush=True)

        def mean(on: bool, pick) -> float:
            return statistics.mean(pick(r) for r in results if r["dashboard"] == on)

        print()
        print(f"dashboard cost (open page with live updates + /metrics every {SCRAPE_EVERY_S:.0f} s), "
              f"means of {args.rounds} rounds each")
        for label, pick in (("live at %.0f msg/s offered" % args.rate, lambda r: r["live"]["throughput_per_s"]),
                            ("flat out", lambda r: r["flat"]["throughput_per_s"])):
            off, on = mean(False, pick), mean(True, pick)
            print(f"  {label:<30} off {off:>7.0f} msg/s, on {on:>7.0f} msg/s: {100 * (off - on) / off:+.1f} % drop "
                  "(target < 5 %)")
        p99_off, p99_on = mean(False, lambda r: r["live"]["p99_ms"]), mean(True, lambda r: r["live"]["p99_ms"])
        print(f"  {'p99 publish → durable, live':<30} off {p99_off:>7.1f} ms,    on {p99_on:>7.1f} ms")
        rss_off, rss_on = mean(False, lambda r: r["rss_kb"]) / 1024, mean(True, lambda r: r["rss_kb"]) / 1024
        print(f"  {'gateway peak RSS':<30} off {rss_off:>7.1f} MB,    on {rss_on:>7.1f} MB: "
              f"+{rss_on - rss_off:.1f} MB (target < 15 MB)")
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
