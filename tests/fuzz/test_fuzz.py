"""Every decoder of outside input keeps its contract under hostile input: a value, or its typed
error with a named reason; never another exception, never a hang.

Two parts: the inputs the long coverage-guided run found interesting (``tests/fuzz/corpus``,
made by ``./dev.sh fuzz``) are replayed, and a bounded structure-aware run (a few seconds per
target) draws new ones each time.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import TARGETS, check

CORPUS = Path(__file__).parent / "corpus"
BOUNDED = settings(max_examples=300, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _corpus() -> list[tuple[str, Path]]:
    return [(name, path) for name in sorted(TARGETS) for path in sorted((CORPUS / name).glob("*"))]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_structured_hostile_input_gets_a_value_or_a_typed_refusal(name):
    target = TARGETS[name]

    @BOUNDED
    @given(target.strategy)
    def run(data: bytes) -> None:
        check(target, data)
    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_random_bytes_get_a_value_or_a_typed_refusal(name):
    target = TARGETS[name]

    @BOUNDED
    @given(st.binary(max_size=1200))
    def run(data: bytes) -> None:
        check(target, data)
    run()


@pytest.mark.parametrize("name,path", _corpus(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_the_committed_corpus_still_gets_a_value_or_a_typed_refusal(name, path):
    check(TARGETS[name], path.read_bytes())
