"""Pipeline stages: a command, the files that mark it done, and a record of its cost.

A stage is skipped (resume) when it finished before: its marker ``<work_dir>/logs/<stage>.done``
exists and so do its outputs. The marker is written only after success, so a stage interrupted
half-way (a training run with its first checkpoints written) runs again and resumes by itself. A stage runs as a subprocess whose output goes
to ``<work_dir>/logs/<stage>.log``; its wall time is measured around it and its peak resident
memory is the largest total over the child's process tree, sampled from ``/proc`` while it runs. A failing stage raises
:class:`PipelineError` naming the stage, its exit status, its log and the log's last lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from custom.io.atomic import write_json_atomic

__all__ = ["PipelineError", "Stage", "StageRecord", "python_command", "run_stage"]


class PipelineError(RuntimeError):
    """A pipeline stage failed; the message names the stage."""


@dataclass
class Stage:
    """One step of the pipeline.

    Attributes:
        name: short name (``classifier_train``).
        outputs: files the stage must have written; with its done-marker they make it skippable.
            A stage without outputs (cheap glue) always runs.
        command: argv of the subprocess to run (``None`` for an in-process ``function``).
        function: in-process alternative to ``command`` (quick glue steps).
        summary: callable returning a one-line summary once the stage is done.
        env: extra environment variables for the subprocess.
    """

    name: str
    outputs: Sequence[Path]
    command: Sequence[str] | None = None
    function: Callable[[], Any] | None = None
    summary: Callable[[], str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def done(self, log_dir: Path) -> bool:
        """Finished before: marker and outputs present."""
        marker = log_dir / f"{self.name}.done"
        return bool(self.outputs) and marker.exists() and all(Path(p).exists() for p in self.outputs)


@dataclass
class StageRecord:
    """What running (or skipping) a stage cost."""

    name: str
    status: str
    seconds: float
    peak_memory_mb: float | None
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _process_tree_rss_mb(pid: int) -> tuple[float, float]:
    """``(peak of the process itself, current total of it and its descendants)`` in MB, from /proc."""
    def status(p: int) -> dict[str, float]:
        values = {}
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":", 1)
                    values[key] = float(value.split()[0]) / 1024.0
        except OSError:
            pass
        return values

    def children(p: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            return []

    own = status(pid)
    total, stack = own.get("VmRSS", 0.0), children(pid)
    while stack:
        child = stack.pop()
        total += status(child).get("VmRSS", 0.0)
        stack += children(child)
    return own.get("VmHWM", 0.0), total


def _watch_memory(process: subprocess.Popen, interval: float = 0.5) -> float | None:
    """Wait for ``process``; return the peak resident memory (MB) of it and its descendants.

    The kernel's ``ru_maxrss`` of a child includes its parent's size before ``exec``, so this polls
    ``/proc`` instead: the process's own high-water mark and the summed resident size of its tree.
    Returns ``None`` where ``/proc`` is unavailable.
    """
    peak = 0.0
    while process.poll() is None:
        hwm, tree = _process_tree_rss_mb(process.pid)
        peak = max(peak, hwm, tree)
        time.sleep(interval)
    return peak or None


def run_stage(stage: Stage, log_dir: Path, cwd: Path) -> StageRecord:
    """Run ``stage`` unless its outputs exist.

    Args:
        stage: the stage.
        log_dir: folder of the per-stage logs.
        cwd: working directory of the subprocess.

    Returns:
        Its :class:`StageRecord` (``status`` ``"done"`` or ``"skipped (outputs exist)"``).

    Raises:
        PipelineError: the subprocess exited non-zero, the function raised, or the outputs are
            missing afterwards.
    """
    if stage.done(log_dir):
        return StageRecord(stage.name, "skipped (outputs exist)", 0.0, None, stage.summary() if stage.summary else "")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{stage.name}.log"
    start = time.perf_counter()
    peak_mb: float | None = None
    if stage.command is not None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **stage.env}
        with log.open("w") as handle:
            handle.write("$ " + " ".join(str(c) for c in stage.command) + "\n")
            handle.flush()
            process = subprocess.Popen([str(c) for c in stage.command], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
            peak_mb = _watch_memory(process)
        if process.returncode != 0:
            raise PipelineError(
                f"stage '{stage.name}' failed with exit status {process.returncode}; log: {log}\n--- last lines ---\n{_tail(log)}"
            )
    elif stage.function is not None:
        try:
            stage.function()
        except Exception as error:  # the stage name is what the user needs first
            raise PipelineError(f"stage '{stage.name}' failed: {type(error).__name__}: {error}") from error
    missing = [str(p) for p in stage.outputs if not Path(p).exists()]
    if missing:
        raise PipelineError(f"stage '{stage.name}' finished but did not write {missing}; log: {log}")
    seconds = time.perf_counter() - start
    record = StageRecord(stage.name, "done", seconds, peak_mb, stage.summary() if stage.summary else "")
    write_json_atomic(log_dir / f"{stage.name}.done", record.to_dict())
    return record


def python_command(*args: Any) -> list[str]:
    """``[sys.executable, *args]`` as strings."""
    return [sys.executable, *(str(a) for a in args)]
