"""The training step as a GPU runs it, exercised on CPU: memory formats, host-device syncs,
skipped non-finite updates, SyncBatchNorm across two gloo processes, devices and backends,
bf16 embeddings against float32."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cmac_core import distributed, train
from cmac_core.config import preset
from cmac_core.data.augment import finish_video
from cmac_core.distributed import DeviceError, DistInfo
from cmac_core.models.placement import count_batchnorms
from cmac_core.sync_task import make_task, other_video_partner
from cmac_core.syncs import StepSyncs, SyncCounter

ENV = {"OMP_NUM_THREADS": "1"}


def _batch(cfg, b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = cfg.data
    video = torch.randint(
        0, 256, (b, 3, d.clip_frames, d.crop_px, d.crop_px), generator=g, dtype=torch.uint8
    )
    spec = torch.randn(b, 1, 128, 32, generator=g)
    return finish_video(video, 1 + 0.2 * torch.rand(b, 3, generator=g)), spec


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# -- channels_last --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cmac", "lla"])
def test_channels_last_fits_each_encoder_and_matches_the_default_step(method):
    """channels_last_3d for the video encoder's 3-D convolutions, channels_last for the audio
    encoder's 2-D ones (one format for both raised "required rank 5 tensor"); the step's
    loss and gradients match the contiguous model's."""
    cfg = preset("tiny", method=method)
    steps = {}
    for on in (False, True):
        torch.manual_seed(0)
        model, _ = train.build_model(cfg.replace("optim", channels_last=on), DistInfo())
        task = make_task(model, cfg.loss)
        video, spec = _batch(cfg)
        extra = {"spec_shifted": spec.roll(1, dims=-1)} if method == "lla" else {}
        out = task(video, spec, 0, torch.arange(4), **extra)
        out["loss"].backward()
        steps[on] = (out["loss"].item(), _grads(model), model)
    model = steps[True][2]
    conv3d = next(m for m in model.video.modules() if isinstance(m, torch.nn.Conv3d))
    conv2d = next(m for m in model.audio.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv3d.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert conv2d.weight.is_contiguous(memory_format=torch.channels_last)
    assert steps[True][0] == pytest.approx(steps[False][0], rel=1e-5)
    for name, g in steps[False][1].items():  # each tensor's gradient, within float32 noise
        h = steps[True][1][name]
        assert (h - g).norm() <= 1e-2 * g.norm() + 1e-6, name  # lla: 1.4e-3 at most seen


# -- host-device syncs ----------------------------------------------------------------


def test_the_step_helpers_make_no_host_device_sync():
    """Constants are on the device once (no blocking copy per step); the lla negatives'
    partner search and selection read no value on the host."""
    video = torch.randint(0, 256, (4, 3, 4, 16, 16), dtype=torch.uint8)
    finish_video(video, torch.rand(4, 3))  # the constants' one copy to this device
    with SyncCounter() as c:
        finish_video(video, torch.rand(4, 3) + 0.5)
        other_video_partner(torch.tensor([0, 0, 1, 2]))
    assert c.total == 0, c.where
    cfg = preset("tiny", method="lla").replace("loss", sync_other_video_frac=0.5)
    model, _ = train.build_model(cfg, DistInfo())
    task = make_task(model, cfg.loss)
    video, spec = _batch(cfg)
    with SyncCounter() as c:
        task(video, spec, 0, torch.tensor([0, 0, 1, 2]), spec_shifted=spec.roll(1, dims=-1))
    assert c.total == 0, c.where


def test_the_counter_sees_the_syncs_it_names():
    x = torch.randn(5)
    host = torch.ones(3)
    with SyncCounter() as c:
        y = x * 2
        (
            float(y.sum()),
            bool(y[0] > 0),
            y.tolist(),
            y[y > 0],
            host.to(y),
            torch.tensor([1.0], device="cpu"),
        )
        y.to(y), host.to(y, non_blocking=True)  # not counted: made here; asked not to block
    assert c.calls == {"__float__": 1, "__bool__": 1, "tolist": 1, "__getitem__[bool mask]": 1,
                       "to() of a host tensor": 1, "torch.tensor(device=...)": 1}, c.calls  # fmt: skip


@pytest.mark.parametrize("method,resize_on", [("cmac", "loader"), ("lla", "loader"),
                                              ("cmac", "device")])  # fmt: skip
def test_steady_state_steps_make_no_sync_and_log_steps_one(demo_shards, tmp_path, method,
                                                           resize_on):  # fmt: skip
    """Counted per step around the whole step (copies in, the resize where the device does
    it, forward, backward, the guard, the optimizer, logging, saving): 0 on plain steps, one
    copy on a log step, two on a step that logs and saves (the save's finiteness check)."""
    cfg = (
        preset("tiny", method=method)
        .replace("optim", steps=8, log_every_steps=4, save_every_steps=8)
        .replace("data", resize_on=resize_on)
    )
    syncs = StepSyncs()
    result = train.pretrain(str(demo_shards), tmp_path / "run", cfg, device="cpu",
                            show_progress=False, observer=syncs)  # fmt: skip
    assert result.steps == 8
    plain = {s: n for s, n in syncs.per_step.items() if s not in (3, 7)}
    assert set(plain) == {0, 1, 2, 4, 5, 6} and all(n == 0 for n in plain.values()), syncs.where
    assert syncs.per_step[3] == 1 and syncs.per_step[7] == 2, syncs.where


def test_cudnn_benchmark_is_set_on_cuda_only():
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        train.configure_backends(torch.device("cpu"), preset("tiny").optim)
        assert torch.backends.cudnn.benchmark is False
        train.configure_backends(torch.device("cuda", 0), preset("tiny").optim)
        assert torch.backends.cudnn.benchmark is True
        train.configure_backends(
            torch.device("cuda", 0), preset("tiny").replace("optim", cudnn_benchmark=False).optim
        )
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


# -- non-finite steps -----------------------------------------------------------------


def _nan_gradient_on(steps, monkeypatch) -> None:
    """Every model pretrain builds gets a NaN in one gradient entry on the backward passes
    numbered ``steps`` (0-based)."""
    real = train.build_model

    def build(cfg, info):
        model, arch = real(cfg, info)
        calls = itertools.count()

        def hook(g):
            if next(calls) in steps:
                g = g.clone()
                g.view(-1)[0] = float("nan")
            return g

        next(model.parameters()).register_hook(hook)
        return model, arch

    monkeypatch.setattr(train, "build_model", build)


def _finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["model"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_nan_gradient_skips_its_update_and_never_reaches_a_checkpoint(
    demo_shards, tmp_path, monkeypatch
):
    _nan_gradient_on({1}, monkeypatch)  # the update that step-2.pt would hold
    run = tmp_path / "run"
    cfg = preset("tiny").replace("optim", steps=6, save_every_steps=2)
    result = train.pretrain(str(demo_shards), run, cfg, device="cpu", show_progress=False)
    assert result.steps == 6 and result.skipped_steps == 1
    for name in ("step-2.pt", "step-4.pt", "last.pt"):
        assert _finite(run / name), name
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1, 1, 1, 1]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_consecutive_non_finite_steps_stop_the_run_and_last_pt_stays_finite(
    demo_shards, tmp_path, monkeypatch
):
    _nan_gradient_on(set(range(2, 100)), monkeypatch)
    run = tmp_path / "run"
    cfg = preset("tiny").replace("optim", steps=10, save_every_steps=2, max_nonfinite_steps=3)
    with pytest.raises(train.TrainingError) as e:
        train.pretrain(str(demo_shards), run, cfg, device="cpu", show_progress=False)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(
        "gradient norm is not finite at step 2 (nan/inf); 3 steps in a row skipped"
    )
    assert f"last good checkpoint: {run / 'last.pt'}" in message
    assert _finite(run / "last.pt") and torch.load(run / "last.pt", weights_only=True)["step"] == 4


# -- devices and backends -------------------------------------------------------------


def test_device_cuda_n_is_used_by_a_single_process(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init("cuda:2").device == torch.device("cuda", 2) and chosen == [2]
    assert distributed.init("cuda").device == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="has 4 CUDA devices"):
        distributed.init("cuda:7")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DeviceError, match="under torchrun each rank uses cuda:LOCAL_RANK"):
        distributed.init("cuda:1")


def test_a_mix_of_backends_is_refused_on_every_rank():
    """Both ranks post their backend to one rendezvous store; both refuse, in one line."""
    port = _free_port()
    stores = [
        dist.TCPStore("127.0.0.1", port, 2, r == 0, timedelta(seconds=30), wait_for_workers=False)
        for r in range(2)
    ]
    mine = [{"backend": "nccl", "device": "cuda:0", "host": "gpu-node"},
            {"backend": "gloo", "device": "cpu", "host": "broken-node"}]  # fmt: skip
    errors = [None, None]

    def rank(r):
        try:
            distributed.check_same_backend(
                distributed.exchange(stores[r], "t", r, 2, mine[r], timeout_s=30)
            )
        except DeviceError as e:
            errors[r] = str(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors[0] == errors[1] and errors[0] is not None and "\n" not in errors[0]
    assert (
        "ranks 0 use nccl (cuda; host gpu-node); ranks 1 use gloo (cpu; host broken-node)"
        in errors[0]
    )
    distributed.check_same_backend(mine[:1] * 3)  # one backend: accepted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int, **extra) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, **ENV, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            **extra}  # fmt: skip


# -- SyncBatchNorm --------------------------------------------------------------------

_HALF_BATCH = """
import sys, torch
from torch.nn.parallel import DistributedDataParallel as DDP
from cmac_core import distributed, train
from cmac_core.config import preset
from cmac_core.models.placement import count_batchnorms
from cmac_core.sync_task import make_task
sys.path.insert(0, {tests!r})
from test_gpu_step import _batch
sync, out = sys.argv[1] == "on", sys.argv[2]
info = distributed.init("cpu", timeout_s=120)
cfg = preset("tiny").replace("optim", sync_batchnorm=sync)
torch.manual_seed(0)
model, _ = train.build_model(cfg, info)
video, spec = _batch(cfg, 8)
half = slice(4 * info.rank, 4 * info.rank + 4)
runner = DDP(make_task(model, cfg.loss))
runner(video[half], spec[half], 0)["loss"].backward()
if info.rank == 0:
    torch.save({{"grads": {{n: p.grad for n, p in model.named_parameters() if p.grad is not None}},
                "bn": count_batchnorms(model)}}, out)
distributed.shutdown()
"""


@pytest.mark.slow
def test_sync_batchnorm_makes_two_ranks_match_one_process(tmp_path):
    """Two gloo ranks with half the clips each against one process with all of them: the
    gradients agree with GlobalBatchNorm (what optim.sync_batchnorm turns on for cmac and
    avid), not without it (per-rank batch statistics change the objective)."""
    cfg = preset("tiny")
    torch.manual_seed(0)
    model, _ = train.build_model(cfg, DistInfo())
    video, spec = _batch(cfg, 8)
    make_task(model, cfg.loss)(video, spec, 0)["loss"].backward()
    ref = torch.cat([g.flatten() for g in _grads(model).values()])
    cosine = {}
    for mode in ("on", "off"):
        port, out = _free_port(), tmp_path / f"{mode}.pt"
        code = _HALF_BATCH.format(tests=str(Path(__file__).parent))
        procs = [subprocess.Popen([sys.executable, "-c", code, mode, str(out)], env=rank_env(r, 2, port),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]  # fmt: skip
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
        assert "backend gloo" in err and "device cpu" in err  # each rank says what it uses
        saved = torch.load(out, weights_only=True)
        got = torch.cat([saved["grads"][n].flatten() for n in _grads(model)])
        cosine[mode] = torch.nn.functional.cosine_similarity(got, ref, dim=0).item()
        bn = saved["bn"]
        assert (bn == {"GlobalBatchNorm": sum(count_batchnorms(model).values())}) == (
            mode == "on"
        ), bn
    print(f"gradient cosine against one process: {cosine}")
    assert cosine["on"] > 0.9999 and cosine["off"] < 0.99, cosine


# -- embed precision ------------------------------------------------------------------


def test_bf16_embeddings_agree_with_float32(demo_shards, tiny_ckpt):
    from cmac_core.data.evaluation import eval_loader
    from cmac_core.data.shards import resolve
    from cmac_core.embed.frozen import Frozen
    from cmac_core.embed.run import BF16_MIN_COSINE, precision_agreement
    from cmac_core.embed.table import VECTORS

    frozen = Frozen.load(tiny_ckpt, torch.device("cpu"))
    loader = eval_loader(
        resolve(str(demo_shards))[:2], frozen.cfg.data, clips_per_segment=None, workers=0
    )
    batches = [(s["video"], s["spec"]) for s in itertools.islice(loader, 4) if "video" in s]
    worst = precision_agreement(frozen, batches)
    assert set(worst) == set(VECTORS) and len(batches) >= 2
    assert min(worst.values()) >= BF16_MIN_COSINE, worst
