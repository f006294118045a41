"""Ingest benchmark: emulated Pebble fleet → mosquitto → `w3gate run` (verify + durable buffer).

Everything crosses real process boundaries: a private mosquitto, the gateway as the user runs
it, and publisher processes that send pre-signed messages from emulated Pebbles (signing is done
before the clock starts, as a real fleet signs on its own hardware). The gateway's `--trace`
hook reports when each record became durable, so latency is measured publish → on disk.

    python -m bench.ingest [--messages 100000] [--devices 1000] [--rate 10000] [--publishers 2] [--secure]

``--secure`` runs the broker w3gate writes (`w3gate broker setup`): the gateway logs in with a
password, and the publishers send over the TLS device listener with a client certificate, each
message checked against the access rules, as a real Pebble's would be (the publishers replay the
whole fleet, so their identity may write every device's data topic).

Prints: saturation throughput (publishers flat out), publish→durable p50/p99 at the offered
rate, the gateway's peak RSS, and nothing lost (every published message durable exactly once).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.layout import DataDir
from hardware.process import stop_group
from rig.broker import start_broker

ROOT = Path(__file__).resolve().parents[1]


def _pregenerate(args: tuple[str, int, int, float]) -> list[tuple[str, bytes, str]]:
    from hardware.pebble.fleet import Fleet
    from hardware.pebble.keystore import Keystore

    fleet_dir, start, count, now = args
    identities = Keystore(fleet_dir).load()
    # each worker signs for its own slice of devices so no two workers share a nonce stream
    workers = max(1, os.cpu_count() or 1)
    part = identities[start::workers] or identities
    fleet = Fleet(part, seed=None)
    return [(m.topic, m.payload, m.digest.hex()) for m in fleet.pregenerate(count, now)]


def pregenerate(fleet_dir: Path, count: int) -> list[tuple[str, bytes, str]]:
    workers = max(1, os.cpu_count() or 1)
    now = time.time() + 60  # the run lasts a while: stay inside the gateway's timestamp window
    shares = [(str(fleet_dir), w, count // workers + (1 if w < count % workers else 0), now)
              for w in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_pregenerate, shares)
    return [m for part in parts for m in part]


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) of the process's main thread and of all its other threads."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"main": 0.0, "threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        seconds = (int(fields[11]) + int(fields[12])) / tick
        out["main" if int(task.name) == pid else "threads"] += seconds
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, all cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def children_cpu_seconds(pid: int) -> float:
    """CPU time of a process's child processes that are still running (the verify worker)."""
    total = 0.0
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += sum(cpu_seconds(int(child)).values())
    return total


class Trace:
    """The gateway's durability trace (digest, received, durable per line), read incrementally so
    polling it costs the machine next to nothing while the gateway is measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, tuple[float, float]] = {}
        self._offset = 0

    def poll(self) -> dict[str, tuple[float, float]]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            self._offset += end
            for line in data[:end].decode().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    self.records[parts[0]] = (float(parts[1]), float(parts[2]))
        return self.records


def wait_durable(trace: Trace, messages: list, timeout: float) -> dict:
    """Wait until every message's digest is in the gateway's durability trace."""
    wanted = {d for _, _, d in messages}
    deadline = time.time() + timeout
    durable = trace.poll()
    while not wanted <= durable.keys() and time.time() < deadline:
        time.sleep(0.5)
        durable = trace.poll()
    got = [durable[d][1] for d in wanted if d in durable]
    return {"trace": durable, "durable": len(got), "missing": len(wanted) - len(got),
            "first_received": min((durable[d][0] for d in wanted if d in durable), default=0.0),
            "last_durable": max(got) if got else 0.0}


def start_traced_gateway(work: Path, data_dir: Path, env: dict, trace_path: Path,
                         profile: list[str] = ()) -> subprocess.Popen:
    """`w3gate run` with the durability trace; back once it is connected to the broker."""
    status_file = DataDir(data_dir).status
    status_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, *profile, "-m", "gateway", "run", "--data-dir", str(data_dir),
                             "--trace", str(trace_path)], env=env, stdout=open(work / "gateway.log", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    deadline = time.time() + 20
    while time.time() < deadline:
        if status_file.exists() and json.loads(status_file.read_text()).get("mqtt", {}).get("connected"):
            return proc
        time.sleep(0.05)
    raise SystemExit(f"gateway did not come up: {(work / 'gateway.log').read_text()}")


def run_phase(name: str, work: Path, port: int, messages: list[tuple[str, bytes, str]], *, rate: float,
              publishers: int, trace: Trace, timeout: float, tls: list[Path] | None = None) -> dict:
    """Publish ``messages`` from ``publishers`` processes at ``rate`` in total; wait until all are durable."""
    chunks = [messages[i::publishers] for i in range(publishers)]
    procs = []
    for i, chunk in enumerate(chunks):
        src, out = work / f"{name}-{i}.pkl", work / f"{name}-{i}.times"
        with open(src, "wb") as f:
            pickle.dump([(t, p) for t, p, _ in chunk], f)
        proc = subprocess.Popen([sys.executable, "-m", "bench.publisher", str(port), str(src), str(out),
                                 str(rate / publishers if rate else 0), "1", *([str(tls[i])] if tls else [])],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout.readline().strip() == "ready"
        procs.append((proc, out, chunk))
    for proc, _, _ in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc, _, _ in procs:
        proc.wait()
    if not timeout:
        return {}
    durable = wait_durable(trace, messages, timeout)["trace"]
    wanted = {d for _, _, d in messages}
    published = {}
    for proc, out, chunk in procs:
        with open(out, "rb") as f:
            times = pickle.load(f)
        for (_, _, digest), t in zip(chunk, times):
            published[digest] = t
    latencies = sorted(durable[d][1] - published[d] for d in wanted if d in durable)
    missing = len(wanted - durable.keys())
    first_pub = min(published.values())
    last_durable = max(durable[d][1] for d in wanted if d in durable)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"messages": len(messages), "durable": len(latencies), "missing": missing,
            "offered_rate": rate or None,
            "throughput_per_s": round(len(latencies) / (last_durable - first_pub)),
            "p50_ms": round(pick(0.50), 2), "p99_ms": round(pick(0.99), 2), "max_ms": round(latencies[-1] * 1000, 2)}


def secure_broker(work: Path, data_dir: Path, env: dict) -> tuple:
    """The managed broker on ports of its own, and the publishers' certificate bundle."""
    from gateway.config import load_config
    from rig.broker import free_port, start_managed_broker

    local = free_port()
    env.update(W3GATE_BROKER_LOCAL_PORT=str(local), W3GATE_MQTT_PORT=str(local),
               W3GATE_BROKER_DEVICE_PORT=str(free_port()), W3GATE_BROKER_CLIENT_PORT="0",
               W3GATE_BROKER_DEVICE_LISTEN="127.0.0.1", W3GATE_BROKER_PERSISTENCE="false",
               W3GATE_DATA_DIR=str(data_dir))
    subprocess.run([sys.executable, "-m", "gateway", "broker", "setup"], env=env, check=True, capture_output=True,
                   cwd=ROOT)
    config = load_config(env={k: v for k, v in env.items() if k.startswith("W3GATE_")})
    broker = start_managed_broker(config.layout.broker.conf, local, work / "mosquitto.log")
    return broker, config.broker.device_port, None


def grant_replayers(env: dict, publishers: int) -> list[Path]:
    """After the devices are registered: one identity per publisher process (the broker makes
    the client id the identity: two connections of one identity would take turns), each allowed
    to write every device's data topic (they replay the whole fleet); their certificate bundles."""
    from gateway.broker import access, certs
    from gateway.cli.broker import identities
    from gateway.config import load_config

    config = load_config(env={k: v for k, v in env.items() if k.startswith("W3GATE_")})
    names = [f"bench-fleet-{i}" for i in range(publishers)]
    access.sync(config.layout.broker, [*identities(config), *(access.Identity(n, write=("device/+/data",)) for n in names)])
    return [certs.issue_client(config.layout.broker, n).dir for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000, help="messages per phase")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=2_000, help="offered rate of the latency phase (msg/s)")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--drain-only", action="store_true", help="measure the drain phase only")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", metavar="FILE", help="run the gateway under cProfile, stats to FILE")
    parser.add_argument("--secure", action="store_true", help="the secure broker: TLS, certificates, access rules")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=ROOT))
    data_dir = work / "data"
    env = {**os.environ, "W3GATE_LOG_LEVEL": "warning", "W3GATE_MQTT_CLIENT_ID": "w3gate-bench", "W3GATE_API_PORT": "0",
           "W3GATE_DASHBOARD_PORT": "0"}
    gateway = None
    if args.secure:
        broker, publish_port, tls = secure_broker(work, data_dir, env)
    else:
        broker = start_broker(work / "broker")
        publish_port, tls = broker.port, None
        env["W3GATE_MQTT_PORT"] = str(broker.port)
    try:
        from hardware.pebble.keystore import Keystore

        fleet_dir = work / "fleet"
        Keystore(fleet_dir).ensure(args.devices, profile="riverrock-1.0.14")
        status_file = DataDir(data_dir).status
        w3gate = [sys.executable, "-m", "gateway"]
        subprocess.run([*w3gate, "device", "import", str(fleet_dir / "devices.json"), "--data-dir", str(data_dir)],
                       check=True, capture_output=True, env=env)
        if args.secure:
            tls = grant_replayers(env, args.publishers)
        print(f"pre-signing {(1 if args.drain_only else 3) * args.messages} messages from {args.devices} emulated Pebbles ...", flush=True)
        t = time.time()
        msgs = pregenerate(fleet_dir, (1 if args.drain_only else 3) * args.messages)
        print(f"  done in {time.time() - t:.1f} s", flush=True)
        trace_path = work / "trace.txt"
        trace = Trace(trace_path)
        profile = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())] if args.profile else []

        def start_gateway() -> subprocess.Popen:
            return start_traced_gateway(work, data_dir, env, trace_path, profile)

        n = args.messages
        gateway = start_gateway()  # creates the persistent session
        stop_group(gateway)
        print(f"phase 1: drain, {n} messages queued in the broker while the gateway is down", flush=True)
        backlog = msgs[:n]
        run_phase("fill", work, publish_port, backlog, rate=0, publishers=args.publishers, trace=trace, timeout=0,
                  tls=tls)
        gateway = start_gateway()
        cpu0 = cpu_seconds(gateway.pid)
        broker0 = cpu_seconds(broker.proc.pid)
        children0 = children_cpu_seconds(gateway.pid)
        machine0 = machine_busy()
        drain = wait_durable(trace, backlog, timeout=300)
        cpu1 = cpu_seconds(gateway.pid)
        machine1 = machine_busy()
        busy_cores = (machine1[0] - machine0[0]) / (machine1[1] - machine0[1]) * (os.cpu_count() or 1)
        cpu_us = {k: round((cpu1[k] - cpu0[k]) / max(1, drain["durable"]) * 1e6) for k in cpu0}
        cpu_us["workers"] = round((children_cpu_seconds(gateway.pid) - children0) / max(1, drain["durable"]) * 1e6)
        broker_us = round((sum(cpu_seconds(broker.proc.pid).values()) - sum(broker0.values()))
                          / max(1, drain["durable"]) * 1e6)
        # from the first message off the socket to the last on disk: process start-up excluded
        drain_rate = round(drain["durable"] / (drain["last_durable"] - drain["first_received"]))
        print(f"  {drain['durable']} durable, {drain['missing']} missing, {drain_rate} msg/s, "
              f"CPU per message: gateway {cpu_us['main']} us main thread + {cpu_us['threads']} us others "
              f"+ {cpu_us['workers']} us worker processes, "
              f"broker {broker_us} us; machine {busy_cores:.2f} of {os.cpu_count()} cores busy", flush=True)

        if args.drain_only:
            print(f"  gateway peak RSS {vm_hwm_kb(gateway.pid) / 1024:.1f} MB", flush=True)
            time.sleep(1.2)  # the next status.json
            status = json.loads(status_file.read_text())
            for key in ("latency_receive_to_verified", "latency_receive_to_durable"):
                print(f"  gateway-side {key[8:]:<26}: {status[key]}")
            return
        print(f"phase 2: live, {args.publishers} publishers flat out (QoS 1)", flush=True)
        sat = run_phase("sat", work, publish_port, msgs[n:2 * n], rate=0, publishers=args.publishers,
                        trace=trace, timeout=120, tls=tls)
        print(f"  {sat}", flush=True)
        print(f"phase 3: live, latency at an offered {args.rate:.0f} msg/s", flush=True)
        lat = run_phase("lat", work, publish_port, msgs[2 * n:], rate=args.rate,
                        publishers=args.publishers, trace=trace, timeout=120, tls=tls)
        print(f"  {lat}", flush=True)
        rss = vm_hwm_kb(gateway.pid)
        worker_rss = sum(vm_hwm_kb(int(c)) for c in
                         Path(f"/proc/{gateway.pid}/task/{gateway.pid}/children").read_text().split())
        status = json.loads(status_file.read_text())
        lost = drain["missing"] + sat["missing"] + lat["missing"]
        print()
        print("ingest benchmark (emulated Pebbles → mosquitto → w3gate run: verify + durable TinyDB), QoS 1"
              + (", secure broker (TLS + client certificate + access rules on the device listener)" if args.secure
                 else ", open test broker"))
        print(f"  gateway throughput, draining a broker backlog: {drain_rate:>7} verified msg/s")
        print(f"  gateway CPU per message while draining:       {cpu_us['main']:>4} us event loop "
              f"+ {cpu_us['threads']} us store thread "
              f"+ {cpu_us['workers']} us verify worker, broker {broker_us} us")
        print(f"  live, publishers flat out on the same cores:   {sat['throughput_per_s']:>7} verified msg/s")
        print(f"  live at {args.rate:>6.0f} msg/s offered: achieved      {lat['throughput_per_s']:>7} msg/s, "
              f"publish → durable p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms (max {lat['max_ms']} ms)")
        print(f"  lost / stored twice:                           {lost:>7} / {status['buffer']['records'] - 3 * n}")
        print(f"  gateway peak RSS:                              {rss / 1024:>7.1f} MB "
              f"(+ {worker_rss / 1024:.1f} MB signature worker process)")
        print(f"  rejected by the gateway:                       {status.get('rejected', {})}")
        for key in ("latency_receive_to_verified", "latency_receive_to_durable"):
            print(f"  gateway-side {key[8:]:<26} (last {status[key].get('samples', 0)}): {status[key]}")
    finally:
        if gateway is not None:
            stop_group(gateway)
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


if __name__ == "__main__":
    main()
