"""The 2.5D slice classifier of iExplain stage 1 (Condrea et al. 2025, section 3.1).

A timm EfficientNetV2 reads a 7-slice mini-volume as 7 input channels and predicts one logit:
"PE on the centre slice". The final pooling is a global *max* pooling, which the paper keeps
because it sharpens the explanations of stage 2.

Two head layouts share the class:

- ``feature_stage=None`` (paper scale): the whole timm classifier with ``global_pool="max"``.
- ``feature_stage=k``: the backbone up to stage ``k`` only (timm ``prune_intermediate_layers``), then global max
  pooling and a linear layer. A shallow backbone has a small receptive field, so its maximum
  response can only come from local evidence (the embolus), not from the slice's anatomical level.

The output layer starts at zero, so the first BCE loss is log(2) instead of the large values a
randomly initialised layer on max-pooled features gives.
"""

from __future__ import annotations

import os

import timm
import torch
from torch import nn

__all__ = ["SliceClassifier"]


class SliceClassifier(nn.Module):
    """timm EfficientNetV2 with 7 input channels, global max pooling and one PE logit.

    Args:
        model_name: a timm model name (paper: ``tf_efficientnetv2_l``).
        in_chans: slices per mini-volume (paper: 7).
        feature_stage: keep the backbone only up to this stage index (``None``: the whole network).
        drop_rate: dropout before the output layer.
        pretrained_path: an optional local weights file for the timm backbone (no hub download);
            timm adapts the stem to ``in_chans``.
    """

    def __init__(
        self,
        model_name: str = "tf_efficientnetv2_l",
        in_chans: int = 7,
        feature_stage: int | None = None,
        drop_rate: float = 0.0,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be positive, got {in_chans}")
        pretrained = pretrained_path is not None
        overlay = {"file": os.fspath(pretrained_path)} if pretrained else None
        if pretrained and not os.path.isfile(pretrained_path):
            raise FileNotFoundError(f"pretrained_path {pretrained_path} does not exist")
        self.feature_stage = feature_stage
        if feature_stage is None:
            self.backbone = timm.create_model(
                model_name, pretrained=pretrained, pretrained_cfg_overlay=overlay, in_chans=in_chans,
                num_classes=0, global_pool="max", drop_rate=drop_rate,
            )
            width = self.backbone.num_features
        else:
            self.backbone = timm.create_model(
                model_name, pretrained=pretrained, pretrained_cfg_overlay=overlay, in_chans=in_chans, num_classes=0
            )
            # drop the stages after `feature_stage` and the head: they would cost compute for nothing
            self.backbone.prune_intermediate_layers(indices=(feature_stage,), prune_head=True)
            width = self.backbone.feature_info[feature_stage]["num_chs"]
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(width, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map mini-volumes ``(B, in_chans, H, W)`` to PE logits ``(B, 1)``."""
        if self.feature_stage is None:
            features = self.backbone(x)
        else:
            feature_map = self.backbone.forward_intermediates(x, indices=(self.feature_stage,), intermediates_only=True)[-1]
            # max pooling with indices, like timm's global_pool="max": TorchInductor's backward of
            # torch.amax re-derives the argmax by comparing a recomputed (fused, more precise) map with the
            # bfloat16 maximum, finds no match and divides by a zero count (NaN input gradients under
            # bfloat16 autocast, torch 2.14.1 CPU); the pooling's saved indices cannot miss
            features = nn.functional.adaptive_max_pool2d(feature_map, 1).flatten(1)
        return self.fc(self.dropout(features))
