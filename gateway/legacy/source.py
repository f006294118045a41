"""Legacy sensors (serial, BLE) as a source of records: their links, the bridge that checks and
attests their frames, and the record sink those go to.

Their records are attested with the node key, so it must unlock at start; without it the gateway
refuses to start rather than store unattested data.
"""
from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Awaitable, Callable

from gateway.buffer.sink import RecordSink
from gateway.codec.record import Record
from gateway.config import Config
from gateway.errors import W3gateError
from gateway.legacy.bridge import LegacyBridge

log = logging.getLogger("w3gate.legacy")


class LegacySource:
    def __init__(self, config: Config, sink: RecordSink) -> None:
        from gateway.chain.keystore import load_key, read_passphrase_file
        from gateway.legacy.attest import Attester
        from gateway.legacy.registry import LegacyRegistry
        from gateway.legacy.verifier import LegacyVerifier

        if not config.chain.key_passphrase_file:
            raise W3gateError("legacy devices ([serial] ports, [ble]) need the node key to attest their "
                              "records: create it with `w3gate key new` and set [chain] key_passphrase_file",
                              reason="no_node_key")
        account = load_key(config.layout.node_key, read_passphrase_file(config.chain.key_passphrase_file))
        self.sink = sink
        self.registry = LegacyRegistry(config.layout.legacy_devices)
        verifier = LegacyVerifier(self.registry, rate=config.legacy.rate, burst=config.legacy.burst)
        self.bridge = LegacyBridge(self.registry, verifier, Attester(bytes(account.key)), self._store,
                                   partial(sink.rejected, family="legacy"), seq_path=config.layout.legacy_seq)
        self.serial = None  # SerialLinks, when [serial] ports are set
        self.ble = None  # BleLinks, when [ble] is enabled
        s = config.serial
        if s.ports:
            from gateway.ingest.serial import SerialLinks

            self.serial = SerialLinks(s.ports, lambda port, chunk: self.bridge.on_data("serial:" + port, chunk),
                                      baudrate=s.baudrate, rescan_s=s.rescan_s, on_change=self._serial_changed,
                                      hold_dir=config.layout.serial_holds)
            self.bridge.downlinks["serial"] = _SerialDownlink(self.serial)
        b = config.ble
        if b.enabled:
            from gateway.ingest.ble import BleLinks, bleak_backends

            scanner, client = bleak_backends(b.transport)
            self.ble = BleLinks(lambda: {d.name for d in self.registry if d.transport == "ble"},
                                self.bridge.on_data,
                                on_change=lambda link, up: None if up else self.bridge.link_lost(link),
                                scanner_backend=scanner, client_backend=client, max_connecting=b.max_connections,
                                scan_s=b.scan_s, reconnect_max_s=b.reconnect_max_s)
            self.bridge.downlinks["ble"] = self.ble

    def links(self) -> dict[str, Callable[[asyncio.Event], Awaitable[None]]]:
        """The long-running tasks of the links, by name, for the node to supervise."""
        return {name: link.run for name, link in (("serial", self.serial), ("ble", self.ble)) if link is not None}

    def names(self) -> dict[str, str]:
        """Device id -> the name it was paired with (applets see it in LEGACY_DATA events)."""
        return {d.device_id: d.name for d in self.registry}

    def remember(self, record: Record) -> None:
        """A record stored before a restart: its seq is spent (a legacy sensor's only)."""
        if record.of("legacy"):
            self.bridge.remember(record)

    def reload(self) -> None:
        """Housekeeping: pick up registry changes (and push new settings), keep the seqs."""
        if self.registry.reload():
            log.info("legacy device registry reloaded: %d devices", len(self.registry))
            self.bridge.registry_changed()
        self.bridge.save_seqs()

    def command(self, project: str, effect: dict) -> None:
        """Carry out a project's committed device command (gateway/applets/system_api.py): under
        the seq it was given when asked for, so carrying it out again sends the same command."""
        self.bridge.send_command(effect["device"], effect["command"], seq=int(effect["seq"]), project=project)

    def status(self) -> dict:
        return {**self.bridge.status(), "serial": self.serial.status() if self.serial else None,
                "ble": self.ble.status() if self.ble else None}

    def close(self) -> None:
        self.bridge.save_seqs()

    def _store(self, doc: dict, done: Callable[[int | None], None]) -> None:
        self.sink.store(doc, "legacy_" + doc["kind"], "legacy", done)

    def _serial_changed(self, port: str, up: bool) -> None:
        if not up:
            self.bridge.link_lost("serial:" + port)


class _SerialDownlink:
    """Bridge links are named ``serial:<port>``; the serial transport knows ports."""

    def __init__(self, links) -> None:
        self.links = links

    def write(self, link: str, data: bytes) -> bool:
        return self.links.write(link.removeprefix("serial:"), data)
