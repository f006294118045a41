"""`w3gate` as the user runs it: a real `w3gate run` process and the CLI, for HIL tests."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from hardware.process import stop_group


def w3gate_exe() -> list[str]:
    exe = shutil.which("w3gate", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "gateway"]


def cli(*args: str, data_dir: Path, config: Path | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [*w3gate_exe(), *args, "--data-dir", str(data_dir)]
    if config:
        cmd += ["--config", str(config)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def cli_json(*args: str, data_dir: Path, config: Path | None = None):
    return json.loads(cli(*args, "--json", data_dir=data_dir, config=config).stdout)


class GatewayProcess:
    """`w3gate run` against a test broker, with its own data directory and log file."""

    def __init__(self, workdir: Path, broker_port: int, **settings: object) -> None:
        self.data_dir = workdir / "data"
        self.config = workdir / "w3gate.toml"
        self.log = workdir / "gateway.log"
        sections: dict[str, dict] = {"mqtt": {"host": "127.0.0.1", "port": broker_port,
                                              "client_id": f"w3gate-test-{broker_port}"},
                                     "api": {"port": 0}, "dashboard": {"port": 0}}
        for key, value in settings.items():
            section, _, name = key.partition("__")
            sections.setdefault(section, {})[name] = value
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, *extra: str, wait: bool = True) -> "GatewayProcess":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([*w3gate_exe(), "run", "--config", str(self.config), "--data-dir",
                                      str(self.data_dir), *extra], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if wait:
            self.wait_connected()
        return self

    def status(self) -> dict:
        try:
            return json.loads((self.data_dir / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def wait_connected(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"w3gate run exited {self.proc.returncode}:\n{self.log.read_text()}")
            s = self.status()
            if s.get("pid") == self.proc.pid and s.get("mqtt", {}).get("connected"):
                return
            time.sleep(0.05)
        raise AssertionError(f"w3gate run did not connect in {timeout} s:\n{self.log.read_text()}")

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        status = {}
        while time.monotonic() < deadline:
            status = self.status()
            if status and predicate(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status {json.dumps(status)}\n"
                             f"{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM, as systemd does; returns the exit code."""
        return stop_group(self.proc, signal.SIGTERM, timeout=20)

    def kill(self) -> None:
        stop_group(self.proc, signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text()


def sim(broker, fleet_dir, *args: str, timeout: float = 60) -> dict:
    """Run `w3gate sim pebble ... --json` to completion and return its summary."""
    result = subprocess.run([*w3gate_exe(), "sim", "pebble", "--broker", broker.url, "--fleet-dir", str(fleet_dir),
                             "--json", "--quiet", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def publish(broker, messages: list[tuple[str, bytes]], *, retain: bool = False) -> None:
    """Publish with QoS 1 as an ordinary client on the LAN would, and wait until the broker has each."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crafted")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def chain_gateway(tmp_path, mosquitto, anvil, *, anchoring: bool = True, **settings):
    """A `w3gate run` with [chain] on anvil: the registry deployed (owner: dev key 0), the node key
    (dev key 1) imported under a passphrase file. Returns (gateway, registry, identity, passphrase).
    Without ``anchoring`` the gateway is not told the registry: applets use the chain, nothing is anchored."""
    from eth_account import Account

    from rig.chain import deploy_registry

    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    passphrase.chmod(0o600)  # as a user keeps it (w3gate doctor fails a passphrase anyone can read)
    key_file = tmp_path / "gateway.key"
    key_file.write_text(anvil.keys[1])
    registry = deploy_registry(anvil.url, anvil.keys[0], [Account.from_key(anvil.keys[1]).address])
    gw = GatewayProcess(tmp_path, mosquitto.port, chain__enabled=True, chain__network=anvil.url,
                        chain__registry=registry if anchoring else "", chain__key_passphrase_file=str(passphrase),
                        chain__confirmations=1, chain__poll_s=0.2, **settings)
    identity = cli_json("key", "import", str(key_file), "--passphrase-file", str(passphrase), data_dir=gw.data_dir)
    return gw, registry, identity, passphrase


def post_event(url: str, token: str, project: str, event_type: str, body: dict) -> dict:
    """An event to the gateway's HTTP event API, as a W3bstream client sends it: the first result."""
    request = urllib.request.Request(f"{url}/srv-applet-mgr/v0/event/{project}?eventType={event_type}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())["results"][0]
