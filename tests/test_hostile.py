"""A fast slice of ``benchmarks/hostile.py`` (issue 14's acceptance measurement), run in this process.

The slice is the part that needs no extra process: broken ``config.json`` files read by ``sample``, malformed
``--set`` items, and every numeric flag of ``sample`` with nan, inf, -1, 0 (the huge values, which may
allocate without bound, stay in the capped worker of the full script). It asserts that every case is ok: no
traceback and no silent wrong result. The harness's own judgement (what counts as a traceback, which outcome
wins) is tested too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import benchmark_module

hostile = benchmark_module("hostile")

# the in-process families the slice takes, and the fixture runs they need (only `masked`)
SLICE = re.compile(r"^(config:(?!method\.name).*/sample|set-syntax:|flag:sample/--[a-z-]+=(nan|inf|-1|0)$)")


def test_call_kinds():
    """One-line errors and argparse's usage are errors; an escaped exception, a printed traceback or a long
    stderr is a traceback; a process that died of a signal is a traceback."""
    Call = hostile.Call
    assert Call(["x"], rc=2, err="error: bad --n; pass a positive number\n").kind == "error"
    usage = "usage: textdiffusion sample [-h]\n   [--n N]\n   [--seed S]\ntextdiffusion: error: x\n"
    assert Call(["x"], rc=2, err=usage).kind == "error"
    assert Call(["x"], rc=0, err="").kind == "exit0"
    assert Call(["x"], exc="ZeroDivisionError: division by zero").kind == "traceback"
    assert Call(["x"], rc=1, err="Traceback (most recent call last):\n  File x\nValueError: y\n").kind == "traceback"
    assert Call(["x"], rc=1, err="a\nb\nc\nd\ne\n").kind == "traceback"
    assert Call(["x"], rc=-9).kind == "traceback"
    # progress bars and warnings before a one-line error do not make it a traceback
    noisy = "compare: 100%|####| 3/3 [00:00<00:00, 18.60job/s]\nUserWarning: x\nerror: broken run; retrain\n"
    assert Call(["x"], rc=2, err=noisy).kind == "error"


def test_judgements():
    Call = hostile.Call
    accepted, refused_, crashed = Call(["x"], rc=0), Call(["x"], rc=2, err="error: no\n"), Call(["x"], exc="E: x")
    assert hostile.refused(accepted)[0] == "silent-wrong"
    assert hostile.refused(refused_)[0] == "ok"
    assert hostile.refused(crashed)[0] == "traceback"
    assert hostile.works(refused_, "lost")[0] == "lost"
    assert hostile.legal_or_refused(accepted, True, "v")[0] == "ok"
    assert hostile.legal_or_refused(accepted, False, "v")[0] == "silent-wrong"
    assert hostile.worst(("ok", ""), ("traceback", "t"), ("lost", "l"))[0] == "lost"
    assert hostile.worst(("ok", "fine"))[0] == "ok"


def test_legal_values():
    assert hostile.is_legal("train.lr", "1e-3", False)
    assert not hostile.is_legal("train.lr", "nan", False)
    assert not hostile.is_legal("train.lr", "-1", False)
    assert not hostile.is_legal("model.n_layer", "1e30", True)  # a count beyond reason
    assert hostile.is_legal("train.time_budget_s", "1e30", False)  # a budget may be unlimited
    assert not hostile.is_legal("model.n_layer", "2.5", True)
    assert not hostile.is_legal("model.dropout", "2", False)


def test_case_ids_are_unique_and_every_case_names_its_issue_item():
    cases = hostile.all_cases()
    assert len({c.id for c in cases}) == len(cases)
    assert {c.item for c in cases} <= {"1", "2", "3", "4", "5", "6", "7", hostile.AUDIT}
    assert {"1", "2", "3", "4", "5", "6", "7", hostile.AUDIT} <= {c.item for c in cases}
    assert {c.family for c in cases if c.item == hostile.AUDIT} == {"deep-json", "symlink-loop", "encoding",
                                                                   "non-utf8", "memory", "live-page",
                                                                   "serve-host", "serve-hangup", "nan-json"}
    assert {c.family for c in _slice()} == {"config.json", "set-syntax", "flags"}


def _slice() -> list:
    return [c for c in hostile.all_cases() if SLICE.search(c.id) and not c.risky and not c.proc]


@pytest.fixture(scope="module")
def work(tmp_path_factory, shakespeare) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    hostile.make_fixtures(root, ("masked",))
    return root


def test_no_traceback_from_config_set_and_flags(work):
    cases = _slice()
    assert len(cases) > 100
    results = [hostile.run_case(c, work, i) for i, c in enumerate(cases)]
    assert not [r for r in results if r.outcome == hostile.HARNESS_ERROR], "the harness failed on a case"
    not_ok = [f"{r.id}: {r.outcome}: {r.reason}" for r in results if r.outcome != "ok"]
    assert not not_ok, f"{len(not_ok)} of {len(results)} cases are not ok:\n" + "\n".join(not_ok)


# one cheap in-process case of each audit family that needs only the `masked` fixture
AUDIT_SLICE = re.compile(r"^audit:(config\.json 10000 deep/(sample|config)$|symlink loop as (sample RUN|config "
                         r"--config)$|config under ascii$|non-UTF-8 name/printed)")


def test_the_audit_families_answer_in_one_line(work):
    cases = [c for c in hostile.all_cases() if AUDIT_SLICE.search(c.id)]
    assert {c.family for c in cases} == {"deep-json", "symlink-loop", "encoding", "non-utf8"} and len(cases) == 6
    results = [hostile.run_case(c, work, i) for i, c in enumerate(cases)]
    not_ok = [f"{r.id}: {r.outcome}: {r.reason}" for r in results if r.outcome != "ok"]
    assert not not_ok, "\n".join(not_ok)
