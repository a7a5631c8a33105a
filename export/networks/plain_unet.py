"""The plain 3D U-Net exactly as nnU-Net v2 builds it.

nnU-Net v2 does not define its own network class: its experiment planner writes the class name
(``dynamic_network_architectures.architectures.unet.PlainConvUNet``) and keyword arguments into
``plans.json`` (``configurations.<name>.architecture``), with the classes that are keyword
arguments (convolution, normalisation, dropout, non-linearity) stored as dotted import paths
listed in ``_kw_requires_import``. At training and inference time nnU-Net imports those paths
and calls the class. This module writes and reads the same description, so a network built here
loads into nnU-Net's own predictor and vice versa.
"""

from __future__ import annotations

import math
import pydoc
from collections.abc import Sequence
from typing import Any

from torch import nn

#: The class nnU-Net's default planner (``ExperimentPlanner``) uses for 3d_fullres.
PLAIN_UNET_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"

#: The keyword arguments that name a class rather than hold a value.
KW_REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")


def plain_unet_topology(
    spacing_mm: Sequence[float],
    patch_size: Sequence[int],
    min_feature_map_edge: int = 4,
    max_stages: int | None = None,
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Pooling strides, kernel sizes and a divisible patch size, by nnU-Net's planning rule.

    The rule nnU-Net's planner follows: at every new stage, halve each axis whose feature map
    is still at least twice ``min_feature_map_edge`` and whose current spacing is less than
    twice the finest current spacing (so anisotropic axes wait until the others catch up); a
    lone remaining axis is pooled only while it is at least three times the minimum edge.
    Kernels are 3 along axes whose spacing is within a factor 2 of the finest, else 1 (the
    bottleneck always uses 3). The patch is then rounded up to a multiple of ``2**pools``.

    Parameters
    ----------
    spacing_mm
        Target voxel spacing (z, y, x).
    patch_size
        Desired patch size (z, y, x) in voxels.
    min_feature_map_edge
        Smallest edge of the bottleneck feature map (nnU-Net: 4).
    max_stages
        Optional cap on the number of resolution stages (nnU-Net has none); smaller networks
        train faster on CPUs.

    Returns
    -------
    strides, kernel_sizes, patch_size
        Per-stage pooling strides (first stage 1), per-stage kernel sizes, padded patch size.
    """
    dims = len(spacing_mm)
    spacing = [float(s) for s in spacing_mm]
    size = [float(p) for p in patch_size]
    strides: list[list[int]] = [[1] * dims]
    kernels: list[list[int]] = []
    kernel = [1] * dims
    pools = [0] * dims
    while max_stages is None or len(strides) < max_stages:
        poolable = [d for d in range(dims) if size[d] >= 2 * min_feature_map_edge]
        if not poolable:
            break
        finest = min(spacing[d] for d in poolable)
        poolable = [d for d in poolable if spacing[d] / finest < 2]
        if len(poolable) == 1 and size[poolable[0]] < 3 * min_feature_map_edge:
            break
        finest_all = min(spacing)
        kernel = [3 if (kernel[d] == 3 or spacing[d] / finest_all < 2) else 1 for d in range(dims)]
        stride = [2 if d in poolable else 1 for d in range(dims)]
        for d in poolable:
            pools[d] += 1
            spacing[d] *= 2
            size[d] = math.ceil(size[d] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dims)
    divisor = [2**p for p in pools]
    padded = [int(math.ceil(p / q) * q) for p, q in zip(patch_size, divisor, strict=True)]
    return strides, kernels, padded


def nnunet_arch_kwargs(
    strides: Sequence[Sequence[int]],
    kernel_sizes: Sequence[Sequence[int]],
    base_features: int = 32,
    max_features: int = 320,
) -> dict[str, Any]:
    """The ``architecture`` entry of an nnU-Net v2 ``plans.json`` configuration.

    Same content as nnU-Net's default planner writes: features double per stage up to
    ``max_features``, two convolutions per encoder and decoder stage, conv bias, instance
    norm (eps 1e-5, affine), no dropout, LeakyReLU (in place).
    """
    n_stages = len(strides)
    return {
        "network_class_name": PLAIN_UNET_CLASS,
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [
                min(max_features, base_features * 2**i) for i in range(n_stages)
            ],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [list(k) for k in kernel_sizes],
            "strides": [list(s) for s in strides],
            "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": list(KW_REQUIRES_IMPORT),
    }


def build_plain_unet(
    architecture: dict[str, Any],
    input_channels: int,
    num_classes: int,
    deep_supervision: bool = False,
) -> nn.Module:
    """Instantiate the network an nnU-Net ``architecture`` entry describes.

    Mirrors what nnU-Net does at inference (``get_network_from_plans``): import the class and
    every keyword argument listed in ``_kw_requires_import``, then call the class. The weights
    are left at PyTorch's defaults (nnU-Net's He initialisation only matters for training).
    """
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture["_kw_requires_import"]:
        if kwargs.get(key) is not None:
            located = pydoc.locate(kwargs[key])
            if located is None:
                raise ImportError(f"cannot import {kwargs[key]!r} named in arch_kwargs[{key!r}]")
            kwargs[key] = located
    network_class = pydoc.locate(architecture["network_class_name"])
    if network_class is None:
        raise ImportError(f"cannot import network class {architecture['network_class_name']!r}")
    return network_class(
        input_channels=input_channels,
        num_classes=num_classes,
        deep_supervision=deep_supervision,
        **kwargs,
    )
