"""Read an nnU-Net v2 results folder and rebuild its network the way nnU-Net does.

An nnU-Net v2 results folder (``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``)
holds ``plans.json``, ``dataset.json`` and one ``fold_<k>/checkpoint_final.pth`` per trained fold.
nnU-Net's predictor rebuilds the network from the plans: it looks up the architecture class
named in ``configurations[<configuration>]["architecture"]["network_class_name"]``, imports the
kwargs listed in ``_kw_requires_import`` (conv/norm/dropout/nonlinearity classes), instantiates
it with deep supervision off and loads ``network_weights``. We do exactly that, without
importing nnunetv2 itself (only ``dynamic_network_architectures``, where the classes live).
"""

from __future__ import annotations

import json
import pydoc
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_seg.errors import EdgesegError, require_folder
from export.safe_checkpoint import load_checkpoint, sha256_of

PLANS_NAME = "plans.json"
DATASET_NAME = "dataset.json"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"


@dataclass
class NnunetResults:
    """What the exporter needs from a results folder (the networks are built separately)."""

    folder: Path
    plans: dict[str, Any]
    dataset: dict[str, Any]
    configuration_name: str
    configuration: dict[str, Any]
    folds: list[str]
    checkpoint_paths: list[Path]
    checkpoints: list[dict[str, Any]] = field(repr=False, default_factory=list)
    trainer_name: str = "nnUNetTrainer"
    mirror_axes: list[int] = field(default_factory=list)

    @property
    def num_input_channels(self) -> int:
        channels = self.dataset.get("channel_names", self.dataset.get("modality", {}))
        return len(channels)

    @property
    def num_output_channels(self) -> int:
        """One segmentation head per label (background included, nnU-Net's ``ignore`` label
        not: it has no head), as nnU-Net's LabelManager."""
        return len([name for name in self.dataset["labels"] if name != "ignore"])

    @property
    def checkpoint_sha256(self) -> list[str]:
        return [sha256_of(path) for path in self.checkpoint_paths]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgesegError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise EdgesegError(f"{path}: expected a JSON object")
    return data


def resolve_configuration(plans: dict[str, Any], name: str, where: Path) -> dict[str, Any]:
    """The configuration dict with ``inherits_from`` resolved (as nnU-Net's PlansManager)."""
    configurations = plans.get("configurations", {})
    if not isinstance(configurations, dict):
        raise EdgesegError(f"{where}: 'configurations' is not an object of name -> settings")
    chain: list[str] = []
    merged: dict[str, Any] = {}
    current: str | None = name
    while current is not None:
        if current not in configurations:
            have = ", ".join(sorted(configurations)) or "none"
            raise EdgesegError(
                f"{where}: configuration '{current}' is not in the plans (have: {have})"
            )
        if current in chain:
            raise EdgesegError(f"{where}: circular 'inherits_from' chain {[*chain, current]}")
        if not isinstance(configurations[current], dict):
            raise EdgesegError(f"{where}: configuration '{current}' is not an object")
        chain.append(current)
        current = configurations[current].get("inherits_from")
    for link in reversed(chain):  # parent first, child keys override
        merged.update(deepcopy(configurations[link]))
    merged.pop("inherits_from", None)
    return merged


def _parse_folds(folds: list[str]) -> list[str]:
    parsed = []
    for fold in folds:
        fold = str(fold).strip()
        if fold != "all" and not fold.isdigit():
            raise EdgesegError(f"--fold {fold}: expected a fold number or 'all'")
        parsed.append(fold)
    if not parsed:
        raise EdgesegError("--fold: give at least one fold")
    return parsed


def check_dataset(dataset: dict[str, Any], where: Path) -> None:
    """The entries of dataset.json the export reads: labels and input channels.

    Checked when the folder is read, so that a hand-edited dataset.json is refused by name
    instead of surfacing as a traceback in the manifest or as a weights mismatch (no channels
    builds a network with 0 input channels, which the checkpoint then does not fit).
    """
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise EdgesegError(f"{where}: 'labels' is not an object of label name -> value")
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise EdgesegError(f"{where}: region-based labels (lists of values) are not "
                               "supported; edgeseg exports one softmax head per label")
        if isinstance(value, bool) or not isinstance(value, int):
            raise EdgesegError(f"{where}: labels: {name} = {value!r} is not an integer value")
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or not channels:
        what = "no 'channel_names' entry" if channels is None else "'channel_names' is not"
        raise EdgesegError(f"{where}: {what} (an object of channel index -> name, e.g. "
                           "{\"0\": \"CT\"})")
    if any(not str(key).isdigit() for key in channels):
        raise EdgesegError(f"{where}: channel_names: keys must be channel indices (\"0\", "
                           f"\"1\", ...), not {sorted(channels)}")


def _configuration_from_folder_name(folder: Path) -> str | None:
    parts = folder.name.split("__")
    return parts[2] if len(parts) == 3 else None


def read_results(
    folder: str | Path,
    folds: list[str] | tuple[str, ...] = ("0",),
    checkpoint_name: str = DEFAULT_CHECKPOINT,
    trust_checkpoint: bool = False,
    configuration: str | None = None,
) -> NnunetResults:
    """Check and read an nnU-Net v2 results folder (plans, dataset, checkpoints of ``folds``).

    ``checkpoint_name`` is a file name inside each ``fold_<k>/`` (``checkpoint_best.pth``...) or a
    path to one checkpoint file (single fold only).
    """
    import torch

    folder = require_folder(folder, "nnU-Net results folder")
    for name in (PLANS_NAME, DATASET_NAME):
        if not (folder / name).is_file():
            raise EdgesegError(
                f"{folder}: not an nnU-Net v2 results folder ({name} is missing)"
            )
    plans = _read_json(folder / PLANS_NAME)
    dataset = _read_json(folder / DATASET_NAME)
    if "labels" not in dataset:
        raise EdgesegError(f"{folder / DATASET_NAME}: no 'labels' entry")
    check_dataset(dataset, folder / DATASET_NAME)
    fold_list = _parse_folds(list(folds))

    explicit = Path(checkpoint_name)
    is_path = explicit.is_absolute() or "/" in checkpoint_name
    if is_path and len(fold_list) > 1:
        # folder / fold_k / <absolute path> is that path for every k (one file exported as an
        # "ensemble" of identical folds), and a relative path with a folder in it would be
        # looked for inside every fold_k/.
        raise EdgesegError(f"--checkpoint {checkpoint_name}: a checkpoint path goes with one "
                           f"--fold (got {', '.join(fold_list)}); give a file name inside "
                           "each fold_X/ to export several folds")
    if explicit.is_file() and len(fold_list) == 1 and is_path:
        paths = [explicit]
    elif explicit.is_absolute():
        raise EdgesegError(f"{explicit}: checkpoint file does not exist")
    else:
        paths = [folder / f"fold_{fold}" / checkpoint_name for fold in fold_list]
    for path in paths:
        if not path.is_file() and is_path:
            raise EdgesegError(f"{checkpoint_name}: checkpoint file does not exist (nor {path})")
        if not path.is_file():
            present = sorted(p.name for p in folder.glob("fold_*"))
            hint = f" (folds present: {', '.join(present)})" if present else " (no fold_* folders)"
            raise EdgesegError(
                f"{path}: checkpoint is missing; not a complete nnU-Net v2 results folder{hint}"
            )

    checkpoints = []
    for path in paths:
        checkpoint = load_checkpoint(path, trust=trust_checkpoint)
        if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
            raise EdgesegError(f"{path}: not an nnU-Net checkpoint (no 'network_weights')")
        weights = checkpoint["network_weights"]
        if not isinstance(weights, dict) or not all(
                isinstance(value, torch.Tensor) for value in weights.values()):
            raise EdgesegError(f"{path}: 'network_weights' is not a state dict (parameter "
                               "name -> tensor)")
        checkpoints.append(checkpoint)

    first = checkpoints[0]
    init_args = first.get("init_args")
    init_args = init_args if isinstance(init_args, dict) else {}
    name = (
        configuration
        or init_args.get("configuration")
        or _configuration_from_folder_name(folder)
    )
    if name is None:
        raise EdgesegError(
            f"{folder}: cannot tell the configuration (not in the checkpoint or the folder name); "
            "pass --configuration"
        )
    config = resolve_configuration(plans, name, folder / PLANS_NAME)
    if config.get("previous_stage") or config.get("previous_stage_name"):
        raise EdgesegError(
            f"{folder / PLANS_NAME}: configuration '{name}' is a cascade stage; edgeseg exports "
            "single-stage 3D configurations (3d_fullres, 3d_lowres) only"
        )
    patch = config.get("patch_size")
    if isinstance(patch, list) and len(patch) == 2:
        # The runtime's sliding window is 3D; a 2D network would need slice-by-slice inference.
        raise EdgesegError(
            f"{folder / PLANS_NAME}: configuration '{name}' is a 2D one (patch {patch}); "
            "edgeseg exports 3D configurations (3d_fullres, 3d_lowres) only"
        )
    mirror = first.get("inference_allowed_mirroring_axes") or []
    if not (isinstance(mirror, (list, tuple))
            and all(isinstance(a, int) and 0 <= a <= 2 for a in mirror)):
        raise EdgesegError(f"{paths[0]}: inference_allowed_mirroring_axes {mirror!r} is not a "
                           "list of axes 0..2")
    return NnunetResults(
        folder=folder,
        plans=plans,
        dataset=dataset,
        configuration_name=name,
        configuration=config,
        folds=fold_list,
        checkpoint_paths=paths,
        checkpoints=checkpoints,
        trainer_name=str(first.get("trainer_name", "nnUNetTrainer")),
        mirror_axes=[int(a) for a in mirror],
    )


def _check_labels(results: NnunetResults) -> None:
    labels = results.dataset["labels"]
    if any(isinstance(value, (list, tuple)) for value in labels.values()):
        raise EdgesegError(
            f"{results.folder / DATASET_NAME}: region-based labels (lists of values) are not "
            "supported; edgeseg exports one softmax head per label"
        )


def build_network(results: NnunetResults) -> Any:
    """Instantiate the plans' architecture with deep supervision off (weights not loaded)."""
    _check_labels(results)
    where = results.folder / PLANS_NAME
    arch = results.configuration.get("architecture")
    if not isinstance(arch, dict) or "network_class_name" not in arch:
        raise EdgesegError(
            f"{where}: configuration '{results.configuration_name}' has no 'architecture' entry "
            "(plans from nnU-Net < 2.4); re-run nnUNetv2_plan_experiment to update them"
        )
    try:
        import dynamic_network_architectures  # noqa: F401  (where nnU-Net's classes live)
    except ImportError as exc:
        # Installed without its dependencies: its pinned timm would pull a CUDA build of torch.
        raise EdgesegError(
            "export nnunet needs nnU-Net's architecture package (dynamic_network_architectures "
            "is not installed); install it with: pip install --no-deps "
            "dynamic-network-architectures && pip install einops"
        ) from exc
    class_name = arch["network_class_name"]
    network_class = pydoc.locate(class_name)
    if network_class is None:
        raise EdgesegError(f"{where}: network class '{class_name}' cannot be imported")
    kwargs = dict(arch.get("arch_kwargs", {}))
    for key in arch.get("_kw_requires_import", []):
        if kwargs.get(key) is not None:
            located = pydoc.locate(kwargs[key])
            if located is None:
                raise EdgesegError(f"{where}: '{key}' = '{kwargs[key]}' cannot be imported")
            kwargs[key] = located
    kwargs["deep_supervision"] = False
    try:
        network = network_class(
            input_channels=results.num_input_channels,
            num_classes=results.num_output_channels,
            **kwargs,
        )
    except TypeError as exc:
        raise EdgesegError(f"{where}: architecture kwargs do not fit {class_name} ({exc})") from exc
    return network


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    # DDP ("module.") and torch.compile ("_orig_mod.") prefixes, as nnU-Net's trainer strips them.
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def load_weights(network: Any, weights: dict[str, Any], source: Path) -> Any:
    """Load ``weights`` strictly; a mismatch with the plans' architecture is a one-line error."""
    import torch

    weights = _strip_prefixes(dict(weights))
    own = network.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights
        and isinstance(weights[k], torch.Tensor)
        and weights[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches, e.g. {wrong[0]}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise EdgesegError(
            f"{source}: weights do not fit the plans' architecture ({'; '.join(parts)})"
        )
    network.load_state_dict(weights, strict=True)
    network.eval()
    return network


def build_fold_networks(results: NnunetResults) -> list[Any]:
    """One network per fold, weights loaded, in eval mode."""
    networks = []
    for path, checkpoint in zip(results.checkpoint_paths, results.checkpoints, strict=True):
        network = build_network(results)
        networks.append(load_weights(network, checkpoint["network_weights"], path))
    return networks
