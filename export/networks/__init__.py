"""Network definitions used by the exporter and by the reference-model training script.

- :mod:`export.networks.plain_unet` builds the plain 3D U-Net exactly as nnU-Net v2 does
  (``dynamic_network_architectures``' ``PlainConvUNet`` with the keyword arguments nnU-Net's
  experiment planner writes into ``plans.json``).
- :mod:`export.networks.halos_unet` is the HALOS-style variant: a U-Net that also takes an
  organ-presence vector, fuses it with DAFT blocks, and predicts organ presence itself.
"""

from export.networks.halos_unet import DaftBlock, HalosUNet
from export.networks.plain_unet import (
    build_plain_unet,
    nnunet_arch_kwargs,
    plain_unet_topology,
)

__all__ = [
    "DaftBlock",
    "HalosUNet",
    "build_plain_unet",
    "nnunet_arch_kwargs",
    "plain_unet_topology",
]
