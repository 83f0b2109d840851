"""Input files are read side by side, yet a batch with several bad files
reports the same one as when they were read one after the other."""

import datetime as dt

import pytest

from loan_engine_dagster.adapters.inbox import find_batch
from loan_engine_dagster.adapters.loading import load_batch_inputs, load_reference
from loan_engine_dagster.adapters.sample import generate_inbox
from loan_engine_dagster.rules.errors import StructuralError


@pytest.fixture
def inbox(tmp_path, rules):
    generate_inbox(tmp_path, batch=dt.date(2026, 2, 19), loans=20, existing=20)
    return find_batch(tmp_path, "2026-02-19", rules.inbox.tape_lookback_days)


def _spoil(path):
    path.write_bytes(b"not a workbook")


def _headerless(path):
    path.write_text("a,b\n1,2\n")


def test_both_exhibits_bad_names_the_sfy_one(inbox, rules):
    for path in inbox.exhibits.values():
        _spoil(path)
    _headerless(inbox.tape)
    with pytest.raises(StructuralError) as caught:
        load_batch_inputs(inbox, rules)
    assert caught.value.file == inbox.exhibits["sfy"].name


def test_bad_prime_exhibit_is_named_before_a_bad_tape(inbox, rules):
    _spoil(inbox.exhibits["prime"])
    _headerless(inbox.tape)
    with pytest.raises(StructuralError) as caught:
        load_batch_inputs(inbox, rules)
    assert caught.value.file == inbox.exhibits["prime"].name


def test_a_bad_tape_parsed_first_still_waits_for_a_bad_exhibit(inbox, rules, monkeypatch):
    """The tape is parsed while the exhibits are still being read; its error
    is still raised only after theirs."""
    import time

    from loan_engine_dagster.adapters import loading

    read_sheet_first = loading._first_sheet

    def slow_exhibit(path):
        time.sleep(0.5)
        return read_sheet_first(path)

    monkeypatch.setattr(loading, "_first_sheet", slow_exhibit)
    _spoil(inbox.exhibits["prime"])
    _headerless(inbox.tape)
    with pytest.raises(StructuralError) as caught:
        load_batch_inputs(inbox, rules)
    assert caught.value.file == inbox.exhibits["prime"].name


def test_reference_problems_in_the_order_the_files_were_read(inbox, rules):
    reference = inbox.reference
    _spoil(reference["grids"])
    _headerless(reference["existing"])
    with pytest.raises(StructuralError) as caught:
        load_reference(reference, rules)
    assert caught.value.file == reference["existing"].name  # the assets file comes before the grids

    _spoil(reference["notes_master"])
    with pytest.raises(StructuralError) as caught:
        load_reference(reference, rules)
    assert caught.value.file == reference["notes_master"].name  # and the masters before both


def test_a_bad_grids_file_alone_is_reported(inbox, rules):
    _spoil(inbox.reference["grids"])
    with pytest.raises(StructuralError) as caught:
        load_reference(inbox.reference, rules)
    assert caught.value.file == inbox.reference["grids"].name


@pytest.mark.parametrize("role", ["sfy", "tape", "existing"])
def test_a_file_re_delivered_while_it_was_read_fails_the_phase_rather_than_record_the_new_ones_hash(
        inbox, rules, tmp_path, monkeypatch, role):
    # Past bug (hostile pass): the audit trail hashed each file again by its
    # name after the parse: a re-delivery landing in between was recorded
    # (sha256, size) beside the loans of the file that had been read.
    from loan_engine_dagster.adapters import loading
    from loan_engine_dagster.adapters.inbox import InboxChanged

    path = {**inbox.exhibits, "tape": inbox.tape, **inbox.reference}[role]
    describe = loading.describe_file

    def re_delivered_first(role_, path_):
        if path_ == path and not (tmp_path / "done").exists():
            (tmp_path / "done").touch()
            upload = path.with_name(".upload.tmp")
            upload.write_bytes(path.read_bytes() + (b"\n" if path.suffix == ".csv" else b""))
            upload.rename(path)  # a new delivery, as an upload lands: a new file in the name's place
        return describe(role_, path_)

    monkeypatch.setattr(loading, "describe_file", re_delivered_first)
    load = (lambda: load_reference(inbox.reference, rules)) if role == "existing" else (lambda: load_batch_inputs(inbox, rules))
    with pytest.raises(InboxChanged, match=f"{path.name} changed while this run read it"):
        load()
    assert (tmp_path / "done").exists()
    load()  # the files as they are now read as any others


def test_a_file_copied_over_with_its_old_size_and_time_while_read_is_caught(inbox, rules, tmp_path, monkeypatch):
    # Past bug (second read): `cp -p` or `rsync -t` over the file keeps its
    # inode, size and modification time; only the change time moves.
    import os

    from loan_engine_dagster.adapters import loading
    from loan_engine_dagster.adapters.inbox import InboxChanged

    path = inbox.reference["existing"]
    describe = loading.describe_file

    def copied_over_first(role_, path_):
        if path_ == path and not (tmp_path / "done").exists():
            (tmp_path / "done").touch()
            before = path.stat()
            path.write_bytes(path.read_bytes())  # the same inode, size and bytes, rewritten
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return describe(role_, path_)

    monkeypatch.setattr(loading, "describe_file", copied_over_first)
    with pytest.raises(InboxChanged):
        load_reference(inbox.reference, rules)
