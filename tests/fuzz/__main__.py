"""The long fuzzing run (``./dev.sh fuzz``): each target under atheris (libFuzzer, coverage-guided),
starting from the committed corpus and from structure-aware inputs drawn from the target's
hypothesis strategy. New inputs that reach new code are merged into ``tests/fuzz/corpus/<target>``
(commit them: the default tests replay the corpus). A crash is an input for which a target raised
something other than its typed error; libFuzzer saves it as ``crash-*`` in the work directory.

    python -m tests.fuzz [--runs 1000000] [--seeds 2000] [target ...]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz.targets import TARGETS, seeds

CORPUS = Path(__file__).parent / "corpus"


ROOT = Path(__file__).resolve().parents[2]


def _harness(work: Path, target: str, *libfuzzer_args: str) -> subprocess.CompletedProcess:
    """libFuzzer's merge starts its own program again by argv[0]: give it an executable one."""
    script = work / "run-target"
    script.write_text(f"#!/bin/sh\ncd '{ROOT}' && exec '{sys.executable}' -m tests.fuzz.harness {target} \"$@\"\n")
    script.chmod(0o755)
    return subprocess.run([str(script), *libfuzzer_args], env={**os.environ, "W3GATE_FUZZ_ARGV0": str(script)})


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="target", help="default: all of " + ", ".join(TARGETS))
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target (default 1,000,000)")
    parser.add_argument("--seeds", type=int, default=2000, help="structure-aware seed inputs per target")
    parser.add_argument("--max-len", type=int, default=1400, help="longest input libFuzzer makes")
    args = parser.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; known: {', '.join(TARGETS)}")
    failed = []
    for name in args.targets or list(TARGETS):
        work = Path(tempfile.mkdtemp(prefix=f"w3gate-fuzz-{name}-"))
        (work / "new").mkdir()
        (work / "seeds").mkdir()
        for i, data in enumerate(seeds(TARGETS[name], args.seeds)):
            (work / "seeds" / f"{i:05d}").write_bytes(data)
        corpus = CORPUS / name
        corpus.mkdir(parents=True, exist_ok=True)
        print(f"== {name}: {args.runs:,} inputs from {len(list(corpus.iterdir()))} corpus files and "
              f"{args.seeds} seeds (work directory {work})", flush=True)
        started = time.monotonic()
        run = _harness(work, name, f"-runs={args.runs}", f"-max_len={args.max_len}", f"-artifact_prefix={work}/",
                       "-print_final_stats=1", str(work / "new"), str(corpus), str(work / "seeds"))
        if run.returncode != 0:
            failed.append(name)
            print(f"== {name}: FAILED (exit {run.returncode}); the input is in {work}", flush=True)
            continue
        _harness(work, name, "-merge=1", str(corpus), str(work / "new"), str(work / "seeds"))  # keep what adds coverage
        print(f"== {name}: {args.runs:,} inputs in {time.monotonic() - started:.0f} s, no failure; "
              f"corpus now {len(list(corpus.iterdir()))} files", flush=True)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
