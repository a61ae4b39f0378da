"""``avprep inspect``: counts from the manifest and a contact sheet that shows sync.

Clapper videos (white flashes and 1 kHz beeps at known times, one with its
audio stream starting 0.5 s late) plus one silent and one broken input are
sharded; the stats must match the tars and manifest, and on the contact sheet
each flash in the frame strip must sit at the same x as the beep in the
spectrogram, at the x of its true time.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import read_manifest, read_shards, run_cli
from PIL import Image
from rich.console import Console

from avprep import sheet
from avprep.errors import UsageError
from avprep.inspect import choose_samples, print_stats, read_samples, shard_pattern, stats
from avprep.synth import make_clapper

FLASHES = (1.0, 2.5, 4.0, 5.2)
SEGMENT = 3.0
FPS = 16.0  # the shard default


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    src = tmp_path_factory.mktemp("clappers")
    make_clapper(src / "clap.mp4", flashes_s=FLASHES, duration_s=6.5)
    make_clapper(src / "late.mp4", flashes_s=FLASHES, duration_s=6.5, audio_delay_s=0.5)
    make_clapper(src / "short.mkv", flashes_s=(0.5, 1.7, 3.3), duration_s=4.0)
    make_clapper(src / "silent.mp4", duration_s=4.0, audio=False)  # skipped: no_audio
    (src / "broken.mp4").write_bytes(b"not a video [at all]")  # failed: decode_error
    out = tmp_path_factory.mktemp("shards")
    run_cli("shard", str(src), "--out", str(out), "--workers", "1", "--segment-seconds", str(SEGMENT))  # fmt: skip
    return out


def _count(stdout: str, label: str) -> int:
    """The number on the table line whose label is ``label``."""
    for line in stdout.splitlines():
        m = re.match(rf"^\W*{re.escape(label)}\W+(\d+)\b", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {label!r} line in:\n{stdout}")


def test_stats_match_tars_and_manifest(sharded):
    st = stats(sharded)
    rows = read_manifest(sharded).to_pylist()
    assert st["samples"] == len(read_shards(sharded)) == 6
    assert st["inputs"] == {"ok": 3, "skipped": 1, "failed": 1}
    assert st["reasons"] == {"skipped": {"no_audio": 1}, "failed": {"decode_error": 1}}
    tars = sorted(sharded.glob("*.tar"))
    assert st["shards"] == len(tars) >= 1
    assert st["bytes"] == sum(p.stat().st_size for p in tars)
    ok_seconds = sum(r["duration_s"] for r in rows if r["status"] == "ok")
    assert st["hours"] == pytest.approx(ok_seconds / 3600)
    assert 16.9 / 3600 < st["hours"] < 17.2 / 3600


def test_cli_prints_counts_and_writes_sheet(sharded, tmp_path):
    png = tmp_path / "sheet.png"
    proc = run_cli("inspect", str(sharded), "--png", str(png))
    assert _count(proc.stdout, "samples") == 6
    assert _count(proc.stdout, "inputs") == 5
    assert _count(proc.stdout, "ok") == 3
    assert _count(proc.stdout, "skipped") == 1
    assert _count(proc.stdout, "failed") == 1
    assert _count(proc.stdout, "decode_error") == 1
    assert _count(proc.stdout, "no_audio") == 1
    assert _count(proc.stdout, "shards") >= 1
    assert f"contact sheet: {png}" in proc.stdout.replace("\n", "")
    with Image.open(png) as im:
        assert im.format == "PNG"
        w, h = im.size
        pixels = np.asarray(im.convert("RGB"))
    assert w == sheet.LEFT + sheet.PLOT_W + sheet.RIGHT
    assert h == sheet.HEADER_H + 4 * sheet.ROW_H  # --samples defaults to 4
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # frames, colormap, text
    assert (pixels.min(axis=2) > 240).mean() < 0.8  # not just background


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


@pytest.mark.parametrize("video_id", ["clap", "late"])
def test_flashes_line_up_with_beeps_on_the_sheet(sharded, video_id):
    pairs = [p for p in choose_samples(sharded, 100) if p[1].startswith(f"{video_id}_")]
    samples = read_samples(pairs)
    assert [s["json"]["segment"] for s in samples] == [0, 1]
    image = np.asarray(sheet.draw_sheet(samples)).astype(int)
    px_per_s = sheet.PLOT_W / SEGMENT
    tolerance_px = px_per_s * (1 / FPS + 0.025)  # a stored frame period + a window
    for row, sample in enumerate(samples):
        start = sample["json"]["start_s"]
        y_rib, y_spec = sheet.row_layout(row)["ribbon"], sheet.row_layout(row)["spec"]
        x = slice(sheet.LEFT, sheet.LEFT + sheet.PLOT_W)
        ribbon = image[y_rib + sheet.RIBBON_H // 2, x]
        flashes = _runs(ribbon.min(axis=1) > 200)  # white frames
        spec = image[y_spec : y_spec + sheet.SPEC_H, x]
        bright = (spec.sum(axis=2) > 550) & (spec[..., 0] - spec[..., 2] > 40)  # magma's top
        beeps = _runs(bright.any(axis=0))
        truth = [t for t in FLASHES if start <= t < start + SEGMENT]
        assert len(flashes) == len(beeps) == len(truth), (row, flashes, beeps)
        for t, (f0, _), (b0, _) in zip(truth, flashes, beeps, strict=True):
            true_x = (t - start) * px_per_s
            assert abs(f0 - true_x) <= tolerance_px, (t, f0, true_x)
            assert abs(b0 - true_x) <= tolerance_px, (t, b0, true_x)


def test_inspect_outside_an_output_dir_is_a_one_line_error(tmp_path):
    for target in (tmp_path, tmp_path / "missing"):
        proc = run_cli("inspect", str(target), check=False)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("avprep: error: "), proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
    with pytest.raises(UsageError):
        stats(tmp_path)


def test_output_dir_without_samples(tmp_path):
    (tmp_path / "manifest").mkdir()
    proc = run_cli("inspect", str(tmp_path))
    assert _count(proc.stdout, "samples") == 0
    proc = run_cli("inspect", str(tmp_path), "--png", str(tmp_path / "x.png"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("avprep: error: ") and "no samples" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_sample_choice_is_spread_and_deterministic(sharded):
    first = choose_samples(sharded, 3)
    assert first == choose_samples(sharded, 3)
    keys = [k for _, k in first]
    assert len(set(keys)) == 3
    assert {k.rsplit("_", 1)[0] for k in keys} == {"clap", "late", "short"}


def test_reasons_are_printed_literally(sharded):
    st = stats(sharded)
    st["examples"]["decode_error"] = "decode_error: /videos/[bold]clip[/bold].mp4: bad"
    console = Console(record=True, width=200)
    print_stats(st, console)
    assert "/videos/[bold]clip[/bold].mp4" in console.export_text()


def test_json_for_scripts_is_what_stats_returns(sharded, tmp_path):
    """``--json``: one JSON object on stdout (nothing else there), the same counts as the
    table; with ``--png`` the sheet's path is in it."""
    proc = run_cli("inspect", str(sharded), "--json")
    got = json.loads(proc.stdout)
    assert got == {**json.loads(json.dumps(stats(sharded))), "contact_sheet": None}
    assert got["inputs"] == {"ok": 3, "skipped": 1, "failed": 1}
    assert got["reasons"]["failed"] == {"decode_error": 1}
    png = tmp_path / "sheet.png"
    proc = run_cli("inspect", str(sharded), "--json", "--png", str(png), "--samples", "2")
    assert json.loads(proc.stdout)["contact_sheet"] == str(png) and png.stat().st_size > 0


def test_the_printed_pattern_is_what_webdataset_reads(sharded, tmp_path):
    """``inspect`` prints one string that ``webdataset.WebDataset`` opens as exactly the
    committed shards: every sample once, nothing else (the real reader)."""
    import webdataset as wds

    proc = run_cli("inspect", str(sharded))
    line = next(x for x in proc.stdout.splitlines() if x.startswith("webdataset: WebDataset("))
    pattern = stats(sharded)["pattern"]
    assert repr(pattern) in line.replace("\n", "")
    keys = [s["__key__"] for s in wds.WebDataset(pattern, shardshuffle=False)]
    assert sorted(keys) == sorted(read_shards(sharded)) and len(keys) == len(set(keys))
    # gaps, several groups and names with braces are each named exactly
    names = [tmp_path / f"shard-r0000-001-w00-{i:05d}.tar" for i in (0, 1, 2, 5)]
    names += [tmp_path / "shard-r0001-001-w00-00000.tar", tmp_path / "odd{a,b}.tar"]
    from webdataset.shardlists import expand_urls

    assert sorted(expand_urls(shard_pattern(names))) == sorted(map(str, names))
    assert "{00000..00002}" in shard_pattern(names)
    assert shard_pattern([]) == ""
