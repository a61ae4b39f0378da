"""Can lla's model and pretext learn synchronization when the timing is plain? (issue 13; a
method diagnostic, not a speed benchmark: docs/method.md, "Plain timing is learned")

The real model (``LLAModel``, the ``tiny`` lla preset) and task (``SyncTask``: aligned
audio against the same sequence's audio 1-2 clip lengths later, BCE) trained on tensors
made here, where the truth is as plain as it gets: 8 frames of 64 px noise with one 16 px
square, and a spectrogram of noise with a broadband click at each "strike" frame (a
quarter of the frames, at random). The cue a strike leaves in the picture:

- ``flash``: the square, still, lights up in the strike's frame (one frame tells);
- ``bounce``: the square moves sideways at 5 px a frame and reverses at each strike (the
  synthetic benchmark's cue: a reversal of motion, which takes three frames to see).

Fresh random sequences every step (nothing to memorise); BCE and accuracy per 50 steps.

python benchmarks/probe_lla_plain.py --cue bounce --head per_time --motion --steps 200
"""

from __future__ import annotations

import argparse
import time

import torch

from cmac_core.config import preset
from cmac_core.models.coattention import LLAModel
from cmac_core.sync_task import SyncTask

B, T, PX, SQUARE, COLUMNS = 16, 8, 64, 16, 100


def sequences(cue: str, gen: torch.Generator):
    """``(video [B, 3, T, PX, PX], aligned, shifted [B, 1, 128, COLUMNS])``."""
    strikes = (torch.rand(B, 3 * T, generator=gen) < 0.25).float()
    video = 0.3 * torch.randn(B, 3, T, PX, PX, generator=gen)
    for i in range(B):
        y, x = (int(v) for v in torch.randint(0, PX - SQUARE, (2,), generator=gen))
        step = 5.0 if torch.rand(1, generator=gen) < 0.5 else -5.0
        for t in range(T):
            if cue == "flash":
                video[i, :, t, y : y + SQUARE, x : x + SQUARE] += 3.0 * strikes[i, t]
                continue
            if t and strikes[i, t]:
                step = -step
            x = int(min(max(x + (step if t else 0), 0), PX - SQUARE))
            video[i, :, t, y : y + SQUARE, x : x + SQUARE] += 3.0

    def spec(frames: torch.Tensor) -> torch.Tensor:
        columns = frames.repeat_interleave(COLUMNS // T + 1, dim=1)[:, :COLUMNS]
        return 0.3 * torch.randn(B, 1, 128, COLUMNS, generator=gen) + 3.0 * columns[:, None, None]

    shift = int(torch.randint(T, 2 * T + 1, (1,), generator=gen))
    return video, spec(strikes[:, :T]), spec(strikes[:, shift : shift + T])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cue", choices=("flash", "bounce"), default="bounce")
    ap.add_argument("--head", choices=("pooled", "per_time"), default="per_time")
    ap.add_argument("--motion", action="store_true", help="model.video_motion (residual frames)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    cfg = preset("tiny", method="lla").replace("model", sync_head=args.head,
                                                video_motion=args.motion)  # fmt: skip
    task = SyncTask(LLAModel(cfg.model), cfg.loss)
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(args.seed)
    t0, window = time.time(), []
    for step in range(1, args.steps + 1):
        video, aligned, shifted = sequences(args.cue, gen)
        out = task(video, aligned, step, None, shifted)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        window.append((out["loss"].item(), out["sync_acc"].item()))
        if step % 50 == 0:
            bce, acc = (sum(w[i] for w in window) / len(window) for i in (0, 1))
            print(f"{args.cue} {args.head} {'motion' if args.motion else 'rgb'} steps "
                  f"{step - 49}-{step}: BCE {bce:.3f} acc {acc:.2f} ({time.time() - t0:.0f} s)",
                  flush=True)  # fmt: skip
            window = []


if __name__ == "__main__":
    main()
