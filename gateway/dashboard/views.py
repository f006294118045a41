"""What the dashboard's pages read: JSON views of the running node, built from its parts.

The dashboard is a reader at the top (docs/architecture.md): it reads the figures each part
already keeps (registries, counters, the buffer's stats, anchoring, the applet runtime, the
legacy links) and never writes them; nothing below imports it. Whatever has to touch a file or
the store (recent readings, applet log tails, the machine's figures) is gathered once a second by
``tick``, off the event loop, so ``snapshot`` only reads memory: it runs on the event loop for
every page and every live update, and must stay cheap (well under a millisecond for 50 devices).

Every string in these views may come from a device or an applet (names, firmware, log lines):
the pages show them as text, never as markup.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from gateway.dashboard.metrics import link_states
from gateway.dashboard.readings import SERIES, Reading, ReadingHistory, changed_since
from gateway.dashboard.system import SystemSampler
from gateway.errors import W3gateError
from gateway.report import degraded

MAX_DEVICE_ROWS = 200  # devices listed (the most recently heard first); the total is given beside
BATCHES = 8  # newest anchoring batches shown
LOG_LINES = 8  # applet log lines shown per project
LOG_TAIL_BYTES = 16 * 1024  # read from the end of a project's applet.log
MAX_MESSAGE = 300  # characters of a log line kept
PROOF_TIMEOUT_S = 10.0  # a proof is made on the chain thread, which may be waiting on the chain


class DashboardError(W3gateError):
    """A view that cannot be given: ``reason`` says why (``no_anchoring``, ``not_sealed``, ...)."""

    reason = "dashboard"


def _log_entry(line: str) -> dict | None:
    """One applet.log line (JSON ``{"t", "event", "applet", "level", "msg"}``) with only those
    fields, as text; None for a line cut by a crash or not an object."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    t = entry.get("t")
    return {"t": t if isinstance(t, (int, float)) and not isinstance(t, bool) else None,
            "level": str(entry.get("level", ""))[:10], "applet": str(entry.get("applet", ""))[:80],
            "msg": str(entry.get("msg", ""))[:MAX_MESSAGE]}


def log_tail(path: Path, lines: int = LOG_LINES) -> list[dict]:
    """The last ``lines`` entries of an applet log, reading at most ``LOG_TAIL_BYTES``."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - LOG_TAIL_BYTES)
            f.seek(start)
            chunk = f.read(LOG_TAIL_BYTES)
    except OSError:
        return []
    text = chunk.decode("utf-8", "replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line was cut by where the read began
    return [e for e in map(_log_entry, text[-lines * 2:]) if e is not None][-lines:]


class DashboardViews:
    """The views of one running ``Node`` (gateway/node.py); ``node`` is only read."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.readings = ReadingHistory()
        self.system: SystemSampler | None = None  # made at the first tick (the node is complete by then)
        self._system: dict = {}
        self._logs: dict[str, tuple[tuple[int, int], list[dict]]] = {}  # project -> (stat stamp, tail)
        self._rates: dict[str, dict] = {}  # project -> {"events_per_s", "failures_per_s"}
        self._counts: tuple[float, dict[str, tuple[int, int]]] | None = None
        self._commits = -1  # the group commits seen at the last poll: none since, nothing to read
        self.trouble: str | None = None  # why the last refresh failed (the server's follow sets it)
        # anchoring's figures, refreshed by tick: its status walks every batch of the journal, so
        # it is read once a second (as status.json does), not once per page
        self._anchor: dict | None = None

    # -- gathering, once a second ----------------------------------------------------------------

    async def tick(self) -> dict[str, dict]:
        """Take in new readings and refresh what is read from files; returns the new points and
        positions by device (what the live updates carry)."""
        node = self.node
        profiles = {d.imei: d.profile for d in node.registry}
        new: list[Reading] = []
        if not self.readings.seeded:
            await self.readings.seed(node.committer, node.store, profiles)
            self._commits = node.committer.commits
        elif node.committer.commits != self._commits:
            self._commits = node.committer.commits
            new = await self.readings.poll(node.committer, node.store, profiles)
        logs = {name: node.runtime.store.files(name).applet_log for name in node.runtime.projects}
        if self.system is None:
            self.system = SystemSampler(node.config.data_dir)
        self._system, tails = await asyncio.to_thread(self._read_files, logs)
        self._logs = tails
        self._rate_applets()
        self._anchor = self._anchoring(time.time())
        return changed_since(new)

    def _read_files(self, logs: dict[str, Path]) -> tuple[dict, dict]:
        """Off the loop: the machine's figures and the log tails that changed since the last read."""
        tails = {}
        for name, path in logs.items():
            try:
                st = path.stat()
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:
                stamp = (0, 0)
            old = self._logs.get(name)
            tails[name] = old if old is not None and old[0] == stamp else (stamp, log_tail(path) if stamp[0] else [])
        return self.system.sample(), tails

    def _rate_applets(self) -> None:
        now = time.monotonic()
        counts = {name: (c.events, c.failed) for name, c in self.node.runtime.per_project.items()}
        if self._counts is not None:
            then, before = self._counts
            span = max(now - then, 1e-3)
            self._rates = {name: {"events_per_s": round((events - before.get(name, (0, 0))[0]) / span, 2),
                                  "failures_per_s": round((failed - before.get(name, (0, 0))[1]) / span, 2)}
                           for name, (events, failed) in counts.items()}
        self._counts = (now, counts)

    # -- views -----------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Everything the pages show but the plots' history: cheap, from memory only."""
        node, now = self.node, time.time()
        return {"time": now, "gateway": self._gateway(now), "devices": self._devices(),
                "rejections": {family: dict(reasons) for family, reasons in node.counters.rejected_by_family.items()},
                "buffer": self._buffer(now), "anchoring": self._anchor if node.anchoring is not None else None,
                "applets": self._applets(),
                "legacy": self._legacy(), "system": self._system, "series": list(SERIES)}

    def history(self, device: str) -> dict | None:
        """One device's recent points (``series`` order) and GPS track."""
        return self.readings.series(device)

    async def proof(self, seq: int) -> dict:
        """A record's Merkle proof (docs/proofs.md), made as `w3gate proof` makes it, by the
        anchorer's journal on the chain thread. DashboardError when there is none (yet)."""
        anchoring = self.node.anchoring
        if anchoring is None:
            raise DashboardError("records are not anchored by this gateway ([chain] registry is not set)",
                                 reason="no_anchoring")
        try:
            return await asyncio.wait_for(self.node.chain.call(anchoring.anchorer.proof_for, seq), PROOF_TIMEOUT_S)
        except W3gateError as e:
            raise DashboardError(e.detail, reason=e.reason) from None
        except TimeoutError:
            raise DashboardError(f"no answer from the chain thread in {PROOF_TIMEOUT_S:.0f} s; try again",
                                 reason="busy") from None

    # -- the parts -------------------------------------------------------------------------------

    def _gateway(self, now: float) -> dict:
        node = self.node
        sink = node.sink
        problems = degraded(node, now)
        if self.trouble:
            problems["dashboard"] = self.trouble
        return {"started": node.started, "uptime_s": round(now - node.started, 1),
                "degraded": problems,
                "mqtt": {"broker": f"{node.config.mqtt.host}:{node.config.mqtt.port}",
                         "connected": node.link.connected, "drops": node.link.drops},
                "accepted": dict(node.counters.accepted), "rejected_total": sum(node.counters.rejected.values()),
                "handled": sink.handled,
                "last_handled_age_s": round(now - sink.last_handled, 1) if sink.last_handled else None,
                "waiting": node.checker.backlog + node.committer.backlog}

    def _devices(self) -> dict:
        summaries = self.readings.summaries()
        rows: list[dict] = []
        listed: set[str] = set()
        for device in self.node.registry:
            listed.add(device.imei)
            rows.append({"id": device.imei, "name": device.imei, "family": "pebble", "trust": "secure-element",
                         "registration": device.status, "profile": device.profile, "owner": device.owner,
                         **summaries.get(device.imei, {})})
        legacy = self.node.legacy
        if legacy is not None:
            heard_on = legacy.bridge.heard_on
            for device in legacy.registry:
                listed.add(device.device_id)
                rows.append({"id": device.device_id, "name": device.name or device.device_id, "family": "legacy",
                             "trust": "gateway-attested", "registration": "paired", "transport": device.transport,
                             "link": heard_on.get(device.device_id), **summaries.get(device.device_id, {})})
        for device, summary in summaries.items():  # heard from, no longer registered
            if device not in listed:
                rows.append({"id": device, "name": device, "trust": None, "registration": "removed", **summary})
        rejected = self.node.counters.rejected_by_device
        for row in rows:
            row["rejected"] = dict(rejected.get(row["id"], {}))
        rows.sort(key=lambda r: (-(r.get("last_seen") or 0), r["id"]))
        return {"total": len(rows), "rows": rows[:MAX_DEVICE_ROWS]}

    def _buffer(self, now: float) -> dict:
        node = self.node
        stats = node.upkeep.stats
        out = {k: stats.get(k) for k in ("records", "bytes", "segments", "first_seq", "last_seq", "processed_upto",
                                          "anchored_upto", "refused_total", "dropped_total", "expired_total")}
        out.update(pending=node.committer.backlog, commits=node.committer.commits,
                   write_failures=node.committer.failures, damaged_files=len(stats.get("damage") or []))
        backlog = node.anchoring.backlog if node.anchoring is not None else {}
        oldest = backlog.get("oldest_unanchored_rx")
        out["unanchored_records"] = backlog.get("unanchored_records") if node.anchoring is not None else None
        out["oldest_unanchored_age_s"] = round(max(0.0, now - oldest), 1) if oldest else None
        return out

    def _anchoring(self, now: float) -> dict | None:
        anchoring = self.node.anchoring
        if anchoring is None:
            return None
        anchorer = anchoring.anchorer
        head = anchorer.head
        batches = []
        for b in reversed(anchorer.batches[-BATCHES:]):
            state = b.status if b.status == "anchored" else ("sent" if b.from_block is not None else "sealed")
            batches.append({"sequence": b.sequence, "first_seq": b.first, "last_seq": b.last, "count": b.count,
                            "root": b.root, "state": state, "tx": b.tx, "block": b.block,
                            "confirmations": head - b.block + 1 if b.block is not None and head >= b.block else None,
                            "sealed_at": b.sealed_at, "anchored_at": b.anchored_at})
        return {**anchoring.status(), "trouble": anchoring.trouble(), "head": head if head >= 0 else None,
                "latest_batches": batches}

    def _applets(self) -> list[dict]:
        runtime = self.node.runtime
        out = []
        for name in sorted(set(runtime.projects) | set(runtime.per_project)):
            counts = runtime.per_project.get(name)
            worker = runtime.workers.get(name)
            out.append({"project": name, "deployed": name in runtime.projects,
                        "events": counts.events if counts else 0, "failures": counts.failed if counts else 0,
                        **self._rates.get(name, {"events_per_s": None, "failures_per_s": None}),
                        "worker_restarts": getattr(worker, "restarts", 0),
                        "log": self._logs.get(name, ((0, 0), []))[1]})
        return out

    def _legacy(self) -> dict | None:
        legacy = self.node.legacy
        if legacy is None:
            return None
        names = {d.device_id: d.name for d in legacy.registry}
        by_link: dict[str, list[str]] = {}
        for device_id, link in legacy.bridge.heard_on.items():
            by_link.setdefault(link, []).append(names.get(device_id) or device_id)
        links = [{"link": link, "transport": link.split(":", 1)[0], "up": up, "devices": sorted(by_link.get(link, []))}
                 for link, up in sorted(link_states(legacy).items())]
        status = legacy.bridge.status()
        return {"devices": status["devices"], "accepted": status["accepted"], "configs_sent": status["configs_sent"],
                "links": links}

