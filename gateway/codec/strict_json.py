"""JSON as devices may send it: standard JSON only. Python's reader also takes ``NaN``,
``Infinity`` and ``1e999`` (read as infinity), which no device prints and which break whatever
compares, sorts or re-encodes the value later; here they are a ``CodecError``, as is text that is
not UTF-8 or nests too deep."""
from __future__ import annotations

import json

from gateway.errors import CodecError


def _finite(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise CodecError(f"number {text[:20]} is not finite")
    return value


def _no_constant(name: str) -> None:
    raise CodecError(f"{name} is not JSON")


DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def loads(data: bytes | str, what: str = "payload") -> object:
    """The value of a standard JSON text; CodecError naming ``what`` otherwise."""
    try:
        return DECODER.decode(data.decode("utf-8") if isinstance(data, bytes) else data)
    except CodecError as e:
        raise CodecError(f"{what}: {e.detail}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CodecError(f"{what} is not JSON: {str(e)[:120]}") from None
