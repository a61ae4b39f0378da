"""The first-GPU check: ``python -m cmac_core.gpu_check`` (``scripts/gpu_check``), one table.

On whatever device is here (CUDA, else CPU, where CI runs it so it cannot rot), on tiny
synthetic shards it makes itself (``avprep synth`` then ``avprep shard``, in a temporary
folder): bf16 autocast gradients against float32 ones on real batches (cosine),
host-device syncs per training step (``cmac_core.syncs``; on CUDA also CUDA's own count),
step time with channels-last off and on, clips/s with ``cudnn.benchmark`` off and on
(CUDA only), a two-process torchrun pretraining run (NCCL on two GPUs, else gloo on CPU)
with torch.compile's recompiles counted when it is on, and embed's clips/s and precision.
``--size small`` (CI: a minute or two on CPU) or ``full`` (the base model: minutes on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

SIZES = {  # config, videos, batch, timed steps, sync steps, torchrun steps
    "small": ("tiny", 6, 4, 3, 6, 10),
    "full": ("base", 24, 32, 20, 20, 50),
}


def make_shards(folder: Path, videos: int) -> Path:
    """Synthetic videos (``avprep synth``) sharded (``avprep shard``) into ``folder/shards``."""
    run = [sys.executable, "-m", "avprep"]
    bench, shards = folder / "synth", folder / "shards"
    subprocess.run([*run, "synth", str(bench), "--videos", str(videos), "--test-videos", "1",
                    "--seconds", "4", "--fps", "16", "--size", "112", "--workers", "2", "--quiet"],
                   check=True, capture_output=True, text=True)  # fmt: skip
    subprocess.run([*run, "shard", str(bench / "train" / "manifest.jsonl"), "--out", str(shards),
                    "--short-side", "112", "--fps", "16", "--segment-seconds", "2",
                    "--shard-max-samples", "4", "--workers", "2", "--quiet"],
                   check=True, capture_output=True, text=True)  # fmt: skip
    return shards


def _config(name: str, batch: int, **optim):
    from cmac_core.config import preset  # noqa: PLC0415

    return preset(name).replace("optim", batch_size=batch, workers=1, **optim)


def _batches(shards: Path, cfg, device: torch.device, n: int):
    """``n`` real training batches (video finished on the device, spec, ids)."""
    from cmac_core.data import batch_memory  # noqa: PLC0415
    from cmac_core.data.augment import batch_video  # noqa: PLC0415
    from cmac_core.data.loader import train_stream, with_spec_norm  # noqa: PLC0415
    from cmac_core.train import resize_where  # noqa: PLC0415

    data = with_spec_norm(str(shards), cfg.data)
    data = resize_where(data, device)
    stream = train_stream(str(shards), data, batch_size=cfg.optim.batch_size, workers=0)
    out = []
    for batch in stream.loader:
        video = batch_video(batch, device, cfg.data.crop_px)
        batch_memory.release(batch.pop(batch_memory.KEY, None))
        out.append((video, batch["spec"].to(device), batch["video_id"].to(device)))
        if len(out) == n:
            return out
    return out


def bf16_gradients(shards: Path, cfg, device: torch.device, n: int = 3) -> tuple[str, str]:
    """One step's gradients in float32 and under bf16 autocast (as pretraining runs on
    CUDA) on ``n`` real batches: the lowest cosine of the flattened gradients over the
    tensors finite in both, and the tensors whose bf16 gradient is not finite or whose
    norm overflows float32 (the trainer's guard would skip those steps)."""
    from cmac_core import train  # noqa: PLC0415
    from cmac_core.distributed import DistInfo  # noqa: PLC0415
    from cmac_core.sync_task import make_task  # noqa: PLC0415

    torch.manual_seed(0)
    model, _ = train.build_model(cfg, DistInfo(device=device))
    task = make_task(model, cfg.loss)
    worst, bad = 1.0, set()
    for video, spec, ids in _batches(shards, cfg, device, n):
        grads = []
        for amp in (False, True):
            model.zero_grad(set_to_none=True)
            ctx = (
                torch.autocast(device.type, dtype=torch.bfloat16)
                if amp
                else contextlib.nullcontext()
            )
            with ctx:
                loss = task(video, spec, 0, ids)["loss"]
            loss.backward()
            grads.append(
                {
                    n: p.grad.float().clone()
                    for n, p in model.named_parameters()
                    if p.grad is not None
                }
            )
        ok = [
            n for n in grads[0] if grads[0][n].norm().isfinite() and grads[1][n].norm().isfinite()
        ]
        bad |= set(grads[0]) - set(ok)
        a, b = (torch.cat([g[n].flatten() for n in ok]) for g in grads)
        if a.norm() > 0:  # 0: every clip of the batch from one video, no negatives
            worst = min(worst, torch.nn.functional.cosine_similarity(a, b, dim=0).item())
    note = f"autocast {device.type} bf16, {n} real batches"
    if bad:
        note += f"; NaN/inf/overflowing under bf16: {len(bad)} of {len(grads[0])} tensors ({', '.join(sorted(bad)[:2])})"
    return f"cosine {worst:.4f}", note


def syncs_per_step(shards: Path, cfg, device: torch.device, folder: Path) -> tuple[str, str]:
    """Host-device syncs per pretraining step: plain steps and log/save steps."""
    from cmac_core.syncs import StepSyncs  # noqa: PLC0415
    from cmac_core.train import pretrain  # noqa: PLC0415

    steps = cfg.optim.steps
    counter = StepSyncs(cuda=device.type == "cuda")
    pretrain(
        str(shards),
        folder / "syncs",
        cfg,
        device=str(device),
        show_progress=False,
        observer=counter,
    )
    marked = {
        s for s in counter.per_step if (s + 1) % cfg.optim.log_every_steps == 0 or s + 1 == steps
    }
    plain = [n for s, n in counter.per_step.items() if s not in marked]
    text = f"{max(plain, default=0)} on plain steps, {max(counter.per_step[s] for s in marked)} on log/save steps"
    note = "counted in Python (cmac_core/syncs.py)"
    if counter.cuda_per_step:
        cuda_plain = [n for s, n in counter.cuda_per_step.items() if s not in marked]
        note += f"; CUDA's sync debug mode: {max(cuda_plain, default=0)} on plain steps"
    return text, note


def step_time(cfg, device: torch.device, batch, steps: int) -> float:
    """Milliseconds per training step (forward, backward, AdamW) on one fixed batch."""
    from cmac_core import train  # noqa: PLC0415
    from cmac_core.distributed import DistInfo  # noqa: PLC0415
    from cmac_core.sync_task import make_task  # noqa: PLC0415

    torch.manual_seed(0)
    model, _ = train.build_model(cfg, DistInfo(device=device))
    task = make_task(model, cfg.loss)
    opt = train.make_optimizer(model, cfg.optim)
    video, spec, ids = batch
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    times = []
    for _ in range(steps + 2):  # two warm-up steps (cuDNN's search, allocator)
        _sync(device)
        t0 = time.perf_counter()
        with ctx:
            loss = task(video, spec, 0, ids)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times[2:])[len(times[2:]) // 2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torchrun_pretrain(
    shards: Path, cfg_name: str, batch: int, steps: int, folder: Path, *, compile_: bool
):
    """A two-process torchrun run: ``(result, note)``; NCCL where two GPUs are here."""
    cuda = torch.cuda.device_count() >= 2
    port = 29600 + os.getpid() % 300
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "avprep", "pretrain", str(shards), "--out", str(folder / "ddp"), "--config", cfg_name,
           "--steps", str(steps), "--batch-size", str(batch), "--workers", "1", "--save-every", str(steps),
           "--device", "cuda" if cuda else "cpu", "--set", f"optim.compile={str(compile_).lower()}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if compile_:
        env["TORCH_LOGS"] = "recompiles"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    backend = "nccl" if cuda else "gloo (CPU)"
    if proc.returncode != 0:
        return "FAILED", f"{backend}: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    recompiles = len(re.findall(r"Recompiling function", proc.stderr))
    said = re.findall(r"avprep: rank (\d)/2 on \S+: device (\S+), backend (\w+)", proc.stderr)
    done = re.search(r"pretrain: (\d+) steps", proc.stdout)
    note = f"{backend}; ranks said: {', '.join(f'{r}: {d} {b}' for r, d, b in sorted(said))}"
    note += (
        f"; recompiles: {recompiles}"
        if compile_
        else "; torch.compile off (--compile on to count recompiles)"
    )
    return f"{done.group(1) if done else '?'} steps in {wall:.0f} s", note


def embed_speed(shards: Path, ckpt: Path, device: torch.device, folder: Path, batch: int):
    from cmac_core.embed import embed  # noqa: PLC0415

    report = embed(str(shards), ckpt, folder / "emb", batch_size=batch, device=str(device))
    rate = report.clips / max(report.seconds, 1e-9)
    return (
        f"{rate:.1f} clips/s",
        f"{report.clips} clips, {report.precision}, {report.workers} loader workers",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--size", choices=sorted(SIZES), default="full" if torch.cuda.is_available() else "small"
    )
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="torch.compile in the torchrun run (auto: on with CUDA)")  # fmt: skip
    ap.add_argument("--work", type=Path, default=None, help="Keep the shards and runs here.")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    cfg_name, videos, batch, timed, sync_steps, ddp_steps = SIZES[args.size]
    compile_ = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        folder = args.work or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        shards = make_shards(folder, videos)
        rows.append(
            (
                "synthetic shards",
                f"{len(list(shards.glob('*.tar')))} shards",
                f"{time.perf_counter() - t0:.0f} s",
            )
        )
        cfg = _config(cfg_name, batch)
        rows.append(("bf16 vs float32 gradients", *bf16_gradients(shards, cfg, device)))
        sync_cfg = _config(
            cfg_name, batch, steps=sync_steps, log_every_steps=3, save_every_steps=sync_steps
        )
        rows.append(
            ("host-device syncs per step", *syncs_per_step(shards, sync_cfg, device, folder))
        )
        one = _batches(shards, cfg, device, 1)[0]
        for on in (False, True):
            ms = step_time(_config(cfg_name, batch, channels_last=on), device, one, timed)
            rows.append(
                (
                    f"step time, channels_last {'on' if on else 'off'}",
                    f"{ms:.1f} ms",
                    f"batch {batch}",
                )
            )
        if device.type == "cuda":
            for on in (False, True):
                torch.backends.cudnn.benchmark = on
                ms = step_time(cfg, device, one, timed)
                rows.append(
                    (
                        f"clips/s, cudnn.benchmark {'on' if on else 'off'}",
                        f"{1000 * batch / ms:.0f}",
                        "",
                    )
                )
        else:
            rows.append(("clips/s, cudnn.benchmark off/on", "skipped", "CPU: no cuDNN"))
        rows.append(("torchrun pretrain, 2 processes",
                     *torchrun_pretrain(shards, cfg_name, batch, ddp_steps, folder, compile_=compile_)))  # fmt: skip
        ckpt = folder / "syncs" / "last.pt"
        rows.append(("embed", *embed_speed(shards, ckpt, device, folder, batch)))
    print(table(rows, device))
    return 1 if any(r[1] == "FAILED" for r in rows) else 0


def table(rows: list[tuple[str, str, str]], device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    head = f"gpu_check on {device} ({name}), torch {torch.__version__}"
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [head, ""]
    lines += [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sys.exit(main())
