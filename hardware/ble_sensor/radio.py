"""A virtual radio: every TCP client gets its own bumble controller on one shared LocalLink.

bumble's ``apps.controllers`` takes exactly two transports; a bench needs one gateway host and
many sensors, each in its own process. So this process listens on one loopback port, and each
connection (a bumble host opened with ``tcp-client:127.0.0.1:PORT``) is HCI to a fresh virtual
controller; when a connection closes its controller leaves the link and its peers see their
connections to it time out. The link does not emulate radio
timing: it is far faster than real BLE (platform-notes section 7).

    python -m hardware.ble_sensor.radio [--port 0] [--port-file FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
from pathlib import Path

from bumble import hci
from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport.common import StreamPacketSource

log = logging.getLogger("w3gate.radio")


class _Sink:
    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport

    def on_packet(self, packet: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(packet)


class Radio:
    def __init__(self) -> None:
        self.link = LocalLink()
        self._numbers = itertools.count(1)
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.get_running_loop().create_server(self._protocol, host, port)
        return self.server.sockets[0].getsockname()[1]

    def _protocol(self) -> asyncio.Protocol:
        radio = self

        class HciOverTcp(StreamPacketSource):
            def connection_made(self, transport) -> None:
                n = next(radio._numbers)
                address = f"F0:F1:F2:F3:{n >> 8 & 0xFF:02X}:{n & 0xFF:02X}"
                self.controller = Controller(f"C{n}", host_source=self, host_sink=_Sink(transport),
                                             link=radio.link, public_address=address)

            def connection_lost(self, exc) -> None:
                radio.leave(self.controller)

        return HciOverTcp()


    def leave(self, gone: Controller) -> None:
        """A host went away (its process ended): its peers see their connections to it time out,
        as a real radio's supervision timeout would tell them; the link has no such timer."""
        for controller in list(self.link.controllers):
            if controller is gone:
                continue
            for address, connection in list(controller.le_connections.items()):
                if self.link.find_le_controller(address) is gone:
                    controller.on_le_disconnected(connection, hci.HCI_CONNECTION_TIMEOUT_ERROR)
        self.link.remove_controller(gone)


async def serve(port: int, port_file: Path | None) -> None:
    radio = Radio()
    bound = await radio.start(port=port)
    if port_file:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(bound))
        os.replace(tmp, port_file)
    print(f"virtual radio on tcp-client:127.0.0.1:{bound}", flush=True)
    await asyncio.get_running_loop().create_future()


def main() -> None:
    parser = argparse.ArgumentParser(description="A virtual BLE radio for emulated sensors and the gateway.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.port_file))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
