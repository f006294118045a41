"""Legacy sensors into the pipeline: serial and BLE links → frames → checks → attested records.

Links deliver chunks of bytes (a UART read, a BLE notification); each link has its own
``Deframer``, so a frame may span chunks and garbage between frames costs only itself. A frame
that passes ``LegacyVerifier`` (MAC, seq, rate) is signed by the ``Attester`` and submitted to
the buffer like a Pebble record, with trust ``gateway-attested``. Downlink: a device that says
HELLO gets its settings as a CONFIG frame, and so does a device first heard on a link since the
link came up (its HELLO may have been sent before anyone listened: a USB serial port drops what
arrives while it is closed) and a device whose settings change in the registry (``w3gate device
set``), on the link it was last heard on.

Commands (``send_command``: a relay to set, for a project's applet) go down as COMMAND frames
under a per-device counter kept in the registry. The newest command is kept there too, and sent
again whenever the device comes back until its COMMAND_ACK is recorded: the device applies each
seq once, so a resend is harmless.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Protocol

from device_fw import frame as wire
from gateway.codec import strict_json
from gateway.codec.record import Record
from gateway.errors import CodecError, Rejection, W3gateError
from gateway.legacy.attest import Attester
from gateway.legacy.registry import LegacyDevice, LegacyRegistry
from gateway.legacy.verifier import LegacyFrame, LegacyVerifier
from gateway.storage import atomic_write, read_json

log = logging.getLogger("w3gate.legacy")


class Downlink(Protocol):
    def write(self, link: str, data: bytes) -> bool: ...


class CommandError(W3gateError):
    """A command that is not sent: unknown_device, not_allowed, bad_command or too_large."""

    reason = "bad_command"


def command_payload(command: object) -> bytes:
    """The COMMAND frame's payload: a non-empty JSON object that fits in a frame. Which outputs
    exist is the firmware's to say (it answers an unknown one with an error), so any key goes."""
    if not isinstance(command, dict) or not command:
        raise CommandError('a command is a JSON object naming outputs, e.g. {"relay": 1}', reason="bad_command")
    try:
        payload = json.dumps(command, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise CommandError(f"a command must be plain JSON ({e})", reason="bad_command") from None
    if len(payload) > wire.MAX_PAYLOAD:
        raise CommandError(f"a command of {len(payload)} bytes does not fit in a frame ({wire.MAX_PAYLOAD})",
                           reason="too_large")
    return payload


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
        self.commands = 0  # commands asked for (by applets, or ``send_command``'s other callers)
        self.commands_sent = 0  # COMMAND frames written to a link, resends included
        self.command_acks = 0  # COMMAND_ACKs recorded
        self.command_errors = 0  # of which the device refused the command (unknown output, bad value)
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
        elif checked.kind == "command_ack":
            device = self._command_acked(device, checked.payload)
        if checked.kind == "hello" or (device.device_id, link) not in self._synced:
            self._synced.add((device.device_id, link))
            if device.config:
                self.send_config(device)
            if device.command.get("seq", 0) > device.command_ack.get("seq", 0):
                self._transmit(device)  # not acknowledged yet: it may never have arrived

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

    def prepare_command(self, name_or_id: str, command: object, *, allowed: list[str]) -> tuple[LegacyDevice, int]:
        """Check a command a project's applet asks for and take its seq now, before its event
        commits: the effect then carries the seq, and carrying it out twice sends one command.
        ``allowed``: the project's ``command_devices`` (names or ids); a device outside it is
        refused whether or not it exists, so a project learns nothing of devices not its own."""
        device = self.registry.find(name_or_id)
        if not (name_or_id in allowed or (device is not None and (device.device_id in allowed or
                                                                  (device.name and device.name in allowed)))):
            raise CommandError(f"the project may not command device {name_or_id!r} (its command_devices: "
                               f"{', '.join(allowed) or 'none'})", reason="not_allowed")
        if device is None:
            raise CommandError(f"legacy device {name_or_id!r} is not paired", reason="unknown_device")
        command_payload(command)
        return device, self.registry.next_command(device.device_id)

    def send_command(self, name_or_id: str, command: object, *, seq: int | None = None, project: str = "") -> bool:
        """Send ``command`` ({"relay": 1}) to a paired device where it was last heard; True if written
        now, False if it waits for the device to be heard (or a newer command superseded it).
        ``seq``: taken earlier by ``prepare_command``; else the next one is taken."""
        device = self.registry.find(name_or_id)
        if device is None:
            raise CommandError(f"legacy device {name_or_id!r} is not paired", reason="unknown_device")
        command_payload(command)
        if seq is None:
            seq = self.registry.next_command(device.device_id)
        newest = device.command.get("seq", 0)
        if seq < newest:  # the device would ignore it anyway
            log.info("legacy device %s: command %d superseded by %d, not sent", device.device_id, seq, newest)
            return False
        if seq > newest:  # else the same command again: an effect carried out a second time
            self.commands += 1
            device = self.registry.update(device.device_id, command={"seq": seq, "command": command,
                                                                     "project": project, "at": time.time()})
        return self._transmit(device)

    def _transmit(self, device: LegacyDevice) -> bool:
        """Write the device's newest command where it was last heard; False if nowhere."""
        link = self.heard_on.get(device.device_id)
        kind = link.split(":", 1)[0] if link else None
        if link is None or kind not in self.downlinks:
            log.info("legacy device %s: command %d waits until the device is heard", device.device_id,
                     device.command["seq"])
            return False
        try:
            data = wire.encode(wire.COMMAND, bytes.fromhex(device.device_id), int(device.command["seq"]),
                               command_payload(device.command.get("command")), device.key_bytes)
        except (CommandError, ValueError, TypeError) as e:  # legacy_devices.json edited by hand
            log.warning("legacy device %s: its stored command cannot be sent (%s)", device.device_id, e)
            return False
        if not self.downlinks[kind].write(link, data):
            return False
        self.commands_sent += 1
        return True

    def _command_acked(self, device: LegacyDevice, payload: bytes) -> LegacyDevice:
        """Record a COMMAND_ACK on the device (``w3gate device sensors`` shows it)."""
        try:
            result = strict_json.loads(payload, "command ack")
        except CodecError as e:
            log.warning("legacy device %s: a command ack that is not JSON (%s)", device.device_id, e.detail)
            return device
        seq = result.get("command_seq") if isinstance(result, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool):
            log.warning("legacy device %s: a command ack without its command_seq", device.device_id)
            return device
        if "error" in result:
            self.command_errors += 1
            log.warning("legacy device %s refused command %d: %s", device.name or device.device_id, seq,
                        str(result["error"])[:200])
        else:
            log.info("legacy device %s applied command %d: %s", device.name or device.device_id, seq,
                     payload.decode(errors="replace"))
        self.command_acks += 1
        if seq < device.command_ack.get("seq", 0):
            return device  # an answer to an older command, arriving late
        try:
            return self.registry.update(device.device_id, command_ack={"seq": seq, "result": result, "at": time.time()})
        except (W3gateError, OSError) as e:
            log.warning("legacy device %s: command ack %d not recorded (%s)", device.device_id, seq, e)
            return device

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
                "commands": self.commands, "commands_sent": self.commands_sent, "command_acks": self.command_acks,
                "command_errors": self.command_errors, "links": sorted(set(self.heard_on.values()))}
