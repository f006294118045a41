"""An applet worker: a process that runs one project's applets, so no applet can stall or kill
the gateway.

Why a process: a running wasm3 call holds the GIL and has no memory cap, so a spinning applet
would freeze the node and a growing one could take all memory. Here each event runs under a
real-time interval timer whose signal has no Python handler: the kernel ends the process when the
event overruns its limit, whatever wasm3 is doing. pywasm3 (0.5) never frees a runtime: every
instance a worker discards keeps its linear memory until the process ends. So a worker that
discarded instances reports ``recycle`` once its resident memory passes ``--recycle-mb``, and the
gateway replaces it after that batch. Memory is capped while the guest runs: each
module is loaded with its memory maximum lowered to ``--max-pages`` (``module.cap_memory``), so a
``memory.grow`` past it returns -1 inside the guest. A guest that copes with the -1 gets its own
result; one that then traps or aborts in the same event gets code -1 and an error starting
``memory limit:`` (``abi.MemoryLimit``), as an overrun gets ``time limit:``. ``RLIMIT_AS`` stays
as a backstop for the host's own allocations.

Every event sees its module as freshly instantiated, as on W3bstream: the instance is restored
to the snapshot taken right after instantiation (linear memory and mutable globals), or built
again when its memory grew. A project may opt in to reuse (``instances = "reuse"``): memory then
carries over between events, and an instance that served ``recycle_events`` events (the
AssemblyScript SDK leaks) is rebuilt before the next.

Protocol on stdin/stdout: frames of a u32be length and a JSON object.
    parent → worker  {"op": "project", "state": path, "schema": [...], "env": {...}, "reuse": bool}
                     {"op": "run", "events": [{"id", "module", "handler", "payload" (b64), "meta"}],
                      "cursor": [name, value] | null,  (committed with the batch's state)
                      "done": [effect ids]}  (carried out: dropped from the outbox with the batch)
                     {"op": "reply", "value": ..., "error": ..., "effect": {...} | absent}
                                                                   (answer to a "call")
                     {"op": "outbox", "done": [effect ids]}  (commit those, then list the rest)
    worker → parent  {"op": "call", "fn": "send_tx" | "call_contract" | "api_call", "args": {...},
                      "event": id}
                     {"op": "done", "results": [...], "memory_pages": {...}}
                     {"op": "outbox", "effects": [...]}
Each result: {"id", "code", "error", "return" (b64 or null), "effects": [...], "metrics": [...],
"ms"}. An effect is what the event asks of the world outside its state, to be carried out by the
gateway after the commit: {"id", "kind": "mqtt", "topic", "payload" (b64)} or {"id", "kind":
"tx", "hash", "operator"} (a transaction the gateway signed and holds). State changes and effects
of a batch are committed together (effects in the project's outbox) before "done"; an event that
fails leaves neither. What applets log, and their failures, the worker appends to the project's
log itself (JSON lines ``{"t", "event", "applet", "level", "msg"}``): that work stays off the
gateway's event loop and runs in parallel across projects.
"""
from __future__ import annotations

import base64
import json
import os
import resource
import signal
import struct
import sys
import time
from pathlib import Path

from gateway.applets.abi import AppletInstance, EventMeta, GuestAbort, HostError, MemoryLimit
from gateway.applets.module import ModuleError
from gateway.applets.state import ProjectState
from gateway.layout import module_file
from gateway.storage import open_private


def read_frame(stream) -> dict | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    body = stream.read(n)
    return json.loads(body) if len(body) == n else None


def write_frame(stream, message: dict) -> None:
    body = json.dumps(message, separators=(",", ":")).encode()
    stream.write(struct.pack(">I", len(body)) + body)
    stream.flush()


class _EventHost:
    """The ``Host`` the ABI calls during one event: state here, chain calls via the parent."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self.logs: list[list[str]] = []
        self.effects: list[dict] = []  # carried out by the gateway once the event is committed
        self.metrics: list[dict] = []

    def log(self, level: str, message: str) -> None:
        self.logs.append([level, message])

    def kv_get(self, key: str) -> bytes | None:
        return self.worker.state.kv_get(key)

    def kv_set(self, key: str, value: bytes) -> None:
        self.worker.state.kv_set(key, value)

    def sql_exec(self, request: bytes) -> None:
        self.worker.state.sql_exec(request)

    def sql_query(self, request: bytes) -> bytes:
        return self.worker.state.sql_query(request)

    def env(self, key: str) -> str | None:
        return self.worker.env.get(key)

    def send_mqtt(self, topic: str, payload: bytes) -> None:
        self.effects.append({"kind": "mqtt", "topic": topic, "payload": base64.b64encode(payload).decode()})

    def submit_metrics(self, metrics: dict) -> None:
        self.metrics.append(metrics)

    def send_tx(self, chain_id: int, request: dict, operator: str | None) -> str:
        return str(self.worker.call_parent("send_tx", {"chain_id": chain_id, "request": request,
                                                       "operator": operator}))

    def call_contract(self, chain_id: int, request: dict) -> bytes:
        return bytes.fromhex(str(self.worker.call_parent("call_contract",
                                                         {"chain_id": chain_id, "request": request})))

    def api_call(self, request: dict) -> dict:
        return self.worker.call_parent("api_call", {"request": request})


LOG_ROTATE_BYTES = 5 << 20


class Worker:
    def __init__(self, stdin, stdout, *, time_limit_s: float, max_pages: int, recycle_events: int,
                 modules_dir: Path, recycle_mb: int = 96) -> None:
        self.stdin, self.stdout = stdin, stdout
        self.time_limit_s = time_limit_s
        self.max_pages = max_pages
        self.recycle_events = recycle_events
        self.recycle_mb = recycle_mb
        self.discarded = 0  # instances let go of: their memory stays with the process (pywasm3)
        self.modules_dir = modules_dir
        self.state: ProjectState | None = None
        self.env: dict[str, str] = {}
        self.log_path: Path | None = None
        self._instances: dict[str, AppletInstance] = {}
        self.reuse = False  # the project's opt-in: instances keep their memory across events
        self._host: _EventHost | None = None
        self._event_id = ""

    def serve(self) -> None:
        while True:
            message = read_frame(self.stdin)
            if message is None:
                break
            if message["op"] == "project":
                self._project(message)
            elif message["op"] == "outbox":
                self.state.effects_done(message.get("done") or [])
                self.state.commit_batch()
                write_frame(self.stdout, {"op": "outbox", "effects": self.state.pending_effects()})
            elif message["op"] == "run":
                self.state.effects_done(message.get("done") or [])
                lines: list[str] = []
                results = [self._run(event, lines) for event in message["events"]]
                self._append_log(lines)
                if message.get("cursor"):
                    name, value = message["cursor"]
                    self.state.set_cursor(name, value)
                self.state.commit_batch()
                pages = {sha: inst.memory_pages for sha, inst in self._instances.items()}
                resident, peak = _memory_mb()
                write_frame(self.stdout, {"op": "done", "results": results, "memory_pages": pages,
                                          "resident_mb": resident, "peak_mb": peak,
                                          "recycle": self.discarded > 0 and resident > self.recycle_mb})
        if self.state is not None:
            self.state.commit_batch()
            self.state.close()

    def call_parent(self, fn: str, args: dict):
        """A host call only the gateway can answer (the chain); the event's clock stops meanwhile."""
        remaining = signal.setitimer(signal.ITIMER_REAL, 0)[0]
        try:
            write_frame(self.stdout, {"op": "call", "fn": fn, "args": args, "event": self._event_id})
            reply = read_frame(self.stdin)
        finally:
            signal.setitimer(signal.ITIMER_REAL, remaining or self.time_limit_s)
        if reply is None:
            raise SystemExit(0)  # the gateway went away
        if reply.get("error"):
            raise HostError(reply["error"])
        if reply.get("effect") and self._host is not None:
            self._host.effects.append(reply["effect"])  # e.g. a held transaction: sent after the commit
        return reply.get("value")

    def _project(self, message: dict) -> None:
        if self.state is not None:
            self.state.commit_batch()
            self.state.close()
        self.state = ProjectState(Path(message["state"]), schema=message.get("schema") or [])
        self.env = {str(k): str(v) for k, v in (message.get("env") or {}).items()}
        self.log_path = Path(message["log"]) if message.get("log") else None
        self.reuse = bool(message.get("reuse"))
        self.discarded += len(self._instances)
        self._instances.clear()  # a redeploy may change modules; rebuild lazily

    def _instance(self, sha: str) -> AppletInstance:
        """The module's instance for the next event: as freshly instantiated (W3bstream's rule:
        restored from its snapshot, or built anew when its memory grew), or, for a project that
        opted in to reuse, as the last event left it (rebuilt every ``recycle_events``)."""
        inst = self._instances.get(sha)
        if inst is not None and inst.events:
            if self.reuse:
                if inst.events >= self.recycle_events:
                    inst = None  # leaks end here; state lives in the project, not the instance
            elif not inst.restore():
                inst = None
            self.discarded += inst is None
        if inst is None:
            wasm = module_file(self.modules_dir, sha).read_bytes()
            inst = self._instances[sha] = AppletInstance(wasm, self._host_proxy(), max_pages=self.max_pages)
        return inst

    def _discard(self, sha: str) -> None:
        if self._instances.pop(sha, None) is not None:
            self.discarded += 1

    def _host_proxy(self):
        worker = self

        class Proxy:  # the instance outlives events; each event gets a fresh host record
            def __getattr__(self, name):
                return getattr(worker._host, name)
        return Proxy()

    def _append_log(self, lines: list[str]) -> None:
        if not lines or self.log_path is None:
            return
        try:
            if self.log_path.exists() and self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
            with open_private(self.log_path, "a") as f:
                f.write("".join(lines))
        except OSError:
            pass  # a full disk must not stop the applets; the results still carry the errors

    def _run(self, event: dict, lines: list[str]) -> dict:
        host = self._host = _EventHost(self)
        self._event_id = event["id"]
        meta = EventMeta(**event.get("meta", {}))
        started = time.perf_counter()
        code, error, returned = -1, None, None
        self.state.begin_event()
        try:
            inst = self._instance(event["module"])
            signal.setitimer(signal.ITIMER_REAL, self.time_limit_s)
            try:
                code, returned = inst.call(event["handler"], base64.b64decode(event["payload"]), meta)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except KeyError:  # deploy checks handlers: only a module replaced under a running project
            error = f"func not imported: the applet exports no handler {event['handler']!r}"  # upstream's words
        except MemoryLimit as e:  # a trap or abort after memory.grow was refused at the cap
            error = f"memory limit: {e}"
            self._discard(event["module"])
        except GuestAbort as e:
            error = str(e)
            self._discard(event["module"])
        except (RuntimeError, MemoryError) as e:  # a wasm3 trap, or allocation refused by RLIMIT_AS
            error = f"trap: {e}"
            self._discard(event["module"])  # its memory and stack may be inconsistent
        except (OSError, ValueError, ModuleError) as e:
            error = f"the applet could not be loaded: {e}"
        self.state.end_event(keep=error is None)
        if error is None and host.effects:
            for n, effect in enumerate(host.effects):
                effect["id"] = f"{event['id']}/{n}"
            self.state.add_effects(host.effects)
        if host.logs or error is not None:
            head = f'{{"t": {time.time()}, "event": {json.dumps(meta.event_id)}, ' \
                   f'"applet": {json.dumps(event.get("applet", "?"))}, "level": '
            for level, message in host.logs:  # the same JSON as json.dumps of the dict, made cheaply
                lines.append(f'{head}"{level}", "msg": {json.dumps(message)}}}\n')
            if error is not None:
                lines.append(f'{head}"error", "msg": {json.dumps(event["handler"] + " failed: " + error)}}}\n')
        return {"id": event["id"], "code": code, "error": error,
                "return": base64.b64encode(returned).decode() if returned is not None else None,
                "effects": host.effects if error is None else [],
                "metrics": host.metrics, "ms": round((time.perf_counter() - started) * 1000, 3)}


def _memory_mb() -> tuple[float, float]:
    """This process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
        return tuple(round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM"))
    except (OSError, ValueError, KeyError):
        return 0.0, 0.0


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--modules", required=True)
    parser.add_argument("--time-limit", type=float, default=1.0)
    parser.add_argument("--max-pages", type=int, default=1024)
    parser.add_argument("--recycle-events", type=int, default=10_000)
    parser.add_argument("--address-space-mb", type=int, default=0)
    parser.add_argument("--recycle-mb", type=int, default=96)
    args = parser.parse_args()
    # Ctrl-C reaches the whole process group; the gateway ends its workers (closing their input)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # an overrunning event ends the process
    if args.address_space_mb:
        limit = args.address_space_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    Worker(sys.stdin.buffer, sys.stdout.buffer, time_limit_s=args.time_limit, max_pages=args.max_pages,
           recycle_events=args.recycle_events, modules_dir=Path(args.modules), recycle_mb=args.recycle_mb).serve()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
