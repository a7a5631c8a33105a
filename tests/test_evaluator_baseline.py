"""``edgeseg evaluate --baseline``: the gate cannot be switched off, a bad baseline is refused
in one line before scoring, and the results are written before the gate decides the exit."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from test_evaluator_cli import _labels, _run, _write
from test_evaluator_input_checks import _one_line_error

from evaluator.errors import EvaluationError
from evaluator.protocols import get_protocol


@pytest.fixture
def regressed(tmp_path: Path, capsys) -> tuple[Path, Path, Path]:
    """(PRED, GT, baseline summary.json): the baseline is perfect, PRED's liver DSC is 0.667."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt / "case_a.nii.gz", _labels())
    _write(pred / "case_a.nii.gz", _labels())
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "base"), "-q"],
                        capsys)
    assert code == 0, err
    _write(pred / "case_a.nii.gz", _labels(shift=3))
    return pred, gt, tmp_path / "base" / "summary.json"


# --- --max-drop and --nsd-tolerance must be finite ---------------------------------------------


def test_regression_fails_the_gate(regressed, capsys) -> None:
    pred, gt, baseline = regressed
    code, _, err = _run(["evaluate", str(pred), str(gt), "--baseline", str(baseline),
                         "--max-drop", "0.005", "-q"], capsys)
    assert code == 1 and "liver dsc: 1.0000 -> 0.6667" in err


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "-0.1", "1e999"])
def test_max_drop_that_disables_the_gate_is_refused(regressed, tmp_path, capsys,
                                                    value) -> None:
    pred, gt, baseline = regressed
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "--baseline", str(baseline),
                         f"--max-drop={value}", "-o", str(out), "-q"], capsys)
    _one_line_error(code, err, "--max-drop must be a finite number >= 0")
    assert not out.exists()  # refused before anything is scored or written


@pytest.mark.parametrize("value", ["liver=inf", "liver=nan", "liver=1e999", "rk=-inf"])
def test_non_finite_nsd_tolerance_is_refused(regressed, tmp_path, capsys, value) -> None:
    pred, gt, _ = regressed
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "--nsd-tolerance", value,
                         "-o", str(out), "-q"], capsys)
    _one_line_error(code, err, "must be >= 0 mm and finite")
    assert not out.exists()
    with pytest.raises(EvaluationError, match="finite"):
        get_protocol("flare22", {"liver": math.inf})  # the API refuses it too


# --- the baseline is checked before scoring ----------------------------------------------------


def _set(path: list[str], value: object) -> Callable[[dict], None]:
    def edit(summary: dict) -> None:
        target = summary
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _drop(key: str) -> Callable[[dict], None]:
    return lambda summary: summary.pop(key)


BAD_BASELINES = {
    "string mean": (_set(["organs", "liver", "metrics", "dsc", "mean"], "x"),
                    "organs.liver.metrics.dsc.mean must be a finite number or null, got 'x'"),
    "boolean mean": (_set(["overall", "metrics", "dsc", "mean"], True),
                     "overall.metrics.dsc.mean must be a finite number or null, got True"),
    "organs a string": (_set(["organs"], "x"), "baseline organs must be an object, got str"),
    "organ block a list": (_set(["organs", "liver"], []),
                           "baseline organs.liver must be an object"),
    "no mean": (_set(["organs", "liver", "metrics", "dsc"], {"median": 1.0}),
                "organs.liver.metrics.dsc has no 'mean'"),
    "string fpr": (_set(["overall", "presence", "fpr"], "low"),
                   "overall.presence.fpr must be a finite number or null"),
    "no overall": (_drop("overall"), "baseline has no 'overall'"),
    "schema 2": (_set(["schema"], "edgeseg-evaluation/2"),
                 "not an edgeseg summary.json of schema 'edgeseg-evaluation/1' (it has schema "
                 "'edgeseg-evaluation/2')"),
    "no schema": (_drop("schema"), "(it has no schema)"),
    "other protocol": (_set(["protocol", "name"], "flare23"),
                       "baseline was scored with protocol 'flare23', this run uses 'flare22'"),
    "other tolerance": (_set(["protocol", "nsd_tolerance_mm", "liver"], 1.0),
                        "baseline scored liver NSD at 1.0 mm, this run at 5.0 mm"),
}


@pytest.mark.parametrize("name", list(BAD_BASELINES))
def test_bad_baseline_is_refused_before_scoring(regressed, tmp_path, capsys, name) -> None:
    pred, gt, baseline = regressed
    edit, message = BAD_BASELINES[name]
    summary = json.loads(baseline.read_text())
    edit(summary)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(summary))
    out = tmp_path / "out"
    code, stdout, err = _run(["evaluate", str(pred), str(gt), "--baseline", str(bad),
                              "-o", str(out)], capsys)
    _one_line_error(code, err, f"{bad}: ", message)
    assert stdout == "" and not out.exists()  # nothing scored, so nothing lost


@pytest.mark.parametrize("text", ['{"schema": "edgeseg-evaluation/1", "organs": {}, "overall": '
                                  '{"metrics": {"dsc": {"mean": NaN}}, "presence": {}}, '
                                  '"protocol": {"name": "flare22"}}', "[1, 2]", "{oops"])
def test_unreadable_or_nan_baseline_is_refused(regressed, tmp_path, capsys, text) -> None:
    pred, gt, _ = regressed
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    code, _, err = _run(["evaluate", str(pred), str(gt), "--baseline", str(bad), "-q"], capsys)
    _one_line_error(code, err, f"{bad}: ")


def test_protocol_mismatch_names_both_protocols(regressed, capsys) -> None:
    pred, gt, baseline = regressed
    code, _, err = _run(["evaluate", str(pred), str(gt), "--baseline", str(baseline),
                         "--protocol", "chaos", "-q"], capsys)
    _one_line_error(code, err, str(baseline), "'flare22'", "'chaos'")


def test_override_of_an_organ_the_baseline_lacks_is_comparable(regressed, capsys) -> None:
    pred, gt, baseline = regressed
    code, _, err = _run(["evaluate", str(pred), str(gt), "--baseline", str(baseline),
                         "--nsd-tolerance", "lesion=1", "-q"], capsys)
    assert code == 1 and "liver dsc" in err  # compared, not refused


def test_results_are_written_before_the_gate_fails(regressed, tmp_path, capsys) -> None:
    pred, gt, baseline = regressed
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "--baseline", str(baseline),
                         "-o", str(out), "--junit", "-q"], capsys)
    assert code == 1, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["organs"]["liver"]["metrics"]["dsc"]["mean"] == pytest.approx(2 / 3)
    assert (out / "cases.csv").is_file()
    assert 'name="liver.dsc"' in (out / "junit.xml").read_text()
