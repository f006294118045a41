"""A real `w3gate run` under a stand-in for systemd's notify socket: READY=1 once it serves, a
WATCHDOG=1 every second from the running event loop, STOPPING=1 on SIGTERM, every datagram from
the main process itself (what NotifyAccess=main in w3gate.service accepts). Needs gateway/node.py
to wire gateway.service.notify.Notifier (docs/service.md)."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import time
from itertools import pairwise

import pytest

from tests.support.gateway import GatewayProcess

CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@pytest.fixture
def notify_socket():
    where = tempfile.mkdtemp(prefix="w3n-", dir="/tmp")  # sun_path holds 108 bytes: keep it short
    path = os.path.join(where, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # as systemd does: who sent each datagram
    sock.bind(path)
    yield path, sock
    sock.close()
    shutil.rmtree(where, ignore_errors=True)


def receive(sock: socket.socket, until: float) -> tuple[str, int] | None:
    """One datagram and its sender's pid, or None at ``until`` (monotonic)."""
    sock.settimeout(max(0.01, until - time.monotonic()))
    try:
        data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(CRED.size))
    except TimeoutError:
        return None
    pid = next(CRED.unpack(d[:CRED.size])[0] for level, kind, d in ancdata
               if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
    return data.decode(), pid


def test_the_gateway_tells_systemd_it_is_ready_alive_and_stopping(tmp_path, mosquitto, notify_socket, monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")  # WatchdogSec=3s: pings expected every second
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    gw = GatewayProcess(tmp_path, mosquitto.port).start()
    try:
        messages: list[tuple[str, float]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(m == "WATCHDOG=1" for m, _ in messages) < 3:
            got = receive(sock, deadline)
            if got is None:
                break
            text, pid = got
            assert pid == gw.proc.pid, f"{text!r} came from pid {pid}, not the main process {gw.proc.pid}"
            messages.append((text, time.monotonic()))
        assert messages, f"no notification in 20 s (is Notifier wired into gateway/node.py?)\n{gw.log_text()[-2000:]}"
        first = messages[0][0].split("\n")
        assert first[0] == "READY=1" and all(f.startswith("STATUS=") for f in first[1:]), messages[0]
        pings = [t for m, t in messages if m == "WATCHDOG=1"]
        assert len(pings) >= 3, messages
        gaps = [b - a for a, b in pairwise(pings)]
        assert all(0.5 < g < 2.5 for g in gaps), gaps  # about every second, well inside the 3 s
        assert "STOPPING=1" not in " ".join(m for m, _ in messages)
    finally:
        code = gw.stop()
    assert code == 0, gw.log_text()[-2000:]
    rest = []
    while (got := receive(sock, time.monotonic() + 0.5)) is not None:
        rest.append(got[0])
    assert any(m.split("\n")[0] == "STOPPING=1" for m in rest), rest


def test_a_gateway_starting_on_a_large_backlog_says_how_far_behind_it_is_until_caught_up(
        tmp_path, mosquitto, notify_socket, monkeypatch):
    from bench.buffer import make_docs
    from gateway.buffer.store import RecordStore

    with RecordStore(tmp_path / "data" / "records") as store:  # a week offline, in short
        for first in range(0, 20_000, 5_000):
            store.append(make_docs(first, 5_000))
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    gw = GatewayProcess(tmp_path, mosquitto.port).start(wait=False)
    try:
        statuses: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("caught up" in s for s in statuses):
            got = receive(sock, deadline)
            if got is None:
                break
            statuses += [f[len("STATUS="):] for f in got[0].split("\n") if f.startswith("STATUS=")]
        assert "catching up: applets: 20,000 of 20,000 records left, 0/s" in statuses, statuses
        assert statuses[-1].startswith("applets caught up: 20,000 records in "), statuses
        assert gw.stop() == 0
        log = gw.log_text()
        assert "catching up: applets: 20,000 of 20,000 records left" in log
        assert "applets caught up: 20,000 records in " in log
    finally:
        gw.kill()
