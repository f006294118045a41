"""Applet runtime benchmark: events through routing, the worker process and an SDK-built applet.

The applet is applets/testing/log-kv (AssemblyScript, @w3bstream/wasm-sdk): per event it reads
the payload, logs, and reads and writes a counter in KV (SQLite, one commit per batch). Events are
Pebble readings as the gateway hands them to applets. A last line runs the example
pebble-validator, whose JSON parsing in the interpreter dominates its cost.

    python -m bench.applets [--events 50000] [--rate 5000] [--reuse]
    python -m bench.applets --module tinygo-sized [--events 20000]

Prints: saturation events/s with one project (one worker) and two (two workers, in parallel),
p50/p99 latency from an event's arrival to its result at an offered rate (micro-batched the way
the gateway feeds projects), the same while a third project's applet spins on every event, and
how long a spinning event takes to be stopped at the 1 s default limit.

``--module tinygo-sized`` measures a ~290 KB TinyGo-sized applet instead (bench/tinygo_sized.py,
log + KV per event): events/s on two workers with fresh state per event and with reuse, and in
one process what each costs per event: restoring the snapshot, instantiating anew, the call.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path

from gateway.applets.pool import Limits
from gateway.applets.project import ProjectStore
from gateway.applets.runtime import AppletRuntime, Event
from gateway.layout import DataDir

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "applets" / "build"


def _payload(i: int) -> bytes:
    imei = f"35467210{i % 500:07d}"
    return json.dumps({"seq": i, "device": imei, "kind": "data", "timestamp": 1_790_000_000 + i,
                       "received": 1_790_000_000.5 + i, "trust": "secure-element",
                       "reading": {"temperature": round(random.uniform(-5, 35), 2), "humidity": 45.1,
                                   "pressure": 1013.2, "vbat": 4.05, "gps_fix": True,
                                   "latitude": 48.1, "longitude": 11.5}}).encode()


PAYLOADS = [_payload(i) for i in range(1000)]  # made before the clock starts: the gateway gets them


def payload(i: int) -> bytes:
    return PAYLOADS[i % len(PAYLOADS)]


def project_file(directory: Path, name: str, wasm: str, handler: str = "start", *, reuse: bool = False) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f'name = "{name}"\ninstances = "{"reuse" if reuse else "fresh"}"\n'
                    f'[[applets]]\nname = "a"\nwasm = "{BUILD / wasm}"\n'
                    f'[[strategies]]\nevent = "DEFAULT"\napplet = "a"\nhandler = "{handler}"\n')
    return path


async def saturate(runtime: AppletRuntime, projects: list[str], events: int, batch: int) -> float:
    """Events/s with every project flat out, each fed batches of ``batch``."""
    async def feed(name: str) -> None:
        for start in range(0, events, batch):
            await runtime.handle([Event(name, payload(i)) for i in range(start, min(events, start + batch))])
    t = time.perf_counter()
    await asyncio.gather(*(feed(name) for name in projects))
    return len(projects) * events / (time.perf_counter() - t)


async def latency(runtime: AppletRuntime, project: str, events: int, rate: float, max_batch: int = 200) -> dict:
    """Arrival → result latency at an offered rate; events wait while the previous batch runs."""
    queue: list[tuple[float, Event]] = []
    latencies: list[float] = []
    arrived = asyncio.Event()

    async def produce() -> None:
        start = time.perf_counter()
        for i in range(events):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.append((time.perf_counter(), Event(project, payload(i))))
            arrived.set()

    async def consume() -> None:
        done = 0
        while done < events:
            if not queue:
                arrived.clear()
                await arrived.wait()
            batch = queue[:max_batch]
            del queue[:max_batch]
            await runtime.handle([e for _, e in batch])
            now = time.perf_counter()
            latencies.extend(now - t for t, _ in batch)
            done += len(batch)

    t = time.perf_counter()
    await asyncio.gather(produce(), consume())
    elapsed = time.perf_counter() - t
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)  # noqa: E731
    return {"events_per_s": round(events / elapsed), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": round(latencies[-1] * 1000, 2)}


async def main_async(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-applets-", dir=ROOT))
    try:
        store = ProjectStore(DataDir(work / "data"))
        for name in ("one", "two"):
            store.deploy(project_file(work, name, "log-kv.wasm", reuse=args.reuse))
        store.deploy(project_file(work, "validator", "pebble-validator.wasm", reuse=args.reuse))
        store.deploy(project_file(work, "runaway", "hostile.wasm", "spin"))
        runtime = AppletRuntime(store, limits=Limits(time_s=args.limit))
        await runtime.reload()
        await runtime.handle([Event(n, payload(0)) for n in ("one", "two")])  # start the workers
        n = args.events
        print(f"{n} Pebble readings per project through the log-kv applet (log + KV), instances "
              + ("reused across events (the project's opt-in)" if args.reuse else
                 "fresh for every event (W3bstream's rule)"), flush=True)
        one = await saturate(runtime, ["one"], n, 200)
        print(f"  1 project (1 worker), batches of 200:  {one:>8.0f} events/s", flush=True)
        single = await saturate(runtime, ["one"], min(n, 3000), 1)
        print(f"  1 project, one event per round trip:  {single:>8.0f} events/s", flush=True)
        two = await saturate(runtime, ["one", "two"], n, 200)
        print(f"  2 projects (2 workers) in parallel:    {two:>8.0f} events/s", flush=True)
        lat = await latency(runtime, "one", n, args.rate)
        print(f"  latency at {args.rate:.0f} events/s offered:      {lat}", flush=True)

        stop = asyncio.Event()
        stopped_after: list[float] = []

        async def runaway() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                await runtime.handle([Event("runaway", b"")])
                stopped_after.append(time.perf_counter() - t)
        spinner = asyncio.create_task(runaway())
        await asyncio.sleep(0.2)
        lat_spin = await latency(runtime, "one", n, args.rate)
        stop.set()
        await spinner
        print(f"  the same, a third project spinning:   {lat_spin}", flush=True)
        validator = await saturate(runtime, ["validator"], min(n, 5000), 200)
        print(f"  the pebble-validator example, 1 worker: {validator:>8.0f} events/s (JSON in wasm3)")
        print(f"  a spinning event is stopped after      {sum(stopped_after) / len(stopped_after):.2f} s "
              f"(limit {args.limit:g} s, {len(stopped_after)} stopped; includes the worker's restart)")
        await runtime.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _BenchHost:
    """The ABI's services in-process, for timing an instance alone: KV in a dict, logs dropped."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    def log(self, level: str, message: str) -> None:
        pass

    def kv_get(self, key: str) -> bytes | None:
        return self.kv.get(key)

    def kv_set(self, key: str, value: bytes) -> None:
        self.kv[key] = value


def _per_call_ms(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1000


async def tinygo_sized(args: argparse.Namespace) -> None:
    """Fresh state per event (W3bstream's rule) against reuse, for a TinyGo-sized applet."""
    from bench.tinygo_sized import build
    from gateway.applets.abi import AppletInstance

    work = Path(tempfile.mkdtemp(prefix="bench-applets-", dir=ROOT))
    try:
        wasm_path = build(work)
        wasm = wasm_path.read_bytes()
        n = min(args.events, 20_000)
        store = ProjectStore(DataDir(work / "data"))
        for name, reuse in (("fresh1", False), ("fresh2", False), ("reuse1", True), ("reuse2", True)):
            store.deploy(project_file(work, name, str(wasm_path), "counter", reuse=reuse))
        runtime = AppletRuntime(store, limits=Limits(time_s=args.limit))
        await runtime.reload()
        await runtime.handle([Event(p, payload(0)) for p in ("fresh1", "fresh2", "reuse1", "reuse2")])
        print(f"{n} Pebble readings per project through a TinyGo-sized applet ({len(wasm) // 1024} KB: log + KV, "
              f"the heap of TinyGo), 2 projects (2 workers) in parallel, batches of 200", flush=True)
        fresh = await saturate(runtime, ["fresh1", "fresh2"], n, 200)
        print(f"  fresh state for every event (default): {fresh:>8.0f} events/s", flush=True)
        reused = await saturate(runtime, ["reuse1", "reuse2"], n, 200)
        print(f"  instances reused (the opt-in):         {reused:>8.0f} events/s", flush=True)
        await runtime.close()

        inst = AppletInstance(wasm, _BenchHost(), max_pages=Limits().max_pages)
        event = payload(1)
        inst.call("counter", event)  # compiles what an event runs
        instantiate = _per_call_ms(lambda: AppletInstance(wasm, _BenchHost(), max_pages=Limits().max_pages), 20)
        assert inst.restore(), "the event grew memory: nothing to restore"
        restore = _per_call_ms(inst.restore, 2000)
        fresh_event = _per_call_ms(lambda: (inst.restore(), inst.call("counter", event)), 2000)
        reused_event = _per_call_ms(lambda: inst.call("counter", event), 2000)
        print(f"  per event, in one process: restore {restore * 1000:.0f} us ({len(inst._memory0) // 65536} pages), "
              f"instantiate anew {instantiate:.2f} ms; restore + call {fresh_event * 1000:.0f} us, "
              f"call on a reused instance {reused_event * 1000:.0f} us (its heap keeps every payload: "
              f"{inst.memory_pages} pages after 2000)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the runaway's stops are expected, not news
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="events per project and phase")
    parser.add_argument("--rate", type=float, default=5_000, help="offered rate of the latency phases")
    parser.add_argument("--limit", type=float, default=1.0, help="per-event time limit (s)")
    parser.add_argument("--reuse", action="store_true", help="projects opt in to reusing instances across events")
    parser.add_argument("--module", choices=["log-kv", "tinygo-sized"], default="log-kv",
                        help="tinygo-sized: a ~290 KB TinyGo-sized applet, fresh state against reuse")
    args = parser.parse_args()
    asyncio.run(tinygo_sized(args) if args.module == "tinygo-sized" else main_async(args))


if __name__ == "__main__":
    main()
