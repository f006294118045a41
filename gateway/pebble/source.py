"""Pebble trackers as a source of records: MQTT topics → checks → the record sink, and the
registration handshake.

A message on ``device/<IMEI>/data`` or ``/confirm`` is admitted by the ``Verifier`` (every check
but the signature), its signature is checked in batches by the ``SignatureChecker``'s worker
process, the verdict is concluded in arrival order, and the record goes to the sink; the broker
gets its acknowledgement only once the record is durable, or, when it is refused, in order behind
what is pending. W3bstream events share the broker (``<project>/push/...``) and go to the event
API. Whatever a message holds, it ends in exactly one counted outcome and one acknowledgement and
is never handled twice: a failure of ours costs that message only (``internal``).
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable

from gateway.buffer.sink import RecordSink
from gateway.codec import downlink
from gateway.codec.record import Record, pebble_doc
from gateway.errors import CodecError, Rejection
from gateway.ingest.mqtt import Inbound, MqttLink
from gateway.status import Latencies
from gateway.verify.checker import SignatureChecker
from gateway.verify.registry import STATUS_CODES, STATUS_CONFIRMED, Registry
from gateway.verify.verifier import Accepted, Admitted, Verifier
from hardware.pebble.topics import DEVICE_SUBSCRIPTIONS, G1_PREFIX

log = logging.getLogger("w3gate.pebble")

SUBSCRIPTIONS = [*DEVICE_SUBSCRIPTIONS,
                 "+/push/#"]  # W3bstream events: <project>/push/<token>/<eventType>[/<query>]
# Backpressure. Reading from the broker is cheaper than checking and storing, so unchecked the
# loop would read the broker's whole queue before checking any of it: stop reading while this
# many messages wait for their signature check or for the disk. QoS 1 traffic is also bounded by
# the broker's in-flight window, QoS 0 (real Pebbles) only by this.
VERIFY_PAUSE_ABOVE, VERIFY_RESUME_BELOW = 2048, 1024
STORE_PAUSE_ABOVE, STORE_RESUME_BELOW = 8000, 2000


class PebbleSource:
    def __init__(self, verifier: Verifier, checker: SignatureChecker, sink: RecordSink, registry: Registry,
                 link: MqttLink, *, events: Callable[[Inbound], None]) -> None:
        self.verifier = verifier
        self.checker = checker
        self.sink = sink
        self.registry = registry
        self.link = link
        self.events = events  # a W3bstream event published over MQTT: the event API runs it
        self.verify_latency = Latencies()  # receive -> signature checked and concluded
        self._paused = False

    def on_message(self, msg: Inbound) -> None:
        """The transport boundary: see the module's docstring."""
        try:
            self._route(msg)
        except Exception as e:  # noqa: BLE001 - a bug must cost one message, not the gateway
            self._rejected(msg, self._failure(msg, e))

    def remember(self, record: Record) -> None:
        """A record stored before a restart: replay protection must survive it (a Pebble's only)."""
        if not record.of("pebble"):
            return
        doc = record.doc
        self.verifier.replay.remember(doc["device"], doc["ts"], bytes.fromhex(doc["digest"]), record.nonce())

    def reload(self) -> None:
        """Housekeeping: re-read the device registry when its file changed; cached keys go with it."""
        if self.registry.reload():
            self.verifier.forget_keys()
            log.info("device registry reloaded: %d devices", len(self.registry))

    def trim(self) -> None:
        """Housekeeping: forget digests and nonces older than the replay window."""
        self.verifier.replay.prune(time.time())

    # -- the data path ---------------------------------------------------------------------------

    def _route(self, msg: Inbound) -> None:
        parts = msg.topic.split("/")
        if len(parts) in (4, 5) and parts[1] == "push":
            self.events(msg)
            return self.sink.release(partial(self._ack, msg))
        if len(parts) != 3 or parts[0] != "device":
            return self._rejected(msg, Rejection("malformed", f"unexpected topic {msg.topic[:100]}"))
        imei, channel = parts[1].removeprefix(G1_PREFIX), parts[2]
        if channel == "query":
            self._answer_query(imei)
            return self.sink.release(partial(self._ack, msg))
        try:
            if channel not in ("data", "confirm"):
                raise Rejection("malformed", f"unexpected topic {msg.topic[:100]}", device=imei)
            admitted = self.verifier.admit(channel, imei, msg.payload)
        except Rejection as rejection:
            return self._rejected(msg, rejection)
        self.checker.submit(admitted, partial(self._checked, msg, admitted))
        if self.checker.backlog > VERIFY_PAUSE_ABOVE and not self._paused:
            self._pause()

    def _failure(self, msg: Inbound, error: Exception) -> Rejection:
        """What an exception on one message becomes: ``malformed`` when a decoder refused it late,
        ``internal`` otherwise (a bug: its traceback is logged once per kind, then rate-limited)."""
        device = msg.topic.split("/")[1].removeprefix(G1_PREFIX) if msg.topic.count("/") == 2 else None
        if isinstance(error, CodecError):
            return Rejection("malformed", error.detail, device=device)
        return Rejection.internal(error, device=device)

    def _checked(self, msg: Inbound, admitted: Admitted, valid: bool) -> None:
        try:
            self.verify_latency.add(time.time() - msg.received)
            accepted = self.verifier.conclude(admitted, valid)
            doc = pebble_doc(device=accepted.device.imei, address=accepted.device.address, kind=accepted.kind,
                             wire=accepted.wire, timestamp=accepted.timestamp, digest=accepted.digest,
                             payload=accepted.payload, received=msg.received)
        except Rejection as rejection:
            return self._rejected(msg, rejection)
        except Exception as e:  # noqa: BLE001 - a callback of the checker: the boundary holds here too
            return self._rejected(msg, self._failure(msg, e))
        self.sink.store(doc, accepted.kind, msg.topic, partial(self._stored, msg, accepted))
        if self._paused:
            self._maybe_resume()
        elif self.sink.backlog > STORE_PAUSE_ABOVE:
            log.warning("buffer is %d records behind: pausing MQTT reads", self.sink.backlog)
            self._pause()

    def _stored(self, msg: Inbound, accepted: Accepted, seq: int | None) -> None:
        try:
            if seq is not None and accepted.kind == "confirm":
                self._confirmed(accepted)
        except Exception as e:  # noqa: BLE001 - the record is on disk: log, and acknowledge anyway
            self.sink.reject_log.internal(e, accepted.device.imei, msg.topic)
        finally:
            self._ack(msg)

    def _rejected(self, msg: Inbound, rejection: Rejection) -> None:
        if rejection.reason == "replay" and msg.dup:
            self.sink.redelivered()  # what we stored but could not acknowledge before a crash
        else:
            self.sink.rejected(rejection, msg.topic[:100])
        self.sink.release(partial(self._ack, msg))

    def _ack(self, msg: Inbound) -> None:
        self.link.ack(msg.mid, msg.qos)
        if self._paused:
            self._maybe_resume()

    def _pause(self) -> None:
        self._paused = True
        self.link.pause()

    def _maybe_resume(self) -> None:
        if self.checker.backlog < VERIFY_RESUME_BELOW and self.sink.backlog < STORE_RESUME_BELOW:
            self._paused = False
            self.link.resume()

    # -- registration (docs: README "Registration") --------------------------------------------------

    def _answer_query(self, imei: str) -> None:
        device = self.registry.get(imei)
        if device is None:
            self.sink.rejected(Rejection("unknown_device", f"IMEI {imei} is not registered", device=imei),
                               f"device/{imei}/query")
            return
        code = STATUS_CODES.get(device.status, 0)
        payload = downlink.status(code, device.owner if code >= 1 else None)
        self.link.publish(downlink.STATUS_TOPIC.format(imei), payload, qos=1)

    def _confirmed(self, accepted: Accepted) -> None:
        device = accepted.device
        if device.status != STATUS_CONFIRMED:
            self.registry.update(device.imei, status=STATUS_CONFIRMED)
            log.info("device %s confirmed ownership by %s", device.imei, device.owner)
        self.link.publish(downlink.STATUS_TOPIC.format(device.imei),
                          downlink.status(STATUS_CODES[STATUS_CONFIRMED], device.owner), qos=1)
