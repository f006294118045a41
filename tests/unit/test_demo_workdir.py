"""Running the demo again starts it afresh: the previous run's chain is gone, so its anchoring
journal and its sensors' pairings would only stall the new run. A directory the demo did not
make is never cleared."""
import click
import pytest
from rich.console import Console

from rig.demo import MARKER, fresh_workdir


def test_a_second_run_clears_what_the_first_left(tmp_path):
    work = fresh_workdir(str(tmp_path / "w3gate-demo"), Console(quiet=True))
    (work / "gateway").mkdir()
    (work / "gateway" / "proofs.json").write_text("{}")
    again = fresh_workdir(str(work), Console(quiet=True))
    assert again == work and sorted(p.name for p in work.iterdir()) == [MARKER]


def test_a_directory_the_demo_did_not_make_is_refused_and_left_alone(tmp_path):
    mine = tmp_path / "my-gateway"
    mine.mkdir()
    (mine / "records").mkdir()
    with pytest.raises(click.ClickException, match="is not empty and is not a demo's directory"):
        fresh_workdir(str(mine), Console(quiet=True))
    assert (mine / "records").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (fresh_workdir(str(empty), Console(quiet=True)) / MARKER).is_file()
