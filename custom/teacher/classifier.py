"""The stage-1 classifier that the teacher explains: its weights and its decision threshold.

The classifier bundle (``bundles/classifier``) saves the best weights as ``models/model.pt`` (the
network's state dict, as MONAI's ``CheckpointSaver`` writes a one-object ``save_dict``) and the
validation threshold of best slice F1 as ``models/threshold.json`` (``{"threshold": ...}``,
``custom.handlers.SliceClassificationReport``). Algorithm 1 explains a window while the
classifier's probability is above that threshold (Condrea et al. 2025, 3.2, ``clf_thresh``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import torch
from torch import nn

from custom.io.errors import InputError

__all__ = ["load_classifier", "read_classifier_threshold"]


def _state_dict(checkpoint: object, path: str) -> Mapping[str, torch.Tensor]:
    """The network state dict inside a checkpoint: a bare state dict or ``{"model": state dict, ...}``."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise InputError(f"{path}: not a network state dict (nor a checkpoint with a 'model' entry)")
    # weights saved from a DistributedDataParallel wrapper
    if checkpoint and all(key.startswith("module.") for key in checkpoint):
        checkpoint = {key[len("module.") :]: value for key, value in checkpoint.items()}
    return checkpoint


def load_classifier(network: nn.Module, weights_path: str | os.PathLike, device: torch.device | str | None = None) -> nn.Module:
    """Load the classifier's trained weights into ``network`` and put it in eval mode on ``device``.

    Args:
        network: the classifier built with the classifier bundle's ``network_def`` settings
            (e.g. ``custom.networks.SliceClassifier(model_name, in_chans, feature_stage)``).
        weights_path: the classifier bundle's ``models/model.pt``.
        device: where the teacher computes (default: keep the network's device).

    Returns:
        ``network``, with the weights, in eval mode, without gradients on its parameters (IG needs
        gradients with respect to the input only).

    Raises:
        InputError: the file is missing, is not a state dict, or does not fit ``network`` (e.g. a
            different ``model_name`` or ``feature_stage``).
    """
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: classifier weights not found; train the classifier bundle first or set classifier_dir")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise InputError(f"{path}: cannot read the classifier weights ({error})") from error
    try:
        network.load_state_dict(_state_dict(checkpoint, path), strict=True)
    except RuntimeError as error:
        raise InputError(f"{path}: the weights do not fit the configured classifier (model_name / feature_stage?): {error}") from error
    if device is not None:
        network.to(torch.device(device))
    network.eval()
    network.requires_grad_(False)
    return network


def read_classifier_threshold(threshold_file: str | os.PathLike) -> float:
    """The classifier's probability threshold from its ``models/threshold.json``.

    Raises:
        InputError: the file is missing or unreadable, or its ``threshold`` is not a probability.
    """
    path = os.fspath(threshold_file)
    try:
        with open(path) as handle:
            threshold = json.load(handle)["threshold"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{path}: cannot read the classifier threshold ({type(error).__name__}: {error})") from error
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or not 0.0 <= threshold < 1.0:
        raise InputError(f"{path}: the classifier threshold must be a probability in [0, 1), got {threshold!r}")
    return float(threshold)
