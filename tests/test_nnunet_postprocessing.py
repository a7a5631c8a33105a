"""nnU-Net's own connected-component post-processing, carried by the bundle and run by predict.

``keep_largest_component_of_union`` must give nnU-Net's
``remove_all_but_largest_component_from_segmentation`` voxel for voxel; a bundle's
``largest_component_groups`` replaces the default largest component per organ, in its order;
a manifest naming an organ the model lacks is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_bundle import HU, make_bundle

from edge_seg.bundle import load_bundle
from edge_seg.errors import EdgesegError
from edge_seg.io import Volume
from edge_seg.options import PredictOptions
from edge_seg.postprocess import apply_component_groups, keep_largest_component_of_union
from edge_seg.predict import Predictor

SPACING = (2.0, 1.5, 1.5)


def _islands(seed: int) -> np.ndarray:
    """Three organs in blocks, some touching, and stray voxels of every label everywhere."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((24, 40, 40), np.uint8)
    labels[2:12, 4:20, 4:20] = 1
    labels[2:12, 20:30, 4:14] = 2  # touches organ 1
    labels[14:22, 24:36, 22:36] = 3
    labels[18:20, 2:4, 30:32] = 3  # a second, smaller body of organ 3
    spots = rng.integers(0, labels.size, 120)
    labels.ravel()[spots] = rng.integers(1, 4, 120)
    return labels


@pytest.mark.parametrize("seed", [0, 1])
def test_union_rule_matches_nnunet(seed: int) -> None:
    module = pytest.importorskip("nnunetv2.postprocessing.remove_connected_components")
    steps = [[1, 2, 3], 2, 3, [1, 3]]  # as in a postprocessing.pkl: foreground, then classes
    expected = _islands(seed)
    ours = expected.copy()
    for step in steps:
        expected = module.remove_all_but_largest_component_from_segmentation(expected, step)
        keep_largest_component_of_union(ours, step if isinstance(step, list) else [step])
        np.testing.assert_array_equal(ours, expected, err_msg=f"after step {step}")
    assert (ours != _islands(seed)).any()  # the steps removed something
    # All steps at once, the single-label ones merged into multi-label passes.
    merged = apply_component_groups(_islands(seed), [s if isinstance(s, list) else [s]
                                                     for s in [*steps, 1, 3]])
    for step in (1, 3):
        expected = module.remove_all_but_largest_component_from_segmentation(expected, step)
    np.testing.assert_array_equal(merged, expected)


def test_merged_single_label_steps_keep_equal_largest_components() -> None:
    labels = np.zeros((6, 6, 20), np.uint8)
    labels[1:3, 1:3, 1:3] = 4  # two components of 8 voxels, one of 1
    labels[1:3, 1:3, 8:10] = 4
    labels[5, 5, 5] = 4
    labels[1:3, 1:3, 14:16] = 2
    labels[5, 5, 18] = 2
    apply_component_groups(labels, [[4], [2]])
    assert int((labels == 4).sum()) == 16 and int((labels == 2).sum()) == 8


def test_equal_largest_components_are_all_kept() -> None:
    labels = np.zeros((6, 6, 12), np.uint8)
    labels[1:3, 1:3, 1:3] = 4
    labels[1:3, 1:3, 8:10] = 4
    labels[5, 5, 5] = 4
    keep_largest_component_of_union(labels, [4])
    assert int((labels == 4).sum()) == 16 and labels[5, 5, 5] == 0


def _scan() -> tuple[Volume, np.ndarray]:
    """A CT of touching liver, kidney and spleen blocks plus a separate island of each, in HU
    (the touching blocks are one component of the foreground)."""
    truth = np.zeros((24, 48, 48), np.uint8)
    truth[4:16, 6:26, 6:26] = 1
    truth[4:16, 6:26, 26:38] = 2
    truth[4:16, 26:40, 26:38] = 3
    truth[18:22, 8:12, 36:40] = 1  # islands, 4x4x4 voxels (0.14 ml) each
    truth[18:22, 20:24, 36:40] = 2
    truth[18:22, 36:40, 10:14] = 3
    names = {0: "background", 1: "liver", 2: "kidney_right", 3: "spleen"}
    image = np.vectorize(lambda v: HU[names[v]])(truth).astype(np.float32)
    return Volume(image, SPACING, path=Path("islands.nii.gz")), truth


def _with_groups(tmp_path: Path, groups: object) -> Path:
    folder = make_bundle(tmp_path / "bundle", spacing_mm=SPACING)
    manifest = folder / "edgeseg.json"
    data = json.loads(manifest.read_text())
    data["largest_component_groups"] = groups
    data["format_version"] = 2
    manifest.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    ("groups", "islands_kept"),
    [
        (None, set()),  # the default: the largest component of each organ
        ([], {1, 2, 3}),  # nnU-Net found no rule that helps
        ([["spleen"]], {1, 2}),
        ([["liver", "kidney_right", "spleen"]], set()),  # the foreground: islands all go
    ],
)
def test_predict_runs_the_bundles_rule(tmp_path, groups, islands_kept) -> None:
    volume, truth = _scan()
    options = PredictOptions(precision="fp32", crop="none", min_component_ml=0)
    labels = Predictor(_with_groups(tmp_path, groups), options).predict(volume).labels
    for value in (1, 2, 3):
        island = (truth == value) & (np.arange(truth.shape[0]) >= 18)[:, None, None]
        kept = float((labels[island] == value).mean())
        assert kept == (1.0 if value in islands_kept else 0.0), (value, kept)
        body = (truth == value) & ~island
        assert (labels[body] == value).mean() > 0.95
    no_lcc = Predictor(_with_groups(tmp_path / "b", groups),
                       PredictOptions(precision="fp32", crop="none", min_component_ml=0,
                                      lcc=False)).predict(volume).labels
    assert all((no_lcc[truth == v] == v).mean() > 0.95 for v in (1, 2, 3))


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([["liver", "pancreas"]], "largest_component_groups: pancreas is not an organ of labels"),
        ([[]], "is not null or a list of non-empty lists of organ names"),
        (["liver"], "is not null or a list of non-empty lists of organ names"),
        ([["background"]], "background is not an organ of labels"),
    ],
)
def test_manifest_with_bad_groups_is_refused(tmp_path, groups, message) -> None:
    with pytest.raises(EdgesegError, match=message):
        load_bundle(_with_groups(tmp_path, groups))


def test_groups_need_format_version_2(tmp_path) -> None:
    # A runtime that reads version 1 only ignores unknown fields: it would run without the
    # rule, so a bundle with one says version 2, and such a runtime refuses it instead.
    folder = _with_groups(tmp_path, [["liver"]])
    data = json.loads((folder / "edgeseg.json").read_text())
    data["format_version"] = 1
    (folder / "edgeseg.json").write_text(json.dumps(data))
    with pytest.raises(EdgesegError, match="largest_component_groups needs format_version 2"):
        load_bundle(folder)
    data["largest_component_groups"] = None
    (folder / "edgeseg.json").write_text(json.dumps(data))
    bundle = load_bundle(folder)
    assert bundle.required_format_version == 1 and bundle.to_json()["format_version"] == 1
    bundle.largest_component_groups = [["liver"]]
    assert bundle.to_json()["format_version"] == 2


# -- reading nnU-Net's postprocessing.json / .pkl (export side) ----------------------------

FLARE_LIKE = {"background": 0, "liver": 1, "kidney_right": 2, "spleen": 3}


def _nnunet_files(folder: Path, steps: list) -> tuple[Path, Path]:
    """postprocessing.pkl and .json as nnU-Net v2's determine_postprocessing saves them."""
    module = pytest.importorskip("nnunetv2.postprocessing.remove_connected_components")
    from batchgenerators.utilities.file_and_folder_operations import save_json, save_pickle
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    folder.mkdir(parents=True, exist_ok=True)
    functions = [module.remove_all_but_largest_component_from_segmentation] * len(steps)
    # nnU-Net's labels are NumPy integers (np.unique in LabelManager), pickled as such; its
    # JSON export turns them into plain numbers.
    labels = LabelManager(FLARE_LIKE, None).foreground_labels
    assert all(type(v).__module__ == "numpy" for v in labels)
    by_value = {int(v): v for v in labels}
    kwargs = [{"labels_or_regions": [by_value[v] for v in step] if isinstance(step, list)
               else by_value[step]} for step in steps]
    save_pickle((functions, kwargs), str(folder / "postprocessing.pkl"))
    plain = [{"labels_or_regions": step} for step in steps]
    save_json({"postprocessing_fns": [f.__name__ for f in functions],
               "postprocessing_kwargs": plain}, str(folder / "postprocessing.json"))
    return folder / "postprocessing.pkl", folder / "postprocessing.json"


@pytest.mark.parametrize("steps", [[[1, 2, 3], 3], [2], []])
def test_nnunet_files_give_the_groups_in_order(tmp_path, steps) -> None:
    from export.nnunet_postprocessing import read_postprocessing

    pkl, js = _nnunet_files(tmp_path, steps)
    names = {1: "liver", 2: "kidney_right", 3: "spleen"}
    expected = [[names[v] for v in (s if isinstance(s, list) else [s])] for s in steps]
    assert read_postprocessing(pkl, FLARE_LIKE) == expected
    assert read_postprocessing(js, FLARE_LIKE) == expected


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_with_other_objects_is_refused_unrun(tmp_path) -> None:
    import pickle

    from export.nnunet_postprocessing import read_postprocessing

    marker = tmp_path / "ran"
    path = tmp_path / "postprocessing.pkl"
    path.write_bytes(pickle.dumps(([_RunsCode(marker)], [{"labels_or_regions": 1}])))
    with pytest.raises(EdgesegError, match=r"postprocessing\.pkl: holds posix\.system, not only "
                                           r"nnU-Net's post-processing step"):
        read_postprocessing(path, FLARE_LIKE)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
          "postprocessing_kwargs": [{"labels_or_regions": 7}]},
         "step 0: label 7 is not a foreground label of the model"),
        ({"postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
          "postprocessing_kwargs": [{"labels_or_regions": [[1, 2], 3]}]},
         "region-based models are not supported"),
        ({"postprocessing_fns": ["fill_holes"], "postprocessing_kwargs": [{}]},
         "step 0 is 'fill_holes'; edgeseg runs only nnU-Net's"),
        ({"postprocessing_fns": [], "postprocessing_kwargs": [{}]},
         "0 post-processing functions but 1 sets of keyword arguments"),
        ({"input_folder": {}}, "not an nnU-Net postprocessing.json"),
    ],
)
def test_bad_postprocessing_json_is_refused(tmp_path, data, message) -> None:
    from export.nnunet_postprocessing import read_postprocessing

    path = tmp_path / "postprocessing.json"
    path.write_text(json.dumps(data))
    with pytest.raises(EdgesegError, match=message):
        read_postprocessing(path, FLARE_LIKE)


def test_export_nnunet_carries_the_postprocessing(tmp_path, capsys) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("dynamic_network_architectures")
    from export_fixtures import make_results_folder, run_cli

    results = make_results_folder(tmp_path / "nnUNet_results", seed=3)
    pkl, _ = _nnunet_files(results / "crossval_results_folds_0_1_2_3_4", [[1, 2, 3], 2])

    code, _, err = run_cli(["export", "nnunet", str(results), "-o", str(tmp_path / "plain")],
                           capsys)
    assert code == 0, err
    assert f"note: {pkl.with_suffix('.json')} holds nnU-Net's post-processing" in err
    assert load_bundle(tmp_path / "plain").largest_component_groups is None

    code, out, err = run_cli(["export", "nnunet", str(results), "-o", str(tmp_path / "pp"),
                              "--postprocessing", str(pkl)], capsys)
    assert code == 0, err
    assert "largest component of liver + kidney_right + spleen; kidney_right" in out
    bundle = load_bundle(tmp_path / "pp")
    assert bundle.largest_component_groups == [["liver", "kidney_right", "spleen"],
                                               ["kidney_right"]]
    assert len(bundle.provenance["postprocessing"]["sha256"]) == 64

    bad = tmp_path / "postprocessing.json"
    bad.write_text(json.dumps({"postprocessing_fns": [
        "remove_all_but_largest_component_from_segmentation"],
        "postprocessing_kwargs": [{"labels_or_regions": 9}]}))
    code, _, err = run_cli(["export", "nnunet", str(results), "-o", str(tmp_path / "bad"),
                            "--postprocessing", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "step 0: label 9 is not a foreground label of the model" in err
    assert not (tmp_path / "bad").exists()


def test_a_pickle_with_a_float_label_is_refused(tmp_path) -> None:
    import pickle

    from export.nnunet_postprocessing import read_postprocessing

    path = tmp_path / "postprocessing.pkl"
    path.write_bytes(pickle.dumps((["x"], [{"labels_or_regions": np.float64(1.0)}])))
    with pytest.raises(EdgesegError, match="a NumPy float64 value, not a label"):
        read_postprocessing(path, FLARE_LIKE)
