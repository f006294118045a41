"""A load generator process: publishes pre-signed Pebble messages over MQTT at a set rate and
records when each one was handed to the socket.

Run by bench.ingest in its own process, so the gateway is measured over a real broker.
Input: a pickle of [(topic, payload), ...]; output: a float64 array of publish times (pickle).
"""
from __future__ import annotations

import pickle
import sys
import time

import paho.mqtt.client as mqtt


def publish(port: int, messages: list[tuple[str, bytes]], *, rate: float, qos: int,
            inflight: int = 100, client_id: str = "bench-publisher", tls: str | None = None) -> list[float]:
    """Publish ``messages`` at ``rate`` per second (0 = as fast as possible); ``tls``: a client
    certificate bundle directory (ca.crt, client.crt, client.key) for a TLS listener."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if tls:
        client.tls_set(ca_certs=f"{tls}/ca.crt", certfile=f"{tls}/client.crt", keyfile=f"{tls}/client.key")
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    acked = 0

    def on_publish(*_args) -> None:
        nonlocal acked
        acked += 1

    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=60)
    while not client.is_connected():
        client.loop(0.01)
    times = [0.0] * len(messages)
    start = time.time()
    sent = 0
    n = len(messages)
    while sent < n or (qos and acked < n):
        due = n if rate <= 0 else min(n, int((time.time() - start) * rate) + 1)
        while sent < due and (not qos or sent - acked < inflight):
            topic, payload = messages[sent]
            times[sent] = time.time()
            client.publish(topic, payload, qos=qos)
            sent += 1
        client.loop(0.001 if sent < n else 0.01)
        if not qos:
            acked = sent
    client.disconnect()
    return times


if __name__ == "__main__":
    port, path, out, rate, qos = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    with open(path, "rb") as f:
        msgs = pickle.load(f)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    result = publish(port, msgs, rate=rate, qos=qos, client_id=f"bench-{out[-12:]}",
                     tls=sys.argv[6] if len(sys.argv) > 6 else None)
    with open(out, "wb") as f:
        pickle.dump(result, f)
