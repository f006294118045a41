"""The demo's orchestration: a private broker (the secure configuration w3gate writes: the gateway
logs in with a password, the Pebbles with client certificates over TLS), a local chain, the gateway and a fleet of emulated
Pebbles, each its own process talking MQTT, with the verified readings printed as they reach the
buffer. Beside them, legacy sensors: an emulated MicroPython board on a serial port and an emulated
BLE sensor on a virtual radio, each paired with one `w3gate device pair` command, their readings
attested by the gateway. `w3gate demo` (gateway/cli/demo.py) runs it; each step is a function."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from gateway.layout import DataDir
from gateway.status import read_status
from hardware.process import stop_group
from rig.broker import Broker, free_port, start_managed_broker

if TYPE_CHECKING:
    from gateway.legacy.registry import LegacyRegistry

FAULTS = "bad_signature=0.03,replay=0.02,skew=0.01,garbage=0.01,oversized=0.01,nonce_reuse=0.01,unknown_device=0.01"
DEMO_PROJECT = Path(__file__).resolve().parents[1] / "applets" / "demo.toml"
STATUS_EVERY_S = 10.0


@dataclass
class Options:
    """What `w3gate demo` was asked for (its options, one for one)."""

    devices: int = 12
    time_scale: float = 60.0
    duration: float | None = None
    faults: bool = True
    chain: bool | None = None  # None: when anvil is installed
    sensors: bool = True
    pair: bool = True
    data_dir: str = "w3gate-demo"


@dataclass
class Rig:
    """One demo run: where it keeps things, what it prints to, and every process it started."""

    console: Console
    work: Path
    broker: Broker | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the gateway's settings, as W3GATE_* variables
    rpc_url: str | None = None
    registry: str | None = None  # the proof registry's address on the local chain
    buy_command: str | None = None  # a buyer's purchase of a Pebble's stream, printed for the user to run

    @property
    def gw_data(self) -> Path:
        return self.work / "gateway"

    @property
    def fleet_dir(self) -> Path:
        return self.work / "fleet"  # the rig's fleet, beside the gateway's data

    @property
    def layout(self) -> DataDir:
        return DataDir(self.gw_data)


def w3gate(*args: str) -> list[str]:
    """A `w3gate` command line with this interpreter, as the demo runs its pieces."""
    return [sys.executable, "-m", "gateway", *args]


MARKER = ".w3gate-demo"  # in a directory the demo made: the next run may clear it


def fresh_workdir(path: str, console: Console) -> Path:
    """The demo's directory, empty: each run has a new local chain and new emulated sensors, so a
    previous run's anchoring journal and pairings would only stall this one. A directory the demo
    did not make is never cleared."""
    work = Path(path).resolve()
    if work.exists() and any(work.iterdir()):
        made_by_demo = (work / MARKER).is_file() or (  # or a run from before the marker
            (work / "gateway").is_dir() and (work / "fleet").is_dir() and (work / "gateway.log").is_file())
        if not made_by_demo:
            raise click.ClickException(f"{work} is not empty and is not a demo's directory: give --data-dir "
                                       "a new or empty one")
        shutil.rmtree(work)
        console.print(f"[dim]cleared the previous demo run in {work} (its chain, and so its proofs, ended "
                      "with it)[/]")
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by `w3gate demo`; the next demo run clears this directory\n")
    return work


def run(options: Options) -> None:
    """Run the whole data path on this machine until Ctrl-C or ``options.duration``."""
    console = Console(highlight=False)
    work = fresh_workdir(options.data_dir, console)
    rig = Rig(console, work)
    stopping = _stop_on_signals()
    try:
        profiles = register_fleet(rig, options.devices)
        start_secure_broker(rig)
        applet_log = deploy_demo_project(rig)
        if options.chain or (options.chain is None and _anvil_installed()):
            start_chain(rig)
            open_market(rig, min(profiles))
        pairings = start_legacy_sensors(rig) if options.sensors else []
        applet_offset = applet_log.stat().st_size if applet_log and applet_log.exists() else 0
        start_gateway(rig)
        for name, args in pairings:  # one command each, as a user pairs a sensor
            if options.pair:
                pair_sensor(rig, name, args)
            else:
                show_pairing(rig, name, args)
        if rig.buy_command:
            rig.console.print(f"buy a Pebble's readings yourself, in another terminal: [bold]{rig.buy_command}[/] "
                              "(it prints the command that receives them)")
        start_fleet(rig, options)
        watch(rig, Watch(profiles, applet_log, applet_offset), options.duration, stopping)
    finally:
        stop(rig)


def _stop_on_signals() -> list[bool]:
    """SIGINT and SIGTERM end the watch loop, so the finally clause stops every process."""
    stopping = [False]

    def handler(*_args: object) -> None:
        stopping[0] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopping


def _anvil_installed() -> bool:
    from rig.chain import ANVIL

    return ANVIL.exists()


def register_fleet(rig: Rig, devices: int) -> dict[str, str]:
    """The secure broker's configuration (`w3gate broker setup`, on loopback ports of the demo's
    own), and the emulated Pebbles' identities registered with `w3gate device import`, which
    gives each its client certificate; their profiles by IMEI."""
    from hardware.pebble.keystore import Keystore

    local, devices_port = free_port(), free_port()
    rig.env.update(W3GATE_BROKER_LOCAL_PORT=str(local), W3GATE_MQTT_PORT=str(local),
                   W3GATE_BROKER_DEVICE_PORT=str(devices_port), W3GATE_BROKER_CLIENT_PORT=str(free_port()),
                   W3GATE_BROKER_DEVICE_LISTEN="127.0.0.1", W3GATE_BROKER_PERSISTENCE="false")
    identities = Keystore(rig.fleet_dir).ensure(devices, profile="mixed")
    for args in (["broker", "setup"], ["device", "import", str(Keystore(rig.fleet_dir).devices_path)]):
        result = subprocess.run(w3gate(*args), env=gateway_env(rig), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise click.ClickException(f"w3gate {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    rig.console.print(f"{len(identities)} emulated Pebbles, each with its client certificate, "
                      f"profiles: {', '.join(sorted({i.profile for i in identities}))}")
    return {i.imei: i.profile for i in identities}


def start_secure_broker(rig: Rig) -> None:
    """mosquitto with the configuration `w3gate broker setup` wrote: no anonymous clients."""
    local, devices_port = int(rig.env["W3GATE_BROKER_LOCAL_PORT"]), rig.env["W3GATE_BROKER_DEVICE_PORT"]
    rig.broker = start_managed_broker(rig.layout.broker.conf, local, rig.work / "mosquitto.log")
    rig.procs.append(rig.broker.proc)
    rig.console.print(f"[bold]w3gate demo[/]: data in {rig.work}; mosquitto (secure: no anonymous clients) "
                      f"with the gateway on 127.0.0.1:{local}, Pebbles over TLS with client certificates "
                      f"on 127.0.0.1:{devices_port}")


def deploy_demo_project(rig: Rig) -> Path | None:
    """The example applets on every verified reading; the applet log to follow, if deployed."""
    from gateway.applets.project import ProjectError, ProjectStore

    if not DEMO_PROJECT.exists():
        rig.console.print("[dim]applets/demo.toml not found: running without applets[/]")
        return None
    store = ProjectStore(rig.layout)
    try:
        project = store.deploy(DEMO_PROJECT)
    except ProjectError as e:
        rig.console.print(f"[yellow]demo applets not deployed[/] ({e}); build them with ./dev.sh setup")
        return None
    rig.console.print(f"project [bold]{project.name}[/] deployed: applets {', '.join(project.applets)} "
                      "run on every verified reading")
    return store.files(project.name).applet_log


def save_node_key(rig: Rig, key: str | bytes) -> None:
    """The gateway's key under a throwaway passphrase; it signs anchors and attests legacy sensors."""
    from gateway.chain.keystore import save_key

    passphrase = rig.work / "node-key.pass"
    passphrase.write_text(secrets.token_hex(16) + "\n")
    passphrase.chmod(0o600)
    save_key(rig.layout.node_key, key, passphrase.read_text().strip(), overwrite=True,
             kdf="pbkdf2", iterations=1000)  # a throwaway dev key: no need for scrypt's seconds
    rig.env["W3GATE_CHAIN_KEY_PASSPHRASE_FILE"] = str(passphrase)


def start_chain(rig: Rig) -> None:
    """A local chain (anvil) with the proof registry; the gateway anchors there with a dev key."""
    from rig.chain import DEV_ADDRESSES, DEV_KEYS, deploy_registry, start_anvil

    chain = start_anvil(rig.work / "chain", "--block-time", "1")  # a block a second, as a chain makes them
    rig.procs.append(chain.proc)
    rig.rpc_url, rig.registry = chain.url, deploy_registry(chain.url, DEV_KEYS[0], [DEV_ADDRESSES[1]])
    save_node_key(rig, DEV_KEYS[1])
    rig.console.print(f"local chain (anvil) on {chain.url}, proof registry {rig.registry}; "
                      f"records are anchored in batches, and proven below")
    rig.env.update(W3GATE_CHAIN_ENABLED="true", W3GATE_CHAIN_NETWORK=chain.url, W3GATE_CHAIN_REGISTRY=rig.registry,
                   W3GATE_CHAIN_CONFIRMATIONS="1", W3GATE_CHAIN_BATCH_RECORDS="50", W3GATE_CHAIN_BATCH_AGE_S="5")


def open_market(rig: Rig, device: str) -> None:
    """A DataMarket beside the registry with one Pebble's stream for sale (the gateway vouches for
    its owner, the owner lists it), and a buyer with a wallet, an X25519 key and a broker of their
    own: the command a buyer runs is printed once the gateway runs (docs/market.md)."""
    from eth_account import Account
    from web3 import Web3

    from gateway.market import contract
    from gateway.market.seal import new_key_file
    from gateway.storage import atomic_write
    from rig.broker import start_broker
    from rig.chain import DEV_KEYS

    w3 = Web3(Web3.HTTPProvider(rig.rpc_url))
    gateway, owner = Account.from_key(DEV_KEYS[1]), Account.from_key(DEV_KEYS[2])
    market = contract.deploy(w3, Account.from_key(DEV_KEYS[0]), rig.registry, challenge_blocks=10,
                             grace_blocks=120).contract
    from gateway.verify.registry import Registry

    signer = Registry(rig.layout.devices).get(device).address  # the Pebble signs its own readings
    contract.vouch(w3, gateway, market, device, owner.address, signer)  # before the gateway sends with its key
    contract.list_stream(w3, owner, market, device, 10**12)
    buyer_broker = start_broker(rig.work / "buyer-broker")
    rig.procs.append(buyer_broker.proc)
    wallet, key = rig.work / "buyer.wallet", rig.work / "buyer.x25519"
    atomic_write(wallet, (DEV_KEYS[3] + "\n").encode())  # anvil's fourth dev account pays
    new_key_file(key)
    rig.env.update(W3GATE_MARKET_CONTRACT=market, W3GATE_MARKET_ALLOW_PRIVATE_ENDPOINTS="true")
    rig.buy_command = (f"w3gate market buy {device} --blocks 20 --endpoint mqtt://127.0.0.1:{buyer_broker.port}/buyer "
                       f"--key-file {key} --wallet {wallet} --rpc {rig.rpc_url} --market {market}")
    rig.console.print(f"data market {market}: {device}'s readings for sale at 10^12 wei a block "
                      f"(owner {owner.address}); a buyer's broker on 127.0.0.1:{buyer_broker.port}")


def start_legacy_sensors(rig: Rig) -> list[tuple[str, list[str]]]:
    """An emulated serial board and an emulated BLE sensor, not yet paired, and the settings that
    reach them; the pairing command for each."""
    import shutil

    from hardware.ble_sensor.launch import Radio, Sensor
    from hardware.board import BoardError, EmulatedBoard

    if "W3GATE_CHAIN_KEY_PASSPHRASE_FILE" not in rig.env:  # no chain: a key of its own to attest with
        save_node_key(rig, secrets.token_bytes(32))
    console, work = rig.console, rig.work
    pairings: list[tuple[str, list[str]]] = []
    if shutil.which("socat"):
        try:
            board = EmulatedBoard(work / "boards" / "greenhouse", "greenhouse", port_dir=work / "serial" / "by-id").plug()
        except BoardError as e:
            console.print(f"[dim]no emulated serial board ({e})[/]")
        else:
            rig.procs.append(board.proc)
            rig.env["W3GATE_SERIAL_PORTS"] = str(board.port_dir / "usb-*")
            pairings.append(("greenhouse", ["device", "pair", "--serial", str(board.port), "--name", "greenhouse",
                                            "--period-ms", "3000", "--sensors", "sim"]))
            console.print(f"emulated MicroPython board (unix port) on {board.port}, at its REPL")
    else:
        console.print("[dim]socat is missing: no emulated serial board (./dev.sh setup installs it)[/]")
    radio = Radio(work / "ble")
    rig.procs.append(radio.proc)
    sensor = Sensor(radio, work / "ble", "w3-beehive", period_ms=4000)
    rig.procs.append(sensor.proc)
    rig.env.update(W3GATE_BLE_ENABLED="true", W3GATE_BLE_TRANSPORT=radio.transport)
    pairings.append(("w3-beehive", ["device", "pair", "--ble", "w3-beehive", "--period-ms", "4000"]))
    console.print(f"emulated BLE sensor w3-beehive on a virtual radio ({radio.transport}), waiting to be paired")
    return pairings


def gateway_env(rig: Rig) -> dict[str, str]:
    """The environment `w3gate run` and the pairing commands see: this rig's broker, data, chain."""
    return {**os.environ, "W3GATE_MQTT_HOST": "127.0.0.1",
            "W3GATE_DATA_DIR": str(rig.gw_data), "W3GATE_MQTT_CLIENT_ID": "w3gate-demo",
            "W3GATE_API_PORT": "0",  # a free port: the demo never collides with a node on 8889
            "W3GATE_DASHBOARD_PORT": "0",  # nor with one's dashboard on 8890; its URL is printed
            **rig.env}


def start_gateway(rig: Rig, timeout: float = 20.0) -> None:
    """`w3gate run` as its own process; back once it is connected to the broker."""
    log = rig.work / "gateway.log"
    with open(log, "ab") as out:
        gateway = subprocess.Popen(w3gate("run"), env=gateway_env(rig), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    rig.procs.append(gateway)
    deadline = time.time() + timeout
    while not (status := read_status(rig.layout.status) or {}).get("mqtt", {}).get("connected") \
            or ((status.get("dashboard") or {"url": ""}).get("url") is None):  # None: not listening yet
        if time.time() > deadline or gateway.poll() is not None:
            raise click.ClickException(f"the gateway did not start; see {log}")
        time.sleep(0.1)
    rig.console.print(f"gateway running (log: {log})")
    url = (status.get("dashboard") or {}).get("url")
    if url:
        rig.console.print(f"[bold]dashboard: {url}/[/] (open it in a browser; metrics at {url}/metrics)")


def pair_sensor(rig: Rig, name: str, args: list[str]) -> None:
    """Run the pairing command as a user would, and show what it said."""
    rig.console.print(f"[bold]$ {' '.join(['w3gate', *args])}[/]")
    result = subprocess.run(w3gate(*args, "--data-dir", str(rig.gw_data)), env=gateway_env(rig),
                            capture_output=True, text=True, timeout=120)
    for line in (result.stdout or result.stderr).strip().splitlines():
        rig.console.print(f"  {line}")


def show_pairing(rig: Rig, name: str, args: list[str]) -> None:
    """The pairing command for the user to run in another terminal, with what it needs set."""
    extra = f"W3GATE_BLE_TRANSPORT={rig.env['W3GATE_BLE_TRANSPORT']} " if "--ble" in args else ""
    rig.console.print(f"pair {name} yourself, in another terminal: [bold]{extra}"
                      f"{' '.join(['w3gate', *args, '--data-dir', str(rig.gw_data)])}[/]")


def start_fleet(rig: Rig, options: Options) -> None:
    """The emulated Pebbles as `w3gate sim pebble`, some misbehaving unless --no-faults."""
    sim = w3gate("sim", "pebble", "--count", str(options.devices), "--fleet-dir", str(rig.fleet_dir),
                 "--broker", f"127.0.0.1:{rig.env['W3GATE_BROKER_DEVICE_PORT']}",
                 "--client-certs", str(rig.layout.broker.clients),
                 "--time-scale", str(options.time_scale), "--register", "--quiet")
    if options.faults:
        sim += ["--faults", FAULTS]
    with open(rig.work / "fleet.log", "ab") as out:
        rig.procs.append(subprocess.Popen(sim, env=gateway_env(rig), stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    rig.console.print("fleet running; readings appear below as the gateway makes them durable "
                      "(Ctrl-C to stop)\n")


@dataclass
class Watch:
    """How far the watch loop has printed: readings, applet log, status, proofs."""

    profiles: dict[str, str]  # Pebble IMEI -> firmware profile
    applet_log: Path | None
    applet_offset: int = 0
    last_seq: int = 0
    last_status: float = 0.0
    last_proven: int = 0
    proof_hint_shown: bool = False


def watch(rig: Rig, seen: Watch, duration: float | None, stopping: list[bool]) -> None:
    """Print what the gateway does, twice a second, until stopped or ``duration`` is over."""
    from gateway.legacy.registry import LegacyRegistry

    paired = LegacyRegistry(rig.layout.legacy_devices)
    started = time.time()
    while not stopping[0] and (duration is None or time.time() - started < duration):
        time.sleep(0.5)
        print_readings(rig, seen, paired)
        print_applet_alerts(rig, seen)
        if time.time() - seen.last_status > STATUS_EVERY_S:
            seen.last_status = time.time()
            print_status(rig, seen)


def print_readings(rig: Rig, seen: Watch, paired: LegacyRegistry) -> None:
    """Each record made durable since the last look, Pebbles and legacy sensors alike."""
    from gateway.buffer.store import RecordStore
    from gateway.cli.records import summary
    from gateway.codec.record import Record

    if not rig.layout.records.exists():
        return
    store = RecordStore(rig.layout.records, readonly=True)  # a fresh view each time
    fresh = list(store.iter_records(after_seq=seen.last_seq, newest_first=False))
    store.close()
    for doc in fresh:
        seen.last_seq = doc["seq"]
        record = Record(doc)
        values = record.values(seen.profiles.get(doc["device"]))
        stamp = time.strftime('%H:%M:%S', time.localtime(doc['rx']))
        if record.family == "legacy":
            paired.reload()  # sensors paired while the demo runs
            sensor = paired.get(doc["device"])
            label = f"{sensor.name} ({sensor.transport})" if sensor else doc["device"]
            rig.console.print(f"[cyan]✔[/] {stamp} {label:<34} [cyan]{doc['trust']}[/] "
                              f"{doc['kind']:<10} {summary(doc['kind'], values)}")
        else:
            rig.console.print(f"[green]✔[/] {stamp} {doc['device']} "
                              f"[dim]{seen.profiles.get(doc['device'], '?'):<16}[/] "
                              f"[green]{doc.get('trust', '')}[/] {doc['kind']:<7} {summary(doc['kind'], values)}")


def print_applet_alerts(rig: Rig, seen: Watch) -> None:
    """The applets' flags, alerts and failures since the last look; "ok" lines stay in the log."""
    log = seen.applet_log
    if log is None or not log.exists() or log.stat().st_size <= seen.applet_offset:
        return
    with open(log, "rb") as f:
        f.seek(seen.applet_offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1  # whole lines only: the applet may be writing the next one
    seen.applet_offset += end
    for line in chunk[:end].decode("utf-8", "replace").splitlines():
        entry = json.loads(line)
        if entry["level"] in ("warn", "error"):
            rig.console.print(f"  [yellow]⚑ applet {entry['applet']}[/]: {entry['msg']}")


def print_status(rig: Rig, seen: Watch) -> None:
    """The gateway's counters; with a chain, the newest anchored record proven against it."""
    s = read_status(rig.layout.status) or {}
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(s.get("rejected", {}).items())) or "none"
    anchored = s.get("buffer", {}).get("anchored_upto", 0)
    rig.console.print(f"[bold]status[/]: accepted {s.get('accepted_total', 0)}, "
                      f"buffered {s.get('buffer', {}).get('records', 0)}, "
                      f"applet runs {s.get('applets', {}).get('events', 0)}"
                      + (f", anchored {anchored}" if rig.rpc_url else "") + f"; [red]rejected[/]: {rejected}")
    if rig.rpc_url and anchored > seen.last_proven:
        seen.last_proven = anchored
        print_proof(rig, seen, anchored)


def print_proof(rig: Rig, seen: Watch, seq: int) -> None:
    """Record ``seq`` proven against the chain; the first time, how to check one yourself."""
    try:
        verdict = prove(rig, seq)
    except Exception as e:  # noqa: BLE001 - the demo goes on; the gateway log says more
        verdict = f"could not check ({e})"
    rig.console.print(f"  [cyan]⛓ record {seq}[/] proven against the chain: {verdict}")
    if not seen.proof_hint_shown:
        seen.proof_hint_shown = True
        rig.console.print(f"    [dim]check one yourself: w3gate proof {seq} --json --data-dir {rig.gw_data} "
                          f"> proof.json && w3gate proof verify proof.json --rpc {rig.rpc_url} "
                          f"--registry {rig.registry}[/]")


def prove(rig: Rig, seq: int) -> str:
    """Prove record ``seq`` against the chain alone, as `w3gate proof verify` does."""
    from gateway.buffer.store import RecordStore
    from gateway.proofs.journal import BatchJournal
    from gateway.proofs.verify import verify_proof

    store = RecordStore(rig.layout.records, readonly=True)
    try:
        proof = BatchJournal(rig.layout.proofs, store).proof_for(seq)
    finally:
        store.close()
    verdict = verify_proof(proof, rig.rpc_url, rig.registry)
    where = f"batch {proof['batch']['sequence']}, root {proof['root'][:18]}…"
    return f"{'valid' if verdict.ok else 'INVALID ' + verdict.reason} ({where})"


def stop(rig: Rig) -> None:
    """Stop every process, newest first, then the broker; say what was kept."""
    for proc in reversed(rig.procs):  # the broker was started first: it stops last
        stop_group(proc)
    s = read_status(rig.layout.status) or {}
    rig.console.print(f"\nstopped. accepted {s.get('accepted_total', 0)}, rejected {s.get('rejected', {})}; "
                      f"records kept in {rig.gw_data} (w3gate records --data-dir {rig.gw_data})")
    if rig.rpc_url:
        rig.console.print("the local chain stopped with the demo: its proofs are gone with it")
