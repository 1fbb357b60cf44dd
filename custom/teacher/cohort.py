"""Pseudo-labels for a whole cohort: the teacher over every study of a datalist, resumable and sharded.

For each study (under ``torchrun``, rank ``r`` of ``w`` takes ``studies[r::w]``):

1. skip it when ``clusters/<uid>.json`` exists and records the current settings and window (a previous
   run finished it); a record made with other settings, or an older one without settings, is logged
   with the reason and the study redone (its record removed first, the files overwritten atomically);
2. read the HU image, window it like the classifier (``custom.teacher.studies``), build the teacher
   of its grid (``custom.teacher.TeacherFactory``) and explain it (Condrea et al. 2025, 3.2);
3. write its volumes and then its JSON atomically (``custom.teacher.TeacherOutputs``).

A crash therefore loses only the study in flight; bad input of one study (an unreadable file, NaN) is
logged, recorded in ``failures.json`` and the others go on. After a barrier, rank 0 writes
``index.json`` (every requested study, its status, the rank that ran it, seconds) and ``failures.json``.

Under ``torchrun`` the ranks first measure the ``"auto"`` dtype and memory format of every study grid
together and take rank 0's choice (``TeacherFactory.agree_precision``), so that a study's pseudo-label
does not depend on the rank that explained it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import nibabel as nib
import torch.distributed as dist

from custom.io.atomic import write_json_atomic
from custom.io.datalist import entry_uid
from custom.io.errors import InputError
from custom.io.records import json_ready
from custom.precision import dtype_name
from custom.teacher.factory import TeacherFactory
from custom.teacher.outputs import CLUSTERS, TeacherOutputs
from custom.teacher.studies import read_windowed_image

__all__ = ["STATUS_DONE", "STATUS_FAILED", "STATUS_SKIPPED", "run_cohort"]

STATUS_DONE = "done"
STATUS_SKIPPED = "skipped"
STATUS_FAILED = "failed"

logger = logging.getLogger(__name__)


def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    distributed = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if distributed else 0
    if world_size is None:
        world_size = dist.get_world_size() if distributed else 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return rank, world_size


def _study_grids(studies: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """The distinct ``(height, width)`` slice grids of the studies, in order, from the NIfTI headers.

    A header that cannot be read is left out here; the study fails with a clear error when it is explained.
    """
    grids: list[tuple[int, int]] = []
    for entry in studies:
        try:
            shape = nib.load(os.fspath(entry["image"])).shape  # (X, Y, Z) on disk; the study is (Z, Y, X)
        except Exception as error:  # noqa: BLE001 - reported when the study itself is read
            logger.warning("%s: no grid from the header (%s)", entry.get("image"), error)
            continue
        if len(shape) == 3 and (int(shape[1]), int(shape[0])) not in grids:
            grids.append((int(shape[1]), int(shape[0])))
    return grids


def _agreed_study_grids(studies: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Rank 0's :func:`_study_grids`, broadcast: every rank then makes the same collective calls, even
    when a header read fails on one rank only (a transient file-system error)."""
    grids = [_study_grids(studies) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(grids, src=0)
    return [tuple(grid) for grid in grids[0]]


def _current_settings(factory: TeacherFactory) -> Callable[[Sequence[int]], dict[str, Any]] | None:
    """The factory's ``settings`` record for a recorded study shape ``(Z, H, W)`` (``None``: it cannot say)."""
    output_settings = getattr(factory, "output_settings", None)
    if output_settings is None:
        return None
    return lambda shape: output_settings(int(shape[1]), int(shape[2]))


def _explain_one(
    factory: TeacherFactory, entry: Mapping[str, Any], outputs: TeacherOutputs, window: Sequence[float]
) -> float:
    """Explain and write one study; returns the teacher's wall seconds."""
    uid = entry_uid(entry)
    volume, affine = read_windowed_image(entry, window)
    teacher = factory(volume.shape[1], volume.shape[2])
    start = time.perf_counter()
    explanation = teacher(volume, study_id=f"{uid} ({entry['image']})")
    seconds = time.perf_counter() - start
    record = {
        "study_uid": uid,
        "image": os.fspath(entry["image"]),
        "split": entry.get("split"),
        "shape": list(volume.shape),
        "window": [float(w) for w in window],
        "seconds": round(seconds, 3),
        # what the "auto" settings resolved to for this study's grid (under torchrun: rank 0's choice)
        "autocast_dtype": dtype_name(teacher.autocast_dtype),
        "channels_last": bool(teacher.channels_last),
    }
    outputs.write(uid, explanation, affine, record)
    return seconds


def run_cohort(
    factory: TeacherFactory,
    studies: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    window: Sequence[float] = (100.0, 700.0),
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Run the teacher over a cohort and write its pseudo-labels (see the module docstring).

    Args:
        factory: builds the teacher of each study's grid.
        studies: datalist entries with absolute ``image`` paths (``custom.teacher.load_studies``).
        output_dir: the output folder (layout: ``custom.teacher.outputs``).
        window: ``(level, width)`` HU window of the classifier.
        overwrite: redo studies that are already finished.
        rank: this process's shard (default: the ``torch.distributed`` rank, else 0).
        world_size: number of shards (default: the ``torch.distributed`` world size, else 1).

    Returns:
        The index (what rank 0 writes to ``index.json``): ``studies`` (one record per requested study:
        ``study_uid``, ``status`` done / skipped / failed, ``rank``, ``seconds``), ``done`` (studies
        whose files are complete and made with the current settings), ``failed`` and ``world_size``.
        Under ``torch.distributed`` every rank returns the gathered index.
    """
    rank, world_size = _rank_and_world_size(rank, world_size)
    outputs = TeacherOutputs(output_dir)
    uids = [entry_uid(entry) for entry in studies]
    if len(set(uids)) != len(uids):
        duplicates = sorted({uid for uid in uids if uids.count(uid) > 1})
        raise InputError(f"studies {duplicates} are listed more than once; their outputs would collide")
    records, failures = [], []
    if dist.is_available() and dist.is_initialized() and world_size > 1 and hasattr(factory, "agree_precision"):
        for height, width in _agreed_study_grids(studies):  # the same grids in the same order on every rank
            factory.agree_precision(height, width)
    shard = list(studies)[rank::world_size]
    logger.info("rank %d/%d: %d of %d studies, output %s", rank, world_size, len(shard), len(studies), outputs.root)
    if getattr(factory, "high_threshold", 0.0) is None:  # before any record is judged (and removed) against it
        raise ValueError("no high threshold: calibrate it (configs/calibrate.json) or set high_threshold")
    current = _current_settings(factory)
    for entry in shard:
        uid = entry_uid(entry)
        record_path = outputs.path(CLUSTERS, uid)
        if not overwrite and record_path.is_file():
            reason = outputs.outdated(uid, current, window)
            if reason is None:
                logger.info("rank %d/%d: study %s skipped (%s exists, same settings)", rank, world_size, uid, record_path)
                records.append({"study_uid": uid, "status": STATUS_SKIPPED, "rank": rank, "seconds": None})
                continue
            logger.info("rank %d/%d: study %s redone: %s", rank, world_size, uid, reason)
            # without its record the stale files never count as done, even if redoing the study fails
            record_path.unlink(missing_ok=True)
        try:
            seconds = _explain_one(factory, entry, outputs, window)
        except InputError as error:
            logger.error("rank %d/%d: study %s failed: %s", rank, world_size, uid, error)
            failures.append({"study_uid": uid, "image": os.fspath(entry["image"]), "error": str(error)})
            records.append({"study_uid": uid, "status": STATUS_FAILED, "rank": rank, "seconds": None})
            continue
        logger.info("rank %d/%d: study %s done in %.2f s", rank, world_size, uid, seconds)
        records.append({"study_uid": uid, "status": STATUS_DONE, "rank": rank, "seconds": round(seconds, 3)})
    if dist.is_available() and dist.is_initialized() and world_size > 1:
        dist.barrier()
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, (records, failures))
        records = [r for shard_records, _ in gathered for r in shard_records]
        failures = [f for _, shard_failures in gathered for f in shard_failures]
    order = {uid: i for i, uid in enumerate(uids)}
    records.sort(key=lambda r: order[r["study_uid"]])
    failures.sort(key=lambda f: order[f["study_uid"]])
    finished = {uid for uid in uids if outputs.outdated(uid, current, window) is None}
    index = {
        "studies": records,
        "done": [uid for uid in uids if uid in finished],
        "failed": [f["study_uid"] for f in failures],
        "world_size": world_size,
    }
    if rank == 0:
        write_json_atomic(outputs.root / "index.json", json_ready(index))
        write_json_atomic(outputs.root / "failures.json", json_ready(failures))
        logger.info(
            "teacher cohort: %d done, %d failed of %d studies (index %s)",
            len(index["done"]), len(index["failed"]), len(uids), outputs.root / "index.json",
        )
    return index
