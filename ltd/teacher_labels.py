"""q_T for LTD students made on the fly: the teacher labels each augmented batch.

The precomputed mode (rules/temperature.smk) stores ``softmax(z / T)`` of the teacher's
logits on the un-augmented training images once; crop and flip then act on the input
alone. On the fly, a loader wrapper runs the teacher (eval mode, no gradients, frozen,
under the training precision's autocast, fp16 or bf16 on the GPU) on the very batch the student
gets, so the label follows the augmentation. One more forward per image per step.
"""

from __future__ import annotations

import inspect
from typing import Iterator

import torch

from . import runtime
from .losses import tempered_softmax


class TeacherLabels:
    """``loader``'s batches with q = softmax(teacher(x) / T), same interface (``len``,
    ``bounds``, ``epoch(e[, start])``)."""

    def __init__(self, loader, teacher: torch.nn.Module, temperature: float, device: torch.device, precision: str):
        self.loader, self.temperature = loader, temperature
        self.teacher = teacher.requires_grad_(False).to(device).eval()
        self.device, self.precision = device, precision
        self.bounds = loader.bounds
        self._start = "start" in inspect.signature(loader.epoch).parameters

    def __len__(self) -> int:
        return len(self.loader)

    @torch.no_grad()
    def label(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        with runtime.autocast(self.device, self.precision):
            logits = self.teacher(x)
        return tempered_softmax(logits.float(), self.temperature)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        batches = self.loader.epoch(epoch, start=start) if self._start and start else self.loader.epoch(epoch)
        if start and not self._start:
            for _ in range(start):  # drawn and dropped: the augmentation stream advances as before
                next(batches)
        for x, y, _ in batches:
            yield x, y, self.label(x)
