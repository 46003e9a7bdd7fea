"""``--resume RUN_DIR`` of ``fedmodel simulate`` and ``fedmodel train``: the run's own config, its checkpoint verified."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from fedmodel.config import RunConfig
from fedmodel.errors import ConfigError

INTERRUPTED_EXIT = 130


def resume_config(run_dir: Path, given: dict[str, Any]) -> RunConfig:
    """The config of the run in ``run_dir``, marked to resume, after its newest checkpoint is verified.

    Raises ConfigError when options that would change the run are given too, when ``run_dir`` is not
    a run folder or its run completed, and CheckpointError (naming the file) when the checkpoint is
    missing, incomplete, truncated or edited: it is never loaded then.
    """
    from fedmodel.server.resume import open_checkpoint

    if given:
        raise ConfigError([f"--resume continues the run with its own config.toml; these options would change it: "
                           f"{', '.join('--' + k for k in sorted(given))}"])
    run_dir = run_dir.expanduser().absolute()
    toml = run_dir / "config.toml"
    if not toml.is_file():
        raise ConfigError([f"--resume {run_dir}: no config.toml; not a fedmodel run folder"])
    config = RunConfig.from_mapping(RunConfig.from_toml(toml), source=str(toml))
    if Path(config.out).absolute() != run_dir:
        raise ConfigError([f"--resume {run_dir}: the run was started in {config.out}; resume it there "
                           "(its checkpoints and its owners' records name that folder)"])
    report = run_dir / "report.json"
    if report.is_file():
        try:
            status = json.loads(report.read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError):
            status = None
        if status == "completed":
            raise ConfigError([f"--resume {run_dir}: the run completed already ({report})"])
    open_checkpoint(run_dir, config)
    return config.replace(resume=True)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM behaves as Ctrl-C (KeyboardInterrupt), so ``finally`` blocks stop what the command started."""
    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_message(command: str, run_dir: str) -> str:
    return (f"interrupted; the run folder {run_dir} keeps a checkpoint after every completed round: "
            f"continue with `fedmodel {command} --resume {run_dir}`")
