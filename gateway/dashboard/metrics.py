"""Prometheus metrics of the running node, read at scrape time.

Nothing here counts: ``NodeCollector`` reads what the components already keep for
``w3gate status`` (gateway/report.py), when a scrape asks, on the event loop that updates them,
so the hot path pays nothing for metrics and a scrape sees one consistent moment. Counters that
``status.json`` carries across restarts (accepted, rejected, redelivered) continue across
restarts here too; the others count since the process started (Prometheus sees a reset).

Accepted messages are counted by the kind their source gave them: legacy sources name theirs
``legacy_<kind>`` (gateway/legacy/source.py), everything else is a Pebble's.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.report import degraded

log = logging.getLogger("w3gate.dashboard")

PREFIX = "w3gate_"
LEGACY_KIND_PREFIX = "legacy_"


def metrics_registry(node: Any) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) holding the node's metrics and
    the process's (CPU, memory, open files, start time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    ProcessCollector(registry=registry)
    return registry


def link_states(legacy: Any) -> dict[str, bool]:
    """Every legacy link (``serial:<port>``, ``ble:<name>``) and whether it is up now: the open
    serial ports, the wanted BLE sensors, and the links devices spoke on (down unless open)."""
    states: dict[str, bool] = {}
    for link in legacy.bridge.heard_on.values():
        states[link] = False
    if legacy.serial is not None:
        for port in legacy.serial.ports:
            states["serial:" + port] = True
    if legacy.ble is not None:
        for name in legacy.ble.wanted():
            states.setdefault("ble:" + name, False)
        for name, link in legacy.ble.links.items():
            states["ble:" + name] = link.client is not None and link.client.is_connected
    return states


class NodeCollector(Collector):
    """The ``Node``'s figures (gateway/node.py) as metric families; each group is read on its own,
    so a failure in one (a bug: logged once) leaves the others in the scrape."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._failed: set[str] = set()

    def describe(self) -> list[Metric]:
        return []  # the families depend on what runs (anchoring, legacy links): nothing to check up front

    def collect(self) -> Iterator[Metric]:
        groups: list[Callable[[], Iterator[Metric]]] = [
            self._messages, self._buffer, self._anchoring, self._applets, self._mqtt, self._links,
            self._event_api, self._health]
        for group in groups:
            try:
                yield from list(group())
            except Exception:  # noqa: BLE001 - one group's bug must not blank the whole scrape
                if group.__name__ not in self._failed:
                    self._failed.add(group.__name__)
                    log.exception("metrics: %s could not be read (left out of every scrape until it can)",
                                  group.__name__.strip("_"))

    def _messages(self) -> Iterator[Metric]:
        node, counters = self.node, self.node.counters
        accepted = CounterMetricFamily(PREFIX + "messages_accepted", "Messages and frames verified and stored, "
                                       "by device family and kind", labels=["family", "kind"])
        for kind, count in sorted(counters.accepted.items()):
            family = "legacy" if kind.startswith(LEGACY_KIND_PREFIX) else "pebble"
            accepted.add_metric([family, kind.removeprefix(LEGACY_KIND_PREFIX)], count)
        yield accepted
        rejected = CounterMetricFamily(PREFIX + "messages_rejected", "Messages and frames refused, by device "
                                       "family and reason (README: What the gateway checks)",
                                       labels=["family", "reason"])
        for family, reasons in sorted(counters.rejected_by_family.items()):
            for reason, count in sorted(reasons.items()):
                rejected.add_metric([family, reason], count)
        yield rejected
        yield CounterMetricFamily(PREFIX + "messages_redelivered", "Messages the broker sent again that were "
                                  "already stored (acknowledged, not stored twice)", value=counters.redelivered)
        yield GaugeMetricFamily(PREFIX + "messages_waiting", "Messages received and not yet verified or durable",
                                value=node.checker.backlog + node.committer.backlog)
        yield GaugeMetricFamily(PREFIX + "devices_registered", "Pebbles in the device registry",
                                value=len(node.registry))

    def _buffer(self) -> Iterator[Metric]:
        stats, committer = self.node.upkeep.stats, self.node.committer
        yield GaugeMetricFamily(PREFIX + "buffer_records", "Records held in the buffer (as of its last "
                                "refresh, once a second)", value=stats.get("records", 0))
        yield GaugeMetricFamily(PREFIX + "buffer_bytes", "Bytes of the buffer's files", value=stats.get("bytes", 0))
        yield CounterMetricFamily(PREFIX + "buffer_commits", "Group commits written since start",
                                  value=committer.commits)
        yield CounterMetricFamily(PREFIX + "buffer_write_failures", "Group commits that failed to write since "
                                  "start", value=committer.failures)

    def _anchoring(self) -> Iterator[Metric]:
        anchoring = self.node.anchoring
        if anchoring is None:  # no [chain] registry: nothing is anchored, so nothing lags
            return
        backlog = anchoring.backlog
        yield GaugeMetricFamily(PREFIX + "anchoring_unanchored_records", "Records stored and not yet anchored on "
                                "chain", value=backlog.get("unanchored_records") or 0)
        oldest = backlog.get("oldest_unanchored_rx")
        yield GaugeMetricFamily(PREFIX + "anchoring_oldest_unanchored_age_seconds", "Age of the oldest record not "
                                "yet anchored (0 when none waits)",
                                value=max(0.0, time.time() - oldest) if oldest else 0)

    def _applets(self) -> Iterator[Metric]:
        runtime = self.node.runtime
        events = CounterMetricFamily(PREFIX + "applet_events", "Applet runs (an event times the strategies "
                                     "it reaches) since start, by project", labels=["project"])
        failures = CounterMetricFamily(PREFIX + "applet_failures", "Applet runs that failed since start, by "
                                       "project", labels=["project"])
        latency = HistogramMetricFamily(PREFIX + "applet_event_latency_seconds", "From handing an event to its "
                                        "project's worker to its result, by project", labels=["project"])
        for project in sorted(set(runtime.projects) | set(runtime.per_project)):
            counts = runtime.per_project.get(project)
            events.add_metric([project], counts.events if counts else 0)
            failures.add_metric([project], counts.failed if counts else 0)
            if counts is not None:
                latency.add_metric([project], counts.latency.cumulative(), counts.latency.sum)
        yield from (events, failures, latency)

    def _mqtt(self) -> Iterator[Metric]:
        link = self.node.link
        yield GaugeMetricFamily(PREFIX + "mqtt_connected", "1 while connected to the broker", value=int(link.connected))
        yield CounterMetricFamily(PREFIX + "mqtt_reconnects", "Connections to the broker after the first, since "
                                  "start", value=max(0, link.connects - 1))
        yield CounterMetricFamily(PREFIX + "mqtt_disconnects", "Connections the broker or the network ended, since "
                                  "start", value=link.drops)
        yield CounterMetricFamily(PREFIX + "mqtt_sessions_lost", "Reconnects that found no session kept by the "
                                  "broker, since start", value=link.sessions_lost)

    def _links(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(PREFIX + "legacy_link_up", "1 while a legacy sensor's link (serial port, BLE "
                               "connection) is up, 0 while it is down", labels=["transport", "link"])
        legacy = self.node.legacy
        for link, is_up in sorted(link_states(legacy).items()) if legacy is not None else ():
            up.add_metric([link.split(":", 1)[0], link], int(is_up))
        yield up

    def _event_api(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(PREFIX + "event_api_requests", "Events to the event API (HTTP and MQTT) "
                                       "since start, by outcome", labels=["outcome"])
        for outcome, count in sorted(self.node.event_api.counters.items()):
            requests.add_metric([outcome], count)
        yield requests

    def _health(self) -> Iterator[Metric]:
        now = time.time()
        problems = degraded(self.node, now)
        family = GaugeMetricFamily(PREFIX + "degraded", "1 for each component not working now (w3gate status "
                                   "says why)", labels=["component"])
        for component in sorted(problems):
            family.add_metric([component], 1)
        yield family
        yield GaugeMetricFamily(PREFIX + "uptime_seconds", "Seconds since the gateway started",
                                value=now - self.node.started)
