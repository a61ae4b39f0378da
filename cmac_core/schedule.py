"""Learning rate: linear warm-up then cosine decay to zero, a pure function of the step.

Being a function of the step alone, the schedule resumes exactly from a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WarmupCosine:
    base_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def state_dict(self) -> dict:
        return {"name": "warmup_cosine", **asdict(self)}
