"""`w3gate project state`: what a project's applets left in KV and SQL, read without changing it."""
from __future__ import annotations

import json

from click.testing import CliRunner

from gateway.applets.project import ProjectStore
from gateway.applets.state import ProjectState
from gateway.cli import main
from gateway.layout import DataDir
from tests.support.wat import assemble

SCHEMA = ["CREATE TABLE readings (device TEXT, ok BOOLEAN, v REAL)"]


def deployed(tmp_path) -> DataDir:
    layout = DataDir(tmp_path / "data")
    assemble("probe", tmp_path)
    project = tmp_path / "p.toml"
    project.write_text('name = "p"\n[[applets]]\nname = "probe"\nwasm = "probe.wasm"\n'
                       f'[database]\nschema = {json.dumps(SCHEMA)}\n')
    ProjectStore(layout).deploy(project)
    state = ProjectState(layout.project("p").state, schema=SCHEMA)
    state.begin_batch()
    state.begin_event()
    state.kv_set("count/350", b"7")
    state.kv_set("raw", b"\xff\x00")
    state.sql_exec(b'{"statement": "INSERT INTO readings VALUES (?, ?, ?)", '
                   b'"params": [{"string": "350"}, {"bool": true}, {"float64": 21.5}]}')
    state.end_event(True)
    state.commit_batch()
    state.close()
    return layout


def run(layout: DataDir, *args: str):
    return CliRunner().invoke(main, ["project", "state", "p", *args, "--data-dir", str(layout.root)])


def test_the_summary_counts_kv_entries_and_table_rows(tmp_path):
    layout = deployed(tmp_path)
    assert json.loads(run(layout, "--json").output) == {"kv_entries": 2, "tables": {"readings": 1}}


def test_kv_entries_show_as_text_or_base64(tmp_path):
    layout = deployed(tmp_path)
    assert json.loads(run(layout, "--kv", "--json").output) == [{"key": "count/350", "text": "7"},
                                                                 {"key": "raw", "base64": "/wA="}]
    assert run(layout, "--kv", "count").output == "count/350  7\n"


def test_a_query_returns_rows_typed_as_applets_get_them_and_cannot_write(tmp_path):
    layout = deployed(tmp_path)
    result = run(layout, "--sql", "SELECT * FROM readings", "--json")
    assert json.loads(result.output) == [{"device": "350", "ok": True, "v": 21.5}]
    refused = run(layout, "--sql", "DELETE FROM readings")
    assert refused.exit_code == 1 and "readonly" in refused.output
    assert json.loads(run(layout, "--json").output)["tables"] == {"readings": 1}


def test_a_project_without_state_or_without_a_name_says_so(tmp_path):
    layout = deployed(tmp_path)
    layout.project("p").state.unlink()
    assert "no state yet" in run(layout).output
    missing = CliRunner().invoke(main, ["project", "state", "nope", "--data-dir", str(layout.root)])
    assert missing.exit_code == 1 and "no project named 'nope'" in missing.output
