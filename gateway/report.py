"""What ``w3gate status`` shows: every part's own status, gathered into ``status.json`` once a
second, and what is degraded now. Status never claims health while messages wait and none has
been handled for a while."""
from __future__ import annotations

import os
import time
from typing import Any

STUCK_AFTER_S = 10.0  # messages waiting this long with none handled: ingest is stuck


def node_status(node: Any) -> dict:
    """The running ``Node``'s status (gateway/node.py); each part reports for itself."""
    now, config = time.time(), node.config
    waiting = node.checker.backlog + node.committer.backlog
    return {
        "time": now,
        "started": node.started,
        "pid": os.getpid(),
        "degraded": degraded(node, now),
        "ingest": {**node.sink.status(), "waiting": waiting, "handler_errors": node.link.handler_errors},
        "mqtt": {"broker": f"{config.mqtt.host}:{config.mqtt.port}",
                 "connected": node.link.connected, "connects": node.link.connects,
                 "drops": node.link.drops, "sessions_lost": node.link.sessions_lost},
        **node.counters.snapshot(),
        "devices": len(node.registry),
        "legacy": node.legacy.status() if node.legacy is not None else None,
        "verify_worker_restarts": node.checker.restarts,
        "chain": node.anchoring.status() if node.anchoring is not None else None,
        "market": node.market.status() if node.market is not None else None,
        "api": {"url": (f"{'https' if config.api.tls_cert else 'http'}://{config.api.listen}:{node.event_api.port}"
                        if node.event_api.port else None),
                **node.event_api.counters},
        "dashboard": _dashboard(node),
        "applets": {"projects": sorted(node.runtime.projects), "events": node.runtime.counters["events"],
                    "failed": node.runtime.counters["failed"], "pebble_cursor": node.dispatcher.dispatched,
                    "cron_events": node.cron.fired,
                    "monitor_events": node.monitors.fired if node.monitors else 0,
                    "worker_restarts": sum(w.restarts for w in node.runtime.workers.values())},
        "catching_up": node.catchup.status(),
        "buffer": {**node.upkeep.stats, "pending": node.committer.backlog,
                   "commits": node.committer.commits, "write_failures": node.committer.failures},
        "latency_receive_to_verified": node.pebble.verify_latency.percentiles(),
        "latency_receive_to_durable": node.sink.latency.percentiles(),
    }


def _dashboard(node: Any) -> dict | None:
    """Where the dashboard serves (its ``url`` tells the port picked for port 0); None when off."""
    dashboard = getattr(node, "dashboard", None)  # None when [dashboard] is disabled
    return dashboard.status() if dashboard is not None else None


def degraded(node: Any, now: float) -> dict[str, str]:
    """``{component: reason}`` for everything not working now."""
    out = {name: p["reason"] for name, p in node.health.snapshot().items()}
    damage = node.upkeep.stats.get("damage")
    if damage:
        out["buffer"] = (f"{len(damage)} damaged file(s) set aside, see `w3gate buffer check`: "
                         f"{damage[0]['file']}: {damage[0]['reason']}")
    trouble = node.anchoring.trouble() if node.anchoring is not None else None
    if trouble:
        out["anchoring"] = trouble
    if node.market is not None and node.market.trouble:
        out["market"] = node.market.trouble
    if not node.link.connected:
        out["mqtt"] = f"not connected to {node.config.mqtt.host}:{node.config.mqtt.port}"
    waiting = node.checker.backlog + node.committer.backlog
    since = node.sink.last_handled or node.started
    if waiting and now - since > STUCK_AFTER_S:
        out["ingest"] = f"{waiting} messages waiting, none handled for {now - since:.0f} s"
    return out
