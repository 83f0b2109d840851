import datetime as dt

import pytest

from loan_engine_dagster.adapters.inbox import REFERENCE_FILES, find_batch, parse_batch_key, resolve_inbox, scan_inbox


def touch(folder, *names):
    for name in names:
        (folder / name).write_bytes(b"x")


def exhibit(platform, date, suffix=""):
    return f"{platform}_{date}_ExhibitAtoFormofSaleNotice - Pre-Funding{suffix}.xlsx"


@pytest.fixture
def inbox(tmp_path):
    touch(tmp_path, *REFERENCE_FILES.values())
    return tmp_path


def test_complete_batch_uses_newest_tape_in_window(inbox):
    touch(inbox, exhibit("SFY", "02-19-2026"), exhibit("PRIME", "02-19-2026"),
          "Tape20Loans_02-14-2026.csv", "Tape20Loans_02-15-2026.csv", "Tape20Loans_02-18-2026.csv",
          "Tape20Loans_02-20-2026.csv")
    batch = scan_inbox(inbox, 4)["2026-02-19"]
    assert batch.complete and batch.tape.name == "Tape20Loans_02-18-2026.csv"


def test_tape_older_than_window_is_never_used(inbox):
    touch(inbox, exhibit("SFY", "02-19-2026"), exhibit("PRIME", "02-19-2026"), "Tape20Loans_02-14-2026.csv")
    batch = scan_inbox(inbox, 4)["2026-02-19"]
    assert not batch.complete
    assert batch.missing == ["a tape dated 2026-02-15..2026-02-19"]


def test_tape_on_window_start_is_used(inbox):
    touch(inbox, exhibit("SFY", "02-19-2026"), exhibit("PRIME", "02-19-2026"), "Tape20Loans_02-15-2026.csv")
    assert scan_inbox(inbox, 4)["2026-02-19"].complete


def test_two_files_for_one_exhibit_or_tape_are_never_chosen_between(inbox):
    # Past bug: of two names differing in case (the seller's re-send), the last
    # in sorted order was read and the other ignored, without a word.
    touch(inbox, exhibit("SFY", "02-19-2026"), exhibit("sfy", "02-19-2026").lower(), exhibit("PRIME", "02-19-2026"),
          "Tape20Loans_02-18-2026.csv", "tape20loans_02-18-2026.csv", "Tape20Loans_02-17-2026.csv")
    batch = scan_inbox(inbox, 4)["2026-02-19"]
    assert not batch.complete
    assert batch.missing == [
        "a single SFY exhibit (2 files match: 'SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx', "
        "'sfy_02-19-2026_exhibitatoformofsalenotice - pre-funding.xlsx'; keep one)",
        "a single tape dated 2026-02-18 (2 files match: 'Tape20Loans_02-18-2026.csv', 'tape20loans_02-18-2026.csv'; keep one)",
    ]
    (inbox / "tape20loans_02-18-2026.csv").unlink()
    (inbox / exhibit("SFY", "02-19-2026")).unlink()
    assert scan_inbox(inbox, 4)["2026-02-19"].complete


def test_missing_exhibit_and_reference_named(tmp_path):
    touch(tmp_path, exhibit("SFY", "02-19-2026"), "Tape20Loans_02-19-2026.csv", "MASTER_SHEET.xlsx")
    batch = scan_inbox(tmp_path, 4)["2026-02-19"]
    assert batch.missing == ["PRIME exhibit", "MASTER_SHEET - Notes.xlsx", "current_assets.csv", "Underwriting_Grids_COMAP.xlsx"]


@pytest.mark.parametrize("suffix", [" - Off-Cycle", "  -  Off-cycle", " - OFF-CYCLE", "-off-cycle",
                                    " - Off Cycle", " - offcycle", " - Off-Cycle "])
def test_offcycle_suffix_variants(inbox, suffix):
    # Past bug (hostile pass): `- off cycle` and a space before `.xlsx` were no
    # exhibit, and the tick said it waited for a file that was in the inbox.
    touch(inbox, exhibit("SFY", "03-05-2026", suffix), exhibit("PRIME", "03-05-2026", " - Off-Cycle"),
          "Tape20Loans_03-04-2026.csv")
    batches = scan_inbox(inbox, 4)
    assert list(batches) == ["2026-03-05-offcycle"]
    assert batches["2026-03-05-offcycle"].complete


def test_a_space_before_the_extension_is_spacing_too(inbox):
    touch(inbox, exhibit("SFY", "02-19-2026", " "), exhibit("PRIME", "02-19-2026"), "Tape20Loans_02-18-2026.csv")
    assert scan_inbox(inbox, 4)["2026-02-19"].complete


def test_on_and_off_cycle_are_separate_batches(inbox):
    touch(inbox, exhibit("SFY", "03-05-2026"), exhibit("PRIME", "03-05-2026", " - Off-Cycle"), "Tape20Loans_03-05-2026.csv")
    batches = scan_inbox(inbox, 4)
    assert batches["2026-03-05"].missing == ["PRIME exhibit"]
    assert batches["2026-03-05-offcycle"].missing == ["SFY exhibit"]


def test_junk_is_ignored(inbox):
    touch(inbox, "~$" + exhibit("SFY", "02-19-2026"), "." + exhibit("PRIME", "02-19-2026"),
          exhibit("SFY", "02-19-2026") + ".part", "notes.txt", "Tape20Loans_02-19-2026.csv.tmp",
          exhibit("SFY", "13-45-2026"), "random.xlsx")
    assert scan_inbox(inbox, 4) == {}


def test_servicing_files_listed(inbox):
    touch(inbox, exhibit("SFY", "02-19-2026"), exhibit("PRIME", "02-19-2026"), "Tape20Loans_02-19-2026.csv",
          "FX3_2026_002_18.xlsx", "FX4_2026_002_19.xlsx", "FX3_2025_002_18.xlsx")
    batch = scan_inbox(inbox, 4)["2026-02-19"]
    assert sorted(p.name for p in batch.servicing) == ["FX3_2026_002_18.xlsx", "FX4_2026_002_19.xlsx"]
    assert "servicing_0" in batch.files


def test_files_required_subfolder_is_the_inbox(tmp_path):
    (tmp_path / "files_required").mkdir()
    assert resolve_inbox(tmp_path) == tmp_path / "files_required"


def test_find_batch_without_any_file(inbox):
    batch = find_batch(inbox, "2026-02-26", 4)
    assert batch.missing == ["SFY exhibit", "PRIME exhibit", "a tape dated 2026-02-22..2026-02-26"]


@pytest.mark.parametrize("key", ["2026-2-19", "19-02-2026", "2026-02-19-extra", ""])
def test_bad_batch_keys(key):
    with pytest.raises(ValueError, match="is not YYYY-MM-DD"):
        parse_batch_key(key)


def test_batch_key_roundtrip():
    assert parse_batch_key("2026-02-19-offcycle") == (dt.date(2026, 2, 19), True)


def test_skip_message_names_the_newest_batches_already_run():
    from loan_engine_dagster.adapters.watch import WatchResult, WatchState

    keys = ["2026-01-29", "2026-02-05", "2026-02-12", "2026-02-19", "2026-02-26"]
    result = WatchResult(ready=[], pending={}, already_run=keys, reference_changed=[], state=WatchState())
    assert result.skip_message() == "already run with these exact files: 2026-02-12, 2026-02-19, 2026-02-26 and 2 earlier"


def test_a_file_named_for_the_first_days_of_year_one_is_a_batch_like_any_other(tmp_path):
    # Past bug (hostile pass): its tape window overflowed the calendar, and
    # every tick of both inbox sensors failed with a bare OverflowError.
    (tmp_path / "SFY_01-02-0001_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx").write_bytes(b"x")
    batch = scan_inbox(tmp_path, 4)["0001-01-02"]
    assert "a tape dated 0001-01-01..0001-01-02" in batch.missing
