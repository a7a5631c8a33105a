"""HALOS-style U-Net: organ-presence prior in, organ-presence logits out.

Organs that were removed by surgery (gallbladder after cholecystectomy, a kidney after
nephrectomy) are a known source of hallucinated segmentations in population cohorts such as
UK Biobank. The HALOS approach gives the network what the clinician knows: a presence vector
(1 = present, 0 = absent/resected, 0.5 = unknown) that is fused into the decoder, plus a
classifier head that predicts presence from the image when no prior is available.

Fusion uses DAFT blocks (Dynamic Affine Feature-map Transform, Pölsterl et al. 2021): the
feature map is globally average-pooled, concatenated with the presence vector, passed through a
small MLP whose output is a per-channel scale and shift applied to the whole feature map. One
DAFT block sits at the bottleneck and one after every decoder stage. The presence head reads
the bottleneck features *before* fusion, so it cannot simply copy the prior.

The forward pass has no data-dependent Python control flow, so ``torch.onnx.export`` traces
it into a graph with two inputs (``image``, ``presence``) and two outputs (``logits``,
``presence_logits``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv_block(
    in_channels: int, out_channels: int, stride: Sequence[int], n_convs: int
) -> nn.Sequential:
    """``n_convs`` times conv 3x3x3 -> instance norm -> LeakyReLU; the first conv strides."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [
            nn.Conv3d(
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size=3,
                stride=tuple(stride) if i == 0 else 1,
                padding=1,
                bias=True,
            ),
            nn.InstanceNorm3d(out_channels, eps=1e-5, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        ]
    return nn.Sequential(*layers)


class DaftBlock(nn.Module):
    """Per-channel affine modulation of a feature map conditioned on the presence vector.

    ``out = x * (1 + scale) + shift`` where ``(scale, shift) = MLP([mean(x), presence])``. The
    last MLP layer starts at zero, so an untrained block is the identity and the prior's
    influence is learnt rather than imposed.
    """

    def __init__(self, channels: int, n_presence: int, bottleneck_ratio: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // bottleneck_ratio)
        self.channels = channels
        self.mlp = nn.Sequential(
            nn.Linear(channels + n_presence, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2 * channels),
        )
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        return self.modulate(x, x.mean(dim=(2, 3, 4)), presence)

    def modulate(
        self, x: torch.Tensor, pooled: torch.Tensor, presence: torch.Tensor
    ) -> torch.Tensor:
        """The block with the pooled features given: ``x`` may then be a crop of the map
        they were pooled over (the prior fine-tune trains on crops)."""
        params = self.mlp(torch.cat([pooled, presence], dim=1))
        scale = params[:, : self.channels, None, None, None]
        shift = params[:, self.channels :, None, None, None]
        return x * (1.0 + scale) + shift


class HalosUNet(nn.Module):
    """3D U-Net with DAFT presence fusion and a presence classifier head.

    Parameters
    ----------
    input_channels
        Image channels (1 for CT).
    num_classes
        Segmentation classes including background.
    n_presence
        Length of the presence vector (organ order is recorded in the bundle, not here).
    features_per_stage
        Channels per resolution stage, shallow to deep; the last stage is the bottleneck.
    strides
        Per-stage downsampling stride (z, y, x); the first is usually (1, 1, 1).
    n_conv_per_stage
        Convolutions per encoder and decoder stage.

    Notes
    -----
    ``forward(image, presence) -> (logits, presence_logits)`` with ``image`` of shape
    (B, C, Z, Y, X) (each spatial size divisible by the product of ``strides`` along it) and
    ``presence`` of shape (B, n_presence) in [0, 1].
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        n_presence: int,
        features_per_stage: Sequence[int] = (8, 16, 32, 64, 128),
        strides: Sequence[Sequence[int]] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        n_conv_per_stage: int = 2,
    ) -> None:
        super().__init__()
        if len(features_per_stage) != len(strides):
            raise ValueError("features_per_stage and strides need one entry per stage")
        self.init_kwargs = {
            "input_channels": input_channels,
            "num_classes": num_classes,
            "n_presence": n_presence,
            "features_per_stage": [int(f) for f in features_per_stage],
            "strides": [[int(s) for s in st] for st in strides],
            "n_conv_per_stage": n_conv_per_stage,
        }
        n_stages = len(features_per_stage)
        self.encoder = nn.ModuleList()
        channels = input_channels
        for features, stride in zip(features_per_stage, strides, strict=True):
            self.encoder.append(_conv_block(channels, features, stride, n_conv_per_stage))
            channels = features

        bottleneck = features_per_stage[-1]
        self.bottleneck_daft = DaftBlock(bottleneck, n_presence)
        # Presence classifier on the deepest encoder features: average and max pooling keep
        # both "how much" and "is there any" evidence of each organ.
        self.presence_head = nn.Sequential(
            nn.Linear(2 * bottleneck, bottleneck),
            nn.ReLU(inplace=True),
            nn.Linear(bottleneck, n_presence),
        )

        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.decoder_daft = nn.ModuleList()
        for stage in range(n_stages - 1, 0, -1):
            deep, skip = features_per_stage[stage], features_per_stage[stage - 1]
            stride = tuple(strides[stage])
            self.upsample.append(nn.ConvTranspose3d(deep, skip, kernel_size=stride, stride=stride))
            self.decoder.append(_conv_block(2 * skip, skip, (1, 1, 1), n_conv_per_stage))
            self.decoder_daft.append(DaftBlock(skip, n_presence))
        self.segmentation_head = nn.Conv3d(features_per_stage[0], num_classes, kernel_size=1)

    def forward(
        self, image: torch.Tensor, presence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features, presence_logits = self.decoder_features(image, presence)
        x = self.decoder_daft[-1](features, presence)
        return self.segmentation_head(x), presence_logits

    def decoder_features(
        self, image: torch.Tensor, presence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last decoder stage's output before its DAFT block, and the presence logits.

        ``forward`` is ``segmentation_head(decoder_daft[-1](features, presence))`` on these;
        the prior fine-tune (:mod:`export.train_prior`) trains that last part on cached
        features.
        """
        skips: list[torch.Tensor] = []
        x = image
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)

        pooled = torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], dim=1)
        presence_logits = self.presence_head(pooled)

        x = self.bottleneck_daft(x, presence)
        last = len(self.decoder) - 1
        for i, (up, block, daft) in enumerate(
            zip(self.upsample, self.decoder, self.decoder_daft, strict=True)
        ):
            x = up(x)
            x = block(torch.cat([x, skips[-(i + 2)]], dim=1))
            if i < last:
                x = daft(x, presence)
        return x, presence_logits
