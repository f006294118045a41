"""Legacy sensors into the pipeline: serial and BLE links → frames → checks → attested records.

Links deliver chunks of bytes (a UART read, a BLE notification); each link has its own
``Deframer``, so a frame may span chunks and garbage between frames costs only itself. A frame
that passes ``LegacyVerifier`` (MAC, seq, rate) is signed by the ``Attester`` and submitted to
the buffer like a Pebble record, with trust ``gateway-attested``. Downlink: a device that says
HELLO gets its settings as a CONFIG frame, and so does a device first heard on a link since the
link came up (its HELLO may have been sent before anyone listened: a USB serial port drops what
arrives while it is closed) and a device whose settings change in the registry (``w3gate device
set``), on the link it was last heard on.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Protocol

from device_fw import frame as wire
from gateway.codec.record import Record
from gateway.errors import Rejection, W3gateError
from gateway.legacy.attest import Attester
from gateway.legacy.registry import LegacyDevice, LegacyRegistry
from gateway.legacy.verifier import LegacyFrame, LegacyVerifier
from gateway.storage import atomic_write, read_json

log = logging.getLogger("w3gate.legacy")


class Downlink(Protocol):
    def write(self, link: str, data: bytes) -> bool: ...


class LegacyBridge:
    """``submit(doc, done)`` hands a record to the buffer (``done(seq)`` once durable, None if
    refused); ``rejected(rejection, link)`` counts a refusal."""

    def __init__(self, registry: LegacyRegistry, verifier: LegacyVerifier, attester: Attester,
                 submit: Callable[[dict, Callable[[int | None], None]], None],
                 rejected: Callable[[Rejection, str], None], *, seq_path: Path) -> None:
        self.registry = registry
        self.verifier = verifier
        self.attester = attester
        self.submit = submit
        self.rejected = rejected
        self.seq_path = seq_path
        self.downlinks: dict[str, Downlink] = {}  # link kind ("serial", "ble") -> its transport
        self.deframers: dict[str, wire.Deframer] = {}
        self.heard_on: dict[str, str] = {}  # device id -> link it was last heard on
        self.accepted = 0
        self.configs_sent = 0
        self._sent: dict[str, dict] = {}  # device id -> settings last sent
        self._synced: set[tuple[str, str]] = set()  # (device id, link) given its settings since the link came up
        self._saved: dict[str, int] = {}
        saved = read_json(seq_path) or {}
        for device_id, seq in (saved.items() if isinstance(saved, dict) else ()):
            if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**32:
                self.verifier.remember(device_id, seq)
                self._saved[device_id] = seq
            else:  # the records still hold the seqs they used (remember)
                log.warning("%s: ignoring the saved seq %r of legacy device %s", seq_path, seq, device_id)

    # -- uplink ----------------------------------------------------------------------------------

    def on_data(self, link: str, chunk: bytes) -> None:
        """Bytes from a link, named ``<kind>:<port or address>``."""
        received = time.time()
        deframer = self.deframers.get(link)
        if deframer is None:
            deframer = self.deframers[link] = wire.Deframer()
        for raw in deframer.feed(chunk):
            try:
                checked = self.verifier.check(raw)
            except Rejection as rejection:
                self.rejected(rejection, link)
                continue
            except Exception as e:  # noqa: BLE001 - a bug costs this frame, never the link
                self.rejected(Rejection.internal(e), link)
                continue
            self._accept(link, checked, received)

    def link_lost(self, link: str) -> None:
        """A link went down: a frame cut in half must not be glued to the next link's bytes."""
        self.deframers.pop(link, None)
        self._synced = {(d, l) for d, l in self._synced if l != link}

    def _accept(self, link: str, checked: LegacyFrame, received: float) -> None:
        device = checked.device
        self.heard_on[device.device_id] = link
        self.submit(self.attester.record(checked, received), self._durable)
        if checked.kind == "hello":
            log.info("legacy device %s (%s) on %s: %s", device.name or device.device_id, device.device_id,
                     link, checked.payload.decode(errors="replace"))
        elif checked.kind == "config_ack":
            log.info("legacy device %s applied settings: %s", device.name or device.device_id,
                     checked.payload.decode(errors="replace"))
        if checked.kind == "hello" or (device.device_id, link) not in self._synced:
            self._synced.add((device.device_id, link))
            if device.config:
                self.send_config(device)

    def _durable(self, seq: int | None) -> None:
        if seq is not None:
            self.accepted += 1

    def remember(self, record: Record) -> None:
        """A stored record from before a restart: its seq is spent."""
        self.verifier.remember(record.doc["device"], int(record.doc["device_seq"]))

    # -- downlink --------------------------------------------------------------------------------

    def send_config(self, device: LegacyDevice) -> bool:
        """Send the registry's settings for ``device`` where it was last heard; False if nowhere."""
        link = self.heard_on.get(device.device_id)
        kind = link.split(":", 1)[0] if link else None
        if link is None or kind not in self.downlinks:
            return False
        try:
            device, seq = self.registry.next_config(device.device_id)
        except W3gateError as e:
            log.warning("legacy device %s: no config sent (%s)", device.device_id, e)
            return False
        payload = json.dumps(device.config, separators=(",", ":")).encode()
        data = wire.encode(wire.CONFIG, bytes.fromhex(device.device_id), seq, payload, device.key_bytes)
        if not self.downlinks[kind].write(link, data):
            return False
        self._sent[device.device_id] = dict(device.config)
        self.configs_sent += 1
        return True

    def registry_changed(self) -> None:
        """Push settings that changed in the registry to devices we can reach."""
        for device in self.registry:
            if device.device_id in self.heard_on and self._sent.get(device.device_id) != device.config:
                self.send_config(device)

    # -- state -----------------------------------------------------------------------------------

    def save_seqs(self) -> None:
        """Keep each device's highest accepted seq across restarts (records cover the last moments)."""
        marks = self.verifier.high_water()
        if marks != self._saved:
            atomic_write(self.seq_path, json.dumps(marks, sort_keys=True).encode())
            self._saved = marks

    def status(self) -> dict:
        return {"devices": len(self.registry), "accepted": self.accepted, "configs_sent": self.configs_sent,
                "links": sorted(set(self.heard_on.values()))}
