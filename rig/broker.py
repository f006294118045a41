"""Private mosquitto brokers for the demo, the tests and the benches, each on a loopback port of
its own (never the system broker on 1883), with the settings w3gate runs with."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.broker.conf import TUNING
from gateway.errors import W3gateError
from hardware.process import stop_group


class BrokerError(W3gateError):
    reason = "broker"


def mosquitto_path() -> str:
    """Debian puts mosquitto in /usr/sbin, which is not on every user's PATH."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto is not installed (apt-get install mosquitto)", reason="no_broker")


def free_port() -> int:
    """A loopback port nobody listens on now (the caller retries if it loses the race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts connections on the port: a started server is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def open_conf(port: int, bind: str = "127.0.0.1") -> str:
    """A private test broker: anonymous clients on one loopback listener, the gateway's tuning.
    (What a deployment runs is the managed, secure configuration: gateway/broker/conf.py.)"""
    return (f"listener {port} {bind}\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n" + TUNING)


@dataclass
class Broker:
    port: int
    proc: subprocess.Popen
    log: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        stop_group(self.proc)


def start_broker(workdir: Path, *, port: int | None = None, extra: str = "") -> Broker:
    """Start a private mosquitto on loopback (random port unless given); retries a lost port race."""
    exe = mosquitto_path()
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        chosen = port or free_port()
        conf = workdir / f"mosquitto-{chosen}.conf"
        conf.write_text(open_conf(chosen) + extra)
        log = workdir / f"mosquitto-{chosen}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([exe, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            wait_for_port(chosen, 5.0)
            return Broker(chosen, proc, log)
        except TimeoutError:
            stop_group(proc)
    raise BrokerError(f"mosquitto did not start; see {log}")


def start_managed_broker(conf: Path, port: int, log: Path) -> Broker:
    """mosquitto with a managed configuration (``w3gate broker setup`` wrote ``conf``), once
    its loopback listener (``port``) takes connections."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([mosquitto_path(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for_port(port, 10.0)
    except TimeoutError:
        stop_group(proc)
        raise BrokerError(f"mosquitto did not start with {conf}: {log.read_text()[-500:]}") from None
    return Broker(port, proc, log)
