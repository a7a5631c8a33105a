"""``edgeseg evaluate`` refusing bad input and unsafe outputs: one line, exit code 2, no loss.

Truncated and non-finite NIfTI label maps, unknown ``--organ`` names, unusable or occupied
output folders, options that need ``--output``, and predictions without ground truth.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_evaluator_cli import _labels, _run, _write

from evaluator.atomic import atomic_dir, atomic_path, write_text_atomic
from evaluator.errors import EvaluationError, OutputPathError
from evaluator.nifti_check import parse_header
from evaluator.volumes import read_label_file


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """PRED and GT with two cases, both predicted perfectly."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for case in ("case_a", "case_b"):
        _write(gt / f"{case}.nii.gz", _labels())
        _write(pred / f"{case}.nii.gz", _labels())
    return pred, gt


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("edgeseg: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# --- 1. truncated NIfTI ------------------------------------------------------------------------


def _nifti_bytes(tmp_path: Path, byte_order: str) -> bytes:
    """A complete uncompressed NIfTI-1 label map in the given byte order ("<" or ">")."""
    path = tmp_path / f"full_{'le' if byte_order == '<' else 'be'}.nii"
    if byte_order == "<":
        _write(path, _labels())
    else:
        # nibabel stores x, y, z (_write's SimpleITK array is z, y, x) in RAS; ITK's identity
        # direction in LPS is this affine.
        header = nib.Nifti1Header(endianness=">")
        header.set_data_dtype(np.uint8)
        affine = np.diag([-1.0, -1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(_labels().transpose(2, 1, 0), affine, header=header), path)
    return path.read_bytes()


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("side", ["prediction", "ground truth"])
def test_truncated_uncompressed_nifti_is_refused(folders, tmp_path, capsys, byte_order,
                                                 side) -> None:
    pred, gt = folders
    full = _nifti_bytes(tmp_path, byte_order)
    folder = pred if side == "prediction" else gt
    (folder / "case_a.nii.gz").unlink()
    (folder / "case_a.nii").write_bytes(full)
    out = tmp_path / "complete"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 0, err  # the complete file is a valid label map
    assert _summary(out)["organs"]["liver"]["metrics"]["dsc"]["mean"] == 1.0

    (folder / "case_a.nii").write_bytes(full[: len(full) // 2])  # as `head -c`
    out = tmp_path / "cut"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 2 and "Traceback" not in err
    voxels = int(np.prod(_labels().shape))
    assert (f"case_a.nii: truncated NIfTI: header needs {voxels} bytes of voxel data, file "
            f"holds {len(full) // 2 - 352}") in err
    (failed,) = _summary(out)["cases"]["failed"]
    assert (failed["case"], failed["side"]) == ("case_a", side)
    # The batch went on: case_b is scored (and a broken prediction counts as worst case).
    assert _summary(out)["cases"]["voxel"] == (2 if side == "prediction" else 1)


def test_complete_gzip_of_a_truncated_nifti_is_refused(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    full = _nifti_bytes(tmp_path, "<")
    (pred / "case_a.nii.gz").write_bytes(gzip.compress(full[: len(full) // 2]))
    code, _, err = _run(["evaluate", str(pred), str(gt), "-q"], capsys)
    assert code == 2
    assert "case_a.nii.gz: truncated NIfTI" in err and "decompressed file holds" in err


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_nifti2_header_is_sized_and_truncation_refused(tmp_path, byte_order) -> None:
    labels = np.zeros((20, 20, 12), np.uint16)
    path = tmp_path / "n2.nii"
    header = nib.Nifti2Header(endianness=byte_order)
    header.set_data_dtype(np.uint16)
    nib.save(nib.Nifti2Image(labels, np.eye(4), header=header), path)
    data = path.read_bytes()
    parsed = parse_header(data[:540])
    assert parsed is not None and parsed.version == 2
    assert parsed.shape == (20, 20, 12) and parsed.data_bytes == labels.size * 2
    assert parsed.data_end == len(data)
    path.write_bytes(data[:-100])
    with pytest.raises(EvaluationError, match="truncated NIfTI: header needs 9600 bytes"):
        read_label_file(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("side", ["prediction", "ground truth"])
def test_nifti_without_voxel_size_is_refused(folders, tmp_path, capsys, suffix, side) -> None:
    # nifticlib reads pixdim 0 as 1 mm: prediction and truth would agree on a made-up spacing
    # and NSD would apply its millimetre tolerance to it.
    pred, gt = folders
    folder = pred if side == "prediction" else gt
    raw = bytearray(_nifti_bytes(tmp_path, "<"))
    raw[80:92] = np.array([2.0, 0.0, 1.0], "<f4").tobytes()  # pixdim[1:4]
    (folder / "case_a.nii.gz").unlink()
    (folder / f"case_a{suffix}").write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"case_a{suffix}: the NIfTI header gives no usable voxel size (pixdim 2, 0, 1)" in err
    (failed,) = _summary(out)["cases"]["failed"]
    assert (failed["case"], failed["side"]) == ("case_a", side)


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_nifti2_without_voxel_size_is_refused(tmp_path, byte_order) -> None:
    path = tmp_path / "n2.nii"
    header = nib.Nifti2Header(endianness=byte_order)
    header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti2Image(np.zeros((8, 9, 10), np.uint8), np.diag([1.5, 2.0, 3.0, 1.0]),
                             header=header), path)
    data = bytearray(path.read_bytes())
    assert parse_header(bytes(data[:540])).voxel_size == (1.5, 2.0, 3.0)
    data[120:128] = np.array([np.nan], f"{byte_order}f8").tobytes()  # pixdim[2]
    path.write_bytes(data)
    with pytest.raises(EvaluationError, match=r"no usable voxel size \(pixdim 1\.5, nan, 3\)"):
        read_label_file(path)


# --- 2. NaN and infinite voxels ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd"])
@pytest.mark.parametrize(("side", "bad"), [("prediction", np.nan), ("ground truth", np.inf)])
def test_non_finite_label_values_are_refused(folders, tmp_path, capsys, suffix, side,
                                             bad) -> None:
    pred, gt = folders
    folder = pred if side == "prediction" else gt
    labels = _labels().astype(np.float32)
    (folder / "case_a.nii.gz").unlink()
    _write(folder / f"case_a{suffix}", labels)
    out = tmp_path / "finite"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 0, err  # integer values stored as float are fine

    labels[5, 5, 5] = bad
    _write(folder / f"case_a{suffix}", labels)
    out = tmp_path / "bad"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 2
    assert f"case_a{suffix}: label map contains NaN or infinite values" in err
    (failed,) = _summary(out)["cases"]["failed"]
    assert (failed["case"], failed["side"]) == ("case_a", side)


# --- 3. unknown --organ names ------------------------------------------------------------------


@pytest.mark.parametrize("organs", [["liver", "foo"], ["foo"]])
def test_unknown_organ_is_an_error_naming_it(folders, tmp_path, capsys, organs) -> None:
    pred, gt = folders
    out = tmp_path / "out"
    argv = ["evaluate", str(pred), str(gt), "-o", str(out), "-q"]
    for organ in organs:
        argv += ["--organ", organ]
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "unknown organ 'foo'", "liver, kidney_right")
    assert not out.exists()


def test_organ_aliases_still_select(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "--organ", "RK", "--organ", "Liver",
                         "-o", str(out), "-q"], capsys)
    assert code == 0, err
    assert set(_summary(out)["organs"]) == {"liver", "kidney_right"}


# --- 4. output paths that cannot be folders ----------------------------------------------------


def test_output_below_a_file_is_a_one_line_error(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    blocker = tmp_path / "some_file.txt"
    blocker.write_text("not a folder\n")
    before = sorted(tmp_path.rglob("*"))
    for target in (blocker / "x", blocker):
        code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(target), "-q"], capsys)
        _one_line_error(code, err, f"{target}: output path", "not a folder")
    assert sorted(tmp_path.rglob("*")) == before and blocker.read_text() == "not a folder\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")
def test_output_where_no_folder_can_be_made_is_a_one_line_error(folders, capsys) -> None:
    pred, gt = folders
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", "/proc/evx", "-q"], capsys)
    _one_line_error(code, err, "/proc/evx: cannot create or write the output folder")


def test_atomic_writers_raise_a_clear_oserror(tmp_path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    attempts = [
        lambda: write_text_atomic(blocker / "sub" / "summary.json", "{}"),
        lambda: write_text_atomic(blocker / "summary.json", "{}"),
        lambda: atomic_dir(blocker / "bundle").__enter__(),
        lambda: atomic_path(blocker / "model.onnx").__enter__(),
    ]
    for attempt in attempts:
        with pytest.raises(OutputPathError, match=r"file\.txt") as info:
            attempt()
        # Catchable as an OSError (export/ and the runtime) and as an EvaluationError (CLI).
        assert isinstance(info.value, OSError) and isinstance(info.value, EvaluationError)
        assert "\n" not in str(info.value) and "Errno" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


# --- 5. predictions without ground truth -------------------------------------------------------


def test_predictions_without_ground_truth_are_named(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    _write(pred / "case_9999.nii.gz", _labels())
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out)], capsys)
    assert code == 0, err
    assert "1 prediction(s) without ground truth, not scored: case_9999" in err
    assert _summary(out)["cases"]["ignored_predictions"] == 1
    code, _, err = _run(["evaluate", str(pred), str(gt)], capsys)  # without -o too
    assert code == 0 and "case_9999" in err
    code, _, err = _run(["evaluate", str(pred), str(gt), "-q"], capsys)
    assert code == 0 and err == ""


# --- 6. earlier results in the output folder ---------------------------------------------------


def test_earlier_results_are_not_replaced_without_overwrite(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    out = tmp_path / "out"
    assert _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _write(pred / "case_a.nii.gz", _labels(shift=3))  # a worse run
    for extra in ([], ["--baseline", str(out / "summary.json")]):
        code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q", *extra],
                            capsys)
        _one_line_error(code, err, f"{out}: holds cases.csv, summary.json", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # --overwrite: the baseline in the same folder is read before it is replaced.
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q", "--overwrite",
                         "--baseline", str(out / "summary.json")], capsys)
    assert code == 1 and "liver dsc" in err  # compared against the old summary
    old = json.loads(before["summary.json"])["organs"]["liver"]["metrics"]["dsc"]["mean"]
    new = _summary(out)["organs"]["liver"]["metrics"]["dsc"]["mean"]
    assert new < old
    assert sorted(p.name for p in out.iterdir()) == ["cases.csv", "summary.json"]


def test_other_files_in_the_output_folder_are_fine(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    out = tmp_path / "reports"
    out.mkdir()
    (out / "junit.xml").write_text("<testsuite/>\n")  # e.g. pytest's, not ours
    (out / "notes.txt").write_text("keep\n")
    assert _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)[0] == 0
    assert (out / "junit.xml").read_text() == "<testsuite/>\n"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q", "--junit",
                         "--overwrite"], capsys)
    assert code == 0, err
    assert 'name="edgeseg-evaluate"' in (out / "junit.xml").read_text()
    assert (out / "notes.txt").read_text() == "keep\n"


def test_failed_write_keeps_earlier_results_whole(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "cases.csv").write_text("earlier\n")
    (out / "summary.json").mkdir()  # cannot be replaced by a file
    code, stdout, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "--overwrite"],
                             capsys)
    _one_line_error(code, err, f"{out}: cannot write results")
    assert "liver" in stdout  # the scores are still shown
    assert (out / "cases.csv").read_text() == "earlier\n"  # not half old, half new
    assert sorted(p.name for p in out.iterdir()) == ["cases.csv", "summary.json"]


# --- 7. options that need --output -------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--junit", "--overwrite"])
def test_output_flags_without_output_are_errors(folders, capsys, flag) -> None:
    pred, gt = folders
    code, _, err = _run(["evaluate", str(pred), str(gt), flag, "-q"], capsys)
    _one_line_error(code, err, f"{flag} needs --output DIR")


def test_label_map_named_in_latin1_fails_its_case_only(folders, tmp_path, capsys) -> None:
    # SimpleITK aborts the process (SIGABRT) on a name that is not valid UTF-8.
    import os

    pred, gt = folders
    os.rename(pred / "case_a.nii.gz", os.fsencode(pred) + b"/case_\xe4.nii.gz")
    os.rename(gt / "case_a.nii.gz", os.fsencode(gt) + b"/case_\xe4.nii.gz")
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 2 and "the file name is not valid UTF-8, which ITK cannot open" in err
    summary = _summary(out)
    assert summary["cases"]["voxel"] == 1  # case_b scored
