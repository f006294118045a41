"""Chain monitors: events for applets from the chain, as upstream W3bstream delivers them.

- ``chain_height``: once, when the chain reaches ``height``: ``{"HeaderNumber": N}``;
- ``contract_log``: every log of ``address`` (optionally filtered by topics) from ``block_start``
  on, one event each, as go-ethereum's ``types.Log`` JSON (``address``, ``topics``, ``data``,
  ``blockNumber`` in hex, ``transactionHash``, ``transactionIndex``, ``blockHash``, ``logIndex``,
  ``removed``).

Progress is kept per monitor in ``<project>/monitors.json`` and saved after the events were
handled, so a restart neither skips nor (beyond the last poll) repeats. Logs are read in block
ranges of at most ``max_range`` (RPC nodes limit ``eth_getLogs``). Calls are synchronous: run
``poll`` on the chain thread.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gateway.storage import atomic_write, read_json

KINDS = ("chain_height", "contract_log")


@dataclass(frozen=True)
class Monitor:
    project: str
    kind: str
    event: str = "MONITOR_DEFAULT"
    height: int | None = None
    address: str | None = None
    topics: tuple[str | None, ...] = field(default_factory=tuple)
    block_start: int | None = None  # None: from the head when the monitor was first seen

    @property
    def id(self) -> str:
        spec = json.dumps([self.kind, self.event, self.height, (self.address or "").lower(), list(self.topics),
                           self.block_start])
        return hashlib.sha256(spec.encode()).hexdigest()[:16]


def log_json(entry) -> dict:
    """A web3.py log as go-ethereum's ``types.Log`` JSON."""
    def hexstr(value) -> str:
        return value if isinstance(value, str) else "0x" + bytes(value).hex()
    return {"address": entry["address"], "topics": [hexstr(t) for t in entry["topics"]],
            "data": hexstr(entry["data"]), "blockNumber": hex(entry["blockNumber"]),
            "transactionHash": hexstr(entry["transactionHash"]), "transactionIndex": hex(entry["transactionIndex"]),
            "blockHash": hexstr(entry["blockHash"]), "logIndex": hex(entry["logIndex"]),
            "removed": bool(entry.get("removed", False))}


@dataclass
class Firing:
    monitor: Monitor
    payloads: list[bytes]
    state: dict  # the monitor's progress once these payloads are handled


class ChainMonitors:
    def __init__(self, w3, state_file: Callable[[str], Path], *, max_range: int = 1000) -> None:
        self.w3 = w3
        self.state_file = state_file  # project name -> the file its monitors' progress is kept in
        self.max_range = max_range

    def _states(self, project: str) -> dict:
        return read_json(self.state_file(project)) or {}

    def poll(self, monitors: list[Monitor]) -> list[Firing]:
        """What each monitor has to deliver now (chain calls; raises OSError-like errors when down)."""
        if not monitors:
            return []
        head = int(self.w3.eth.block_number)
        firings = []
        states: dict[str, dict] = {}
        for m in monitors:
            state = states.setdefault(m.project, self._states(m.project)).get(m.id, {})
            if m.kind == "chain_height":
                if not state.get("fired") and m.height is not None and head >= m.height:
                    firings.append(Firing(m, [json.dumps({"HeaderNumber": head}).encode()], {"fired": True}))
            elif m.kind == "contract_log":
                start = state.get("next_block", m.block_start if m.block_start is not None else head)
                if start > head:
                    continue
                end = min(head, start + self.max_range - 1)
                query = {"address": self.w3.to_checksum_address(m.address), "fromBlock": start, "toBlock": end}
                if any(m.topics):
                    query["topics"] = [t or None for t in m.topics]
                logs = self.w3.eth.get_logs(query)
                firings.append(Firing(m, [json.dumps(log_json(e)).encode() for e in logs], {"next_block": end + 1}))
        return firings

    def commit(self, firing: Firing) -> None:
        """The firing's events were handled: save the monitor's progress."""
        path = self.state_file(firing.monitor.project)
        states = read_json(path) or {}
        states[firing.monitor.id] = firing.state
        atomic_write(path, json.dumps(states, indent=1).encode())
