"""``edgeseg evaluate`` on folders of one mask per structure (TotalSegmentator's output, dataset).

A mask folder must score exactly as the label map it stands for, on either side, in any label
set; a voxel two masks share goes to the later TotalSegmentator class, with a warning; masks on
different grids and folders without organ masks are refused by name while the rest of the
batch is scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_evaluator_cli import _labels, _run, _write

from evaluator.errors import EvaluationError
from evaluator.labels import FLARE_LABELS
from evaluator.labelsets import PRESETS
from evaluator.masks import read_mask_folder

_ORGAN_OF_VALUE = {value: organ for organ, value in FLARE_LABELS.items()}


def _write_masks(folder: Path, labels: np.ndarray, extra: bool = True) -> None:
    """One uint8 0/1 mask per organ of a FLARE label map, as TotalSegmentator writes them."""
    for value in np.unique(labels[labels > 0]):
        _write(folder / f"{_ORGAN_OF_VALUE[int(value)]}.nii.gz", (labels == value).astype(np.uint8))
    if extra:  # a structure no abdominal label table has: never read
        _write(folder / "vertebrae_L1.nii.gz", np.ones_like(labels))


def _organs(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["organs"]


def _rows(out: Path) -> list[dict[str, str]]:
    import csv

    with (out / "cases.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def label_maps(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt_maps", tmp_path / "pred_maps"
    _write(gt / "s0001.nii.gz", _labels())
    _write(gt / "s0002.nii.gz", _labels(gallbladder=False))
    _write(pred / "s0001.nii.gz", _labels(shift=1))
    _write(pred / "s0002.nii.gz", _labels())  # a gallbladder where the truth has none
    return pred, gt


def _score(pred: Path, gt: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q", *extra], capsys)
    return code, err


def test_mask_folders_score_as_their_label_maps(label_maps, tmp_path, capsys) -> None:
    pred_maps, gt_maps = label_maps
    code, err = _score(pred_maps, gt_maps, tmp_path / "maps", capsys)
    assert code == 0, err
    expected = _organs(tmp_path / "maps")
    assert expected["gallbladder"]["presence"]["fp"] == 1  # the fixture does test something

    # TotalSegmentator output: PRED/<case>/<organ>.nii.gz
    pred_masks = tmp_path / "pred_masks"
    _write_masks(pred_masks / "s0001", _labels(shift=1))
    _write_masks(pred_masks / "s0002", _labels())
    code, err = _score(pred_masks, gt_maps, tmp_path / "pred_side", capsys)
    assert code == 0, err
    assert _organs(tmp_path / "pred_side") == expected

    # The TotalSegmentator dataset: GT/<subject>/ct.nii.gz + segmentations/<organ>.nii.gz
    gt_dataset = tmp_path / "totalseg_dataset"
    for subject, labels in (("s0001", _labels()), ("s0002", _labels(gallbladder=False))):
        _write(gt_dataset / subject / "ct.nii.gz", np.zeros(labels.shape, np.int16))
        _write_masks(gt_dataset / subject / "segmentations", labels)
    code, err = _score(pred_maps, gt_dataset, tmp_path / "gt_side", capsys)
    assert code == 0, err
    assert _organs(tmp_path / "gt_side") == expected

    # The merged map takes the values of the label set in use, so naming TotalSegmentator's
    # numbering for the masks changes nothing.
    code, err = _score(pred_masks, gt_dataset, tmp_path / "both", capsys,
                       "--pred-labels", "totalsegmentator", "--gt-labels", "totalsegmentator")
    assert code == 0, err
    assert _organs(tmp_path / "both") == expected


def test_an_organ_without_a_mask_is_not_segmented(label_maps, tmp_path, capsys) -> None:
    _, gt_maps = label_maps
    pred = tmp_path / "pred"
    _write_masks(pred / "s0001", _labels())
    _write_masks(pred / "s0002", _labels(gallbladder=False))
    (pred / "s0001" / "gallbladder.nii.gz").unlink()
    code, err = _score(pred, gt_maps, tmp_path / "out", capsys)
    assert code == 0, err
    gallbladder = _organs(tmp_path / "out")["gallbladder"]
    assert gallbladder["presence"]["fn"] == 1 and gallbladder["presence"]["tn"] == 1
    assert _organs(tmp_path / "out")["liver"]["metrics"]["dsc"]["mean"] == 1.0


def test_overlapping_masks_go_to_the_later_totalsegmentator_class(label_maps, tmp_path,
                                                                    capsys) -> None:
    # TotalSegmentator's --ml map gives a shared voxel to the class its class map lists later:
    # liver (5) after spleen (1).
    _, gt_maps = label_maps
    pred = tmp_path / "pred"
    _write_masks(pred / "s0001", _labels())
    _write_masks(pred / "s0002", _labels(gallbladder=False))
    liver = (_labels() == 1).astype(np.uint8)
    liver[4, 14, 14] = 1  # inside the spleen
    _write(pred / "s0001" / "liver.nii.gz", liver)
    code, err = _score(pred, gt_maps, tmp_path / "out", capsys)
    assert code == 0, err
    assert (f"edgeseg: warning: {pred / 's0001'}: 1 voxel(s) lie in two masks (spleen and "
            "liver: 1); each went to the second organ named") in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any("lie in two masks" in w for w in summary["warnings"])
    rows = {(r["case"], r["organ"]): r for r in _rows(tmp_path / "out")}
    assert (rows["s0001", "liver"]["fp"], rows["s0001", "spleen"]["fn"]) == ("1", "1")
    # Scoring the spleen alone leaves the liver's claim on the voxel in force.
    code, err = _score(pred, gt_maps, tmp_path / "spleen", capsys, "--organ", "spleen")
    assert code == 0, err
    alone = {(r["case"], r["organ"]): r for r in _rows(tmp_path / "spleen")}
    assert alone["s0001", "spleen"] == rows["s0001", "spleen"]
    assert rows["s0002", "liver"]["dsc"] == "1"  # the other case is untouched


def test_only_the_scored_organs_masks_are_read(label_maps, tmp_path, capsys) -> None:
    _, gt_maps = label_maps
    pred = tmp_path / "pred"
    _write_masks(pred / "s0001", _labels())
    _write_masks(pred / "s0002", _labels(gallbladder=False))
    (pred / "s0001" / "spleen.nii.gz").write_bytes(b"not a NIfTI file")
    code, err = _score(pred, gt_maps, tmp_path / "liver_only", capsys, "--organ", "liver")
    assert code == 0, err
    code, err = _score(pred, gt_maps, tmp_path / "all", capsys)
    assert code == 2 and "s0001/spleen.nii.gz" in err


def test_masks_on_different_grids_are_refused(tmp_path) -> None:
    folder = tmp_path / "case"
    _write_masks(folder, _labels(), extra=False)
    _write(folder / "liver.nii.gz", (_labels() == 1).astype(np.uint8), spacing=(1.0, 1.0, 3.0))
    # The grid is the first mask's in TotalSegmentator's class order: spleen (1).
    with pytest.raises(EvaluationError, match=r"liver\.nii\.gz: not on the grid of the mask "
                                              r"spleen\.nii\.gz: spacing"):
        read_mask_folder(folder, PRESETS["flare"])


def test_folder_without_masks_of_the_label_set_is_refused(tmp_path) -> None:
    folder = tmp_path / "case"
    _write(folder / "spleen.nii.gz", (_labels() == 3).astype(np.uint8))
    with pytest.raises(EvaluationError, match=r"case: no mask of an organ of label set "
                                              r"'chaos_ct' \(expected files such as liver"):
        read_mask_folder(folder, PRESETS["chaos_ct"])
    volume = read_mask_folder(folder, PRESETS["flare"])
    assert set(np.unique(volume.array)) == {0, FLARE_LABELS["spleen"]}


def test_real_totalsegmentator_map_split_into_masks_scores_as_itself(
        shared_data: Path, tmp_path: Path, capsys) -> None:
    # Real geometry (3 mm, TotalSegmentator's own output): the masks, merged back, must give
    # the multi-label map voxel for voxel, so every organ scores DSC = NSD = 1.
    import SimpleITK as sitk

    source = shared_data / "totalseg_examples" / "example_seg.nii.gz"
    image = sitk.ReadImage(str(source))
    labels = sitk.GetArrayFromImage(image)
    for organ, (low, high) in PRESETS["totalsegmentator"].ranges.items():
        mask = sitk.GetImageFromArray(((labels >= low) & (labels <= high)).astype(np.uint8))
        mask.CopyInformation(image)
        (tmp_path / "pred" / "example").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(mask, str(tmp_path / "pred" / "example" / f"{organ}.nii.gz"))
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "example.nii.gz").write_bytes(source.read_bytes())
    code, err = _score(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", capsys,
                       "--gt-labels", "totalsegmentator")
    assert code == 0, err
    organs = _organs(tmp_path / "out")
    assert len(organs) == 13
    present = [o for o, s in organs.items() if s["presence"]["tp"] == 1]
    assert len(present) >= 10  # the example holds most abdominal organs
    for organ in organs:
        assert organs[organ]["metrics"]["dsc"]["mean"] == 1.0, organ
        assert organs[organ]["metrics"]["nsd"]["mean"] == 1.0, organ
