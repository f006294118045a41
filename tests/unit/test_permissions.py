"""The data directory is private (issue 13, "Local users read everything"): whatever w3gate writes
there (records, applet logs and state, status, journals, registries, keys) is 0600 and every
directory it makes is 0700, even under a permissive umask; and at start, anything looser is found
by ``check_permissions``, which says what it is and can tighten it."""
from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from gateway.applets.project import ProjectStore
from gateway.applets.runtime import AppletRuntime, Event
from gateway.applets.state import ProjectState
from gateway.buffer import integrity
from gateway.buffer.store import RecordStore, StoreConfig
from gateway.layout import DataDir, check_permissions
from gateway.proofs.journal import BatchJournal
from gateway.status import write_status
from gateway.storage import WatchedTable, atomic_write, open_private, private_dir
from tests.unit.test_applet_runtime import _project_file


@pytest.fixture(autouse=True)
def permissive_umask():
    """The umask most accounts have: without care, files would be 0644 and directories 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def looser(root: Path) -> list[str]:
    """Every path below ``root`` (and ``root``) that another account could read or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            found.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- what w3gate writes is private ------------------------------------------------------------------

def test_the_record_buffer_is_private_from_its_first_segment_to_its_lock(tmp_path):
    layout = DataDir(tmp_path / "data")
    store = RecordStore(layout.records, StoreConfig(segment_records=4))
    try:
        for i in range(3):  # several segments, meta.json rewritten
            store.append([{"rx": 1.0 + 4 * i + j, "device": "dev", "n": j} for j in range(4)])
        store.mark_processed(5)
    finally:
        store.close()
    assert len(list((layout.records / "segments").iterdir())) >= 3
    assert looser(tmp_path / "data") == []


def test_a_damaged_file_kept_aside_by_copy_is_as_private_as_the_original(tmp_path, monkeypatch):
    damaged = tmp_path / "seg.json"
    atomic_write(damaged, b"{not json")

    def no_hard_links(*args):
        raise OSError("no hard links here")
    monkeypatch.setattr(integrity.os, "link", no_hard_links)
    kept = integrity.keep_aside(damaged)
    assert kept.read_bytes() == b"{not json" and mode(kept) == 0o600


def test_a_projects_definition_module_state_and_logs_are_private(tmp_path):
    layout = DataDir(tmp_path / "data")
    store = ProjectStore(layout)
    store.deploy(_project_file(tmp_path))
    runtime = AppletRuntime(store)

    async def go():
        await runtime.reload()
        try:
            return await runtime.handle([Event("probe-project", b'{"t": 1}', event_type="PEBBLE_DATA")])
        finally:
            await runtime.close()
    asyncio.run(go())
    files = store.files("probe-project")
    AppletRuntime._append(files.metrics, [{"metrics": 1}])  # what stat.ws_submit_metrics writes
    for path in (files.definition, files.applet_log, files.worker_stderr, files.state, files.metrics):
        assert path.exists(), path
    assert next(layout.modules.glob("*.wasm")).exists()
    assert looser(tmp_path / "data") == []


def test_applet_state_and_its_sqlite_journal_files_are_private_while_open(tmp_path):
    path = DataDir(tmp_path / "data").project("p").state
    state = ProjectState(path, schema=["CREATE TABLE t (x INTEGER)"])
    try:
        state.begin_batch()
        state.kv_set("k", b"v")
        state.commit_batch()
        wal = path.with_name(path.name + "-wal")
        assert wal.exists()  # WAL mode: the -wal and -shm files exist while the database is open
        assert looser(tmp_path / "data") == []
    finally:
        state.close()


def test_status_proof_journal_registries_and_appended_logs_are_private(tmp_path):
    layout = DataDir(tmp_path / "data")
    private_dir(layout.root)
    write_status(layout.status, {"pid": 1})
    write_status(layout.status, {"pid": 2})  # rewritten, still private
    store = RecordStore(layout.records, StoreConfig(segment_records=4))
    try:
        BatchJournal(layout.proofs, store, writable=True)
    finally:
        store.close()
    table = WatchedTable(layout.devices, "devices", "imei", dict)
    with table._table() as t:  # what `w3gate device add` does, lock file and all
        t.insert({"imei": "351358813281791"})
    with open_private(layout.root / "trace.log", "a") as f:
        f.write("line\n")
    assert layout.proofs.is_dir() and layout.devices.exists()
    assert looser(tmp_path / "data") == []


def test_private_dir_makes_missing_parents_private_and_leaves_existing_ones_alone(tmp_path):
    (tmp_path / "shared").mkdir(mode=0o755)
    private_dir(tmp_path / "shared" / "a" / "b" / "c")
    assert mode(tmp_path / "shared") == 0o755  # not ours to change
    assert [mode(tmp_path / "shared" / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3


# -- check_permissions: what is looser is said, and tightened when asked ----------------------------

def _planted(tmp_path: Path) -> Path:
    """A data directory as an older w3gate left it: 0755 directories and 0644 files."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "records" / "segments").mkdir(parents=True)
    for i in range(5):
        (root / "records" / "segments" / f"seg-{i}.json").write_text("{}")
    (root / "status.json").write_text("{}")
    (root / "node-key.json").write_bytes(b"{}")
    os.chmod(root / "node-key.json", 0o600)  # already private: not reported
    for path in (root, root / "records", root / "records" / "segments"):
        os.chmod(path, 0o755)
    return root


def test_a_private_or_missing_data_directory_has_nothing_to_report(tmp_path):
    assert check_permissions(tmp_path / "nowhere") == []
    root = tmp_path / "data"
    private_dir(root / "records")
    atomic_write(root / "status.json", b"{}")
    pid = DataDir(root).broker.pid
    private_dir(pid.parent)
    pid.write_text("4242\n")  # mosquitto writes its pid file 0644: public anyway, and not w3gate's
    assert mode(pid) == 0o644
    assert check_permissions(root) == []


def test_looser_paths_are_reported_one_line_per_group_and_nothing_changes(tmp_path):
    root = _planted(tmp_path)
    lines = check_permissions(root)
    assert len(lines) == 4, lines
    root_line, record_dirs, record_files, status_line = lines
    assert root_line.startswith(f"data directory {root} is 0755 (want 0700)")
    assert f"chmod 0700 {root}" in root_line
    assert record_dirs.startswith(f"{root / 'records'}: 2 directories open to other local accounts "
                                  "(0755, want 0700)")
    assert record_files.startswith(f"{root / 'records'}: 5 files open to other local accounts "
                                   "(0644, want 0600)")
    assert "and 2 more" in record_files and f"chmod -R go= {root / 'records'}" in record_files
    assert status_line.startswith(f"{root / 'status.json'}: 1 file open to")
    assert "node-key.json" not in "".join(lines)
    assert mode(root) == 0o755 and mode(root / "status.json") == 0o644  # only reported


def test_at_start_the_data_directory_itself_is_tightened_and_the_line_says_so(tmp_path):
    root = _planted(tmp_path)
    lines = check_permissions(root, fix="root")
    assert lines[0].endswith("; set to 0700") and mode(root) == 0o700
    assert len(lines) == 4 and mode(root / "status.json") == 0o644  # the rest is only reported
    assert check_permissions(root)[0].startswith(f"{root / 'records'}:")  # the root is no longer looser


def test_fix_tightens_everything_looser_and_a_second_check_finds_nothing(tmp_path):
    root = _planted(tmp_path)
    lines = check_permissions(root, fix=True)
    assert len(lines) == 4
    assert "tightened 5" in lines[2] and "tightened 1" in lines[3]
    assert looser(root) == []
    assert check_permissions(root) == []


def test_symlinks_are_neither_followed_nor_changed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    os.chmod(outside, 0o644)
    root = tmp_path / "data"
    private_dir(root)
    (root / "link").symlink_to(outside)
    assert check_permissions(root, fix=True) == []
    assert mode(outside) == 0o644


def test_the_walk_is_bounded(tmp_path):
    root = tmp_path / "data"
    private_dir(root)
    for i in range(30):
        atomic_write(root / f"f{i}", b"")
    lines = check_permissions(root, limit=10)
    assert lines == [f"{root}: permission check stopped after 10 entries; the rest was not checked"]
