"""`embedstack embed` vs a minimal sentence-transformers script, end to end (start-up included).

Both run as fresh processes on the same JSONL corpus with the same bundled all-MiniLM-L6-v2
weights, cold (embedstack gets an empty cache file, the script has none), alternating, and
write Parquet (id + float32 vector). A warm embedstack re-run (everything from the cache) is
reported too. Prints a Markdown table with the ratio to the script.

    flock /tmp/embedstack-cpu.lock .venv/bin/python bench/cli_embed.py --repeats 2   # --data for another corpus
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from _common import DATA, bundled_model_dir, records

# The peer: what a user would write with sentence-transformers directly.
ST_SCRIPT = r"""
import json, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from sentence_transformers import SentenceTransformer

data, out, model_dir = sys.argv[1:4]
model = SentenceTransformer(model_dir, device="cpu")
rows = [json.loads(line) for line in open(data, encoding="utf-8") if line.strip()]
vecs = model.encode([r["text"] for r in rows], batch_size=32, normalize_embeddings=True,
                    convert_to_numpy=True).astype(np.float32)
vector = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1])
table = pa.table({"id": [str(r["id"]) for r in rows], "vector": vector})
pq.write_table(table, out)
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def vectors(path: Path) -> np.ndarray:
    col = pq.read_table(path, columns=["vector"]).column("vector").combine_chunks()
    return col.values.to_numpy().reshape(len(col), -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="JSONL corpus (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    data = args.data.resolve()
    n = len(records(data))
    model_dir = str(bundled_model_dir())
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    times: dict[str, list[float]] = {"st": [], "cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for i in range(args.repeats):
            cache = out / f"cache-{i}.sqlite"  # a new, empty cache: cold
            es = [
                sys.executable,
                "-m",
                "embedstack.cli",
                "embed",
                str(data),
                "-o",
                str(out / "es.parquet"),
            ]
            es += ["--cache", str(cache), "--no-progress", "-q"]
            times["st"].append(
                timed(
                    [
                        sys.executable,
                        "-c",
                        ST_SCRIPT,
                        str(data),
                        str(out / "st.parquet"),
                        model_dir,
                    ],
                    env,
                )
            )
            times["cold"].append(timed(es, env))
            times["warm"].append(timed(es, env))
        a, b = vectors(out / "es.parquet"), vectors(out / "st.parquet")
        agree = float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    st = statistics.median(times["st"])
    rows = [
        ("sentence-transformers script (load, read JSONL, encode, write Parquet)", times["st"]),
        ("`embedstack embed` (cold cache)", times["cold"]),
        ("`embedstack embed` re-run (warm cache)", times["warm"]),
    ]
    print(
        f"\n{n} texts from {data.name}, all-MiniLM-L6-v2 (bundled), CPU, {os.cpu_count()} cores; "
        f"median of {args.repeats} runs, wall clock incl. start-up\n"
    )
    best_st = min(times["st"])
    print("| run | median s | best s | all runs (s) | texts/s (median) | median vs script | best vs script |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, ts in rows:
        med, best = statistics.median(ts), min(ts)
        runs = ", ".join(f"{t:.1f}" for t in ts)
        print(f"| {name} | {med:.1f} | {best:.1f} | {runs} | {n / med:.0f} | {med / st:.2f}x | {best / best_st:.2f}x |")
    print(f"\nmin cosine between the two outputs' vectors: {agree:.6f}")


if __name__ == "__main__":
    main()
