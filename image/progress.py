"""Progress for long jobs (the image build, the boot test, flashing): one line per step with a
spinner, the step's latest output and its time on a terminal; plain lines elsewhere (CI logs).
Every output line also goes to a log file, which a failure points to.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, \
    TransferSpeedColumn

Log = Callable[[str], None]


class Steps:
    """``with steps.step("base root file system") as log: ...``"""

    def __init__(self, log_file: Path, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log_file
        self._file = log_file.open("a", encoding="utf-8")
        self.started = time.monotonic()

    def close(self) -> None:
        self._file.close()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Log]:
        began = time.monotonic()
        self._file.write(f"== {title}\n")
        if not self.console.is_terminal:
            self.console.print(f"{title} ...", highlight=False)

            def plain(line: str) -> None:
                self._file.write(line + "\n")
                self._file.flush()

            try:
                yield plain
            except BaseException:
                self.console.print(f"{title}: failed after {time.monotonic() - began:.0f} s (log: {self.log_file})")
                raise
            self.console.print(f"{title}: done in {time.monotonic() - began:.0f} s", highlight=False)
            return
        with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                      TextColumn("[dim]{task.fields[detail]}"), console=self.console, transient=True) as bar:
            task = bar.add_task(title, detail="")

            def live(line: str) -> None:
                self._file.write(line + "\n")
                self._file.flush()
                bar.update(task, detail=line[-90:])

            try:
                yield live
            except BaseException:
                bar.stop()
                self.console.print(f"[red]✗[/red] {title}: failed after {time.monotonic() - began:.0f} s "
                                   f"(log: {self.log_file})")
                raise
        self.console.print(f"[green]✓[/green] {title} [dim]{time.monotonic() - began:.0f} s[/dim]")


@contextlib.contextmanager
def transfer(title: str, total: int, console: Console | None = None) -> Iterator[Callable[[int], None]]:
    """A byte-count bar (flashing): ``advance(n)`` after each block written."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeElapsedColumn(), console=console or Console(stderr=True)) as bar:
        task = bar.add_task(title, total=total)
        yield lambda n: bar.advance(task, n)
