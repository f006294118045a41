"""Storage integrity: what the record store does with files damaged from outside.

The store's own writes never leave an empty, cut-off or inconsistent file, so each case here is
damage a power cut on a lying SD card, a full disk or a hand edit could leave. In every case:
the store opens, says what happened (``damage``, one log line naming the file), keeps the damaged
file aside, keeps every record it can, hands out no seq twice, marks nothing processed that may
not have been, appends again, and the CLI (``w3gate records``, ``w3gate buffer check``) answers
in plain lines, never a traceback.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.buffer.store import RecordStore, StoreConfig, segment_name
from gateway.cli import main

T0 = 1_700_000_000.0
CFG = StoreConfig(segment_records=10)
ENV = {"W3GATE_BUFFER_SEGMENT_RECORDS": "10"}


def docs(n: int, start: int = 0) -> list[dict]:
    return [{"rx": T0 + start + i, "device": f"dev{(start + i) % 3}", "kind": "data", "n": start + i}
            for i in range(n)]


def build(data: Path, n: int = 25, *, processed: int = 0, anchored: int = 0) -> Path:
    """A store under ``data/records`` with ``n`` records in segments of 10 (the last one active)."""
    with RecordStore(data / "records", CFG) as s:
        s.append(docs(n))
        s.mark_processed(processed)
        s.mark_anchored(anchored)
    return data / "records"


def seg(rec: Path, first: int) -> Path:
    return rec / "segments" / segment_name(first)


def seqs(store: RecordStore) -> list[int]:
    return [d["seq"] for d in store.iter_records(newest_first=False)]


def aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".damaged-*"))


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "w3gate.buffer" and r.levelno >= logging.WARNING]


def cli(*args: str, data: Path):
    return CliRunner().invoke(main, [*args, "--data-dir", str(data)], env=ENV)


def assert_readable_cli(data: Path, *, damaged: bool) -> None:
    """`w3gate records` lists (a warning on stderr if it met damage); `w3gate buffer check` says
    what is wrong (exit 1) or that all is well (exit 0). No traceback either way."""
    out = cli("records", "--limit", "0", data=data)
    assert out.exit_code == 0 and "Traceback" not in out.output, out.output
    check = cli("buffer", "check", data=data)
    assert "Traceback" not in check.output
    if damaged:
        assert check.exit_code == 1 and "DAMAGED" in check.output, check.output
    else:
        assert check.exit_code == 0 and "ok: every file checked" in check.output, check.output


# -- the active segment ---------------------------------------------------------------------------

def test_a_zero_byte_active_segment_is_set_aside_and_seqs_go_on_above_its_range(tmp_path, caplog):
    rec = build(tmp_path, 25, processed=23)  # 1-10, 11-20, 21-25 (active, range 21..30)
    seg(rec, 21).write_bytes(b"")
    assert_readable_cli(tmp_path, damaged=True)  # the read-only CLI changes nothing
    assert seg(rec, 21).read_bytes() == b""
    caplog.set_level(logging.INFO, logger="w3gate.buffer")
    with RecordStore(rec, CFG) as s:
        [d] = s.damage
        assert d.file == str(seg(rec, 21)) and d.reason == "empty (0 bytes)" and d.recovered == 0
        assert Path(d.moved_to) in aside(seg(rec, 21)) and Path(d.moved_to).read_bytes() == b""
        assert "21..30 may be lost" in d.lost
        assert [m for m in errors(caplog) if segment_name(21) in m and "empty" in m]
        assert seqs(s) == list(range(1, 21))
        assert s.append(docs(2, 25)).seqs == [31, 32]  # above every seq that may have been issued
        assert s.get(31)["state"] == "accepted"  # applets will see them
        assert s.stats()["records"] == 22 and s.stats()["processed_upto"] == 23
    with RecordStore(rec, CFG) as s:  # settled: no new damage, the seqs still go on
        assert s.damage == [] and s.append(docs(1, 27)).seqs == [33]
    assert_readable_cli(tmp_path, damaged=False)


def test_the_testers_case_a_single_emptied_segment_never_reuses_processed_seqs(tmp_path):
    rec = build(tmp_path, 10, processed=10)
    seg(rec, 1).write_bytes(b"")
    with RecordStore(rec, CFG) as s:
        assert s.damage[0].reason == "empty (0 bytes)"
        new = s.append(docs(10, 10)).seqs
        assert min(new) > 10 and {s.get(q)["state"] for q in new} == {"accepted"}


def test_a_lost_active_segment_file_is_noticed_from_meta(tmp_path):
    rec = build(tmp_path, 25)
    seg(rec, 21).unlink()
    with RecordStore(rec, CFG) as s:
        [d] = s.damage
        assert d.file == str(seg(rec, 21)) and d.reason.startswith("missing") and d.moved_to is None
        assert s.append(docs(1, 25)).seqs == [31]
        assert seqs(s) == list(range(1, 21)) + [31]


def test_an_active_segment_with_seqs_outside_its_range_keeps_the_good_records(tmp_path):
    rec = build(tmp_path, 25, processed=22)
    data = json.loads(seg(rec, 21).read_text())
    data["records"]["99"] = {**docs(1)[0], "seq": 99}  # beyond the segment's range 21..30
    data["records"]["23"]["seq"] = 7                    # a record that does not carry its own seq
    seg(rec, 21).write_text(json.dumps(data))
    assert_readable_cli(tmp_path, damaged=True)
    with RecordStore(rec, CFG) as s:
        [d] = s.damage
        assert d.reason == "record 23 carries seq 7" and d.recovered == 4  # 21, 22, 24, 25
        assert seqs(s) == list(range(1, 23)) + [24, 25]
        assert [s.get(q)["state"] for q in (22, 24)] == ["processed", "accepted"]
        assert s.append(docs(1, 25)).seqs == [100]  # 99 was seen: it is never handed out


# -- meta.json ------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", [b"", b"   \n", b'{"processed_upto": 15, "anchor', b"[1, 2]",
                                    b'{"processed_upto": -3}', b'{"processed_upto": 5, "anchored_upto": 9}'])
def test_a_damaged_meta_is_rebuilt_and_nothing_held_counts_as_processed(tmp_path, caplog, damage):
    rec = build(tmp_path, 25, processed=15, anchored=5)
    (rec / "meta.json").write_bytes(damage)
    assert_readable_cli(tmp_path, damaged=True)
    with RecordStore(rec, CFG) as s:
        [d] = s.damage
        assert d.file == str(rec / "meta.json") and Path(d.moved_to).read_bytes() == damage
        assert "every held record counts as accepted again" in d.lost
        assert errors(caplog) and "meta.json" in errors(caplog)[0]
        # processing state is unknown: redeliver rather than skip (projects' own cursors dedupe)
        assert {r["state"] for r in s.iter_records()} == {"accepted"}
        assert s.append(docs(1, 25)).seqs == [26]
    with RecordStore(rec, CFG) as s:
        assert s.damage == [] and s.stats()["processed_upto"] == 0
    assert_readable_cli(tmp_path, damaged=False)


def test_a_missing_meta_is_rebuilt_from_the_segments(tmp_path):
    rec = build(tmp_path, 25, processed=25)
    (rec / "meta.json").unlink()
    with RecordStore(rec, CFG) as s:
        [d] = s.damage
        assert d.reason == "missing while segments exist" and d.moved_to is None
        assert seqs(s) == list(range(1, 26)) and s.get(25)["state"] == "accepted"
        assert s.append(docs(1, 25)).seqs == [26]


def test_values_still_readable_in_a_damaged_meta_keep_seqs_above_them(tmp_path):
    rec = build(tmp_path, 25, processed=25)
    seg(rec, 21).write_bytes(b"")
    (rec / "meta.json").write_text('{"processed_upto":25,"anchored_upto":0,"refused_tot')  # cut off
    with RecordStore(rec, CFG) as s:
        assert len(s.damage) == 2
        assert min(s.append(docs(1, 25)).seqs) > 30


def test_meta_and_active_segment_both_emptied_seqs_still_go_on_from_the_file_names(tmp_path):
    rec = build(tmp_path, 25, processed=25)
    seg(rec, 21).write_bytes(b"")
    (rec / "meta.json").write_bytes(b"")
    with RecordStore(rec, CFG) as s:
        assert len(s.damage) == 2
        assert s.append(docs(1, 25)).seqs == [31]  # seg-21 may have held up to 21 + 10 - 1


# -- older (full) segments ------------------------------------------------------------------------

def test_a_truncated_older_segment_is_noticed_at_open_and_its_whole_records_kept(tmp_path, caplog):
    rec = build(tmp_path, 25, processed=14)
    raw = seg(rec, 11).read_bytes()
    seg(rec, 11).write_bytes(raw[:len(raw) * 6 // 10])
    assert_readable_cli(tmp_path, damaged=True)
    with RecordStore(rec, CFG) as s:  # noticed at open, before any read asks for it
        [d] = s.damage
        assert d.reason == "truncated (its JSON object is not closed)" and 3 <= d.recovered < 10
        assert Path(d.moved_to).read_bytes() == raw[:len(raw) * 6 // 10]
        kept = list(range(11, 11 + d.recovered))
        assert seqs(s) == list(range(1, 11)) + kept + list(range(21, 26))
        assert s.get(11)["n"] == 10 and s.get(14)["state"] == "processed"
        assert s.get(11 + d.recovered) is None
        assert s.stats()["records"] == 15 + d.recovered
        assert s.append(docs(1, 25)).seqs == [26]
        assert errors(caplog) and segment_name(11) in errors(caplog)[0]
    with RecordStore(rec, CFG) as s:
        assert s.damage == [] and s.check_all() == [] and s.stats()["records"] == 16 + d.recovered
    assert_readable_cli(tmp_path, damaged=False)


def test_garbage_inside_an_older_segment_loses_only_the_records_it_hit(tmp_path):
    rec = build(tmp_path, 25)
    raw = bytearray(seg(rec, 11).read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 20] = b"\x00\xff garbage \x00\xff!!"
    seg(rec, 11).write_bytes(bytes(raw))
    with RecordStore(rec, CFG) as s:
        s.check_all()
        [d] = s.damage
        assert d.reason.startswith("not valid JSON") and 8 <= d.recovered <= 9
        assert {11, 20} <= set(seqs(s))  # records before and after the garbage
        assert s.append(docs(1, 25)).seqs == [26]


def test_an_older_segment_that_is_all_garbage_is_set_aside(tmp_path):
    rec = build(tmp_path, 25, processed=25)
    seg(rec, 1).write_bytes(b"\x89PNG not a segment at all")
    with RecordStore(rec, CFG) as s:
        [d] = s.damage
        assert d.reason == "does not start like a record segment" and d.recovered == 0
        assert "10 records of seqs 1..10 not recovered" in d.lost
        assert seqs(s) == list(range(11, 26)) and s.stats()["records"] == 15
        assert s.append(docs(1, 25)).seqs == [26]
    assert_readable_cli(tmp_path, damaged=False)


def test_an_older_segment_with_a_seq_from_another_range_is_found_by_a_full_check(tmp_path):
    rec = build(tmp_path, 25)
    data = json.loads(seg(rec, 1).read_text())
    data["records"]["15"] = {**docs(1)[0], "seq": 15}  # seg-11's range
    seg(rec, 1).write_text(json.dumps(data, separators=(",", ":")))
    assert_readable_cli(tmp_path, damaged=True)  # buffer check reads every segment in full
    with RecordStore(rec, CFG) as s:
        assert s.damage == []  # it looks whole from the outside: open does not parse full segments
        assert seqs(s) == list(range(1, 26))  # the read of it finds it and keeps the rest
        [d] = s.damage
        assert d.reason == "seq 15 is outside the segment's range 1..10" and d.recovered == 10
        assert s.get(15)["n"] == 14  # the real one, from seg-11
    with RecordStore(rec, CFG) as s:
        assert s.check_all() == []


# -- the CLI --------------------------------------------------------------------------------------

def test_buffer_check_repair_does_offline_what_open_does(tmp_path):
    rec = build(tmp_path, 25, processed=25)
    seg(rec, 21).write_bytes(b"")
    out = cli("buffer", "check", "--json", data=tmp_path)
    report = json.loads(out.output)
    assert out.exit_code == 1 and not report["ok"] and report["damage"][0]["file"] == str(seg(rec, 21))
    assert seg(rec, 21).read_bytes() == b"" and not aside(seg(rec, 21))  # nothing changed
    out = cli("buffer", "check", "--repair", data=tmp_path)
    assert out.exit_code == 0 and f"repaired  {seg(rec, 21)}: empty (0 bytes)" in out.output, out.output
    assert len(aside(seg(rec, 21))) == 1
    assert cli("buffer", "check", data=tmp_path).exit_code == 0
    with RecordStore(rec, CFG) as s:
        assert s.append(docs(1, 25)).seqs == [31]


def test_buffer_check_repair_refuses_while_the_store_is_held(tmp_path):
    rec = build(tmp_path, 5)
    with RecordStore(rec, CFG):
        out = cli("buffer", "check", "--repair", data=tmp_path)
    assert out.exit_code == 1 and "open for writing by another process" in out.output
    assert out.output.count("\n") == 1 and "Traceback" not in out.output


def test_cli_errors_are_one_line(tmp_path):
    for args in (["records"], ["buffer", "check"]):
        out = cli(*args, data=tmp_path / "nothing")
        assert out.exit_code == 1 and out.output.startswith("Error: ") and out.output.count("\n") == 1
    build(tmp_path, 3)
    out = cli("records", "--limit", "-1", data=tmp_path)
    assert out.exit_code == 2 and "Traceback" not in out.output
    shutil.rmtree(tmp_path / "records" / "segments")
    (tmp_path / "records" / "segments").write_text("not a directory")
    for args in (["records"], ["buffer", "check"]):
        out = cli(*args, data=tmp_path)
        assert out.exit_code == 1 and out.output.startswith("Error: ") and out.output.count("\n") == 1, out.output


def test_a_reader_whose_writer_goes_on_appending_sees_no_damage(tmp_path):
    with RecordStore(tmp_path, CFG) as writer:
        writer.append(docs(15))
        reader = RecordStore(tmp_path, readonly=True)
        writer.append(docs(10, 15))  # grows the reader's newest segment and starts another
        writer.mark_processed(25)
        assert [d["seq"] for d in reader.iter_records(newest_first=False)] == list(range(1, 16))
        assert reader.check_all() == [] and reader.stats()["damage"] == []
        reader.close()


def test_a_crash_in_the_middle_of_recovery_is_recovered_by_the_next_open(tmp_path, monkeypatch):
    from gateway.buffer import store as store_mod

    rec = build(tmp_path, 25)
    seg(rec, 21).write_bytes(seg(rec, 21).read_bytes()[:-30])  # the active segment, cut off

    def crash(path):
        raise RuntimeError("power cut")

    monkeypatch.setattr(store_mod, "keep_aside", crash)  # after the new segment, before the old one is set aside
    with pytest.raises(RuntimeError):
        RecordStore(rec, CFG)
    monkeypatch.undo()
    with RecordStore(rec, CFG) as s:
        [d] = s.damage  # now an older segment, recovered in its range 21..30
        assert d.file == str(seg(rec, 21)) and d.recovered == 4 and "6 records of seqs 21..30 not recovered" in d.lost
        assert s.append(docs(1, 25)).seqs == [31]
