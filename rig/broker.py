"""mosquitto for the demo, the tests and the benches: the settings w3gate runs with, and a
private broker started on a loopback port of its own (never the system broker on 1883)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import W3gateError


class BrokerError(W3gateError):
    reason = "broker"


def broker_config(port: int, *, bind: str = "127.0.0.1") -> str:
    """A mosquitto 2 config: explicit listener, anonymous allowed on it, logs to stderr.

    ``queue_qos0_messages`` lets the broker hold the Pebble's QoS 0 data for our persistent
    session while the gateway restarts. ``max_inflight_messages`` is how many QoS 1 messages the
    broker sends before their acknowledgements: the gateway acknowledges after each group commit,
    so mosquitto's default of 20 would cap a batch at 20 records, and throughput is at most this
    window over the time to durable (5000 / ~0.3 s under a full backlog).
    """
    return (f"listener {port} {bind}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 5000\n"
            "queue_qos0_messages true\n")


def mosquitto_path() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto is not installed (apt-get install mosquitto)", reason="no_broker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Signal a process started with ``start_new_session`` and its children; kill if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


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
        conf.write_text(broker_config(chosen) + extra)
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
