"""The running gateway: wires the sources, the buffer, the applets and the chain together.

Data flows one way (docs/architecture.md): the MQTT link hands each message to the
``PebbleSource`` (verification, signature worker, registration) and the serial and BLE links
hand bytes to the ``LegacySource``; both store through one ``RecordSink`` (group commit,
accounting, a nudge to the applets); the ``DeviceDispatcher`` feeds stored records to the applet
runtime, and the anchoring service anchors them on chain. Every long-running task is supervised
and ``status.json`` says what is degraded. This module builds and connects; it decides nothing.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from dataclasses import replace
from functools import partial

from gateway.applets.device_events import DeviceDispatcher
from gateway.applets.event_api import EventAPI
from gateway.applets.pool import Limits
from gateway.applets.project import ProjectStore
from gateway.applets.publishers import Publishers
from gateway.applets.runtime import AppletRuntime
from gateway.applets.system_api import HostCalls
from gateway.applets.triggers import CronScheduler, MonitorScheduler
from gateway.broker.access import link_credentials
from gateway.buffer.commit import GroupCommitter
from gateway.buffer.sink import RecordSink
from gateway.buffer.store import FullPolicy, RecordState, RecordStore, StoreConfig
from gateway.buffer.upkeep import BufferUpkeep
from gateway.catchup import CatchUp, Stage, view_for
from gateway.codec.record import Record
from gateway.config import Config
from gateway.ingest.mqtt import MqttLink
from gateway.pebble.source import SUBSCRIPTIONS, PebbleSource
from gateway.layout import check_permissions
from gateway.report import node_status
from gateway.service.notify import Notifier
from gateway.status import Counters, read_status, write_status
from gateway.storage import open_private, private_dir
from gateway.supervisor import Health, periodic, step, supervise
from gateway.verify.checker import SignatureChecker
from gateway.verify.registry import Registry
from gateway.verify.verifier import Policy, Verifier

log = logging.getLogger("w3gate.node")


class Node:
    def __init__(self, config: Config, *, trace_path: str | None = None) -> None:
        self.config = config
        private_dir(config.data_dir)  # 0700: other accounts on the Pi read no device's history
        for line in check_permissions(config.data_dir, fix="root"):
            log.warning("%s", line)
        self.started = time.time()
        self.health = Health()  # what is degraded now, shown in status
        self.notifier = Notifier()  # systemd's Type=notify (READY, WATCHDOG, STOPPING); a no-op outside systemd
        self._trace = open_private(trace_path, "a", buffering=1 << 16) if trace_path else None
        b, v, a = config.buffer, config.verify, config.applets
        self.registry = Registry(config.layout.devices)
        self.verifier = Verifier(self.registry, Policy(v.max_payload, v.max_age_s, v.max_future_s, v.nonce_memory))
        self.store = RecordStore(config.layout.records, StoreConfig(
            segment_records=b.segment_records, max_records=b.max_records,
            full_policy=FullPolicy(b.full_policy), retention_s=b.retention_s),
            cipher=self._cipher(config))
        self.committer = GroupCommitter(self.store, max_batch=b.max_batch, min_interval_s=b.commit_interval_s)
        self.counters = Counters(read_status(config.layout.status))
        self.sink = RecordSink(self.committer, self.counters, notify=lambda: self.dispatcher.notify(),
                               trace=self._trace)
        self.checker = SignatureChecker()
        login = link_credentials(config.mqtt.username, config.mqtt.password, config.layout.broker)
        self.link = MqttLink(replace(config.mqtt, username=login[0], password=login[1] or "") if login else config.mqtt,
                             SUBSCRIPTIONS, lambda msg: None)
        projects = ProjectStore(config.layout)
        self.runtime = AppletRuntime(
            projects, limits=Limits(a.time_limit_s, a.max_memory_pages, a.recycle_events, a.worker_memory_mb,
                                    a.worker_recycle_mb),
            publish=lambda topic, payload: self.link.publish(topic, payload, qos=1), max_batch=a.batch)
        self.chain = self.anchoring = self.monitors = None  # the chain, anchoring, monitors: when [chain] is enabled
        self.market = None  # the purchases this gateway delivers: when [market] names a contract
        if config.chain.enabled:
            from gateway.chain.service import ChainService  # web3 is imported only when used

            self.chain = ChainService(config.chain, config.layout)
            if config.chain.registry:  # without a proof registry, applets still reach the chain
                from gateway.proofs.service import AnchorService

                self.anchoring = AnchorService(self.chain, config.chain, config.layout, self.store, self.registry,
                                               self.committer.call_blocking)
            else:
                log.info("[chain] has no proof registry: records are not anchored; applets reach the chain")
            self.monitors = MonitorScheduler(self.runtime, self.chain, interval_s=config.chain.poll_s)
            if config.market.contract:
                from gateway.market.service import MarketService
                prove = (partial(self.chain.call, self.anchoring.anchorer.proof_for) if self.anchoring is not None
                         else None)  # each delivered reading's proof, streamed to its buyer once anchored
                self.market = MarketService(self.chain, config.market, config.layout, self.store, self.registry,
                                            self.committer.call, prove)
        self.runtime.host_call = HostCalls(self.runtime, self.chain.applet_call if self.chain else None)
        if self.chain is not None:
            self.runtime.settle, self.runtime.void_unclaimed = self.chain.settle_applet_txs, self.chain.void_held
        self.event_api = EventAPI(
            self.runtime, Publishers(projects), max_bytes=config.api.max_event_bytes,
            body_timeout_s=config.api.body_timeout_s, max_connections=config.api.max_connections,
            tls_cert=config.api.tls_cert, tls_key=config.api.tls_key,
            did_document=self._did_document,
            publish=lambda topic, payload: self.link.publish(topic, payload, qos=0),
            reject_log=self.sink.reject_log)
        self.pebble = PebbleSource(self.verifier, self.checker, self.sink, self.registry, self.link,
                                   events=lambda msg: self.event_api.on_mqtt(msg.topic, msg.payload))
        self.link.on_message = self.pebble.on_message
        self.legacy = None  # LegacySource, when [serial] ports are set or [ble] is enabled
        if config.serial.ports or config.ble.enabled:
            from gateway.legacy.source import LegacySource

            self.legacy = LegacySource(config, self.sink)
            # applets command legacy devices through the system API (POST /system/device_command)
            self.runtime.host_call.devices = self.legacy.bridge
            self.runtime.command_device = self.legacy.command
        self.dispatcher = DeviceDispatcher(self.runtime, self.store, self.committer, self.registry,
                                           legacy_names=self.legacy.names if self.legacy else dict)
        self.cron = CronScheduler(self.runtime)
        self.upkeep = BufferUpkeep(self.store, self.committer, expire_at=RecordState.ANCHORED if self.anchoring
                                   else RecordState.PROCESSED)  # when anchoring, records expire once anchored
        stages = [Stage("applets", "processed_upto")]
        if self.anchoring is not None:
            stages.append(Stage("anchoring", "anchored_upto", blocked=self.anchoring.trouble))
        self.catchup = CatchUp(stages, lambda: self.upkeep.stats, view_for(status=self.notifier.status))
        self.dashboard = None  # the dashboard's HTTP server (/metrics, /healthz), when [dashboard] is enabled
        if config.dashboard.enabled:
            from gateway.dashboard.server import DashboardServer  # prometheus_client is imported only when used

            d = config.dashboard
            self.dashboard = DashboardServer(self, tls_cert=d.tls_cert, tls_key=d.tls_key,
                                             password_file=d.password_file)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down without losing anything received."""
        # The store thread takes the GIL whenever the loop releases it; with the default 5 ms
        # switch interval the loop could then wait milliseconds to get it back.
        sys.setswitchinterval(0.0005)
        await self._restore_replay_memory()
        await self.checker.start()
        await self.upkeep.refresh()
        await step(self.health, "projects", self.runtime.reload)
        await step(self.health, "applet effects", self.runtime.recover)  # before any event runs
        # Everything made so far lives as long as the process: keep it out of the collector's
        # full passes, which otherwise walk it again and again while thousands of records wait
        # for the disk (measured: 5-6 us of the loop's ~35 us per message under load).
        gc.freeze()
        every_second = {"device registry": self.pebble.reload, "projects": self.runtime.reload,
                        "replay memory": self.pebble.trim, "buffer": self.upkeep.refresh}
        if self.legacy is not None:
            every_second["legacy devices"] = self.legacy.reload
        every_second["status"] = self._write_status
        every_second["trace"] = self.sink.flush_trace
        every_second["watchdog"] = self.notifier.watchdog  # on the loop: a wedged loop stops the pings
        tasks = {"housekeeping": lambda stop: periodic(1.0, every_second, stop, self.health),
                 "expiry": lambda stop: periodic(60.0, {"expiry": self.upkeep.expire}, stop, self.health, first_s=1.0),
                 "dispatcher": self.dispatcher.run, "cron": self.cron.run, "mqtt": self.link.run,
                 "catch-up": self.catchup.run}
        if self.config.api.enabled:
            tasks["event API"] = partial(self.event_api.serve, self.config.api.listen, self.config.api.port)
        if self.dashboard is not None:  # closes itself when stop is set
            tasks["dashboard"] = partial(self.dashboard.serve, self.config.dashboard.listen, self.config.dashboard.port)
        if self.anchoring is not None:
            tasks["anchoring"] = self.anchoring.run
        if self.chain is not None:
            tasks["chain senders"] = self.chain.run
            tasks["chain monitors"] = self.monitors.run
        if self.market is not None:
            tasks["market"] = self.market.run
        if self.legacy is not None:
            tasks.update(self.legacy.links())
        running = {name: asyncio.create_task(supervise(name, lambda run=run: run(stop), stop, self.health))
                   for name, run in tasks.items()}
        if self.store.damage:
            log.warning("record buffer: %d damaged file(s) set aside and recovered; see `w3gate buffer check`",
                        len(self.store.damage))
        log.info("w3gate running: %d devices registered, %d records buffered, broker %s:%d",
                 len(self.registry), self.upkeep.stats.get("records", 0),
                 self.config.mqtt.host, self.config.mqtt.port)
        self.notifier.ready(f"running: {len(self.registry)} devices, broker {self.config.mqtt.host}:"
                            f"{self.config.mqtt.port}")
        try:
            await stop.wait()
        finally:
            self.notifier.stopping("stopping: writing what is in flight")
            self.link.pause()  # take no more; what is unacknowledged stays with the broker
            await self.checker.drain()
            await self.committer.drain()
            self.link.close()
            await running["mqtt"]
            if "ble" in running:
                await running["ble"]  # disconnects cleanly
            await running["dispatcher"]  # it finishes the batch it is running, so nothing runs twice needlessly
            await self.event_api.drain_mqtt()
            await self.event_api.stop_http()
            if self.anchoring is not None:
                await running["anchoring"]  # ends after its current step
            if self.market is not None:
                await running["market"]  # ends after its current step, before the chain thread closes
            if self.chain is not None:
                await running["chain senders"]
                self.chain.close()
            await self.runtime.close()
            for task in running.values():
                task.cancel()
            await self.upkeep.refresh()
            self._write_status()
            if self.legacy is not None:
                self.legacy.close()
            await self.committer.call(self.store.close)
            self.committer.close()
            self.checker.close()
            if self._trace:
                self._trace.close()
            self.notifier.close()
            log.info("w3gate stopped: everything received is on disk or still with the broker")

    async def _restore_replay_memory(self) -> None:
        """Replay protection must survive restarts: re-learn digests, nonces and seqs still in the
        window (with a minute of slack for receive-order jitter)."""
        since = time.time() - self.verifier.policy.max_age_s - self.verifier.policy.max_future_s - 60
        docs = await self.committer.call(self.sink.recent, self.store, since)
        sources = [s for s in (self.pebble, self.legacy) if s is not None]
        for record in map(Record, docs):  # oldest first, so each device keeps its latest nonces
            for source in sources:  # each takes its own family's records
                source.remember(record)
        if docs:
            log.info("replay protection restored from %d recent records", len(docs))

    @staticmethod
    def _cipher(config: Config):
        """The store's cipher ([buffer] encrypt_at_rest, or records encrypted before); None when off.
        Imported only then: cryptography's bindings cost a few MB the common case does without."""
        if not (config.buffer.encrypt_at_rest or config.layout.data_key.exists()):
            return None
        from gateway.chain.datakey import cipher_from_config
        return cipher_from_config(config, create=True)

    def _did_document(self) -> dict | None:
        from gateway.chain.keystore import did_document  # eth_account, only when asked

        chain_id = self.chain.sender.known_chain_id if self.chain is not None else None
        return did_document(self.config.layout.node_key, chain_id)

    def _write_status(self) -> None:
        try:
            write_status(self.config.layout.status, node_status(self))
        except OSError as e:
            log.warning("could not write %s: %s", self.config.layout.status, e)
