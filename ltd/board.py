"""TensorBoard event files of a job (``torch.utils.tensorboard.SummaryWriter``).

Each training job writes ``<run dir>/tensorboard/training``, each evaluation
``<run dir>/tensorboard/<evaluation>``, so ``tensorboard --logdir results/<run>`` shows
every job of a run side by side. Only the values a job has already read on the host go
in (the training loop's sync points, its epoch records): writing never synchronises the
device. Under torch.distributed only rank 0 writes (``enabled``).
"""

from __future__ import annotations

import math
from pathlib import Path


class Board:
    """A SummaryWriter, or nothing (``enabled`` False: every call is a no-op).

    ``purge_step``: the first step this writer (re)writes; TensorBoard drops the events
    earlier attempts left in the same folder from that step on (a resumed run continues
    its curves instead of drawing the steps it repeats twice)."""

    def __init__(self, log_dir: str | Path | None, purge_step: int | None = None, enabled: bool = True):
        self.writer = None
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where used

            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        """``prefix/key`` for every finite number of ``values`` (strings and None are left out)."""
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
