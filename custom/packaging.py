"""Bundle zips in the MONAI Model Zoo layout, with their weights and a ``large_files.yml`` of sha256 hashes.

A zip ``<out_dir>/<bundle>_v<version>.zip`` holds one top-level folder named after the bundle::

    <bundle>/configs/...          every config file of the bundle (metadata.json gives the version)
    <bundle>/docs/...             README.md and any other docs
    <bundle>/LICENSE
    <bundle>/models/model.pt      only when weights are given (also model.ts and small JSON files such as threshold.json)
    <bundle>/large_files.yml      only with weights: path, url, hash_val (sha256), hash_type per weight file

That is the layout ``python -m monai.bundle download --name <bundle> --url <zip url> --bundle_dir X``
extracts to ``X/<bundle>/``; ``python -m monai.bundle download_large_files --bundle_path X/<bundle>``
then checks every weight file against its hash (and fetches the ones missing from ``url``).

The zip is reproducible (members sorted, fixed timestamps) and written atomically
(``custom.io.atomic``): a reader never sees half a zip.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import yaml

from custom.io.atomic import atomic_path
from custom.io.errors import InputError
from custom.io.hashing import sha256_of

__all__ = ["RESUME_STATE_FILES", "WEIGHT_FILES", "bundle_version", "large_files_entries", "package_bundle", "weight_members"]

WEIGHT_FILES: tuple[str, ...] = ("model.pt", "model.ts")
"""The weight files taken from a models folder (the training resume state ``checkpoint.pt`` is left out)."""

RESUME_STATE_FILES: tuple[str, ...] = ("best_metric.json",)
"""JSON files of a models folder that are training resume state, not model files, and are left out
(``custom.handlers.BestModelRecord``'s record, valid only beside the ``model.pt`` it was written with)."""

_REQUIRED = ("configs/metadata.json", "LICENSE", "docs/README.md")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def bundle_version(bundle_dir: str | os.PathLike) -> str:
    """The ``version`` of a bundle's ``configs/metadata.json``.

    Args:
        bundle_dir: the bundle folder.

    Returns:
        The version string, e.g. ``"0.1.0"``.

    Raises:
        InputError: the metadata file is missing, unreadable or has no version.
    """
    path = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        version = json.loads(path.read_text()).get("version")
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: unreadable bundle metadata ({error})") from None
    if not isinstance(version, str) or not version.strip():
        raise InputError(f"{path}: no \"version\" string")
    return version.strip()


def weight_members(weights: str | os.PathLike) -> list[tuple[Path, str]]:
    """The weight files to ship and their paths inside the bundle.

    Args:
        weights: a models folder (its ``model.pt``/``model.ts`` and top-level ``*.json`` files are
            taken, except the resume state ``RESUME_STATE_FILES``) or one checkpoint file (shipped as ``models/model.ts`` when its suffix is
            ``.ts``, else as ``models/model.pt``, the name the bundle configs load).

    Returns:
        ``[(source file, "models/<name>"), ...]`` sorted by bundle path.

    Raises:
        InputError: ``weights`` does not exist, or a folder holds neither ``model.pt`` nor ``model.ts``.
    """
    source = Path(weights)
    if source.is_file():
        return [(source, "models/model.ts" if source.suffix == ".ts" else "models/model.pt")]
    if not source.is_dir():
        raise InputError(f"{source}: weights not found (expected a models folder or a checkpoint file)")
    found = [source / name for name in WEIGHT_FILES if (source / name).is_file()]
    if not found:
        raise InputError(f"{source}: no {' or '.join(WEIGHT_FILES)} in the models folder")
    found += sorted(p for p in source.glob("*.json") if p.is_file() and p.name not in RESUME_STATE_FILES)
    return sorted(((p, f"models/{p.name}") for p in found), key=lambda item: item[1])


def large_files_entries(members: list[tuple[Path, str]], url_base: str = "") -> list[dict[str, str]]:
    """``large_files.yml`` entries (Model Zoo style) of the weight files.

    Args:
        members: ``(source file, bundle path)`` pairs from :func:`weight_members`; only ``.pt``/``.ts`` files are listed.
        url_base: where the bundle's files are published; an entry's ``url`` is ``<url_base>/<bundle path>``
            (empty when no base is given: the weights then ship only inside the zip, and
            ``download_large_files`` just checks their hashes).

    Returns:
        ``[{"path", "url", "hash_val", "hash_type": "sha256"}, ...]``.
    """
    base = url_base.rstrip("/")
    return [
        {"path": arcname, "url": f"{base}/{arcname}" if base else "", "hash_val": sha256_of(src), "hash_type": "sha256"}
        for src, arcname in members
        if Path(arcname).suffix in (".pt", ".ts")
    ]


def _bundle_files(bundle: Path) -> list[tuple[Path, str]]:
    missing = [name for name in _REQUIRED if not (bundle / name).is_file()]
    if missing:
        raise InputError(f"{bundle}: not a complete bundle (missing {', '.join(missing)})")
    files = [(bundle / "LICENSE", "LICENSE")]
    for folder in ("configs", "docs"):
        for path in sorted((bundle / folder).rglob("*")):
            relative = path.relative_to(bundle)
            if path.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                files.append((path, relative.as_posix()))
    return files


def _member_info(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def _copy_member(archive: zipfile.ZipFile, arcname: str, source: Path) -> None:
    with open(source, "rb") as src, archive.open(_member_info(arcname), "w", force_zip64=True) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def package_bundle(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    url_base: str = "",
) -> Path:
    """Write ``<out_dir>/<bundle>_v<version>.zip`` in the Model Zoo layout.

    Args:
        bundle_dir: the bundle folder (``configs/``, ``docs/``, ``LICENSE``); its name names the bundle.
            Its own ``models/``, ``logs/``, ``output/`` folders are never packed.
        out_dir: where the zip goes (created if missing).
        weights: optional models folder or checkpoint file (see :func:`weight_members`); with it the
            zip gets ``models/`` and ``large_files.yml``.
        url_base: published location of the bundle files, for the ``url`` of ``large_files.yml``.

    Returns:
        The path of the zip.

    Raises:
        InputError: incomplete bundle, bad metadata, or missing weights.
    """
    bundle = Path(bundle_dir).resolve()
    name = bundle.name
    files = _bundle_files(bundle)
    version = bundle_version(bundle)
    members = weight_members(weights) if weights is not None else []
    zip_path = Path(out_dir) / f"{name}_v{version}.zip"
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for src, arcname in sorted(files + members, key=lambda item: item[1]):
                _copy_member(archive, f"{name}/{arcname}", src)
            if members:
                document = {"large_files": large_files_entries(members, url_base)}
                text = yaml.safe_dump(document, sort_keys=False)
                archive.writestr(_member_info(f"{name}/large_files.yml"), text.encode())
    return zip_path
