"""The embedding folder as users read it whole: pyarrow, pandas, polars, DuckDB and Hugging
Face ``datasets`` each see one row per sample, the same keys; the per-video table beside it
reads the same way (the one-liners of docs/readers.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_shards, run_cli

ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def emb(demo_shards, tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("readers") / "emb"
    run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(out), "--per-video",
            "--device", "cpu", "--workers", "1", env=ENV)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def keys(demo_shards) -> list[str]:
    return sorted(read_shards(demo_shards))


@pytest.fixture(scope="module")
def video_ids(demo_shards) -> list[str]:
    return sorted({s["json"]["video_id"] for s in read_shards(demo_shards).values()})


def test_pyarrow(emb, keys):
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(emb).column("key").to_pylist()) == keys
    assert sorted(ds.dataset(emb, format="parquet").to_table().column("key").to_pylist()) == keys


def test_pandas(emb, keys):
    import pandas as pd

    df = pd.read_parquet(emb)
    assert sorted(df["key"]) == keys and len(df["video_embedding"].iloc[0]) == 32


def test_polars(emb, keys):
    import polars as pl

    for source in (emb, f"{emb}/*.parquet", f"{emb}/**/*.parquet"):
        df = pl.read_parquet(source)
        assert sorted(df["key"].to_list()) == keys, source
    assert df.schema["video_embedding"] == pl.Array(pl.Float32, 32)


def test_duckdb(emb, keys):
    import duckdb

    for source in (f"'{emb}/*.parquet'", f"'{emb}/**/*.parquet'"):
        assert duckdb.sql(f"SELECT count(*) FROM {source}").fetchall() == [(len(keys),)], source
        got = duckdb.sql(f"SELECT key FROM {source} ORDER BY key").fetchall()
        assert [k for (k,) in got] == keys
    # DuckDB reads the vectors as FLOAT[]; array_cosine_similarity wants FLOAT[N]
    query = keys[3]
    rows = duckdb.sql(
        f"""
        WITH t AS (SELECT key, video_embedding::FLOAT[32] AS v, audio_embedding::FLOAT[32] AS a
                   FROM '{emb}/*.parquet')
        SELECT t.key, array_cosine_similarity(t.v, q.v) AS sim
        FROM t, (SELECT v FROM t WHERE key = '{query}') q ORDER BY sim DESC LIMIT 3
        """
    ).fetchall()
    assert rows[0][0] == query and rows[0][1] == pytest.approx(1.0, abs=1e-5)
    assert duckdb.sql(f"SELECT len(video_embedding) FROM '{emb}/*.parquet' LIMIT 1").fetchall() == [
        (32,)
    ]


def _datasets(code: str, tmp_path: Path) -> list:
    """What ``code`` prints as JSON, run as a user would (a fresh process: ``datasets`` reads
    its offline switches on import), offline, its cache under ``tmp_path``."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", f"import datasets, json\n{code}"], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hugging_face_datasets(emb, keys, tmp_path):
    got = _datasets(
        f"a = datasets.load_dataset({str(emb)!r}, split='train')\n"
        f"b = datasets.load_dataset('parquet', data_dir={str(emb)!r}, split='train')\n"
        "print(json.dumps([list(a['key']), list(b['key']), len(a[0]['video_embedding'])]))",
        tmp_path,
    )
    assert sorted(got[0]) == keys and sorted(got[1]) == keys and got[2] == 32


def test_the_per_video_table_beside_the_folder(emb, video_ids, tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    videos = emb.with_name(f"{emb.name}.videos.parquet")
    assert sorted(pq.read_table(videos).column("video_id").to_pylist()) == video_ids
    assert sorted(pd.read_parquet(videos)["video_id"]) == video_ids
    assert sorted(pl.read_parquet(videos)["video_id"].to_list()) == video_ids
    got = duckdb.sql(f"SELECT video_id FROM '{videos}' ORDER BY video_id").fetchall()
    assert [v for (v,) in got] == video_ids
    got = _datasets(
        f"d = datasets.load_dataset('parquet', data_files={str(videos)!r}, split='train')\n"
        "print(json.dumps(list(d['video_id'])))",
        tmp_path,
    )
    assert sorted(got) == video_ids
