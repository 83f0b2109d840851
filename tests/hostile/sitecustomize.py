"""Loaded by a test's `loan-engine run` process only (its PYTHONPATH starts
here): runs the statement HOSTILE_ACTION just before every call of
HOSTILE_BEFORE ("module:function"; the call's `args` and `kwargs` are at
hand), so that a fault lands at a fixed point of the run, e.g. the output
folder replaced after the run checked it."""

import importlib
import os

_target = os.environ.get("HOSTILE_BEFORE")
if _target:
    _module_name, _name = _target.rsplit(":", 1)
    _module = importlib.import_module(_module_name)
    _original = getattr(_module, _name)

    def _hooked(*args, **kwargs):
        exec(os.environ["HOSTILE_ACTION"], {"args": args, "kwargs": kwargs})
        return _original(*args, **kwargs)

    setattr(_module, _name, _hooked)
