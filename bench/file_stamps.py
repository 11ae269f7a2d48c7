"""What the content-hash files stamp costs on the bundled all-MiniLM-L6-v2 (~90 MB of weights), per process.

Each measurement runs in a fresh interpreter (the in-process memo starts empty) and times, after the imports,
`locate_model` (which checks the bundled weights' sha256) plus `files_stamp()` on the bundled model and on a plain
copy of it (origin "path", the case the stamp keys):

- cold: an empty embedstack cache directory (no memo file): every file is read and hashed;
- warm: the memo file from the cold run: one stat per file, no reads;
- old: the code before the change (`--old-src`, e.g. a `git archive` of the base commit's src), which re-hashed the
  bundled weights in every process and stamped the copy by sizes and mtimes;
- load: the peer, the same interpreter's first `HuggingFaceEmbedding(backend="torch").embed(["x"])` after the stamp.

Files are in the page cache after the first round (the disk is not timed). Run under the shared lock:

    flock /tmp/bench.lock python bench/file_stamps.py --rounds 5 --old-src /tmp/keys-old/src
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = r"""
import json, sys, time
from embedstack.providers.hub import ModelSource, locate_model
copy = sys.argv[1]
try:  # the imports a lookup makes (huggingface_hub's cache scan), before the clock starts
    locate_model("nobody/no-such-model")
except Exception:
    pass
t0 = time.perf_counter()
bundled = locate_model("sentence-transformers/all-MiniLM-L6-v2")
bundled.files_stamp()
t1 = time.perf_counter()
ModelSource(__import__("pathlib").Path(copy), "path").files_stamp()
t2 = time.perf_counter()
out = {"bundled": t1 - t0, "copy": t2 - t1}
if sys.argv[2] == "load":
    from embedstack.providers.huggingface import HuggingFaceEmbedding
    t3 = time.perf_counter()
    HuggingFaceEmbedding(backend="torch").embed(["x"])
    out["load"] = time.perf_counter() - t3
print(json.dumps(out))
"""


def _run(src: Path, cache: Path, copy: Path, load: bool = False) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "EMBEDSTACK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(copy), "load" if load else "-"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--old-src", type=Path, default=None, help="the src folder of the code before the change")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from embedstack.providers.hub import locate_model

    bundled = locate_model("sentence-transformers/all-MiniLM-L6-v2").path
    rows: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "old": []}
    with tempfile.TemporaryDirectory(prefix="file-stamps-") as tmp:
        copy = Path(tmp) / "minilm-copy"
        shutil.copytree(bundled, copy)
        for r in range(args.rounds):
            cache = Path(tmp) / f"cache-{r}"
            rows["cold"].append(_run(ROOT / "src", cache, copy))
            rows["warm"].append(_run(ROOT / "src", cache, copy, load=True))
            if args.old_src is not None:
                rows["old"].append(_run(args.old_src, Path(tmp) / f"old-{r}", copy, load=True))
    load = statistics.median(row["load"] for row in rows["warm"])
    print(f"bundled all-MiniLM-L6-v2 at {bundled} ({sum(p.stat().st_size for p in bundled.rglob('*')) / 1e6:.1f} MB)")
    print(f"{'run':6} {'bundled ms':>11} {'copy ms':>9} {'vs load':>8}   (median of {args.rounds} fresh processes)")
    for name, found in rows.items():
        if not found:
            continue
        b = statistics.median(row["bundled"] for row in found)
        c = statistics.median(row["copy"] for row in found)
        print(f"{name:6} {b * 1e3:11.2f} {c * 1e3:9.2f} {(b + c) / load:8.4f}")
    print(f"load   {load * 1e3:11.1f}   (first HuggingFaceEmbedding(backend='torch').embed(['x']), the peer)")
    print("load average:", os.getloadavg())


if __name__ == "__main__":
    main()
