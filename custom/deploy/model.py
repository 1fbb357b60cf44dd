"""The dynunet_student for deployment: loaded from a bundle folder or its TorchScript export, run on one volume.

The settings come from the bundle's own ``configs/inference.json`` (for a ``.ts`` file: the copy
that ``python -m monai.bundle ckpt_export --config_file configs/inference.json`` embeds), so the
deployed model windows the HU and slides its Gaussian-weighted window exactly as the bundle's
inference does: the ``inferer`` component, ``window``, ``threshold``, ``min_cluster_voxels`` and the
contrast filter (``contrast_hu``, ``contrast_min_share``; off when the config predates it) are parsed from
that config, optionally overridden by further config files (e.g. ``demo.json``). The threshold is the
one calibrated on the validation split when ``threshold.json`` lies beside the weights (``models/`` of a
bundle, the folder of a ``.ts`` file; ``custom.student.calibration``), else the config's default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.handlers import Checkpoint
from monai.bundle import ConfigParser
from monai.data import load_net_with_metadata
from monai.inferers import Inferer
from monai.transforms import ScaleIntensityRange

from custom.io.errors import InputError
from custom.transforms.contrast_adjacency import remove_unenhanced_clusters
from custom.transforms.window import hu_window_bounds

__all__ = ["StudentModel", "load_student", "predict_probability", "resolve_model_path"]

_INFERENCE_CONFIG = "inference.json"


@dataclass(frozen=True, eq=False)
class StudentModel:
    """A loaded student, ready for :func:`predict_probability`.

    Attributes:
        network: the DynUNet (``torch.nn.Module``) or its TorchScript module, in eval mode on ``device``.
        inferer: the bundle's sliding-window inferer.
        window: HU window ``(centre, width)`` scaled to ``[0, 1]``.
        threshold: probability threshold of the mask and the findings.
        min_voxels: smallest cluster reported in the findings.
        contrast_hu: CT value of contrast-filled blood (the contrast filter).
        contrast_min_share: detections whose shell is less than this share contrast-filled are removed
            (:mod:`custom.transforms.contrast_adjacency`); 0: off.
        device: where the network runs.
        amp: run under autocast (CUDA only).
        source: the model file or bundle folder.
        kind: ``"bundle"`` or ``"torchscript"``.
        name: the bundle's metadata name ("" when unknown).
        version: the bundle's metadata version ("" when unknown).
    """

    network: torch.nn.Module
    inferer: Inferer
    window: tuple[float, float]
    threshold: float
    min_voxels: int
    contrast_hu: float
    contrast_min_share: float
    device: torch.device
    amp: bool
    source: Path
    kind: str
    name: str
    version: str

    def describe(self) -> dict[str, Any]:
        """The model's identity and settings, as recorded in ``findings.json``."""
        return {
            "source": str(self.source),
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "window": list(self.window),
            "threshold": self.threshold,
            "min_cluster_voxels": self.min_voxels,
            "contrast_hu": self.contrast_hu,
            "contrast_min_share": self.contrast_min_share,
        }


def resolve_model_path(model: str | os.PathLike) -> Path:
    """The bundle folder or ``.ts`` file that ``model`` designates.

    Args:
        model: a bundle folder (with ``configs/inference.json``), a ``.ts`` file, or a folder that
            holds exactly one of those (e.g. the models folder of a MONAI Application Package).

    Returns:
        The bundle folder or the ``.ts`` file.

    Raises:
        InputError: nothing usable, or more than one candidate.
    """
    path = Path(model)
    if path.is_file():
        if path.suffix != ".ts":
            raise InputError(f"{path}: a model file must be a TorchScript export (.ts); give a bundle folder for model.pt")
        return path
    if not path.is_dir():
        raise InputError(f"{path}: model not found")
    if (path / "configs" / _INFERENCE_CONFIG).is_file():
        return path
    candidates = sorted(
        {p.parent.parent for p in path.rglob(f"configs/{_INFERENCE_CONFIG}")} | {p for p in path.rglob("*.ts") if p.is_file()}
    )
    if len(candidates) != 1:
        found = ", ".join(str(c) for c in candidates) or "none"
        raise InputError(f"{path}: expected one bundle folder or one .ts file inside, found {found}")
    return candidates[0]


def _apply_overrides(parser: ConfigParser, config_files: Sequence[str | os.PathLike]) -> None:
    for config_file in config_files:
        if not Path(config_file).is_file():
            raise InputError(f"{config_file}: config override file not found")
        for key, value in ConfigParser.load_config_file(str(config_file)).items():
            parser[key] = value


def _bundle_network(bundle: Path, parser: ConfigParser, device: torch.device) -> torch.nn.Module:
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    checkpoint = Path(parser.get_parsed_content("ckpt_dir")) / "model.pt"
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: the bundle has no weights (models/model.pt)")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        Checkpoint.load_objects(to_load={"model": network}, checkpoint=state)
    except (RuntimeError, KeyError, OSError, EOFError) as error:
        raise InputError(f"{checkpoint}: cannot load the weights into the configured network ({error})") from None
    return network.to(device)


def _parsed_input(parser: ConfigParser, key: str) -> Any:
    """``parser.get_parsed_content(key)``, with an :class:`InputError` raised while evaluating it passed on as is."""
    try:
        return parser.get_parsed_content(key)
    except RuntimeError as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, InputError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def load_student(
    model: str | os.PathLike, config_files: Sequence[str | os.PathLike] = (), device: torch.device | None = None
) -> StudentModel:
    """Load the student from a bundle folder (``configs/`` + ``models/model.pt``) or a TorchScript export.

    Args:
        model: see :func:`resolve_model_path`.
        config_files: config files merged over ``inference.json`` in order (MONAI ``#`` keys allowed),
            e.g. the bundle's ``demo.json`` when the weights were trained with it.
        device: default CUDA when available, else CPU.

    Returns:
        The :class:`StudentModel`.

    Raises:
        InputError: no model, no weights, weights that do not fit the network, or a ``.ts`` file
            without an embedded ``inference.json``.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    source = resolve_model_path(model)
    if source.is_file():
        try:
            network, meta, extra = load_net_with_metadata(str(source), map_location=device, more_extra_files=(_INFERENCE_CONFIG,))
        except RuntimeError as error:
            raise InputError(f"{source}: not a loadable TorchScript file ({error})") from None
        if not extra.get(_INFERENCE_CONFIG):
            raise InputError(
                f"{source}: no embedded {_INFERENCE_CONFIG}; export with "
                "`python -m monai.bundle ckpt_export network_def --config_file configs/inference.json ...`"
            )
        parser = ConfigParser(json.loads(extra[_INFERENCE_CONFIG]))
        parser["ckpt_dir"] = str(source.parent)  # a calibrated threshold.json lies beside the weights
        kind = "torchscript"
    else:
        parser = ConfigParser(ConfigParser.load_config_file(str(source / "configs" / _INFERENCE_CONFIG)))
        meta_file = source / "configs" / "metadata.json"
        meta = ConfigParser.load_config_file(str(meta_file)) if meta_file.is_file() else {}
        kind = "bundle"
    _apply_overrides(parser, config_files)
    if kind == "bundle":
        network = _bundle_network(source, parser, device)
    window = parser.get_parsed_content("window")
    try:
        hu_window_bounds(window)  # a bad window is refused at load, as the bundle's inference refuses it
    except ValueError as error:
        raise InputError(f"{source}: {error}") from None
    return StudentModel(
        network=network.eval(),
        inferer=parser.get_parsed_content("inferer"),
        window=(float(window[0]), float(window[1])),
        threshold=float(_parsed_input(parser, "threshold")),
        min_voxels=int(parser.get_parsed_content("min_cluster_voxels")),
        contrast_hu=float(parser.get_parsed_content("contrast_hu") if "contrast_hu" in parser else 200.0),
        contrast_min_share=float(parser.get_parsed_content("contrast_min_share") if "contrast_min_share" in parser else 0.0),
        device=device,
        amp=device.type == "cuda" and (bool(parser.get_parsed_content("amp")) if "amp" in parser else True),
        source=source,
        kind=kind,
        name=str(meta.get("name", "")),
        version=str(meta.get("version", "")),
    )


def predict_probability(model: StudentModel, volume_zyx: np.ndarray) -> np.ndarray:
    """The PE probability of every voxel of a HU volume, as the bundle's inference computes it.

    Args:
        model: the loaded student.
        volume_zyx: float HU, ``(Z, Y, X)`` (``custom.io.dicom.CTSeries.volume_zyx``).

    Returns:
        float32 probability of the PE channel (softmax channel 1), ``(Z, Y, X)``, after the contrast filter
        when the model's ``contrast_min_share`` is above 0.

    Raises:
        InputError: the volume is not 3D or has non-finite values.
    """
    volume = np.asarray(volume_zyx, dtype=np.float32)
    if volume.ndim != 3 or not np.isfinite(volume).all():
        raise InputError(f"expected a finite 3D (Z, Y, X) HU volume, got shape {volume.shape}")
    low, high = hu_window_bounds(model.window)
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    image = scale(torch.from_numpy(np.ascontiguousarray(volume.transpose(2, 1, 0)))[None])  # (1, X, Y, Z) as LoadImage gives
    batch = torch.as_tensor(image, dtype=torch.float32)[None].to(model.device)
    with torch.no_grad(), torch.autocast(model.device.type, enabled=model.amp):
        logits = model.inferer(batch, model.network)
    probability = torch.softmax(torch.as_tensor(logits).float(), dim=1)[0, 1]
    probability_zyx = np.ascontiguousarray(probability.cpu().numpy().transpose(2, 1, 0), dtype=np.float32)
    if model.contrast_min_share > 0:
        probability_zyx, _ = remove_unenhanced_clusters(
            probability_zyx, volume, model.threshold, model.contrast_hu, model.contrast_min_share
        )
    return probability_zyx
