import pytest

from loan_engine_dagster.adapters.incidents import classify, one_line


@pytest.mark.parametrize(
    ("phase", "error_type", "message", "kind"),
    [
        # Loading reference data or batch inputs, and every structural error, point to data.
        ("reference_data", "StructuralError", "Data problem in file 'current_assets.csv' ...", "data"),
        ("batch_inputs", "StructuralError", "Data problem in file 'SFY_....xlsx' ...", "data"),
        ("reference_data", "ValueError", "could not convert string to float", "data"),
        ("eligibility", "StructuralError", "Data problem ...", "data"),
        # An unexpected exception in a rules phase points to code.
        ("normalized_loans", "KeyError", "'loan_program'", "code"),
        ("underwriting", "TypeError", "unsupported operand", "code"),
        ("comap", "IndexError", "index 3 is out of bounds", "code"),
        ("eligibility", "ZeroDivisionError", "division by zero", "code"),
        ("exports", "AttributeError", "'NoneType' object has no attribute 'columns'", "code"),
        # A dead worker, a timeout or a database connection failure points to infra.
        ("underwriting", None, "Run worker disappeared: process 4242 of run r (batch b) is gone", "infra"),
        (None, None, "Run timed out after exceeding maximum runtime of 7200 seconds", "infra"),
        ("results_database", "OperationalError", "could not connect to server: Connection refused", "infra"),
        ("exports", "MemoryError", "", "infra"),
        # The machine refused a read or a write: infra in any phase (it was
        # `code` after the rules phases, `data` in the reading ones).
        ("exports", "OSError", "[Errno 28] No space left on device", "infra"),
        ("exports", "OSError", "writing /out/x.xlsx: Failed to write file: No space left on device (os error 28)", "infra"),
        ("results_database", "PermissionError", "[Errno 13] Permission denied: '/out/.2026-02-19.staging-r'", "infra"),
        ("batch_inputs", "PermissionError", "[Errno 13] Permission denied: '/home/.dagster/storage/batch_inputs'", "infra"),
        ("reference_data", "OSError", "[Errno 122] Disk quota exceeded", "infra"),
        ("exports", "OSError", "[Errno 30] Read-only file system: '/out/2026-02-19'", "infra"),
        ("normalized_loans", "OSError", "[Errno 5] Input/output error", "infra"),
        ("results_database", "ProgrammingError", "(psycopg2.errors.InsufficientPrivilege) permission denied for table loan_facts", "infra"),
        (None, None, "Run failed to start", "infra"),
    ],
)
def test_classification(phase, error_type, message, kind):
    assert classify(phase, error_type, message) == kind


def test_one_line_drops_type_prefix_and_keeps_first_line():
    assert one_line("StructuralError: Data problem in file 'x'\n\nStack trace", "StructuralError") == "Data problem in file 'x'"
    assert one_line("", None) == ""


def test_an_interrupted_run_says_so_in_words():
    # It said `dagster._core.errors.DagsterExecutionInterruptedError` and nothing else.
    assert one_line("dagster._core.errors.DagsterExecutionInterruptedError", "DagsterExecutionInterruptedError") == (
        "interrupted (Ctrl-C, or a signal to stop its worker)")
    assert classify("results_database", "DagsterExecutionInterruptedError", None) == "infra"
