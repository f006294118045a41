"""What /metrics tells, read from the node's own counters at scrape time: the families, their
labels and values for a node in a known state (its parts stood in for by the figures they keep)."""
from __future__ import annotations

import time
from types import SimpleNamespace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.applets.runtime import ProjectCounts
from gateway.dashboard.metrics import metrics_registry
from gateway.status import Counters
from gateway.supervisor import Health


def a_node(**parts) -> SimpleNamespace:
    counters = Counters({"accepted": {"data": 5, "confirm": 1, "legacy_data": 3}, "rejected": {}})
    for family, reason in [("pebble", "bad_signature"), ("pebble", "replay"), ("legacy", "bad_mac"),
                           ("legacy", "replay")]:
        counters.reject(family, reason)
    alerts = ProjectCounts(events=4, failed=1)
    for seconds in (0.004, 0.004, 0.2, 3.0):
        alerts.latency.add(seconds)
    node = SimpleNamespace(
        started=time.time() - 60, counters=counters, registry=[1, 2, 3], health=Health(),
        checker=SimpleNamespace(backlog=2), committer=SimpleNamespace(backlog=1, commits=7, failures=0),
        sink=SimpleNamespace(last_handled=time.time()),
        upkeep=SimpleNamespace(stats={"records": 9, "bytes": 4096}),
        anchoring=SimpleNamespace(backlog={"unanchored_records": 4, "oldest_unanchored_rx": time.time() - 30},
                                  trouble=lambda: None),
        market=None,
        runtime=SimpleNamespace(projects={"alerts": None, "idle": None}, per_project={"alerts": alerts}),
        link=SimpleNamespace(connected=True, connects=3, drops=2, sessions_lost=1),
        legacy=SimpleNamespace(
            bridge=SimpleNamespace(heard_on={"dev-a": "serial:/dev/ttyACM0", "dev-b": "serial:/dev/ttyACM1"}),
            serial=SimpleNamespace(ports={"/dev/ttyACM0": None}),
            ble=SimpleNamespace(wanted=lambda: {"thermo", "hygro"},
                                links={"thermo": SimpleNamespace(client=SimpleNamespace(is_connected=True))})),
        event_api=SimpleNamespace(counters={"accepted": 2, "unauthorized": 1}),
        config=SimpleNamespace(mqtt=SimpleNamespace(host="127.0.0.1", port=1883)))
    node.__dict__.update(parts)
    return node


def scrape(node) -> dict:
    text = generate_latest(metrics_registry(node)).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_messages_are_counted_by_device_family_with_their_kind_or_reason():
    samples = scrape(a_node())
    accepted = {dict(labels)["family"] + "/" + dict(labels)["kind"]: v
                for (name, labels), v in samples.items() if name == "w3gate_messages_accepted_total"}
    assert accepted == {"pebble/data": 5, "pebble/confirm": 1, "legacy/data": 3}
    rejected = {dict(labels)["family"] + "/" + dict(labels)["reason"]: v
                for (name, labels), v in samples.items() if name == "w3gate_messages_rejected_total"}
    assert rejected == {"pebble/bad_signature": 1, "pebble/replay": 1, "legacy/bad_mac": 1, "legacy/replay": 1}
    assert samples[("w3gate_messages_waiting", frozenset())] == 3


def test_rejections_counted_before_families_were_are_kept_as_family_unknown():
    counters = Counters({"rejected": {"replay": 3, "malformed": 1},
                         "rejected_by_family": {"pebble": {"replay": 2}}})
    assert {f: dict(r) for f, r in counters.rejected_by_family.items()} == {
        "pebble": {"replay": 2}, "unknown": {"replay": 1, "malformed": 1}}
    samples = scrape(a_node(counters=counters))
    assert samples[("w3gate_messages_rejected_total", frozenset({("family", "unknown"), ("reason", "replay")}))] == 1


def test_buffer_depth_and_anchoring_lag_are_gauges_and_vanish_without_anchoring():
    samples = scrape(a_node())
    assert samples[("w3gate_buffer_records", frozenset())] == 9
    assert samples[("w3gate_anchoring_unanchored_records", frozenset())] == 4
    assert 29 <= samples[("w3gate_anchoring_oldest_unanchored_age_seconds", frozenset())] < 40
    without = scrape(a_node(anchoring=None))
    assert not [k for k in without if k[0].startswith("w3gate_anchoring")]


def test_applet_runs_failures_and_latency_buckets_are_per_project():
    samples = scrape(a_node())
    alerts, idle = frozenset({("project", "alerts")}), frozenset({("project", "idle")})
    assert samples[("w3gate_applet_events_total", alerts)] == 4 and samples[("w3gate_applet_events_total", idle)] == 0
    assert samples[("w3gate_applet_failures_total", alerts)] == 1
    bucket = lambda le: samples[("w3gate_applet_event_latency_seconds_bucket", alerts | {("le", le)})]  # noqa: E731
    assert (bucket("0.005"), bucket("0.25"), bucket("2.5"), bucket("5.0"), bucket("+Inf")) == (2, 3, 3, 4, 4)
    assert samples[("w3gate_applet_event_latency_seconds_count", alerts)] == 4
    assert abs(samples[("w3gate_applet_event_latency_seconds_sum", alerts)] - 3.208) < 1e-9


def test_mqtt_reconnects_and_every_legacy_link_state_are_reported():
    samples = scrape(a_node())
    assert samples[("w3gate_mqtt_reconnects_total", frozenset())] == 2  # three connections: two were reconnects
    assert samples[("w3gate_mqtt_disconnects_total", frozenset())] == 2
    links = {dict(labels)["link"]: v for (name, labels), v in samples.items() if name == "w3gate_legacy_link_up"}
    assert links == {"serial:/dev/ttyACM0": 1, "serial:/dev/ttyACM1": 0, "ble:thermo": 1, "ble:hygro": 0}


def test_what_is_degraded_is_a_gauge_per_component_and_one_broken_part_leaves_the_rest():
    node = a_node(link=SimpleNamespace(connected=False, connects=1, drops=1, sessions_lost=0))
    node.health.fail("cron", RuntimeError("boom"))
    samples = scrape(node)
    degraded = {dict(labels)["component"] for (name, labels), v in samples.items() if name == "w3gate_degraded"}
    assert degraded == {"cron", "mqtt"}
    broken = scrape(a_node(runtime=None))  # a bug in one group: logged, the others still scraped
    assert ("w3gate_buffer_records", frozenset()) in broken
    assert not [k for k in broken if k[0].startswith("w3gate_applet")]


def test_the_applet_runtime_counts_each_projects_runs_and_their_latency_where_they_complete(tmp_path):
    from gateway.applets.project import ProjectStore
    from gateway.applets.runtime import AppletRuntime, Event
    from gateway.layout import DataDir
    from tests.unit.test_applet_runtime import _handle, _project_file

    store = ProjectStore(DataDir(tmp_path / "data"))
    store.deploy(_project_file(tmp_path))
    runtime = AppletRuntime(store)
    _handle(runtime, [Event("probe-project", b'{"t": 1}', event_type="PEBBLE_DATA"),  # start + count
                      Event("probe-project", b"NAME", event_type="SOMETHING_ELSE")])  # env (DEFAULT)
    counts = runtime.per_project["probe-project"]
    assert (counts.events, counts.failed) == (runtime.counters["events"], runtime.counters["failed"]) == (3, 0)
    assert counts.latency.cumulative()[-1] == ("+Inf", 3) and counts.latency.sum > 0


def test_rejections_by_claimed_device_are_kept_for_the_latest_devices_only_and_not_in_status():
    from gateway.status import MAX_REJECTING_DEVICES

    counters = Counters()
    counters.reject("pebble", "bad_signature", "350916067070535")
    for i in range(MAX_REJECTING_DEVICES + 500):  # a flood of made-up ids
        counters.reject("pebble", "unknown_device", f"9{i:014d}")
    counters.reject("pebble", "replay", "350916067070535")
    assert len(counters.rejected_by_device) == MAX_REJECTING_DEVICES
    assert dict(counters.rejected_by_device["350916067070535"]) == {"replay": 1}  # evicted once, then back
    assert "rejected_by_device" not in counters.snapshot()  # status.json stays small
    assert counters.rejected["unknown_device"] == MAX_REJECTING_DEVICES + 500
