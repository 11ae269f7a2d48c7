"""Build .gpu/, what tools/gpu/cuda_local.py needs on a GPU machine that has torch but no network.

    .venv/bin/python tools/gpu/gpu_bundle.py   # then carry .gpu (git-excluded) with the device call

It holds: wheels of pydantic and its needs for CPython 3.12 (the device image lacks them), the
default model with its weights stored as float16 (the fp32 file is 90 MB, over the 64 MiB transfer
limit; cuda_local.py expands them back to fp32 there), and the first 2,000 benchmark records.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "bench" / "data" / "packages-retrieval.jsonl"  # the benchmark corpus
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def main() -> None:
    out = ROOT / ".gpu"
    shutil.rmtree(out, ignore_errors=True)
    (out / "whl").mkdir(parents=True)
    git_path = ["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-path", "info/exclude"]
    exclude = Path(subprocess.run(git_path, capture_output=True, text=True, check=True).stdout.strip())  # worktrees too
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as f:
            f.write("/.gpu/\n")
    for name in WHEELS:  # the versions this venv runs, so the device sees the same pydantic
        pin = f"{name}=={importlib.metadata.version(name)}"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(out / "whl"), pin]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        subprocess.run(cmd, check=True)

    import torch
    from safetensors.torch import load_file, save_file

    from embedstack.providers.hub import DEFAULT_MODEL, locate_model

    src = locate_model(DEFAULT_MODEL).path
    shutil.copytree(src, out / "model", ignore=shutil.ignore_patterns("*.safetensors"))
    for weights in src.rglob("*.safetensors"):
        tensors = load_file(str(weights))
        half = {k: (t.to(torch.float16) if t.is_floating_point() else t).contiguous() for k, t in tensors.items()}
        save_file(half, str(out / "model" / weights.relative_to(src)), metadata={"format": "pt"})
    with DATA.open() as f, (out / "data.jsonl").open("w") as g:
        g.writelines(line for line, _ in zip(f, range(2000)))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB (the device call's limit is 64 MiB with the working tree)")


if __name__ == "__main__":
    main()
