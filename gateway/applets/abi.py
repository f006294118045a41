"""The W3bstream v1 host ABI on wasm3: what an applet may import, with v1's signatures, result
codes and ``alloc`` protocol (docs/w3bstream-abi.md), so applets built with the
public SDKs run unchanged.

Beyond v1, without breaking it:
- ``ws_get_event_type(rid, out_ptr_ptr, out_len_ptr)`` (the rc54 signature v1 never linked) and
  ``ws_get_event_meta(rid, out_ptr_ptr, out_len_ptr)``, JSON ``{eventType, eventID, publisher,
  timestamp, trust}``, so an applet can tell who sent what, when, and whether a secure element
  signed it;
- a handler may hand back a value by ``ws_set_data`` on its own event ``rid``; it is surfaced as
  the result's ``returnValue`` (always null upstream).

``AppletInstance`` is one module in one wasm3 runtime. Host functions read guest memory in place
and return data through the guest's ``alloc`` export; guest memory is re-read after every call
into the guest, since growth may move it. What the host does with the data lives behind ``Host``.
"""
from __future__ import annotations

import json
import os
import struct
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Protocol

import wasm3

from gateway.applets.module import GROW_REFUSALS, ModuleError, ModuleInfo, inspect, runnable

# result codes of v1 (pkg/types/wasm/enums.go)
OK = 0
UNEXPORTED_HANDLER = 1
RESOURCE_NOT_FOUND = 2
IMPORT_NOT_FOUND = 3
IMPORT_CALL_FAILED = 4
TRANS_DATA_TO_VM_FAILED = 5
TRANS_DATA_FROM_VM_FAILED = 6
HOST_INTERNAL = 7
ENV_KEY_NOT_FOUND = 8
NO_DB_CONTEXT = 9
PARAM_ILLEGAL = 10
FAILED = -1

LOG_MAX_CHARS = 1024  # upstream cuts wasm log lines here
LOG_LEVELS = {0: "trace", 1: "trace", 2: "error", 3: "warn", 4: "info", 5: "debug", 6: "trace"}


class HostError(Exception):
    """A host service failed; the guest sees the function's failure code, the log the reason."""


class GuestAbort(Exception):
    """The guest called ``abort`` (AssemblyScript) or ``proc_exit`` (WASI): the event ends here."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class MemoryLimit(Exception):
    """The guest trapped or aborted after its memory could not grow: a ``memory.grow`` of the
    same call was refused at the cap, so a failed allocation is the likely cause."""

    def __init__(self, cap_pages: int, cause: Exception) -> None:
        what = str(cause) if isinstance(cause, GuestAbort) else f"trap: {cause}"
        super().__init__(f"memory.grow past the cap of {cap_pages} pages ({cap_pages / 16:g} MiB) was "
                         f"refused, then the applet failed: {what}")
        self.cause = cause


class Host(Protocol):
    """The services behind the ABI, supplied per project by whoever runs the instance."""

    def log(self, level: str, message: str) -> None: ...
    def kv_get(self, key: str) -> bytes | None: ...
    def kv_set(self, key: str, value: bytes) -> None: ...
    def sql_exec(self, request: bytes) -> None: ...  # raises HostError; NoDatabase when none
    def sql_query(self, request: bytes) -> bytes: ...
    def env(self, key: str) -> str | None: ...
    def send_tx(self, chain_id: int, request: dict, operator: str | None) -> str: ...
    def call_contract(self, chain_id: int, request: dict) -> bytes: ...
    def send_mqtt(self, topic: str, payload: bytes) -> None: ...
    def api_call(self, request: dict) -> dict: ...
    def submit_metrics(self, metrics: dict) -> None: ...


class NoDatabase(HostError):
    """The project declares no SQL database (code 9)."""


@dataclass(frozen=True)
class EventMeta:
    event_type: str = "DEFAULT"
    event_id: str = ""
    publisher: str = ""
    timestamp_ms: int = 0
    trust: str = ""


@dataclass
class _Resource:
    payload: bytes
    meta: EventMeta
    returned: bytes | None = None


# name -> (module, pywasm3 signature); the WASI preview1 subset TinyGo applets import is below
HOST_FUNCTIONS: dict[tuple[str, str], str] = {
    ("env", "ws_log"): "i(iii)",
    ("env", "ws_get_data"): "i(iii)",
    ("env", "ws_set_data"): "i(iii)",
    ("env", "ws_get_db"): "i(iiii)",
    ("env", "ws_set_db"): "i(iiii)",
    ("env", "ws_set_sql_db"): "i(ii)",
    ("env", "ws_get_sql_db"): "i(iiii)",
    ("env", "ws_send_tx"): "i(iiiii)",
    ("env", "ws_send_tx_with_operator"): "i(iiiii)",
    ("env", "ws_call_contract"): "i(iiiii)",
    ("env", "ws_get_env"): "i(iiii)",
    ("env", "ws_send_mqtt_msg"): "i(iiii)",
    ("env", "ws_api_call"): "i(iiii)",
    ("stat", "ws_submit_metrics"): "i(ii)",
    ("env", "ws_get_event_type"): "i(iii)",
    ("env", "ws_get_event_meta"): "i(iii)",
    ("env", "abort"): "v(iiii)",
    ("env", "trace"): "v(iiFFFFF)",
    ("env", "seed"): "F()",
    ("wasi_snapshot_preview1", "fd_write"): "i(iiii)",
    ("wasi_snapshot_preview1", "args_sizes_get"): "i(ii)",
    ("wasi_snapshot_preview1", "args_get"): "i(ii)",
    ("wasi_snapshot_preview1", "environ_sizes_get"): "i(ii)",
    ("wasi_snapshot_preview1", "environ_get"): "i(ii)",
    ("wasi_snapshot_preview1", "clock_time_get"): "i(iIi)",
    ("wasi_snapshot_preview1", "random_get"): "i(ii)",
    ("wasi_snapshot_preview1", "sched_yield"): "i()",
    ("wasi_snapshot_preview1", "proc_exit"): "v(i)",
    ("wasi_snapshot_preview1", "fd_read"): "i(iiii)",
    ("wasi_snapshot_preview1", "fd_close"): "i(i)",
    ("wasi_snapshot_preview1", "fd_fdstat_get"): "i(ii)",
    ("wasi_snapshot_preview1", "fd_filestat_get"): "i(ii)",
    ("wasi_snapshot_preview1", "fd_seek"): "i(iIii)",
    ("wasi_snapshot_preview1", "fd_tell"): "i(ii)",
    ("wasi_snapshot_preview1", "clock_res_get"): "i(ii)",
    ("wasi_snapshot_preview1", "poll_oneoff"): "i(iiii)",
    ("wasi_snapshot_preview1", "proc_raise"): "i(i)",
}

# The rest of WASI preview1: what would reach a file system or the network. The sandbox has no
# preopened directory and no socket, as a WASI runtime configured with none (W3bstream's) has:
# these answer as such a runtime does: a file descriptor that does not exist (EBADF), or, on
# standard input and output, an operation they do not support. The first parameter is the fd
# (path_symlink's is its third).
WASI_ERRNO_BADF, WASI_ERRNO_INVAL, WASI_ERRNO_NOSYS, WASI_ERRNO_NOTDIR = 8, 28, 52, 54
WASI_ERRNO_NOTSOCK, WASI_ERRNO_SPIPE, WASI_ERRNO_NOTCAPABLE = 57, 70, 76
WASI_SANDBOXED: dict[str, tuple[str, int]] = {  # name -> (signature, errno on stdio)
    "fd_advise": ("i(iIIi)", WASI_ERRNO_SPIPE), "fd_allocate": ("i(iII)", WASI_ERRNO_NOTCAPABLE),
    "fd_datasync": ("i(i)", WASI_ERRNO_INVAL), "fd_sync": ("i(i)", WASI_ERRNO_INVAL),
    "fd_fdstat_set_flags": ("i(ii)", WASI_ERRNO_NOTCAPABLE), "fd_fdstat_set_rights": ("i(iII)", WASI_ERRNO_NOTCAPABLE),
    "fd_filestat_set_size": ("i(iI)", WASI_ERRNO_NOTCAPABLE), "fd_filestat_set_times": ("i(iIIi)", WASI_ERRNO_NOTCAPABLE),
    "fd_pread": ("i(iiiIi)", WASI_ERRNO_SPIPE), "fd_pwrite": ("i(iiiIi)", WASI_ERRNO_SPIPE),
    "fd_readdir": ("i(iiiIi)", WASI_ERRNO_NOTDIR), "fd_renumber": ("i(ii)", WASI_ERRNO_NOTCAPABLE),
    "fd_prestat_get": ("i(ii)", WASI_ERRNO_BADF), "fd_prestat_dir_name": ("i(iii)", WASI_ERRNO_BADF),
    "path_create_directory": ("i(iii)", WASI_ERRNO_NOTDIR), "path_filestat_get": ("i(iiiii)", WASI_ERRNO_NOTDIR),
    "path_filestat_set_times": ("i(iiiiIIi)", WASI_ERRNO_NOTDIR), "path_link": ("i(iiiiiii)", WASI_ERRNO_NOTDIR),
    "path_open": ("i(iiiiiIIii)", WASI_ERRNO_NOTDIR), "path_readlink": ("i(iiiiii)", WASI_ERRNO_NOTDIR),
    "path_remove_directory": ("i(iii)", WASI_ERRNO_NOTDIR), "path_rename": ("i(iiiiii)", WASI_ERRNO_NOTDIR),
    "path_symlink": ("i(iiiii)", WASI_ERRNO_NOTDIR), "path_unlink_file": ("i(iii)", WASI_ERRNO_NOTDIR),
    "sock_accept": ("i(iii)", WASI_ERRNO_NOTSOCK), "sock_recv": ("i(iiiiii)", WASI_ERRNO_NOTSOCK),
    "sock_send": ("i(iiiii)", WASI_ERRNO_NOTSOCK), "sock_shutdown": ("i(ii)", WASI_ERRNO_NOTSOCK),
}
HOST_FUNCTIONS.update({("wasi_snapshot_preview1", name): sig for name, (sig, _) in WASI_SANDBOXED.items()})
STDIO = (0, 1, 2)


def _sandboxed(name: str, on_stdio: int):
    fd_at = 2 if name == "path_symlink" else 0

    def refuse(*args) -> int:
        return on_stdio if args[fd_at] in STDIO else WASI_ERRNO_BADF
    refuse.__name__ = f"_{name}"
    return refuse


def _weak_method(instance: object, name: str) -> Callable:
    """``instance.name`` for wasm3 to call, without keeping the instance alive: pywasm3 keeps a
    linked function for the life of the process, so a bound method would keep every instance a
    worker ever built (and its linear memory) in memory."""
    ref = weakref.ref(instance)

    def call(*args):
        return getattr(ref(), name)(*args)
    call.__name__ = name
    return call


def check_module(info: ModuleInfo, *, max_memory_pages: int | None = None) -> None:
    """Refuse, naming every reason, what this host cannot run: unknown imports, imports with a
    signature other than the ABI's, no memory export."""
    problems = []
    unknown = [i.qualified for i in info.imports
               if i.kind == "func" and (i.module, i.name) not in HOST_FUNCTIONS]
    if unknown:
        problems.append(f"imports functions this host does not provide: {', '.join(unknown)}")
    wrong = [f"{i.qualified} {i.signature} (expected {HOST_FUNCTIONS[(i.module, i.name)]})"
             for i in info.imports
             if i.kind == "func" and (i.module, i.name) in HOST_FUNCTIONS
             and i.signature != HOST_FUNCTIONS[(i.module, i.name)]]
    if wrong:
        problems.append(f"imports with the wrong signature: {', '.join(wrong)}")
    others = [f"{i.qualified} ({i.kind})" for i in info.imports if i.kind != "func"]
    if others:
        problems.append(f"imports that are not functions: {', '.join(others)}")
    if info.exports.get("memory") != "memory":
        problems.append("exports no memory")
    if max_memory_pages is not None and info.memory_min_pages > max_memory_pages:
        problems.append(f"needs {info.memory_min_pages} memory pages at start, the limit is {max_memory_pages}")
    if problems:
        raise ModuleError("; ".join(problems))


class AppletInstance:
    """One applet module instantiated in its own wasm3 runtime, the ABI linked to ``host``."""

    def __init__(self, wasm: bytes, host: Host, *, max_pages: int | None = None,
                 stack_bytes: int = 256 * 1024, clock: Callable[[], float] = time.time) -> None:
        """``max_pages`` caps linear memory during execution: the module's declared maximum is
        lowered to it, so a ``memory.grow`` past it returns -1 in the guest (``ModuleError`` if
        the module cannot be capped, e.g. it needs more pages at start)."""
        self.info = inspect(wasm)
        check_module(self.info, max_memory_pages=max_pages)
        wasm, watched, global_names = runnable(wasm, max_pages)
        # the most pages this instance can ever have (wasm3 reads a missing maximum as 65536)
        self.memory_cap = min(p for p in (self.info.memory_max_pages, max_pages, 65536) if p is not None)
        self.host = host
        self.clock = clock
        self.events = 0
        self._resources: dict[int, _Resource] = {}
        env = wasm3.Environment()
        self._runtime = env.new_runtime(stack_bytes)
        self._module = env.parse_module(wasm)
        self._runtime.load(self._module)  # runs the start section (AssemblyScript's top level)
        self._env = env  # keep the environment alive with its runtime
        for imp in self.info.imports:
            sandboxed = WASI_SANDBOXED.get(imp.name) if imp.module == "wasi_snapshot_preview1" else None
            fn = _sandboxed(imp.name, sandboxed[1]) if sandboxed else _weak_method(self, f"_{imp.name}")
            self._module.link_function(imp.module, imp.name, HOST_FUNCTIONS[(imp.module, imp.name)], fn)
        self._alloc_trap: Exception | None = None  # the guest's alloc trapped while the host handed it data
        self._alloc = self._find("alloc")
        self._handlers: dict[str, object] = {}
        self._refusals = (lambda: self._module.get_global(GROW_REFUSALS)) if watched else (lambda: 0)
        # the state right after instantiation, to start every event from (``restore``)
        self._globals0 = [(name, self._module.get_global(name)) for name in global_names]
        self._memory0 = bytes(self._runtime.get_memory(0))

    def restore(self) -> bool:
        """Put the instance back as it was right after instantiation (linear memory and every
        mutable global), as if the module had just been instantiated, which is what W3bstream
        does for each event. False when memory grew since: it cannot shrink, so the caller builds
        a new instance. (A memcpy of the initial memory: microseconds, against milliseconds to
        parse and instantiate again.)"""
        memory = self._runtime.get_memory(0)
        if len(memory) != len(self._memory0):
            return False
        memory[:] = self._memory0
        for name, value in self._globals0:
            self._module.set_global(name, value)
        return True

    # -- the embedder's side ---------------------------------------------------------------------

    def handlers(self) -> list[str]:
        return [name for name, kind in self.info.exports.items() if kind == "func"]

    def call(self, handler: str, payload: bytes, meta: EventMeta = EventMeta(), *,
             rid: int | None = None) -> tuple[int, bytes | None]:
        """Run ``handler(rid)`` on ``payload``: (the handler's i32, what it set on its rid).

        Raises ``KeyError`` for a handler the module does not export, ``GuestAbort`` when the
        guest aborts or exits, ``RuntimeError`` for a trap (wasm3's message), ``MemoryLimit``
        for either of those after a ``memory.grow`` of this call was refused."""
        fn = self._handlers.get(handler)
        if fn is None:
            if self.info.exports.get(handler) != "func":
                raise KeyError(handler)
            fn = self._handlers[handler] = self._runtime.find_function(handler)
        rid = rid if rid is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        resource = self._resources[rid] = _Resource(payload, meta)
        self.events += 1
        refusals = self._refusals()
        self._alloc_trap = None
        try:
            code = fn(rid)
        except (RuntimeError, GuestAbort) as e:
            if self._refusals() > refusals:
                raise MemoryLimit(self.memory_cap, e) from e
            raise
        finally:
            del self._resources[rid]
        if self._alloc_trap is not None and self._refusals() > refusals:
            # the guest could not take data the host handed it (a payload, a KV value) because its
            # memory reached the cap: whatever the handler made of the failed copy, the event failed
            raise MemoryLimit(self.memory_cap, self._alloc_trap)
        return _i32(code), resource.returned

    @property
    def memory_pages(self) -> int:
        return len(self._runtime.get_memory(0)) // 65536

    # -- memory and the alloc protocol -----------------------------------------------------------

    def _find(self, name: str):
        if self.info.exports.get(name) != "func":
            return None
        return self._runtime.find_function(name)

    def _read(self, ptr: int, length: int) -> bytes | None:
        mem = self._runtime.get_memory(0)
        if ptr < 0 or length < 0 or ptr + length > len(mem):
            return None
        return bytes(mem[ptr:ptr + length])

    def _read_str(self, ptr: int, length: int) -> str | None:
        raw = self._read(ptr, length)
        return None if raw is None else raw.decode("utf-8", "replace")

    def _put(self, data: bytes, out_ptr_ptr: int, out_len_ptr: int) -> int:
        """v1's ``Runtime.Copy``: alloc in the guest, copy, write address and length."""
        if self._alloc is None:
            return TRANS_DATA_TO_VM_FAILED
        try:
            ptr = _u32(self._alloc(len(data)))
        except Exception as e:  # noqa: BLE001 - a trap inside the guest's alloc
            self._alloc_trap = e  # ``call`` makes it the event's failure if memory hit the cap
            return TRANS_DATA_TO_VM_FAILED
        mem = self._runtime.get_memory(0)  # alloc may have grown (and moved) memory
        size = len(mem)
        if ptr + len(data) > size or not (0 <= out_ptr_ptr <= size - 4 and 0 <= out_len_ptr <= size - 4):
            return TRANS_DATA_TO_VM_FAILED
        mem[ptr:ptr + len(data)] = data
        mem[out_ptr_ptr:out_ptr_ptr + 4] = struct.pack("<I", ptr)
        mem[out_len_ptr:out_len_ptr + 4] = struct.pack("<I", len(data))
        return OK

    def _log(self, level: str, message: str) -> None:
        self.host.log(level, message[:LOG_MAX_CHARS])

    # -- env: the v1 host functions --------------------------------------------------------------

    def _ws_log(self, level: int, ptr: int, length: int) -> int:
        message = self._read_str(ptr, length)
        if message is None:
            return FAILED
        self._log(LOG_LEVELS.get(level, "trace"), message)
        return OK

    def _ws_get_data(self, rid: int, out_ptr_ptr: int, out_len_ptr: int) -> int:
        resource = self._resources.get(rid)
        if resource is None:
            return RESOURCE_NOT_FOUND
        return self._put(resource.payload, out_ptr_ptr, out_len_ptr)

    def _ws_set_data(self, rid: int, ptr: int, length: int) -> int:
        data = self._read(ptr, length)
        if data is None:
            return TRANS_DATA_TO_VM_FAILED
        resource = self._resources.get(rid)
        if resource is None:  # flow operators may make new resources
            self._resources[rid] = resource = _Resource(b"", EventMeta())
        resource.returned = data
        return OK

    def _ws_get_db(self, key_ptr: int, key_len: int, out_ptr_ptr: int, out_len_ptr: int) -> int:
        key = self._read_str(key_ptr, key_len)
        if key is None:
            return RESOURCE_NOT_FOUND
        try:
            value = self.host.kv_get(key)
        except HostError as e:
            self._log("error", f"host.GetDB {key}: {e}")
            return FAILED
        if value is None:
            return RESOURCE_NOT_FOUND
        return self._put(value, out_ptr_ptr, out_len_ptr)

    def _ws_set_db(self, key_ptr: int, key_len: int, val_ptr: int, val_len: int) -> int:
        key, value = self._read_str(key_ptr, key_len), self._read(val_ptr, val_len)
        if key is None or value is None:
            return RESOURCE_NOT_FOUND
        try:
            self.host.kv_set(key, value)
        except HostError as e:
            self._log("error", f"host.SetDB {key}: {e}")
            return FAILED
        return OK

    def _ws_set_sql_db(self, ptr: int, length: int) -> int:
        request = self._read(ptr, length)
        if request is None:
            return RESOURCE_NOT_FOUND
        try:
            self.host.sql_exec(request)
        except NoDatabase:
            return NO_DB_CONTEXT
        except HostError as e:
            self._log("error", f"sql: {e}")
            return FAILED
        return OK

    def _ws_get_sql_db(self, ptr: int, length: int, out_ptr_ptr: int, out_len_ptr: int) -> int:
        request = self._read(ptr, length)
        if request is None:
            return RESOURCE_NOT_FOUND
        try:
            result = self.host.sql_query(request)
        except NoDatabase:
            return NO_DB_CONTEXT
        except HostError as e:
            self._log("error", f"sql: {e}")
            return FAILED
        return self._put(result, out_ptr_ptr, out_len_ptr)

    def _tx_request(self, ptr: int, length: int) -> dict | None:
        raw = self._read(ptr, length)
        try:
            request = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        return request if isinstance(request, dict) else None

    def _ws_send_tx(self, chain_id: int, ptr: int, length: int, out_ptr_ptr: int, out_len_ptr: int,
                    *, with_operator: bool = False) -> int:
        request = self._tx_request(ptr, length)
        if request is None:
            self._log("error", "send tx: the request is not a JSON object")
            return FAILED
        operator = (str(request.get("operatorName") or "") or None) if with_operator else None
        try:
            tx_hash = self.host.send_tx(chain_id, request, operator)
        except HostError as e:
            self._log("error", f"send tx: {e}")
            return FAILED
        return OK if self._put(tx_hash.encode(), out_ptr_ptr, out_len_ptr) == OK else FAILED

    def _ws_send_tx_with_operator(self, chain_id: int, ptr: int, length: int, out_ptr_ptr: int,
                                  out_len_ptr: int) -> int:
        return self._ws_send_tx(chain_id, ptr, length, out_ptr_ptr, out_len_ptr, with_operator=True)

    def _ws_call_contract(self, chain_id: int, ptr: int, length: int, out_ptr_ptr: int, out_len_ptr: int) -> int:
        request = self._tx_request(ptr, length)
        if request is None:
            self._log("error", "call contract: the request is not a JSON object")
            return FAILED
        try:
            result = self.host.call_contract(chain_id, request)
        except HostError as e:
            self._log("error", f"call contract: {e}")
            return FAILED
        return OK if self._put(result, out_ptr_ptr, out_len_ptr) == OK else FAILED

    def _ws_get_env(self, key_ptr: int, key_len: int, out_ptr_ptr: int, out_len_ptr: int) -> int:
        key = self._read_str(key_ptr, key_len)
        if key is None:
            return TRANS_DATA_TO_VM_FAILED
        value = self.host.env(key)
        if value is None:
            return ENV_KEY_NOT_FOUND
        return self._put(value.encode(), out_ptr_ptr, out_len_ptr)

    def _ws_send_mqtt_msg(self, topic_ptr: int, topic_len: int, msg_ptr: int, msg_len: int) -> int:
        topic, payload = self._read_str(topic_ptr, topic_len), self._read(msg_ptr, msg_len)
        if topic is None or payload is None:
            return FAILED
        try:
            self.host.send_mqtt(topic, payload)
        except HostError as e:
            self._log("error", f"send mqtt: {e}")
            return FAILED
        return OK

    def _ws_api_call(self, req_ptr: int, req_len: int, out_ptr_ptr: int, out_len_ptr: int) -> int:
        request = self._tx_request(req_ptr, req_len)
        if request is None:
            return TRANS_DATA_FROM_VM_FAILED
        try:
            response = json.dumps(self.host.api_call(request)).encode()
        except (HostError, TypeError, ValueError) as e:
            self._log("error", f"api call: {e}")
            return HOST_INTERNAL
        return self._put(response, out_ptr_ptr, out_len_ptr)

    def _ws_submit_metrics(self, ptr: int, length: int) -> int:
        raw = self._read(ptr, length)
        try:
            metrics = json.loads(raw) if raw is not None else None
        except ValueError:
            metrics = None
        if not isinstance(metrics, dict):
            return FAILED
        try:
            self.host.submit_metrics(metrics)
        except HostError:
            return FAILED
        return OK

    def _ws_get_event_type(self, rid: int, out_ptr_ptr: int, out_len_ptr: int) -> int:
        resource = self._resources.get(rid)
        if resource is None:
            return RESOURCE_NOT_FOUND
        return self._put(resource.meta.event_type.encode(), out_ptr_ptr, out_len_ptr)

    def _ws_get_event_meta(self, rid: int, out_ptr_ptr: int, out_len_ptr: int) -> int:
        resource = self._resources.get(rid)
        if resource is None:
            return RESOURCE_NOT_FOUND
        m = resource.meta
        meta = {"eventType": m.event_type, "eventID": m.event_id, "publisher": m.publisher,
                "timestamp": m.timestamp_ms, "trust": m.trust}
        return self._put(json.dumps(meta).encode(), out_ptr_ptr, out_len_ptr)

    # -- AssemblyScript runtime ------------------------------------------------------------------

    def _as_string(self, ptr: int) -> str:
        """An AssemblyScript string: UTF-16LE at ``ptr``, its byte length at ``ptr - 4``."""
        if ptr < 4:
            return ""
        head = self._read(ptr - 4, 4)
        if head is None:
            return ""
        raw = self._read(ptr, min(struct.unpack("<I", head)[0], 4 * LOG_MAX_CHARS))
        return raw.decode("utf-16-le", "replace") if raw else ""

    def _abort(self, msg: int, file: int, line: int, col: int) -> None:
        message = f"abort: {self._as_string(msg)} at {self._as_string(file)}:{line}:{col}"
        self._log("error", message)
        raise GuestAbort(message)

    def _trace(self, msg: int, n: int, a0: float, a1: float, a2: float, a3: float, a4: float) -> None:
        args = ", ".join(repr(a) for a in (a0, a1, a2, a3, a4)[:max(0, min(n, 5))])
        self._log("info", f"trace: {self._as_string(msg)} {args}".rstrip())

    def _seed(self) -> float:
        return float(int.from_bytes(os.urandom(6), "little"))

    # -- WASI preview1, as v1 links it: no args, no env, no files ---------------------------------

    def _fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        if fd not in (1, 2):
            return WASI_ERRNO_BADF
        chunks, total = [], 0
        for i in range(iovs_len):
            head = self._read(iovs + 8 * i, 8)
            if head is None:
                return WASI_ERRNO_BADF
            ptr, length = struct.unpack("<II", head)
            data = self._read(ptr, length)
            if data is None:
                return WASI_ERRNO_BADF
            chunks.append(data)
            total += length
        text = b"".join(chunks).decode("utf-8", "replace").rstrip("\n")
        if text:
            self._log("info" if fd == 1 else "error", text)
        return self._write_u32(nwritten_ptr, total)

    def _write_u32(self, ptr: int, value: int) -> int:
        mem = self._runtime.get_memory(0)
        if not 0 <= ptr <= len(mem) - 4:
            return WASI_ERRNO_BADF
        mem[ptr:ptr + 4] = struct.pack("<I", value)
        return 0

    def _args_sizes_get(self, argc_ptr: int, size_ptr: int) -> int:
        return self._write_u32(argc_ptr, 0) or self._write_u32(size_ptr, 0)

    def _args_get(self, argv: int, buf: int) -> int:
        return 0

    _environ_sizes_get = _args_sizes_get
    _environ_get = _args_get

    def _clock_time_get(self, clock_id: int, precision: int, out_ptr: int) -> int:
        mem = self._runtime.get_memory(0)
        if not 0 <= out_ptr <= len(mem) - 8:
            return WASI_ERRNO_BADF
        now = time.monotonic_ns() if clock_id == 1 else int(self.clock() * 1e9)
        mem[out_ptr:out_ptr + 8] = struct.pack("<Q", now)
        return 0

    def _random_get(self, ptr: int, length: int) -> int:
        mem = self._runtime.get_memory(0)
        if ptr < 0 or length < 0 or ptr + length > len(mem):
            return WASI_ERRNO_BADF
        mem[ptr:ptr + length] = os.urandom(length)
        return 0

    def _sched_yield(self) -> int:
        return 0

    def _proc_exit(self, code: int) -> None:
        raise GuestAbort(f"proc_exit({code})", code=code)

    def _fd_read(self, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        """Standard input is empty (end of file at once); nothing else can be read."""
        return self._write_u32(nread_ptr, 0) if fd == 0 else WASI_ERRNO_BADF

    def _fd_close(self, fd: int) -> int:
        return 0 if fd in STDIO else WASI_ERRNO_BADF

    def _fd_fdstat_get(self, fd: int, out_ptr: int) -> int:
        """stdio: character devices, stdin readable, stdout and stderr writable (rights bits 1, 6)."""
        if fd not in STDIO:
            return WASI_ERRNO_BADF
        rights = (1 << 1) if fd == 0 else (1 << 6)
        return self._write(out_ptr, struct.pack("<BxHxxxxQQ", 2, 0, rights, 0))

    def _fd_filestat_get(self, fd: int, out_ptr: int) -> int:
        if fd not in STDIO:
            return WASI_ERRNO_BADF
        # dev, ino, filetype (2: character device), nlink, size, atim, mtim, ctim: 64 bytes
        return self._write(out_ptr, struct.pack("<QQBxxxxxxxQQQQQ", 0, 0, 2, 1, 0, 0, 0, 0))

    def _fd_seek(self, fd: int, offset: int, whence: int, out_ptr: int) -> int:
        return WASI_ERRNO_SPIPE if fd in STDIO else WASI_ERRNO_BADF

    def _fd_tell(self, fd: int, out_ptr: int) -> int:
        return WASI_ERRNO_SPIPE if fd in STDIO else WASI_ERRNO_BADF

    def _clock_res_get(self, clock_id: int, out_ptr: int) -> int:
        if not 0 <= clock_id <= 3:
            return WASI_ERRNO_INVAL
        return self._write(out_ptr, struct.pack("<Q", 1000))  # 1 us

    def _proc_raise(self, signal_number: int) -> int:
        return WASI_ERRNO_NOSYS

    def _poll_oneoff(self, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int) -> int:
        """Clock subscriptions wait (within the event's time limit, which stops a long sleep as it
        stops a spin); fd subscriptions get EBADF, as there is nothing to wait on."""
        if count <= 0 or count > 4096:
            return WASI_ERRNO_INVAL
        subscriptions = self._read(in_ptr, 48 * count)
        if subscriptions is None:
            return WASI_ERRNO_BADF
        clocks: list[tuple[int, int]] = []  # (ns to wait, userdata)
        failed: list[bytes] = []  # events (32 bytes): userdata, error, type, then fd_readwrite
        for i in range(count):
            userdata, tag = struct.unpack_from("<QB", subscriptions, 48 * i)
            if tag == 0:  # clock: id u32 at 16, timeout u64 at 24, flags u16 at 40 (1: absolute)
                clock_id, timeout = struct.unpack_from("<I4xQ", subscriptions, 48 * i + 16)
                absolute = struct.unpack_from("<H", subscriptions, 48 * i + 40)[0] & 1
                now = time.monotonic_ns() if clock_id == 1 else int(self.clock() * 1e9)
                clocks.append((max(0, timeout - now) if absolute else timeout, userdata))
            else:  # fd_read / fd_write: no file descriptor to wait on
                failed.append(struct.pack("<QHBx4xQQ", userdata, WASI_ERRNO_BADF, tag, 0, 0))
        if failed:  # ready at once: no waiting
            events = failed
        else:
            wait_ns = min(ns for ns, _ in clocks)
            time.sleep(wait_ns / 1e9)
            events = [struct.pack("<QHBx4xQQ", userdata, 0, 0, 0, 0) for ns, userdata in clocks if ns <= wait_ns]
        return self._write(out_ptr, b"".join(events)) or self._write_u32(nevents_ptr, len(events))

    def _write(self, ptr: int, data: bytes) -> int:
        mem = self._runtime.get_memory(0)
        if not 0 <= ptr <= len(mem) - len(data):
            return WASI_ERRNO_BADF
        mem[ptr:ptr + len(data)] = data
        return 0


def _u32(value: int) -> int:
    return value & 0xFFFFFFFF


def _i32(value) -> int:
    value = int(value or 0) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
