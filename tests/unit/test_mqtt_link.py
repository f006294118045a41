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


# -- the paho internals gateway/ingest/mqtt.py overrides ------------------------------------------
# _Client replaces paho's private _sock_recv (to serve reads from a 64 KiB buffer) and
# _handle_on_message (to skip per-topic matching). setup.cfg pins paho-mqtt>=2.1,<3; these fail
# when a paho release changes what the overrides rely on, before the gateway misbehaves.

def test_paho_still_has_the_overridden_methods_with_their_signatures():
    import importlib.metadata
    import inspect

    assert (2, 1) <= tuple(int(x) for x in importlib.metadata.version("paho-mqtt").split(".")[:2]) < (3, 0)
    assert list(inspect.signature(mqtt.Client._sock_recv).parameters) == ["self", "bufsize"]
    assert list(inspect.signature(mqtt.Client._handle_on_message).parameters) == ["self", "message"]


def test_paho_reads_the_socket_only_through_sock_recv():
    """The buffer sees every byte only if paho never reads the socket any other way."""
    import inspect

    assert inspect.getsource(mqtt.Client).count("self._sock.recv(") == 1
    assert "self._sock.recv(" in inspect.getsource(mqtt.Client._sock_recv)
    assert "self._sock_recv(" in inspect.getsource(mqtt.Client._packet_read)


def test_paho_sock_recv_returns_what_the_socket_has_and_signals_nothing_to_read():
    import socket

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        client._sock = ours
        theirs.sendall(b"0123456789")
        assert mqtt.Client._sock_recv(client, 4) == b"0123"
        assert mqtt.Client._sock_recv(client, 100) == b"456789"
        try:
            mqtt.Client._sock_recv(client, 1)
        except BlockingIOError:
            pass  # what the override relies on: "nothing now" is an exception, not b""
        else:
            raise AssertionError("paho's _sock_recv returned on an empty non-blocking socket")
    finally:
        client._sock = None
        ours.close()
        theirs.close()


def test_every_received_publish_reaches_on_message_through_handle_on_message():
    import inspect

    for handler in (mqtt.Client._handle_publish, mqtt.Client._handle_pubrel):
        assert "self._handle_on_message(message)" in inspect.getsource(handler)
    # paho's own _handle_on_message calls on_message(client, userdata, message), as the override does
    seen = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, userdata="userdata")
    client.on_message = lambda *args: seen.append(args)
    message = mqtt.MQTTMessage(mid=7, topic=b"device/350916067070535/data")
    mqtt.Client._handle_on_message(client, message)
    assert seen == [(client, "userdata", message)]
