"""What a WebAssembly module asks for and offers, read from its binary before anything runs it.

wasm3 resolves imports lazily: a module importing a function the host lacks loads fine and traps
on first use. So deploy reads the import section and refuses unknown imports by name, and reads
the memory section to refuse modules that could grow beyond the configured cap.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from gateway.errors import W3gateError

_VALTYPES = {0x7F: "i", 0x7E: "I", 0x7D: "f", 0x7C: "F"}
PAGE = 65536


class ModuleError(W3gateError):
    """The bytes are not a WebAssembly module we can run."""


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


def inspect(data: bytes) -> ModuleInfo:
    """Parse the type, import, memory and export sections (the rest is wasm3's business)."""
    if data[:4] != b"\0asm" or data[4:8] != b"\x01\0\0\0":
        raise ModuleError("not a WebAssembly 1.0 module (bad magic or version)")
    r = _Reader(data, 8)
    types: list[str] = []
    imports: list[Import] = []
    exports: dict[str, str] = {}
    mem_min, mem_max = 0, None
    kinds = {0: "func", 1: "table", 2: "memory", 3: "global"}
    while r.pos < len(data):
        section, size = r.byte(), r.u32()
        end = r.pos + size
        if end > len(data):
            raise ModuleError("a section runs past the end of the module")
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
        elif section == 5:  # memory
            if s.u32():
                mem_min, mem_max = s.limits()
        elif section == 7:  # exports
            for _ in range(s.u32()):
                name, kind = s.name(), s.byte()
                s.u32()
                exports[name] = kinds.get(kind, "?")
        r.pos = end
    return ModuleInfo(hashlib.sha256(data).hexdigest(), len(data), imports, exports, mem_min, mem_max)
