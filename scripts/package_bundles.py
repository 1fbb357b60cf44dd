"""Package the bundles as Model Zoo zips: ``dist/<bundle>_v<version>.zip`` with weights and ``large_files.yml``.

Usage::

    python scripts/package_bundles.py [--bundles dynunet_student,classifier] [--out_dir dist]
        [--weights "{'dynunet_student': 'work/demo/student/models', 'classifier': 'work/demo/classifier/models/model.pt'}"]
        [--url_base https://example.org/iexplain/v0.1.0] [--bundles_dir bundles]

Every folder of ``--bundles_dir`` with a ``configs/metadata.json`` is packaged unless ``--bundles``
names some. ``--weights`` maps a bundle name to its models folder or checkpoint file (see
``custom.packaging``); a bundle without an entry is packaged without ``models/``. The zips are
written atomically; the script prints one line per zip.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import fire

from custom.io.errors import InputError
from custom.packaging import package_bundle

__all__ = ["main", "package_all"]


def _names(bundles: str | Sequence[str] | None) -> list[str]:
    if bundles is None or bundles == "":
        return []
    if isinstance(bundles, str):
        return [name.strip() for name in bundles.split(",") if name.strip()]
    return [str(name).strip() for name in bundles]


def package_all(
    bundles_dir: str | Path,
    out_dir: str | Path,
    bundles: Sequence[str] = (),
    weights: Mapping[str, str] | None = None,
    url_base: str = "",
) -> list[Path]:
    """Package several bundles.

    Args:
        bundles_dir: the folder holding the bundles.
        out_dir: where the zips go.
        bundles: bundle names to package (empty: every bundle of ``bundles_dir``).
        weights: bundle name -> models folder or checkpoint file.
        url_base: published location, for the ``url`` of ``large_files.yml`` (``<url_base>/<bundle>/models/...``).

    Returns:
        The zip paths, in bundle-name order.

    Raises:
        InputError: a named bundle does not exist, or ``weights`` names a bundle that is not packaged.
    """
    root = Path(bundles_dir)
    available = sorted(p.name for p in root.iterdir() if (p / "configs" / "metadata.json").is_file()) if root.is_dir() else []
    names = sorted(bundles) if bundles else available
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise InputError(f"{root}: no bundle {', '.join(unknown) or '(none found)'}; bundles here: {', '.join(available) or 'none'}")
    weights = dict(weights or {})
    stray = sorted(set(weights) - set(names))
    if stray:
        raise InputError(f"--weights names {', '.join(stray)}, which is not among the bundles packaged ({', '.join(names)})")
    base = url_base.rstrip("/")
    return [
        package_bundle(root / name, out_dir, weights.get(name), f"{base}/{name}" if base else "")
        for name in names
    ]


def main(
    bundles: str | Sequence[str] | None = None,
    out_dir: str = "dist",
    weights: Mapping[str, str] | None = None,
    url_base: str = "",
    bundles_dir: str = "bundles",
) -> None:
    """Write ``<out_dir>/<bundle>_v<version>.zip`` for each bundle; see the module docstring (exit 2 on bad input)."""
    try:
        paths = package_all(bundles_dir, out_dir, _names(bundles), weights, url_base)
    except InputError as error:
        print(f"package_bundles: {error}", file=sys.stderr)
        sys.exit(2)
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    fire.Fire(main)
