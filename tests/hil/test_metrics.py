"""Prometheus `/metrics` of a real `w3gate run`: a private mosquitto, emulated Pebbles publishing
over MQTT (`w3gate sim pebble`), and the metrics scraped the way a Prometheus server does, with a
plain HTTP client, read with prometheus_client's own parser."""
from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import cli, sim


def dashboard_url(gateway) -> str:
    """The dashboard's address as status.json tells it (the port was picked: [dashboard] port = 0)."""
    return gateway.wait_for(lambda s: (s.get("dashboard") or {}).get("url"), what="the dashboard")["dashboard"]["url"]


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``url``/metrics: {(sample name, its labels): value}."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(url: str, predicate, what: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if predicate(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last scrape: "
                                 f"{ {k: v for k, v in samples.items() if k[0].startswith('w3gate_messages')} }")
        time.sleep(0.1)


ACCEPTED, REJECTED = "w3gate_messages_accepted_total", "w3gate_messages_rejected_total"


def test_accepted_readings_are_counted_by_family_and_kind_as_they_arrive(gateway, mosquitto, fleet):
    url = dashboard_url(gateway)
    before = scrape(url)
    assert sample(before, ACCEPTED, family="pebble", kind="data") == 0
    assert sample(before, "w3gate_mqtt_connected") == 1
    summary = sim(mosquitto, fleet, "--messages", "3", "--time-scale", "300", "--qos", "1")
    sent = summary["published"]["data"]
    assert sent == 18
    after = scrape_until(url, lambda s: sample(s, ACCEPTED, family="pebble", kind="data") >= sent,
                         "every reading counted")
    assert sample(after, ACCEPTED, family="pebble", kind="data") == sent
    assert not [k for k in after if k[0] == REJECTED]  # clean traffic: no rejection of any kind
    records = scrape_until(url, lambda s: sample(s, "w3gate_buffer_records") == sent, "the buffer's refresh")
    assert sample(records, "w3gate_messages_waiting") == 0


def test_a_bad_signature_shows_up_as_a_rejection_with_its_reason_and_is_not_accepted(gateway, mosquitto, fleet):
    url = dashboard_url(gateway)
    summary = sim(mosquitto, fleet, "--messages", "1", "--time-scale", "300", "--qos", "1",
                  "--faults", "bad_signature=1")
    forged = summary["faults"]["bad_signature"]
    assert forged == summary["published"]["data"] == 6  # every reading has a flipped signature byte
    after = scrape_until(url, lambda s: sample(s, REJECTED, family="pebble", reason="bad_signature") >= forged,
                         "the forged readings refused")
    assert sample(after, REJECTED, family="pebble", reason="bad_signature") == forged
    assert sample(after, ACCEPTED, family="pebble", kind="data") == 0
    assert {k for k in after if k[0] == REJECTED} == {(REJECTED, frozenset({("family", "pebble"),
                                                                          ("reason", "bad_signature")}))}


def test_the_gateway_reports_its_health_links_and_process_beside_the_counters(gateway):
    url = dashboard_url(gateway)
    shown = cli("status", data_dir=gateway.data_dir).stdout
    assert f"dashboard  {url}/  (metrics at /metrics)" in shown.splitlines()  # where to look, in `w3gate status`
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
        assert (response.status, response.read()) == (200, b"ok")
    samples = scrape(url)
    names = {name for name, _ in samples}
    assert sample(samples, "process_resident_memory_bytes") > 0  # prometheus_client's process metrics
    assert sample(samples, "w3gate_devices_registered") == 6
    assert sample(samples, "w3gate_mqtt_reconnects_total") == 0
    assert sample(samples, "w3gate_uptime_seconds") > 0
    assert not [k for k in samples if k[0] == "w3gate_degraded"]  # nothing is degraded
    assert "w3gate_buffer_records" in names and "w3gate_messages_redelivered_total" in names
