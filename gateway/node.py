"""The running gateway: MQTT in, verification, durable buffer, acknowledgement, downlinks.

Data flows one way: ``MqttLink`` hands each message to ``Node.on_message`` on the event loop,
the ``Verifier`` admits or rejects it, the ``SignatureChecker`` verifies admitted messages in
batches in a worker process, accepted records go to the ``GroupCommitter``, and the
broker gets its acknowledgement only after the record is on disk. Rejections are counted by
reason, logged once each (rate-limited), and acknowledged in order: nothing crashes the node.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import time

from gateway.applets.event_api import EventAPI
from gateway.applets.device_events import DeviceDispatcher
from gateway.applets.pool import Limits
from gateway.applets.project import ProjectStore
from gateway.applets.publishers import Publishers
from gateway.applets.runtime import AppletRuntime
from gateway.applets.triggers import CronScheduler
from gateway.buffer.commit import GroupCommitter
from gateway.buffer.records import LEGACY_WIRE, nonce_of, record_doc
from gateway.buffer.store import FullPolicy, RecordState, RecordStore, StoreConfig
from gateway.codec import downlink
from gateway.config import Config
from gateway.errors import CodecError, W3gateError
from gateway.ingest.mqtt import Inbound, MqttLink
from gateway.legacy_bridge import LegacyBridge
from gateway.supervisor import Health, step, supervise
from gateway.status import Counters, Latencies, RejectLog, read_status, write_status
from gateway.verify.registry import STATUS_CODES, STATUS_CONFIRMED, Registry
from gateway.verify.checker import SignatureChecker
from gateway.verify.verifier import Accepted, Admitted, Policy, Rejection, Verifier

log = logging.getLogger("w3gate.node")

SUBSCRIPTIONS = ["device/+/data", "device/+/confirm", "device/+/query",
                 "+/push/#"]  # W3bstream events: <project>/push/<token>/<eventType>[/<query>]
# Backpressure. Reading from the broker is cheaper than checking and storing, so unchecked the
# loop would read the broker's whole queue before checking any of it: stop reading while this
# many messages wait for their signature check or for the disk. QoS 1 traffic is also bounded by
# the broker's in-flight window, QoS 0 (real Pebbles) only by this.
VERIFY_PAUSE_ABOVE, VERIFY_RESUME_BELOW = 2048, 1024
STORE_PAUSE_ABOVE, STORE_RESUME_BELOW = 8000, 2000
STUCK_AFTER_S = 10.0  # messages waiting this long with none handled: status says ingest is stuck
MAX_MQTT_EVENTS_RUNNING = 1000  # W3bstream events over MQTT waiting for their applets


class Node:
    def __init__(self, config: Config, *, trace_path: str | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(config.registry_path)
        v = config.verify
        self.verifier = Verifier(self.registry, Policy(v.max_payload, v.max_age_s, v.max_future_s, v.nonce_memory))
        b = config.buffer
        self.store = RecordStore(config.records_path, StoreConfig(
            segment_records=b.segment_records, max_records=b.max_records,
            full_policy=FullPolicy(b.full_policy), retention_s=b.retention_s))
        self.checker = SignatureChecker()
        self.committer = GroupCommitter(self.store, max_batch=b.max_batch, min_interval_s=b.commit_interval_s)
        self.link = MqttLink(config.mqtt, SUBSCRIPTIONS, self.on_message)
        a = config.applets
        projects = ProjectStore(config.data_dir)
        self.runtime = AppletRuntime(
            projects,
            limits=Limits(a.time_limit_s, a.max_memory_pages, a.recycle_events, a.worker_memory_mb),
            publish=lambda topic, payload: self.link.publish(topic, payload, qos=1), max_batch=a.batch)
        self.dispatcher = DeviceDispatcher(self.runtime, self.store, self.committer, self.registry,
                                           legacy_names=self._legacy_names)
        self.cron = CronScheduler(self.runtime)
        self.anchoring = None  # anchoring batches on chain, when [chain] is enabled
        if config.chain.enabled:
            from gateway.proofs.service import AnchorService  # web3 is imported only when used

            self.anchoring = AnchorService(config.chain, config.data_dir, self.store, self.registry,
                                           self.committer.call_blocking)
        self.runtime.host_call = self._applet_host_call
        self.legacy: LegacyBridge | None = None
        self.serial = None  # SerialLinks, when [serial] ports are set
        self.ble = None  # BleLinks, when [ble] is enabled
        if config.serial.ports or config.ble.enabled:
            self._start_legacy()
        self.event_api = EventAPI(self.runtime, Publishers(projects), max_bytes=config.api.max_event_bytes,
                                  did_document=self._did_document)
        self.counters = Counters(read_status(config.status_path))
        self.latency = Latencies()  # receive -> durable (and acknowledged)
        self.verify_latency = Latencies()  # receive -> signature checked and concluded
        self.reject_log = RejectLog()
        self.started = time.time()
        self.health = Health()  # what is degraded now, shown in status
        self.last_handled: float | None = None  # when a message last ended (accepted or refused)
        self.handled = 0  # messages that ended (acknowledged), since start
        self._buffer_stats: dict = {}
        self._paused = False
        self._event_tasks: set[asyncio.Task] = set()
        self._trace = open(trace_path, "a", buffering=1 << 16) if trace_path else None

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down without losing anything received."""
        # The store thread takes the GIL whenever the loop releases it; with the default 5 ms
        # switch interval the loop could then wait milliseconds to get it back.
        sys.setswitchinterval(0.0005)
        await self._rebuild_replay_state()
        await self.checker.start()
        self._buffer_stats = await self.committer.call(self.store.stats)
        await step(self.health, "projects", self.runtime.reload)
        tasks = {"housekeeping": self._housekeeping, "dispatcher": self.dispatcher.run, "cron": self.cron.run,
                 "mqtt": self.link.run}
        if self.config.api.enabled:
            tasks["event API"] = self._serve_event_api
        if self.anchoring is not None:
            tasks["anchoring"] = self.anchoring.run
            tasks["chain monitors"] = lambda stop: self.anchoring.run_monitors(stop, self.runtime)
        if self.serial is not None:
            tasks["serial"] = self.serial.run
        if self.ble is not None:
            tasks["ble"] = self.ble.run
        running = {name: asyncio.create_task(supervise(name, lambda run=run: run(stop), stop, self.health))
                   for name, run in tasks.items()}
        if self.store.damage:
            log.warning("record buffer: %d damaged file(s) set aside and recovered; see `w3gate buffer check`",
                        len(self.store.damage))
        log.info("w3gate running: %d devices registered, %d records buffered, broker %s:%d",
                 len(self.registry), self._buffer_stats.get("records", 0),
                 self.config.mqtt.host, self.config.mqtt.port)
        try:
            await stop.wait()
        finally:
            self.link.pause()  # take no more; what is unacknowledged stays with the broker
            await self.checker.drain()
            await self.committer.drain()
            self.link.close()
            await running["mqtt"]
            if "ble" in running:
                await running["ble"]  # disconnects cleanly
            await running["dispatcher"]  # it finishes the batch it is running, so nothing runs twice needlessly
            await self.event_api.stop_http()
            if self.anchoring is not None:
                await running["anchoring"]  # ends after its current step
                self.anchoring.close()
            await self.runtime.close()
            for task in running.values():
                task.cancel()
            self._buffer_stats = await self.committer.call(self.store.stats)
            self._write_status()
            if self.legacy is not None:
                self.legacy.save_seqs()
            await self.committer.call(self.store.close)
            self.committer.close()
            self.checker.close()
            if self._trace:
                self._trace.close()
            log.info("w3gate stopped: everything received is on disk or still with the broker")

    async def _rebuild_replay_state(self) -> None:
        """Replay protection must survive restarts: re-learn digests and nonces still in the window."""
        since = time.time() - self.verifier.policy.max_age_s - self.verifier.policy.max_future_s

        def scan() -> int:
            recent = []
            for doc in self.store.iter_records(newest_first=True):  # lazily, newest segment first
                if doc["rx"] < since - 60:  # a minute of slack for receive-order jitter
                    break
                recent.append(doc)
            for doc in reversed(recent):  # oldest first, so each device keeps its latest nonces
                if doc.get("wire") == LEGACY_WIRE:
                    if self.legacy is not None:
                        self.legacy.remember(doc)
                    continue
                self.verifier.replay.remember(doc["device"], doc["ts"], bytes.fromhex(doc["digest"]),
                                              nonce_of(doc))
            return len(recent)

        count = await self.committer.call(scan)
        if count:
            log.info("replay protection restored from %d recent records", count)

    async def _serve_event_api(self, stop: asyncio.Event) -> None:
        if self.event_api.port is None:
            await self.event_api.start_http(self.config.api.listen, self.config.api.port)
        await stop.wait()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Once a second: reload what users change on disk, trim, expire, write status. Each step
        fails alone (``degraded`` in status until it works again); the status is always written."""
        last_expire = 0.0
        while not stop.is_set():
            await asyncio.sleep(1.0)
            await step(self.health, "device registry", self._reload_registry)
            await step(self.health, "projects", self.runtime.reload)
            await step(self.health, "replay memory", lambda: self.verifier.replay.prune(time.time()))
            if self.legacy is not None:
                await step(self.health, "legacy devices", self._reload_legacy)
            if time.time() - last_expire > 60:
                last_expire = time.time()
                await step(self.health, "expiry", self._expire)
            stats = await step(self.health, "buffer", lambda: self.committer.call(self.store.stats))
            if stats is not None:
                self._buffer_stats = stats
            self._write_status()
            if self._trace:
                self._trace.flush()

    def _reload_registry(self) -> None:
        if self.registry.reload():
            self.verifier.forget_keys()
            log.info("device registry reloaded: %d devices", len(self.registry))

    def _reload_legacy(self) -> None:
        if self.legacy.registry.reload():
            log.info("legacy device registry reloaded: %d devices", len(self.legacy.registry))
            self.legacy.registry_changed()
        self.legacy.save_seqs()

    async def _expire(self) -> None:
        # with a chain, records expire once anchored; without, once applets processed them
        state = RecordState.ANCHORED if self.config.chain.enabled else RecordState.PROCESSED
        expired = await self.committer.call(self.store.expire, None, state)
        if expired:
            log.info("expired %d records past the retention of %.0f s", expired, self.config.buffer.retention_s)

    # -- the data path ---------------------------------------------------------------------------

    def on_message(self, msg: Inbound) -> None:
        """The transport boundary: whatever a message holds, it ends in one counted outcome and one
        acknowledgement, and it is never handled twice; a failure of ours costs that message only."""
        try:
            self._route(msg)
        except Exception as e:  # noqa: BLE001 - see above
            self._rejected(msg, self._failure(msg, e))

    def _route(self, msg: Inbound) -> None:
        parts = msg.topic.split("/")
        if len(parts) in (4, 5) and parts[1] == "push":
            if len(self._event_tasks) >= MAX_MQTT_EVENTS_RUNNING:  # a flood: refuse, do not pile up
                self.event_api.counters["busy"] += 1
                self.reject_log("event_busy", None, parts[0] + "/push/…", "too many MQTT events running")
            else:
                task = asyncio.get_running_loop().create_task(self._event_over_mqtt(msg))
                self._event_tasks.add(task)
                task.add_done_callback(self._event_tasks.discard)
            return self.committer.submit(None, self._acker(msg))
        if len(parts) != 3 or parts[0] != "device":
            return self._rejected(msg, Rejection("malformed", f"unexpected topic {msg.topic[:100]}"))
        imei, channel = parts[1].removeprefix("nrf-"), parts[2]
        if channel == "query":
            self._answer_query(imei)
            return self.committer.submit(None, self._acker(msg))
        try:
            if channel not in ("data", "confirm"):
                raise Rejection("malformed", f"unexpected topic {msg.topic[:100]}", device=imei)
            admitted = self.verifier.admit(channel, imei, msg.payload)
        except Rejection as rejection:
            return self._rejected(msg, rejection)
        self.checker.submit(admitted, lambda valid: self._checked(msg, admitted, valid))
        if self.checker.backlog > VERIFY_PAUSE_ABOVE and not self._paused:
            self._pause()

    def _failure(self, msg: Inbound, error: Exception) -> Rejection:
        """What an exception on one message becomes: ``malformed`` when a decoder refused it late,
        ``internal`` otherwise (a bug: its traceback is logged once per kind, then rate-limited)."""
        device = msg.topic.split("/")[1].removeprefix("nrf-") if msg.topic.count("/") == 2 else None
        if isinstance(error, CodecError):
            return Rejection("malformed", error.detail, device=device)
        self.reject_log.internal(error, device, msg.topic[:100])
        return Rejection("internal", f"{type(error).__name__}: {error}", device=device)

    def _checked(self, msg: Inbound, admitted: Admitted, valid: bool) -> None:
        try:
            self.verify_latency.add(time.time() - msg.received)
            accepted = self.verifier.conclude(admitted, valid)
            doc = record_doc(accepted, msg.received)
        except Rejection as rejection:
            return self._rejected(msg, rejection)
        except Exception as e:  # noqa: BLE001 - a callback of the checker: the boundary holds here too
            return self._rejected(msg, self._failure(msg, e))
        self.committer.submit(doc, self._on_durable(msg, accepted))
        if self._paused:
            self._maybe_resume()
        elif self.committer.backlog > STORE_PAUSE_ABOVE:
            log.warning("buffer is %d records behind: pausing MQTT reads", self.committer.backlog)
            self._pause()

    def _on_durable(self, msg: Inbound, accepted: Accepted):
        def done(seq: int | None) -> None:
            try:
                if seq is None:
                    self._count_rejection(msg, Rejection("buffer_full", "the buffer is full (policy refuse)",
                                                         device=accepted.device.imei))
                else:
                    now = time.time()
                    self.counters.accepted[accepted.kind] += 1
                    self.latency.add(now - msg.received)
                    if self._trace:
                        self._trace.write(f"{accepted.digest.hex()} {msg.received:.6f} {now:.6f}\n")
                    if accepted.kind == "confirm":
                        self._confirmed(accepted)
                    self.dispatcher.notify()
            except Exception as e:  # noqa: BLE001 - the record is on disk: log, and acknowledge anyway
                self.reject_log.internal(e, accepted.device.imei, msg.topic)
            finally:
                self._handled(msg)
        return done

    def _pause(self) -> None:
        self._paused = True
        self.link.pause()

    def _maybe_resume(self) -> None:
        if self.checker.backlog < VERIFY_RESUME_BELOW and self.committer.backlog < STORE_RESUME_BELOW:
            self._paused = False
            self.link.resume()

    def _acker(self, msg: Inbound):
        return lambda seq: self._handled(msg)

    def _handled(self, msg: Inbound) -> None:
        """The one place a message's life ends: acknowledged, and the ingest clock moves."""
        self.last_handled = time.time()
        self.handled += 1
        self.link.ack(msg.mid, msg.qos)
        if self._paused:
            self._maybe_resume()

    def _rejected(self, msg: Inbound, rejection: Rejection) -> None:
        if rejection.reason == "replay" and msg.dup:
            # the broker redelivers what we stored but could not acknowledge before a crash
            self.counters.redelivered += 1
        else:
            self._count_rejection(msg, rejection)
        self.committer.submit(None, self._acker(msg))

    def _count_rejection(self, msg: Inbound, rejection: Rejection) -> None:
        self.counters.rejected[rejection.reason] += 1
        self.reject_log(rejection.reason, rejection.device, msg.topic, rejection.detail)

    def _did_document(self) -> dict | None:
        from gateway.chain.keystore import KeystoreError, keystore_path, read_identity

        try:
            identity = read_identity(keystore_path(self.config.data_dir))
        except KeystoreError:
            return None
        chain_id = self.anchoring.sender.known_chain_id if self.anchoring is not None else None
        return identity.did_document(chain_id)

    async def _applet_host_call(self, fn: str, args: dict):
        """Host calls an applet's worker cannot answer itself: the chain, and the system API."""
        project = self.runtime.projects.get(args.get("project", ""))
        operators = project.operators if project else []
        if fn == "api_call":
            return await self._system_api(args.get("request") or {}, operators)
        if self.anchoring is None:
            raise RuntimeError(f"{fn}: no chain is configured ([chain] enabled = false)")
        return await self.anchoring.applet_call(fn, {**args, "operators": operators})

    async def _system_api(self, request: dict, operators: list[str]) -> dict:
        """W3bstream's in-process system API behind ``ws_api_call``: hello and send_tx."""
        url = str(request.get("Url") or "").removeprefix("w3bstream://w3bstream.com")
        method = str(request.get("Method") or "GET").upper()

        def reply(code: int, body: dict) -> dict:
            return {"Status": f"{code}", "StatusCode": code, "Proto": "HTTP/1.1",
                    "Header": {"Content-Type": ["application/json"]},
                    "Body": base64.b64encode(json.dumps(body).encode()).decode()}
        if method == "GET" and url == "/system/hello":
            return reply(200, {"message": "hello from w3gate"})
        if method == "POST" and url == "/system/send_tx":
            if self.anchoring is None:
                return reply(503, {"error": "no chain is configured"})
            try:
                body = json.loads(base64.b64decode(request.get("Body") or ""))
                tx_hash = await self.anchoring.applet_call(
                    "send_tx", {"chain_id": None, "operator": body.get("operatorName"), "operators": operators,
                                "request": {"to": body.get("to"), "value": body.get("value"), "data": body.get("data")}})
            except Exception as e:  # noqa: BLE001 - the applet gets the reason in the response
                return reply(400, {"error": str(e)})
            return reply(200, {"transactionID": tx_hash, "state": "pending"})
        return reply(404, {"error": f"no system route {method} {url}"})

    async def _event_over_mqtt(self, msg: Inbound) -> None:
        """A W3bstream event published over MQTT: run it, answer on ack/<publisherKey>."""
        try:
            ack_topic, reply = await self.event_api.submit_mqtt(msg.topic, msg.payload)
        except Exception as e:  # noqa: BLE001 - a task of its own: nothing else would see it
            self.event_api.counters["internal"] += 1
            self.reject_log.internal(e, None, msg.topic.split("/")[0] + "/push/…")
            return
        if ack_topic is None:  # counted by the event API; logged without the token, rate-limited
            self.reject_log(f"event_{reply.status}", None, msg.topic.split("/")[0] + "/push/…",
                            str(reply.body.get("error")))
            return
        self.link.publish(ack_topic, json.dumps(reply.body).encode(), qos=0)

    # -- legacy devices (serial, BLE) --------------------------------------------------------------

    def _start_legacy(self) -> None:
        """The serial (and BLE) bridge. Their records are attested with the node key, so it must
        unlock; without it the gateway refuses to start rather than store unattested data."""
        from gateway.chain.keystore import keystore_path, load_key, read_passphrase_file
        from gateway.ingest.serial import SerialLinks
        from gateway.verify.attest import Attester
        from gateway.verify.legacy import LegacyRegistry, LegacyVerifier

        if not self.config.chain.key_passphrase_file:
            raise W3gateError("legacy devices ([serial] ports, [ble]) need the node key to attest their "
                              "records: create it with `w3gate key new` and set [chain] key_passphrase_file",
                              reason="no_node_key")
        account = load_key(keystore_path(self.config.data_dir),
                           read_passphrase_file(self.config.chain.key_passphrase_file))
        registry = LegacyRegistry(self.config.legacy_registry_path)
        verifier = LegacyVerifier(registry, rate=self.config.legacy.rate, burst=self.config.legacy.burst)
        self.legacy = LegacyBridge(registry, verifier, Attester(bytes(account.key)), self._legacy_submit,
                                   self._legacy_rejected, seq_path=self.config.data_dir / "legacy_seq.json")
        s = self.config.serial
        if s.ports:
            self.serial = SerialLinks(s.ports, lambda port, chunk: self.legacy.on_data("serial:" + port, chunk),
                                      baudrate=s.baudrate, rescan_s=s.rescan_s, on_change=self._serial_changed,
                                      hold_dir=self.config.serial_holds_path)
            self.legacy.downlinks["serial"] = _SerialDownlink(self.serial)
        b = self.config.ble
        if b.enabled:
            from gateway.ingest.ble import BleLinks, bleak_backends

            scanner, client = bleak_backends(b.transport)
            self.ble = BleLinks(lambda: {d.name for d in registry if d.transport == "ble"},
                                lambda link, chunk: self.legacy.on_data(link, chunk),
                                on_change=lambda link, up: None if up else self.legacy.link_lost(link),
                                scanner_backend=scanner, client_backend=client, max_connecting=b.max_connections,
                                scan_s=b.scan_s, reconnect_max_s=b.reconnect_max_s)
            self.legacy.downlinks["ble"] = self.ble

    def _legacy_names(self) -> dict[str, str]:
        return {d.device_id: d.name for d in self.legacy.registry} if self.legacy is not None else {}

    def _serial_changed(self, port: str, up: bool) -> None:
        if not up:
            self.legacy.link_lost("serial:" + port)

    def _legacy_submit(self, doc: dict, done) -> None:
        def durable(seq: int | None) -> None:
            if seq is None:
                self.counters.rejected["buffer_full"] += 1
                self.reject_log("buffer_full", doc["device"], "legacy", "the buffer is full (policy refuse)")
            else:
                self.counters.accepted["legacy_" + doc["kind"]] += 1
                self.dispatcher.notify()
                if self._trace:
                    self._trace.write(f"{doc['digest']} {doc['rx']:.6f} {time.time():.6f}\n")
            done(seq)
        self.committer.submit(doc, durable)

    def _legacy_rejected(self, rejection: Rejection, link: str) -> None:
        self.counters.rejected[rejection.reason] += 1
        if rejection.reason == "internal" and rejection.__cause__ is not None:
            self.reject_log.internal(rejection.__cause__, rejection.device, link)
        else:
            self.reject_log(rejection.reason, rejection.device, link, rejection.detail)

    # -- registration (pebble.md 7.1) ------------------------------------------------------------

    def _answer_query(self, imei: str) -> None:
        device = self.registry.get(imei)
        if device is None:
            self.counters.rejected["unknown_device"] += 1
            self.reject_log("unknown_device", imei, f"device/{imei}/query", f"IMEI {imei} is not registered")
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

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict:
        now = time.time()
        return {
            "time": now,
            "degraded": self._degraded(now),
            "ingest": {"handled": self.handled, "last_handled": self.last_handled,
                       "last_handled_age_s": round(now - self.last_handled, 1) if self.last_handled else None,
                       "waiting": self.checker.backlog + self.committer.backlog,
                       "handler_errors": self.link.handler_errors},
            "started": self.started,
            "pid": os.getpid(),
            "mqtt": {"broker": f"{self.config.mqtt.host}:{self.config.mqtt.port}",
                     "connected": self.link.connected, "connects": self.link.connects},
            **self.counters.snapshot(),
            "devices": len(self.registry),
            "legacy": ({**self.legacy.status(), "serial": self.serial.status() if self.serial else None,
                        "ble": self.ble.status() if self.ble else None} if self.legacy is not None else None),
            "verify_worker_restarts": self.checker.restarts,
            "chain": self.anchoring.status() if self.anchoring is not None else None,
            "api": {"url": f"http://{self.config.api.listen}:{self.event_api.port}" if self.event_api.port else None,
                    **self.event_api.counters},
            "applets": {"projects": sorted(self.runtime.projects), "events": self.runtime.counters["events"],
                        "failed": self.runtime.counters["failed"], "pebble_cursor": self.dispatcher.dispatched,
                        "cron_events": self.cron.fired, "monitor_events": self.anchoring.monitor_events if self.anchoring else 0,
                        "worker_restarts": sum(w.restarts for w in self.runtime.workers.values())},
            "buffer": {**self._buffer_stats, "pending": self.committer.backlog,
                       "commits": self.committer.commits, "write_failures": self.committer.failures},
            "latency_receive_to_verified": self.verify_latency.percentiles(),
            "latency_receive_to_durable": self.latency.percentiles(),
        }

    def _degraded(self, now: float) -> dict[str, str]:
        """``{component: reason}`` for everything not working now; status never claims health
        while messages wait and none has been handled for a while."""
        out = {name: p["reason"] for name, p in self.health.snapshot().items()}
        damage = self._buffer_stats.get("damage")
        if damage:
            first = damage[0]
            out["buffer"] = (f"{len(damage)} damaged file(s) set aside, see `w3gate buffer check`: "
                             f"{first['file']}: {first['reason']}")
        if not self.link.connected:
            out["mqtt"] = f"not connected to {self.config.mqtt.host}:{self.config.mqtt.port}"
        waiting = self.checker.backlog + self.committer.backlog
        since = self.last_handled or self.started
        if waiting and now - since > STUCK_AFTER_S:
            out["ingest"] = f"{waiting} messages waiting, none handled for {now - since:.0f} s"
        return out

    def _write_status(self) -> None:
        try:
            write_status(self.config.status_path, self.status())
        except OSError as e:
            log.warning("could not write %s: %s", self.config.status_path, e)
        except Exception as e:  # noqa: BLE001 - a bug in status must not stop housekeeping
            self.health.fail("status", e)


class _SerialDownlink:
    """Bridge links are named ``serial:<port>``; the serial transport knows ports."""

    def __init__(self, links) -> None:
        self.links = links

    def write(self, link: str, data: bytes) -> bool:
        return self.links.write(link.removeprefix("serial:"), data)

