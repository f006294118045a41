"""`w3gate doctor` on real parts: the managed mosquitto, anvil, a running `w3gate run`, a real
node key. A healthy setup passes (exit 0); each way of breaking it FAILs on its own line, with the
fix, and the exit status is 1."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rig.broker import start_managed_broker
from tests.support.gateway import GatewayProcess, chain_gateway, cli, cli_json, sim, w3gate_exe

PASSPHRASE = "correct horse battery staple"
# Until gateway/cli/__init__.py lists `doctor`, the same entry point with it added.
REGISTERED = "import gateway.cli as c; c.COMMAND_MODULES.setdefault('doctor', 'doctor'); c.main()"


def distinct_ports(n: int) -> list[int]:
    """``n`` free loopback ports, all different (free_port() twice may give the same one)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def doctor(data_dir: Path, config: Path, *args: str, env: dict | None = None) -> tuple[int, str, float]:
    """`w3gate doctor` as the user runs it: (exit status, stdout, seconds taken)."""
    from gateway.cli import COMMAND_MODULES

    exe = [*w3gate_exe()] if "doctor" in COMMAND_MODULES else [sys.executable, "-c", REGISTERED]
    started = time.monotonic()
    done = subprocess.run([*exe, "doctor", "--config", str(config), "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    assert not done.stderr.strip(), done.stderr
    return done.returncode, done.stdout, time.monotonic() - started


def line(out: str, name: str) -> tuple[str, str]:
    """(status word, the rest) of the check ``name``'s line."""
    match = re.search(rf"^(ok|WARN|FAIL|skip)\s+{re.escape(name)}  +(.*)$", out, re.MULTILINE)
    assert match, f"no line for {name!r} in:\n{out}"
    return match.group(1), match.group(2)


def failing(out: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^FAIL\s+(\S+(?: \S+)*?)  ", out, re.MULTILINE)]


class Setup:
    """A gateway's configuration and data directory with its managed broker set up and running,
    on ports of its own (the gateway itself is not started)."""

    def __init__(self, tmp_path: Path, **settings) -> None:
        self.local, self.api, devices, clients = distinct_ports(4)
        self.gw = GatewayProcess(tmp_path, self.local, broker__local_port=self.local,
                                 broker__device_port=devices, broker__client_port=clients,
                                 broker__device_listen="127.0.0.1", broker__persistence=False,
                                 api__port=self.api, **settings)
        self.data_dir, self.config = self.gw.data_dir, self.gw.config
        cli("broker", "setup", data_dir=self.data_dir, config=self.config)
        self.broker = start_managed_broker(self.data_dir / "broker" / "mosquitto.conf", self.local,
                                           tmp_path / "mosquitto.log")
        self.passphrase = tmp_path / "passphrase"
        self.passphrase.write_text(PASSPHRASE + "\n")
        self.passphrase.chmod(0o600)

    def new_key(self) -> str:
        return cli_json("key", "new", "--passphrase-file", str(self.passphrase), data_dir=self.data_dir)["address"]

    def run(self, *args: str, env: dict | None = None) -> tuple[int, str, float]:
        return doctor(self.data_dir, self.config, *args, env=env)

    def stop(self) -> None:
        if self.gw.proc is not None and self.gw.proc.poll() is None:
            self.gw.stop()
        self.broker.stop()


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    yield s
    s.stop()


def test_a_healthy_gateway_passes_and_an_rpc_of_another_chain_fails(tmp_path, anvil):
    from rig.chain import start_anvil

    local, api, devices, clients = distinct_ports(4)
    broker_port = type("Port", (), {"port": local})()
    gw, registry, identity, passphrase = chain_gateway(
        tmp_path, broker_port, anvil, broker__local_port=local, broker__device_port=devices,
        broker__client_port=clients, broker__device_listen="127.0.0.1", broker__persistence=False,
        api__port=api)
    passphrase.chmod(0o600)  # every account could read it: doctor would rightly FAIL the node key
    cli("broker", "setup", data_dir=gw.data_dir, config=gw.config)
    broker = start_managed_broker(gw.data_dir / "broker" / "mosquitto.conf", local, tmp_path / "mosquitto.log")
    try:
        gw.start()
        anchorer_meta = gw.data_dir / "proofs" / "anchorer.json"
        deadline = time.monotonic() + 30
        while not anchorer_meta.exists() and time.monotonic() < deadline:  # the anchorer bound it to anvil
            time.sleep(0.1)
        code, out, took = doctor(gw.data_dir, gw.config)
        assert code == 0 and failing(out) == [], out
        assert line(out, "broker reachable") == ("ok", f"127.0.0.1:{local} takes connections")
        assert line(out, "broker secured")[0] == "ok" and "anonymous login refused" in line(out, "broker secured")[1]
        assert line(out, "broker credentials") == (
            "ok", f"w3gate-cli logs in with {gw.data_dir / 'broker' / 'gateway.secret'}")
        assert line(out, "broker files")[0] == "ok"
        assert line(out, "data dir permissions")[0] == "ok"
        assert line(out, "chain rpc")[0] == "ok" and "chain 31337" in line(out, "chain rpc")[1]
        assert line(out, "chain registry") == ("ok", f"{registry}: this gateway may anchor")
        assert line(out, "node key") == ("ok", f"{identity['address']} unlocks with {passphrase}")
        assert line(out, "node key funds")[0] == "ok"
        assert line(out, "port event API") == (
            "ok", f"127.0.0.1:{api} is held by the running gateway (pid {gw.proc.pid})")
        assert line(out, "port broker local") == (
            "ok", f"127.0.0.1:{local} is held by the managed broker (pid {broker.proc.pid})")
        assert line(out, "bluetooth") == ("skip", "[ble] enabled = false")
        assert out.rstrip().splitlines()[-1].startswith("doctor passed: 0 FAIL")
        assert took < 5, f"doctor took {took:.1f} s"
        report = json.loads(doctor(gw.data_dir, gw.config, "--json")[1])
        assert report["ok"] and report["exit"] == 0 and {c["name"] for c in report["checks"]} >= {
            "broker secured", "chain rpc", "node key", "port event API"}
        gw.stop()

        other = start_anvil(tmp_path / "other", "--chain-id", "999")
        try:  # [chain] network moved to an RPC of another chain than the one the gateway anchors on
            code, out, _ = doctor(gw.data_dir, gw.config, env={"W3GATE_CHAIN_NETWORK": other.url})
        finally:
            other.stop()
        assert code == 1 and failing(out) == ["chain rpc"], out
        assert line(out, "chain rpc") == (
            "FAIL", f"{other.url} is chain 999, but {anchorer_meta} was written for chain 31337: anchoring would "
                    "pause  -> fix: [chain] network: an RPC of chain 31337 (the one this gateway anchors on)")
        assert line(out, "port event API") == ("ok", f"127.0.0.1:{api} is free")
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.stop()
        broker.stop()


def test_an_open_anonymous_broker_fails_broker_secured(tmp_path, mosquitto):
    keystore_dir = tmp_path / "fleet"
    api = next(p for p in distinct_ports(2) if p != mosquitto.port)
    gw = GatewayProcess(tmp_path, mosquitto.port, broker__managed=False, api__port=api)
    sim(mosquitto, keystore_dir, "--count", "2", "--duration", "0.1")
    cli("device", "import", str(keystore_dir / "devices.json"), data_dir=gw.data_dir)
    gw.start()
    try:
        sim(mosquitto, keystore_dir, "--count", "2", "--messages", "1", "--time-scale", "300", "--qos", "1")
        gw.wait_for(lambda s: s.get("accepted_total", 0) >= 2, what="readings accepted")
        code, out, _ = doctor(gw.data_dir, gw.config)
    finally:
        gw.stop()
    assert code == 1, out
    assert line(out, "broker secured") == (
        "FAIL", f"anonymous clients are let in at 127.0.0.1:{mosquitto.port}  -> fix: `allow_anonymous false` and "
                "a password_file in your broker's configuration, or let w3gate manage it: [broker] managed = true "
                "and `w3gate broker setup`")
    assert line(out, "broker credentials")[0] == "FAIL"  # the gateway logs in anonymously
    assert line(out, "broker files") == ("skip", "[broker] managed = false: your own broker")
    status, skew = line(out, "clock skew")  # real readings, just received: no skew worth a word
    assert status == "ok" and re.match(r"median rx - ts \+?-?\d+\.\d s over the last \d+ Pebble readings", skew), out


def test_an_unreachable_rpc_fails_chain_rpc(setup):
    setup.new_key()
    dead = next(p for p in distinct_ports(5) if p not in (setup.local, setup.api))
    code, out, _ = setup.run(env={"W3GATE_CHAIN_ENABLED": "true", "W3GATE_CHAIN_NETWORK": f"http://127.0.0.1:{dead}",
                                  "W3GATE_CHAIN_KEY_PASSPHRASE_FILE": str(setup.passphrase)})
    assert code == 1 and failing(out) == ["chain rpc"], out
    assert line(out, "chain rpc") == (
        "FAIL", f"cannot reach http://127.0.0.1:{dead}: [Errno 111] Connection refused  -> fix: check this machine's "
                "network, or [chain] network (iotex-mainnet, iotex-testnet or an RPC URL)")
    assert line(out, "node key")[0] == "ok"  # unlocking needs no chain
    assert line(out, "node key funds") == ("skip", "the chain cannot be used")


def test_a_node_key_with_a_wrong_passphrase_fails(setup, anvil, tmp_path):
    address = setup.new_key()
    wrong = tmp_path / "wrong-passphrase"
    wrong.write_text("not the passphrase at all\n")
    wrong.chmod(0o600)
    code, out, _ = setup.run(env={"W3GATE_CHAIN_ENABLED": "true", "W3GATE_CHAIN_NETWORK": anvil.url,
                                  "W3GATE_CHAIN_KEY_PASSPHRASE_FILE": str(wrong)})
    assert code == 1 and failing(out) == ["node key"], out
    assert line(out, "node key") == (
        "FAIL", f"{address}: the passphrase in {wrong} does not unlock {setup.data_dir / 'node-key.json'}  -> fix: "
                "[chain] key_passphrase_file: its first line must be the key's passphrase")
    assert line(out, "chain rpc")[0] == "ok"
    assert line(out, "node key funds") == ("WARN", f"{address} has no funds: anchors and applets' transactions "
                                                   f"cannot be paid  -> fix: send IOTX to {address} (`w3gate chain "
                                                   "status` shows what an anchor costs)")


def test_a_private_file_open_to_others_fails(setup):
    setup.new_key()
    code, out, _ = setup.run()
    assert code == 0 and line(out, "data dir permissions")[0] == "ok", out
    key = setup.data_dir / "node-key.json"
    key.chmod(0o644)
    code, out, _ = setup.run()
    assert code == 1 and failing(out) == ["data dir permissions"], out
    assert line(out, "data dir permissions") == (
        "FAIL", f"{key}: 1 file open to other local accounts (0644, want 0600): node-key.json  -> fix: "
                f"chmod -R go= {key}")


def test_a_port_held_by_a_foreign_process_fails(setup):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", setup.api))
        squatter.listen()
        code, out, _ = setup.run()
    assert code == 1 and failing(out) == ["port event API"], out
    status, rest = line(out, "port event API")
    assert status == "FAIL" and rest.startswith(f"127.0.0.1:{setup.api} is held by pid {os.getpid()} ("), out
    assert rest.endswith(f"not the running gateway  -> fix: stop it (`sudo ss -ltnp 'sport = :{setup.api}'` "
                         "names it), or move ours: [api] port"), out
    assert line(out, "port broker local") == (
        "ok", f"127.0.0.1:{setup.local} is held by the managed broker (pid {setup.broker.proc.pid})")
    code, out, _ = setup.run()
    assert code == 0 and line(out, "port event API") == ("ok", f"127.0.0.1:{setup.api} is free"), out
