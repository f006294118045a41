"""What a WebAssembly module asks for and offers, read from its binary before anything runs it.

wasm3 resolves imports lazily: a module importing a function the host lacks loads fine and traps
on first use. So deploy reads the import section and refuses unknown imports by name, and reads
the memory section to refuse modules that need more memory at start than the configured cap.

pywasm3 exposes no memory limit, but wasm3 enforces a module's declared memory maximum at
``memory.grow`` (the grow returns -1, as WebAssembly specifies). So ``cap_memory`` rewrites that
maximum to the host's cap before the module is loaded: the cap holds during execution. And
``watch_memory_grow`` counts the refused grows, so the host can name the memory limit when an
event fails because an allocation could not be met.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from gateway.errors import W3gateError

_VALTYPES = {0x7F: "i", 0x7E: "I", 0x7D: "f", 0x7C: "F"}
PAGE = 65536


class ModuleError(W3gateError):
    """The bytes are not a WebAssembly module we can run."""

    reason = "bad_module"


@dataclass(frozen=True)
class Import:
    module: str
    name: str
    kind: str  # "func", "table", "memory", "global"
    signature: str | None = None  # pywasm3 form, e.g. "i(iii)", for functions

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class ModuleInfo:
    sha256: str
    size: int
    imports: list[Import] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)  # name -> kind
    memory_min_pages: int = 0
    memory_max_pages: int | None = None  # None: the module declares no maximum
    signatures: dict[str, str] = field(default_factory=dict)  # exported function -> pywasm3 signature, "i(i)"


def _signature(params: list[str], results: list[str]) -> str:
    return f"{results[0] if results else 'v'}({''.join(params)})"


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ModuleError("truncated module")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 35:
                raise ModuleError("malformed LEB128 integer")

    def name(self) -> str:
        n = self.u32()
        if self.pos + n > self.end:
            raise ModuleError("truncated name")
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ModuleError("a name is not UTF-8") from None

    def limits(self) -> tuple[int, int | None]:
        flags = self.byte()
        low = self.u32()
        return low, (self.u32() if flags & 1 else None)


def _leb_u32(value: int) -> bytes:
    out = bytearray()
    while True:
        b, value = value & 0x7F, value >> 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def cap_memory(data: bytes, max_pages: int) -> bytes:
    """The module with its memory's maximum lowered to ``max_pages`` (set, if it declares none).

    wasm3 then refuses any ``memory.grow`` past the cap, so no guest can exceed it mid-event.
    Refused with the reason: an imported memory (the host could not cap it), shared or 64-bit
    memories, more than one memory, a module needing more than ``max_pages`` at start, and an
    effective maximum of 0 pages (wasm3 reads 0 as "no maximum")."""
    if max_pages < 1:
        raise ModuleError(f"a memory cap of {max_pages} pages cannot be enforced (wasm3 reads 0 as no maximum)")
    if any(i.kind == "memory" for i in inspect(data).imports):
        raise ModuleError("imports its memory: only a memory the module defines can be capped")
    r = _Reader(data, 8)
    while r.pos < len(data):
        start = r.pos
        section, size = r.byte(), r.u32()
        end = r.pos + size
        s = _Reader(data, r.pos, end)
        if section == 5:
            count = s.u32()
            if count > 1:
                raise ModuleError(f"declares {count} memories; WebAssembly 1.0 allows one")
            if count == 0:
                return data
            flags = data[s.pos]
            if flags not in (0, 1):
                raise ModuleError(f"memory flags {flags:#x} (shared or 64-bit memory) are not supported")
            low, high = s.limits()
            if low > max_pages:
                raise ModuleError(f"needs {low} memory pages at start, the limit is {max_pages}")
            high = max_pages if high is None else min(high, max_pages)
            if high == 0:
                raise ModuleError("declares a memory maximum of 0 pages, which wasm3 reads as no maximum")
            body = _leb_u32(1) + b"\x01" + _leb_u32(low) + _leb_u32(high) + data[s.pos:end]  # 1: has a max
            return data[:start] + b"\x05" + _leb_u32(len(body)) + body + data[end:]
        r.pos = end
    return data  # no memory of its own: nothing can grow


def inspect(data: bytes) -> ModuleInfo:
    """Parse the type, import, memory and export sections (the rest is wasm3's business)."""
    if data[:4] != b"\0asm" or data[4:8] != b"\x01\0\0\0":
        raise ModuleError("not a WebAssembly 1.0 module (bad magic or version)")
    r = _Reader(data, 8)
    types: list[str] = []
    imports: list[Import] = []
    exports: dict[str, str] = {}
    export_funcs: dict[str, int] = {}  # name -> function index
    func_types: list[int] = []  # type index of each function the module defines
    mem_min, mem_max = 0, None
    kinds = {0: "func", 1: "table", 2: "memory", 3: "global"}
    while r.pos < len(data):
        section, size = r.byte(), r.u32()
        end = r.pos + size
        if end > len(data):
            raise ModuleError("a section runs past the end of the module")
        if section > 12:
            raise ModuleError(f"unknown section id {section} (WebAssembly 1.0 and bulk memory define 0-12)")
        s = _Reader(data, r.pos, end)
        if section == 1:  # types
            for _ in range(s.u32()):
                if s.byte() != 0x60:
                    raise ModuleError("unknown type form")
                params = [_VALTYPES.get(s.byte(), "?") for _ in range(s.u32())]
                results = [_VALTYPES.get(s.byte(), "?") for _ in range(s.u32())]
                types.append(_signature(params, results))
        elif section == 2:  # imports
            for _ in range(s.u32()):
                module, name, kind = s.name(), s.name(), s.byte()
                signature = None
                if kind == 0:
                    index = s.u32()
                    signature = types[index] if index < len(types) else None
                elif kind == 1:
                    s.byte()
                    s.limits()
                elif kind == 2:
                    mem_min, mem_max = s.limits()
                elif kind == 3:
                    s.byte()
                    s.byte()
                else:
                    raise ModuleError(f"unknown import kind {kind}")
                imports.append(Import(module, name, kinds[kind], signature))
        elif section == 3:  # functions: their type indices
            func_types = [s.u32() for _ in range(s.u32())]
        elif section == 5:  # memory
            if s.u32():
                mem_min, mem_max = s.limits()
        elif section == 7:  # exports
            for _ in range(s.u32()):
                name, kind = s.name(), s.byte()
                index = s.u32()
                exports[name] = kinds.get(kind, "?")
                if kind == 0:
                    export_funcs[name] = index
        r.pos = end
    imported = [i.signature for i in imports if i.kind == "func"]
    signatures = {}
    for name, index in export_funcs.items():
        if index < len(imported):
            signatures[name] = imported[index] or "?"
        elif index - len(imported) < len(func_types) and func_types[index - len(imported)] < len(types):
            signatures[name] = types[func_types[index - len(imported)]]
    return ModuleInfo(hashlib.sha256(data).hexdigest(), len(data), imports, exports, mem_min, mem_max, signatures)


GROW_REFUSALS = "w3gate_grow_refusals"  # the exported i32 global ``watch_memory_grow`` adds

# opcodes by immediates, as far as wasm3 runs them (MVP, sign extension, saturating conversions,
# bulk memory, multi-value, typed select, reference instructions, tail calls)
_NO_IMMEDIATE = {0x00, 0x01, 0x05, 0x0B, 0x0F, 0x1A, 0x1B, 0xD1, *range(0x45, 0xC5)}
_ONE_LEB = {0x02, 0x03, 0x04, 0x0C, 0x0D, 0x10, 0x12, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26,
            0x3F, 0x41, 0x42, 0xD0, 0xD2}
_TWO_LEBS = {0x11, 0x13, *range(0x28, 0x3F)}


class _Undecodable(Exception):
    pass


def _skip_leb(data: bytes, pos: int, end: int) -> int:
    while pos < end and data[pos] & 0x80:
        pos += 1
    if pos >= end:
        raise _Undecodable("truncated immediate")
    return pos + 1


def _rewrite_body(data: bytes, pos: int, end: int, call: bytes) -> bytes:
    """One function body (locals and code) with every ``memory.grow`` replaced by ``call``."""
    r = _Reader(data, pos, end)
    for _ in range(r.u32()):  # local declarations: (count, type)
        r.u32()
        r.byte()
    out, last, pos = bytearray(), pos, r.pos
    while pos < end:
        op = data[pos]
        pos += 1
        if op == 0x40:  # memory.grow <memory index>
            out += data[last:pos - 1] + call
            pos = last = _skip_leb(data, pos, end)
        elif op in _NO_IMMEDIATE:
            pass
        elif op in _ONE_LEB:
            pos = _skip_leb(data, pos, end)
        elif op in _TWO_LEBS:
            pos = _skip_leb(data, _skip_leb(data, pos, end), end)
        elif op in (0x0E, 0x1C):  # br_table: labels and a default; select: value types
            r.pos = pos
            n = r.u32()
            pos = r.pos
            for _ in range(n + 1 if op == 0x0E else n):
                pos = _skip_leb(data, pos, end)
        elif op in (0x43, 0x44):  # f32.const, f64.const
            pos += 4 if op == 0x43 else 8
        elif op == 0xFC:
            r.pos = pos
            sub = r.u32()
            pos = r.pos
            if sub in (8, 10, 12, 14):  # memory.init, memory.copy, table.init, table.copy
                pos = _skip_leb(data, _skip_leb(data, pos, end), end)
            elif sub in (9, 11, 13, 15, 16, 17):  # data.drop, memory.fill, elem.drop, table.*
                pos = _skip_leb(data, pos, end)
            elif sub > 7:  # 0-7: saturating conversions, no immediate
                raise _Undecodable(f"instruction 0xfc {sub}")
        else:
            raise _Undecodable(f"opcode {op:#x}")
    if pos != end:
        raise _Undecodable("a function body ends mid-instruction")
    return bytes(out + data[last:end])


def _sections(data: bytes) -> list[tuple[int, bytes]]:
    """The module's sections in order, as (id, payload)."""
    sections = []
    r = _Reader(data, 8)
    while r.pos < len(data):
        section, size = r.byte(), r.u32()
        sections.append((section, data[r.pos:r.pos + size]))
        r.pos += size
    return sections


def _assemble(header: bytes, sections: list[tuple[int, bytes]], replaced: dict[int, bytes]) -> bytes:
    """The module again from its sections, those in ``replaced`` with their new payloads."""
    out = bytearray(header)
    for section, payload in sections:
        payload = replaced.get(section, payload)
        out += bytes([section]) + _leb_u32(len(payload)) + payload
    return bytes(out)


def _vec(items: list[bytes]) -> bytes:
    return _leb_u32(len(items)) + b"".join(items)


def _entries(body: bytes) -> tuple[int, bytes]:
    """A vector section's count and the bytes of its entries."""
    r = _Reader(body)
    count = r.u32()
    return count, body[r.pos:]


def watch_memory_grow(data: bytes) -> bytes | None:
    """The module with every ``memory.grow`` routed through an added function that counts refused
    grows in an exported i32 global, ``GROW_REFUSALS``: so the host can tell an event that failed
    after its memory hit the cap from any other failure. Nothing is renumbered (the function and
    the global are appended), and a grow behaves as before. None when the code uses an
    instruction this reader does not know (wasm3 may still run it, without the count)."""
    sections = _sections(data)
    ids = [s for s, _ in sections]
    if 10 not in ids or 3 not in ids or 1 not in ids:
        return None  # no code: nothing grows
    info = inspect(data)
    if GROW_REFUSALS in info.exports:
        return None
    body = {s: b for s, b in sections if s != 0}
    imported_funcs = sum(i.kind == "func" for i in info.imports)
    imported_globals = sum(i.kind == "global" for i in info.imports)
    n_types, types = _entries(body[1])
    n_funcs, funcs = _entries(body[3])
    n_globals, globals_ = _entries(body.get(6, b"\0"))
    n_exports, exports = _entries(body.get(7, b"\0"))
    wrapper = _leb_u32(imported_funcs + n_funcs)
    counter = _leb_u32(imported_globals + n_globals)
    code = body[10]
    cr = _Reader(code)
    bodies = []
    try:
        for _ in range(cr.u32()):
            size = cr.u32()
            bodies.append(_rewrite_body(code, cr.pos, cr.pos + size, b"\x10" + wrapper))
            cr.pos += size
    except (_Undecodable, ModuleError, IndexError):
        return None
    # (param i32) (result i32) (local i32): grow; if it returned -1, count it; return its result
    grow = (b"\x01\x01\x7f" + b"\x20\x00\x40\x00\x22\x01\x41\x7f\x46\x04\x40"
            + b"\x23" + counter + b"\x41\x01\x6a\x24" + counter + b"\x0b\x20\x01\x0b")
    new = {
        1: _leb_u32(n_types + 1) + types + b"\x60\x01\x7f\x01\x7f",
        3: _leb_u32(n_funcs + 1) + funcs + _leb_u32(n_types),
        6: _leb_u32(n_globals + 1) + globals_ + b"\x7f\x01\x41\x00\x0b",  # (mut i32) (i32.const 0)
        7: (_leb_u32(n_exports + 1) + exports + _leb_u32(len(GROW_REFUSALS)) + GROW_REFUSALS.encode()
            + b"\x03" + counter),
        10: _vec([_leb_u32(len(b)) + b for b in bodies + [grow]]),
    }
    order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 10, 11]  # the binary format's order (custom: anywhere)
    for added in (6, 7):  # a module without globals or exports gets the section, in its place
        if added not in ids:
            at = next(i for i, s in enumerate(ids) if s and order.index(s) > order.index(added))
            sections.insert(at, (added, b""))
            ids.insert(at, added)
    return _assemble(data[:8], sections, new)


GLOBAL_PREFIX = "w3gate_global_"  # ``export_globals`` exports mutable global i as GLOBAL_PREFIX + str(i)
_CONST_BYTES = {0x43: 4, 0x44: 8}  # f32.const, f64.const: fixed-size immediates


def _skip_init_expr(r: _Reader) -> None:
    """A constant expression: one instruction (i32/i64/f32/f64.const, global.get) and ``end``."""
    op = r.byte()
    if op in (0x41, 0x42, 0x23):  # i32.const, i64.const (signed LEB), global.get (index)
        while r.byte() & 0x80:
            pass
    elif op in _CONST_BYTES:
        r.pos += _CONST_BYTES[op]
    elif op == 0xD0:  # ref.null t
        r.byte()
    elif op == 0xD2:  # ref.func idx
        r.u32()
    else:
        raise ModuleError(f"unsupported constant expression opcode {op:#x} in a global")
    if r.byte() != 0x0B:
        raise ModuleError("a global's constant expression is longer than one instruction")


def export_globals(data: bytes) -> tuple[bytes, list[str]]:
    """The module with each mutable global it defines exported (as ``GLOBAL_PREFIX<index>``
    unless the module exports it already), and the names to reach them by: the host can then read
    and set them (pywasm3 reaches only exported globals), which is what restoring an instance to
    its state right after instantiation needs. Nothing else changes (indices stay)."""
    info = inspect(data)
    imported = sum(i.kind == "global" for i in info.imports)
    sections = _sections(data)
    body = {s: b for s, b in sections if s != 0}
    if 6 not in body:
        return data, []
    g = _Reader(body[6])
    mutable = []
    for i in range(g.u32()):
        g.byte()  # value type
        if g.byte() & 1:
            mutable.append(imported + i)
        _skip_init_expr(g)
    if not mutable:
        return data, []
    n_exports, exports = _entries(body.get(7, b"\0"))
    exported: dict[int, str] = {}  # wasm3 keeps one name per global: reuse a global's own export
    e = _Reader(exports)
    for _ in range(n_exports):
        name, kind, index = e.name(), e.byte(), e.u32()
        if kind == 3:
            exported.setdefault(index, name)
    new = [(f"{GLOBAL_PREFIX}{i}", i) for i in mutable if i not in exported]
    names = [exported.get(i) or f"{GLOBAL_PREFIX}{i}" for i in mutable]
    if not new:
        return data, names
    added = b"".join(_leb_u32(len(n)) + n.encode() + b"\x03" + _leb_u32(i) for n, i in new)
    payload = _leb_u32(n_exports + len(new)) + exports + added
    ids = [s for s, _ in sections]
    if 7 not in ids:  # exports come right after globals (6) in the binary format's order
        sections.insert(ids.index(6) + 1, (7, b""))
    return _assemble(data[:8], sections, {7: payload}), names


@functools.lru_cache(maxsize=32)
def runnable(data: bytes, max_pages: int | None) -> tuple[bytes, bool, tuple[str, ...]]:
    """The module as the host loads it: memory capped at ``max_pages`` (when given), its
    ``memory.grow`` refusals counted (the bool: whether they are), and its mutable globals
    exported (their names: ``export_globals``). Cached: instances of the same module are built
    often (traps, memory that grew)."""
    capped = data if max_pages is None else cap_memory(data, max_pages)
    watched = watch_memory_grow(capped)
    loaded = capped if watched is None else watched
    exported, names = export_globals(loaded)
    return exported, watched is not None, tuple(names)
