"""A gateway starting on a large backlog says how far its applets and its anchoring are behind,
how fast they gain and when they will be done; a normal start says nothing."""
import io
import logging

from rich.console import Console

from gateway.catchup import LOG_EVERY_S, START_BEHIND, CatchUp, JournalView, Stage, TerminalView


def stats(last: int, processed: int, anchored: int = 0) -> dict:
    return {"last_seq": last, "processed_upto": processed, "anchored_upto": anchored}


def run(catchup: CatchUp, figures: list[dict], start: float = 1000.0) -> None:
    for i, f in enumerate(figures):
        catchup.stats = lambda f=f: f
        catchup.tick(start + i)


class View:
    def __init__(self) -> None:
        self.shown: list[list[str]] = []
        self.done: list[str] = []

    def show(self, stages, now):
        self.shown.append([s.describe() for s in stages])

    def finished(self, stage, now):
        self.done.append(stage.summary(now))

    def close(self):
        pass


def test_a_start_with_a_small_backlog_shows_nothing():
    view = View()
    catchup = CatchUp([Stage("applets", "processed_upto")], dict, view)
    run(catchup, [stats(START_BEHIND - 1, 0), stats(START_BEHIND + 5000, START_BEHIND - 1)])
    assert view.shown == [] and view.done == []  # traffic after the start is live, not backlog
    assert catchup.status() == {}


def test_a_large_backlog_shows_records_left_rate_and_time_left_then_one_caught_up_line():
    view = View()
    catchup = CatchUp([Stage("applets", "processed_upto")], dict, view)
    run(catchup, [stats(100_000, 0), stats(101_000, 10_000), stats(102_000, 20_000)])
    assert view.shown[0] == ["applets: 100,000 of 100,000 records left, 0/s"]
    assert view.shown[-1] == ["applets: 80,000 of 100,000 records left, 10,000/s, about 8 s"]
    assert catchup.status() == {"applets": {"left": 80_000, "total": 100_000, "per_s": 10_000.0, "eta_s": 8,
                                            "waiting": None}}
    run(catchup, [stats(110_000, 100_500), stats(111_000, 111_000)], start=1010.0)
    assert view.done == ["applets caught up: 100,000 records in 10 s (10,000/s)"]  # live records not counted
    assert catchup.status() == {}
    shown = len(view.shown)
    run(catchup, [stats(200_000, 111_000)], start=1020.0)  # later lags are live traffic: over once caught up
    assert len(view.shown) == shown


def test_anchoring_waiting_for_the_chain_says_why_instead_of_a_time():
    view = View()
    down = "rpc_down: anvil cannot be reached; records wait in the buffer"
    catchup = CatchUp([Stage("applets", "processed_upto"), Stage("anchoring", "anchored_upto", blocked=lambda: down)],
                      dict, view)
    run(catchup, [stats(50_000, 50_000, 0), stats(50_000, 50_000, 0)])
    assert view.shown[-1] == [f"anchoring: 50,000 of 50,000 records left, waiting: {down}"]
    assert catchup.status()["anchoring"]["waiting"] == down


def test_under_systemd_it_logs_every_ten_seconds_and_keeps_the_unit_status_current(caplog):
    status: list[str] = []
    catchup = CatchUp([Stage("anchoring", "anchored_upto")], dict, JournalView(status.append))
    figures = [stats(60_000, 60_000, 1000 * i) for i in range(int(LOG_EVERY_S) + 2)]
    with caplog.at_level(logging.INFO, logger="w3gate.catchup"):
        run(catchup, figures + [stats(60_000, 60_000, 60_000)])
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["catching up: anchoring: 60,000 of 60,000 records left, 0/s",
                         "catching up: anchoring: 50,000 of 60,000 records left, 1,000/s, about 50 s"]
    assert lines[-1] == "anchoring caught up: 60,000 records in 12 s (5,000/s)"
    assert len(status) == len(figures) + 1 and status[-1] == lines[-1]  # not left saying "catching up"


def test_in_a_terminal_each_stage_has_a_bar_that_goes_when_it_is_done():
    out = io.StringIO()
    view = TerminalView(Console(file=out, force_terminal=True, width=120))
    catchup = CatchUp([Stage("applets", "processed_upto")], dict, view)
    run(catchup, [stats(20_000, 0), stats(20_000, 5_000)])
    assert list(view.tasks) == ["applets"]
    task = view.progress.tasks[0]
    assert (task.completed, task.total) == (5_000, 20_000)
    run(catchup, [stats(20_000, 20_000)], start=1002.0)
    assert view.tasks == {} and not view.progress.live.is_started
    view.close()
