"""The MQTT link against a real mosquitto: buffered reads deliver every packet intact and in
order, across 64 KiB read boundaries and across a pause in reading (backpressure)."""
from __future__ import annotations

import asyncio

import paho.mqtt.client as mqtt

from gateway.config import MqttConfig
from gateway.ingest.mqtt import READ_CHUNK, Inbound, MqttLink


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def _messages() -> list[tuple[str, bytes]]:
    out = []
    for i in range(3000):
        size = 3 * READ_CHUNK + 17 if i == 1234 else 20 + i % 300  # one spans several reads
        out.append((f"device/{350000000000000 + i % 40}/data", bytes([i % 251]) * size + i.to_bytes(4, "big")))
    return out


async def _receive(port: int, messages: list[tuple[str, bytes]], *, pause_at: int | None = None) -> list[Inbound]:
    got: list[Inbound] = []
    done = asyncio.Event()
    link: MqttLink

    def on_message(msg: Inbound) -> None:
        got.append(msg)
        link.ack(msg.mid, msg.qos)
        if len(got) == pause_at:
            link.pause()
            asyncio.get_running_loop().call_later(0.3, link.resume)
        if len(got) == len(messages):
            done.set()

    config = MqttConfig(host="127.0.0.1", port=port, client_id="test-link", username="", password="",
                        keepalive=30, reconnect_min_s=0.1, reconnect_max_s=1.0)
    link = MqttLink(config, ["device/+/data"], on_message)
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    assert await link.wait_connected(10)
    await asyncio.sleep(0.2)  # the SUBACK
    await asyncio.get_running_loop().run_in_executor(None, _publish, port, messages)
    await asyncio.wait_for(done.wait(), 30)
    stop.set()
    link.close()
    await task
    return got


def test_a_burst_arrives_complete_and_in_order(mosquitto):
    messages = _messages()
    got = asyncio.run(_receive(mosquitto.port, messages))
    assert [(m.topic, m.payload) for m in got] == messages
    assert all(m.qos == 1 and not m.dup for m in got)


def test_reading_paused_mid_burst_resumes_with_what_was_already_buffered(mosquitto):
    messages = _messages()
    got = asyncio.run(_receive(mosquitto.port, messages, pause_at=1000))
    assert [(m.topic, m.payload) for m in got] == messages


def test_a_handler_that_raises_costs_that_message_only_and_it_is_never_handled_again(mosquitto):
    # paho, left alone, parses a packet whose handler raised again on the next read, forever
    async def go() -> tuple[list[bytes], int]:
        calls: list[bytes] = []
        config = MqttConfig(host="127.0.0.1", port=mosquitto.port, client_id="test-raising", username="",
                            password="", keepalive=30, reconnect_min_s=0.1, reconnect_max_s=1.0)

        def on_message(msg: Inbound) -> None:
            calls.append(msg.payload)
            if msg.payload == b"poison":
                raise OverflowError("cannot convert float infinity to integer")
            link.ack(msg.mid, msg.qos)

        link = MqttLink(config, ["device/+/data"], on_message)
        stop = asyncio.Event()
        task = asyncio.create_task(link.run(stop))
        assert await link.wait_connected(10)
        await asyncio.sleep(0.2)
        messages = [("device/1/data", b"before"), ("device/1/data", b"poison"), ("device/1/data", b"after")]
        await asyncio.get_running_loop().run_in_executor(None, _publish, mosquitto.port, messages)
        for _ in range(100):
            if b"after" in calls:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # time for a loop, if there were one
        stop.set()
        link.close()
        await task
        errors = link.handler_errors
        # the same session again: the poison was acknowledged, so the broker has nothing to resend
        link = MqttLink(config, ["device/+/data"], lambda msg: calls.append(b"again: " + msg.payload))
        stop = asyncio.Event()
        task = asyncio.create_task(link.run(stop))
        assert await link.wait_connected(10)
        await asyncio.sleep(0.5)
        stop.set()
        link.close()
        await task
        return calls, errors

    calls, errors = asyncio.run(go())
    assert calls == [b"before", b"poison", b"after"] and errors == 1
