"""The gateway's side of applet workers: one supervised worker process per project.

Events go to the worker in batches (one pipe round trip for many events). When a worker dies in
the middle of a batch (an event overran its time limit, or crashed wasm3; the memory cap does not
kill it), nothing of that batch was committed; its events are run again one by one in a fresh
worker, so the culprit is named in its own result and every other event still runs. Chain calls
an applet made are remembered per event and call number, so running an event again never signs
a transaction twice.

Effects (MQTT messages, transactions) come back with the results once the worker committed them
to the project's outbox; ``on_effects`` carries them out, and the transactions held for events
that did not commit are voided with them. What was carried out is dropped from the outbox with
the worker's next commit; ``recover`` carries out what a crash left in it.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from gateway.applets.abi import EventMeta
from gateway.errors import W3gateError
from gateway.storage import open_private

log = logging.getLogger("w3gate.applets")

HostCall = Callable[[str, dict], Awaitable[Any]]  # (fn, args) -> value or HostAnswer; raises for an error
OnEffects = Callable[[list[dict], list[dict]], Awaitable[None]]  # (committed effects, voided transactions)


@dataclass(frozen=True)
class HostAnswer:
    """A host call's value with the effect it prepared (a held transaction), which the event's
    commit decides: carried out if the event is kept, voided if not."""

    value: Any
    effect: dict | None = None


@dataclass(frozen=True)
class Limits:
    time_s: float = 1.0  # per event
    max_pages: int = 1024  # 64 MiB of linear memory per instance
    recycle_events: int = 10_000  # rebuild an instance after this many events (SDK leaks)
    address_space_mb: int = 1024  # RLIMIT_AS of the worker process
    recycle_mb: int = 96  # a worker that discarded instances is replaced past this resident size


@dataclass(frozen=True)
class AppletEvent:
    id: str
    module: str  # sha256 of the deployed module
    handler: str
    payload: bytes
    meta: EventMeta = EventMeta()
    applet: str = ""  # its name in the project, for the log


@dataclass
class AppletResult:
    id: str
    code: int
    error: str | None = None
    return_value: bytes | None = None
    effects: list[dict] = field(default_factory=list)  # committed; see the worker's protocol
    metrics: list[dict] = field(default_factory=list)
    ms: float = 0.0


class WorkerDied(W3gateError):
    pass


class ProjectWorker:
    def __init__(self, project: str, *, modules_dir: Path, state_path: Path, schema: list[str] | None = None,
                 env: dict[str, str] | None = None, limits: Limits = Limits(), host_call: HostCall | None = None,
                 stderr_path: Path | None = None, log_path: Path | None = None, reuse: bool = False,
                 on_effects: OnEffects | None = None) -> None:
        self.project = project
        self.reuse = reuse  # instances keep their memory across events (the project's opt-in)
        self.modules_dir = modules_dir
        self.state_path = state_path
        self.schema = list(schema or [])
        self.env = dict(env or {})
        self.limits = limits
        self.host_call = host_call
        self.stderr_path = stderr_path
        self.log_path = log_path
        self.restarts = 0  # deaths (time limit, crash)
        self.recycles = 0  # replaced after a batch because discarded instances kept memory
        self.resident_mb = 0.0  # the worker's resident memory after its last batch
        self.peak_mb = 0.0  # the most any of this project's worker processes held
        self.events = 0
        self._recycle = False
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._call_cache: dict[tuple[str, int], dict] = {}
        self.on_effects = on_effects
        self._held: list[dict] = []  # transactions prepared during the current run
        self._done: list[str] = []  # effects carried out, not yet dropped from the outbox

    async def run(self, events: list[AppletEvent], *, cursor: tuple[str, int] | None = None) -> list[AppletResult]:
        """Run ``events`` in order; every event gets a result, whatever its applet does.

        ``cursor`` (name, value) is committed with the state the batch produced."""
        async with self._lock:
            try:
                results = await self._run_batch(events, cursor)
            except WorkerDied as died:
                if len(events) == 1:  # the culprit is known: no need to run it again
                    results = [self._died(events[0], died)]
                    events_to_retry: list[AppletEvent] = []
                else:
                    log.warning("project %s: worker died in a batch of %d (%s); running them one by one",
                                self.project, len(events), died)
                    results, events_to_retry = [], events
                for event in events_to_retry:
                    try:
                        results += await self._run_batch([event], None)
                    except WorkerDied as e:
                        results.append(self._died(event, e))
                if cursor is not None:
                    try:
                        await self._run_batch([], cursor)  # the batch is over, whatever its events did
                    except WorkerDied as e:
                        log.error("project %s: could not record progress (%s); the batch will run again",
                                  self.project, e)
            self._call_cache.clear()
            self.events += len(events)
            committed = [e for r in results for e in r.effects]
            kept = {e.get("hash") for e in committed if e.get("kind") == "tx"}
            held, self._held = self._held, []
            await self._carry_out(committed, [e for e in held if e["hash"] not in kept])
            if self._recycle:
                self._recycle = False
                self.recycles += 1
                log.info("project %s: worker replaced after its batch: past %d MB resident, kept by the instances "
                         "it discarded (pywasm3 never frees them)", self.project, self.limits.recycle_mb)
                await self._stop()  # the next batch starts a new one
            return results

    async def recover(self) -> int:
        """Carry out what the project's outbox still holds (committed before a crash, not yet
        done); returns how many effects that was."""
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                await self._start()
            await self._send({"op": "outbox", "done": self._done})
            message = await self._receive()
            if message is None:
                raise WorkerDied(await self._death())
            self._done = []
            effects = message.get("effects") or []
            await self._carry_out(effects, [])
            return len(effects)

    async def _carry_out(self, committed: list[dict], voided: list[dict]) -> None:
        if not (committed or voided) or self.on_effects is None:
            return
        try:
            await self.on_effects(committed, voided)
        except Exception as e:  # noqa: BLE001 - they stay in the outbox: carried out at the next start
            log.error("project %s: %d effect(s) not carried out (%s); they are kept and tried again at "
                      "the next start", self.project, len(committed) + len(voided), e)
            return
        self._done += [e["id"] for e in committed]

    def _died(self, event: AppletEvent, why: WorkerDied) -> AppletResult:
        """The event killed its worker: the worker could not log it, so we do."""
        if self.log_path is not None:
            line = {"t": time.time(), "event": event.meta.event_id, "applet": event.applet or "?",
                    "level": "error", "msg": f"{event.handler} failed: {why}"}
            try:
                with open_private(self.log_path, "a") as f:
                    f.write(json.dumps(line) + "\n")
            except OSError:
                pass
        return AppletResult(event.id, -1, str(why))

    async def configure(self, *, schema: list[str] | None = None, env: dict[str, str] | None = None,
                        reuse: bool | None = None) -> None:
        """Apply a redeployed project's schema, env and instance policy; the worker rebuilds
        instances lazily."""
        async with self._lock:
            if reuse is not None:
                self.reuse = reuse
            if schema is not None:
                self.schema = list(schema)
            if env is not None:
                self.env = dict(env)
            if self._proc is not None:
                await self._send(self._project_message())

    async def close(self) -> None:
        async with self._lock:
            if self._done and self._proc is not None and self._proc.returncode is None:
                await self._send({"op": "outbox", "done": self._done})  # committed before it exits
                if await self._receive() is not None:
                    self._done = []
            await self._stop()

    # -- internals ---------------------------------------------------------------------------------

    async def _start(self) -> None:
        stderr = open_private(self.stderr_path, "ab") if self.stderr_path else asyncio.subprocess.DEVNULL
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.applets.worker", "--modules", str(self.modules_dir),
                "--time-limit", str(self.limits.time_s), "--max-pages", str(self.limits.max_pages),
                "--recycle-events", str(self.limits.recycle_events),
                "--address-space-mb", str(self.limits.address_space_mb),
                "--recycle-mb", str(self.limits.recycle_mb),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr)
        finally:
            if self.stderr_path:
                stderr.close()
        await self._send(self._project_message())

    def _project_message(self) -> dict:
        return {"op": "project", "state": str(self.state_path), "schema": self.schema, "env": self.env,
                "log": str(self.log_path) if self.log_path else None, "reuse": self.reuse}

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()

    async def _send(self, message: dict) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        try:
            self._proc.stdin.write(struct.pack(">I", len(body)) + body)
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the read that follows reports the death

    async def _receive(self) -> dict | None:
        try:
            head = await self._proc.stdout.readexactly(4)
            body = await self._proc.stdout.readexactly(struct.unpack(">I", head)[0])
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None
        return json.loads(body)

    async def _run_batch(self, events: list[AppletEvent], cursor: tuple[str, int] | None) -> list[AppletResult]:
        if self._proc is None or self._proc.returncode is not None:
            await self._start()
        done = list(self._done)
        await self._send({"op": "run", "cursor": list(cursor) if cursor else None, "done": done, "events": [
            {"id": e.id, "module": e.module, "handler": e.handler, "applet": e.applet,
             "payload": base64.b64encode(e.payload).decode(), "meta": e.meta.__dict__} for e in events]})
        # the worker's own timer stops an event; this only guards against a worker stuck elsewhere
        deadline = asyncio.get_running_loop().time() + len(events) * self.limits.time_s + 10
        calls: dict[str, int] = {}
        while True:
            try:
                message = await asyncio.wait_for(self._receive(),
                                                 max(0.1, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                self._proc.kill()
                message = None
            if message is None:
                raise WorkerDied(await self._death())
            if message["op"] == "call":
                n = calls[message["event"]] = calls.get(message["event"], 0) + 1
                await self._send(await self._answer(message, (message["event"], n)))
                continue
            self._done = self._done[len(done):]  # committed with this batch
            self._recycle = self._recycle or bool(message.get("recycle"))
            self.resident_mb = message.get("resident_mb", 0.0)
            self.peak_mb = max(self.peak_mb, message.get("peak_mb", 0.0))
            return [AppletResult(r["id"], r["code"], r["error"],
                                 base64.b64decode(r["return"]) if r["return"] is not None else None,
                                 r["effects"], r["metrics"], r["ms"])
                    for r in message["results"]]

    async def _answer(self, message: dict, cache_key: tuple[str, int]) -> dict:
        """The reply to a host call; the same one when an event runs again after a crash."""
        if cache_key in self._call_cache:
            return self._call_cache[cache_key]
        if self.host_call is None:
            return {"op": "reply", "error": f"no chain is configured for {message['fn']}"}
        try:
            value = await self.host_call(message["fn"], {**message["args"], "event": message.get("event"),
                                                         "project": self.project})
        except Exception as e:  # noqa: BLE001 - any failure becomes the guest's error code
            return {"op": "reply", "error": str(e) or type(e).__name__}
        reply = {"op": "reply", "value": value}
        if isinstance(value, HostAnswer):
            reply = {"op": "reply", "value": value.value, **({"effect": value.effect} if value.effect else {})}
            if value.effect and value.effect.get("kind") == "tx":
                self._held.append(value.effect)
        self._call_cache[cache_key] = reply
        return reply

    async def _death(self) -> str:
        proc = self._proc
        code = await proc.wait()
        self._proc = None
        self.restarts += 1
        if code == -signal.SIGALRM:
            return f"time limit: the event ran longer than {self.limits.time_s:g} s and was stopped"
        if code == -signal.SIGKILL:
            return "the worker was killed (stuck, or out of memory)"
        if code < 0:
            return f"the worker crashed ({signal.Signals(-code).name})"
        return f"the worker exited with code {code}"
