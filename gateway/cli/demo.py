"""``w3gate demo``: a private broker, the gateway and a fleet of emulated Pebbles, each its own
process talking MQTT, with the verified readings printed as they reach the buffer. Beside them,
legacy sensors: an emulated MicroPython board on a serial port and an emulated BLE sensor on a
virtual radio, each paired with one `w3gate device pair` command, their readings attested by
the gateway."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from gateway.broker import start_broker, stop_group
from gateway.layout import DataDir
from gateway.status import read_status

FAULTS = "bad_signature=0.03,replay=0.02,skew=0.01,garbage=0.01,oversized=0.01,nonce_reuse=0.01,unknown_device=0.01"


DEMO_PROJECT = Path(__file__).resolve().parents[2] / "applets" / "demo.toml"


def _w3gate(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def _start_chain(console, work: Path, gw_data: Path, procs: list):
    """A local chain (anvil) with the proof registry, the gateway's key and its settings (env)."""
    import secrets

    from gateway.chain import devchain
    from gateway.chain.keystore import save_key

    chain = devchain.start_anvil(work / "chain")
    procs.append(chain.proc)
    registry = devchain.deploy_registry(chain.url, devchain.DEV_KEYS[0], [devchain.DEV_ADDRESSES[1]])
    passphrase = work / "node-key.pass"
    passphrase.write_text(secrets.token_hex(16) + "\n")
    passphrase.chmod(0o600)
    save_key(DataDir(gw_data).node_key, devchain.DEV_KEYS[1], passphrase.read_text().strip(), overwrite=True,
             kdf="pbkdf2", iterations=1000)  # a throwaway dev key: no need for scrypt's seconds
    console.print(f"local chain (anvil) on {chain.url}, proof registry {registry}; "
                  f"records are anchored in batches, and proven below")
    env = {"W3GATE_CHAIN_ENABLED": "true", "W3GATE_CHAIN_NETWORK": chain.url, "W3GATE_CHAIN_REGISTRY": registry,
           "W3GATE_CHAIN_KEY_PASSPHRASE_FILE": str(passphrase), "W3GATE_CHAIN_CONFIRMATIONS": "1",
           "W3GATE_CHAIN_BATCH_RECORDS": "50", "W3GATE_CHAIN_BATCH_AGE_S": "5"}
    return chain.url, registry, env


def _prove(gw_data: Path, seq: int, rpc_url: str, registry: str) -> str:
    """Prove record ``seq`` against the chain alone, as `w3gate proof verify` does."""
    from gateway.buffer.store import RecordStore
    from gateway.proofs.anchor import ProofIndex
    from gateway.proofs.verify import verify_proof

    layout = DataDir(gw_data)
    store = RecordStore(layout.records, readonly=True)
    try:
        proof = ProofIndex(layout.proofs, store).proof_for(seq)
    finally:
        store.close()
    verdict = verify_proof(proof, rpc_url, registry)
    where = f"batch {proof['batch']['sequence']}, root {proof['root'][:18]}…"
    return f"{'valid' if verdict.ok else 'INVALID ' + verdict.reason} ({where})"


def _node_key(work: Path, gw_data: Path) -> dict:
    """The gateway's key, which attests legacy sensors' records (a throwaway one for the demo)."""
    import secrets

    from gateway.chain.keystore import save_key

    passphrase = work / "node-key.pass"
    passphrase.write_text(secrets.token_hex(16) + "\n")
    passphrase.chmod(0o600)
    save_key(DataDir(gw_data).node_key, secrets.token_bytes(32), passphrase.read_text().strip(), overwrite=True,
             kdf="pbkdf2", iterations=1000)
    return {"W3GATE_CHAIN_KEY_PASSPHRASE_FILE": str(passphrase)}


def _legacy_bench(console, work: Path, procs: list) -> tuple[dict, list[tuple[str, list[str]]]]:
    """An emulated serial board and an emulated BLE sensor, not yet paired: the gateway settings
    that reach them, and the pairing command for each."""
    import shutil

    from hardware.ble_sensor.launch import Radio, Sensor
    from hardware.board import BoardError, EmulatedBoard

    env: dict = {}
    pairings: list[tuple[str, list[str]]] = []
    if shutil.which("socat"):
        try:
            board = EmulatedBoard(work / "boards" / "greenhouse", "greenhouse", port_dir=work / "serial" / "by-id").plug()
        except BoardError as e:
            console.print(f"[dim]no emulated serial board ({e})[/]")
        else:
            procs.append(board.proc)
            env["W3GATE_SERIAL_PORTS"] = str(board.port_dir / "usb-*")
            pairings.append(("greenhouse", ["device", "pair", "--serial", str(board.port), "--name", "greenhouse",
                                            "--period-ms", "3000", "--sensors", "sim"]))
            console.print(f"emulated MicroPython board (unix port) on {board.port}, at its REPL")
    else:
        console.print("[dim]socat is missing: no emulated serial board (./dev.sh setup installs it)[/]")
    radio = Radio(work / "ble")
    procs.append(radio.proc)
    sensor = Sensor(radio, work / "ble", "w3-beehive", period_ms=4000)
    procs.append(sensor.proc)
    env.update(W3GATE_BLE_ENABLED="true", W3GATE_BLE_TRANSPORT=radio.transport)
    pairings.append(("w3-beehive", ["device", "pair", "--ble", "w3-beehive", "--period-ms", "4000"]))
    console.print(f"emulated BLE sensor w3-beehive on a virtual radio ({radio.transport}), waiting to be paired")
    return env, pairings


def _pair(console, env: dict, gw_data: Path, name: str, args: list[str]) -> None:
    shown = " ".join(["w3gate", *args])
    console.print(f"[bold]$ {shown}[/]")
    result = subprocess.run(_w3gate(*args, "--data-dir", str(gw_data)), env=env, capture_output=True, text=True,
                            timeout=120)
    for line in (result.stdout or result.stderr).strip().splitlines():
        console.print(f"  {line}")


def _deploy_demo_project(console, gw_data: Path) -> Path | None:
    """The example applets on every verified reading; the applet log to follow, if deployed."""
    from gateway.applets.project import ProjectError, ProjectStore

    if not DEMO_PROJECT.exists():
        console.print("[dim]applets/demo.toml not found: running without applets[/]")
        return None
    store = ProjectStore(DataDir(gw_data))
    try:
        project = store.deploy(DEMO_PROJECT)
    except ProjectError as e:
        console.print(f"[yellow]demo applets not deployed[/] ({e}); build them with ./dev.sh setup")
        return None
    console.print(f"project [bold]{project.name}[/] deployed: applets {', '.join(project.applets)} "
                  "run on every verified reading")
    return store.files(project.name).applet_log


@click.command()
@click.option("--devices", type=click.IntRange(1, 10000), default=12, show_default=True,
              help="Emulated Pebbles (firmware profiles mixed).")
@click.option("--time-scale", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Duty cycle speed-up: a 300 s upload period becomes 5 s.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--faults/--no-faults", default=True, show_default=True,
              help="Let some devices misbehave, to show the gateway refusing them.")
@click.option("--chain/--no-chain", default=None,
              help="Anchor records on a local chain (anvil) and prove them [default: when anvil is installed].")
@click.option("--sensors/--no-sensors", default=True, show_default=True,
              help="Run an emulated serial board and an emulated BLE sensor beside the Pebbles.")
@click.option("--pair/--no-pair", default=True, show_default=True,
              help="Pair them at start; with --no-pair the demo prints the two commands to run yourself.")
@click.option("--data-dir", type=click.Path(file_okay=False), default="w3gate-demo", show_default=True)
def demo(devices: int, time_scale: float, duration: float | None, faults: bool, chain: bool | None,
         sensors: bool, pair: bool, data_dir: str) -> None:
    """Run the whole data path on this machine and print live verified readings."""
    from rich.console import Console

    from gateway.buffer.records import decode_record
    from gateway.buffer.store import RecordStore
    from gateway.cli.records import summary
    from gateway.verify.registry import Registry, make_device
    from hardware.pebble.keystore import Keystore

    console = Console(highlight=False)
    work = Path(data_dir).resolve()
    gw_data, fleet_dir = work / "gateway", work / "fleet"  # the rig's fleet, beside the gateway's data
    layout = DataDir(gw_data)
    broker = start_broker(work / "broker")
    console.print(f"[bold]w3gate demo[/]: mosquitto on {broker.url}, data in {work}")
    procs: list[subprocess.Popen] = []
    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        identities = Keystore(fleet_dir).ensure(devices, profile="mixed")
        registry = Registry(layout.devices)
        added = registry.add_many([make_device(i.imei, address=i.address, owner=i.owner, profile=i.profile)
                                   for i in identities])
        console.print(f"{len(identities)} emulated Pebbles ({added} newly registered), "
                      f"profiles: {', '.join(sorted({i.profile for i in identities}))}")
        applet_log = _deploy_demo_project(console, gw_data)
        from gateway.chain.devchain import ANVIL

        chain_env: dict = {}
        rpc_url = registry_address = None
        if chain or (chain is None and ANVIL.exists()):
            rpc_url, registry_address, chain_env = _start_chain(console, work, gw_data, procs)
        legacy_env: dict = {}
        pairings: list = []
        if sensors:
            if not chain_env:
                legacy_env.update(_node_key(work, gw_data))
            env_more, pairings = _legacy_bench(console, work, procs)
            legacy_env.update(env_more)
        applet_offset = applet_log.stat().st_size if applet_log and applet_log.exists() else 0
        env = {**os.environ, "W3GATE_MQTT_HOST": "127.0.0.1", "W3GATE_MQTT_PORT": str(broker.port),
               "W3GATE_DATA_DIR": str(gw_data), "W3GATE_MQTT_CLIENT_ID": "w3gate-demo",
               "W3GATE_API_PORT": "0",  # a free port: the demo never collides with a node on 8889
               **chain_env, **legacy_env}
        gw_log = open(work / "gateway.log", "ab")
        gateway = subprocess.Popen(_w3gate("run"), env=env, stdout=gw_log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        procs.append(gateway)
        deadline = time.time() + 20
        while not (read_status(layout.status) or {}).get("mqtt", {}).get("connected"):
            if time.time() > deadline or gateway.poll() is not None:
                raise click.ClickException(f"the gateway did not start; see {work / 'gateway.log'}")
            time.sleep(0.1)
        console.print(f"gateway running (log: {work / 'gateway.log'})")
        for name, args in pairings:  # one command each, as a user pairs a sensor
            if pair:
                _pair(console, env, gw_data, name, args)
            else:
                extra = f"W3GATE_BLE_TRANSPORT={env['W3GATE_BLE_TRANSPORT']} " if "--ble" in args else ""
                console.print(f"pair {name} yourself, in another terminal: [bold]{extra}"
                              f"{' '.join(['w3gate', *args, '--data-dir', str(gw_data)])}[/]")
        sim_log = open(work / "fleet.log", "ab")
        sim = _w3gate("sim", "pebble", "--count", str(devices), "--fleet-dir", str(fleet_dir),
                      "--broker", broker.url, "--time-scale", str(time_scale), "--register", "--quiet")
        if faults:
            sim += ["--faults", FAULTS]
        procs.append(subprocess.Popen(sim, env=env, stdout=sim_log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        console.print("fleet running; readings appear below as the gateway makes them durable "
                      "(Ctrl-C to stop)\n")
        profiles = {i.imei: i.profile for i in identities}
        from gateway.legacy.registry import LegacyRegistry

        paired = LegacyRegistry(layout.legacy_devices)
        last_seq, last_status, last_proven, started = 0, 0.0, 0, time.time()
        proof_hint_shown = False
        while not stopping and (duration is None or time.time() - started < duration):
            time.sleep(0.5)
            if layout.records.exists():
                store = RecordStore(layout.records, readonly=True)  # a fresh view each time
                fresh = list(store.iter_records(after_seq=last_seq, newest_first=False))
                store.close()
                for doc in fresh:
                    last_seq = doc["seq"]
                    values = decode_record(doc, profiles.get(doc["device"]))
                    stamp = time.strftime('%H:%M:%S', time.localtime(doc['rx']))
                    if doc.get("wire") == "legacy":
                        paired.reload()  # sensors paired while the demo runs
                        sensor = paired.get(doc["device"])
                        label = f"{sensor.name} ({sensor.transport})" if sensor else doc["device"]
                        console.print(f"[cyan]✔[/] {stamp} {label:<34} [cyan]{doc['trust']}[/] "
                                      f"{doc['kind']:<10} {summary(doc['kind'], values)}")
                    else:
                        console.print(f"[green]✔[/] {stamp} {doc['device']} [dim]{profiles.get(doc['device'], '?'):<16}[/] "
                                      f"[green]{doc.get('trust', '')}[/] {doc['kind']:<7} {summary(doc['kind'], values)}")
            if applet_log is not None and applet_log.exists() and applet_log.stat().st_size > applet_offset:
                with open(applet_log, "rb") as f:
                    f.seek(applet_offset)
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1
                applet_offset += end
                for line in chunk[:end].decode("utf-8", "replace").splitlines():
                    entry = json.loads(line)
                    if entry["level"] in ("warn", "error"):  # flags, alerts and failures; "ok" lines stay in the log
                        console.print(f"  [yellow]⚑ applet {entry['applet']}[/]: {entry['msg']}")
            if time.time() - last_status > 10:
                last_status = time.time()
                s = read_status(layout.status) or {}
                rejected = ", ".join(f"{k} {v}" for k, v in sorted(s.get("rejected", {}).items())) or "none"
                applets = s.get("applets", {})
                anchored = s.get("buffer", {}).get("anchored_upto", 0)
                console.print(f"[bold]status[/]: accepted {s.get('accepted_total', 0)}, "
                              f"buffered {s.get('buffer', {}).get('records', 0)}, "
                              f"applet runs {applets.get('events', 0)}"
                              + (f", anchored {anchored}" if rpc_url else "") + f"; [red]rejected[/]: {rejected}")
                if rpc_url and anchored > last_proven:
                    last_proven = anchored
                    try:
                        verdict = _prove(gw_data, anchored, rpc_url, registry_address)
                    except Exception as e:  # noqa: BLE001 - the demo goes on; the gateway log says more
                        verdict = f"could not check ({e})"
                    console.print(f"  [cyan]⛓ record {anchored}[/] proven against the chain: {verdict}")
                    if not proof_hint_shown:
                        proof_hint_shown = True
                        console.print(f"    [dim]check one yourself: w3gate proof {anchored} --json --data-dir {gw_data} "
                                      f"> proof.json && w3gate proof verify proof.json --rpc {rpc_url} "
                                      f"--registry {registry_address}[/]")
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        broker.stop()
        s = read_status(layout.status) or {}
        console.print(f"\nstopped. accepted {s.get('accepted_total', 0)}, rejected {s.get('rejected', {})}; "
                      f"records kept in {gw_data} (w3gate records --data-dir {gw_data})")
        if rpc_url:
            console.print("the local chain stopped with the demo: its proofs are gone with it")


COMMANDS = [demo]
