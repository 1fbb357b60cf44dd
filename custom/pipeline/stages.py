"""Pipeline stages: a command, the files that mark it done, and a record of its cost.

A stage is skipped (resume) when it finished before: its marker ``<work_dir>/logs/<stage>.done``
exists and so do its outputs. The marker is written only after success, so a stage interrupted
half-way (a training run with its first checkpoints written) runs again and resumes by itself. A stage runs as a subprocess whose output goes
to ``<work_dir>/logs/<stage>.log``; its wall time and peak resident memory are read from the
kernel's accounting of that one child (``os.wait4``). A failing stage raises
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
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        peak_mb = usage.ru_maxrss / 1024.0  # kilobytes on Linux
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
