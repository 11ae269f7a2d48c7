"""`embedstack search` at scale, step by step: N-row .npy outputs (float32, int8, binary + int8 rescoring vectors)
searched exactly with `embedstack.jobs.search`, p50 of each step over Q queries, against the previous ways in the
same run: hits found by scanning the rows sidecar (before its offsets were kept) and int8 scored by dequantising
each chunk (before the ranges were folded into the query).

    python bench/search_scale.py                    # 1,000,000 rows, 20 queries (outputs cached in $TMPDIR)
    python bench/search_scale.py --n 100000 --queries 50

The vectors come from the fake model (random unit vectors; the query is computed, no model to load): the time of
a scan does not depend on what the vectors mean. The first run embeds the outputs (~40 s each per million rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from embedstack.jobs import embed_records, read_meta, search
from embedstack.jobs._output import offsets_path, rows_path
from embedstack.jobs._search import _chunk_rows, _cosines
from embedstack.jobs._stored import _wanted_lines, open_stored
from embedstack.providers.mock import FakeEmbedding
from embedstack.types import Role
from embedstack.vectors import RunningTopK

CACHE = Path(tempfile.gettempdir()) / "embedstack-bench-search"
MODEL = FakeEmbedding(embed_dim=384)


def output(n: int, precision: str) -> Path:
    """An n-row output of `precision`, embedded once and kept in CACHE."""
    CACHE.mkdir(exist_ok=True)
    out = CACHE / f"{precision}-{n}.npy"
    if not out.with_name(out.name + ".meta.json").exists():
        t0 = time.perf_counter()
        texts = ({"id": f"doc-{i}", "text": f"document {i} about topic {i % 97}"} for i in range(n))
        embed_records(texts, out, model=MODEL, cache=None, precision=precision, id_field="id")
        print(f"embedded {out.name} in {time.perf_counter() - t0:.0f}s")
    return out


def p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def dequantising_scan(out: Path, query: str, k: int) -> float:
    """Seconds of the int8 scan as it was: each chunk dequantised, then cosines."""
    meta = read_meta(out)
    stored = open_stored(out, meta)
    q = stored.fmt.encode_query(MODEL.embed([query], role=Role.QUERY)[0])
    t0 = time.perf_counter()
    top = RunningTopK(k)
    for start, codes in stored.batches("vector", _chunk_rows(stored, None)):
        top.add(start, -_cosines(stored.fmt.decode(codes), q))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    queries = [f"query {i} about topic {i % 13}" for i in range(args.queries)]
    result: dict[str, Any] = {"rows": args.n, "queries": args.queries, "k": args.k}
    steps = ("candidate_search_s", "rescoring_s", "read_hits_s", "total_s")
    for precision in ("float32", "int8", "binary"):
        out = output(args.n, precision)
        search(out, queries[0], k=args.k, model=MODEL, cache=None, index=False)  # page the files in
        times: dict[str, list[float]] = {s: [] for s in steps}
        hits_rows: list[list[int]] = []
        for q in queries:
            found = search(out, q, k=args.k, model=MODEL, cache=None, index=False)
            for s in steps:
                times[s].append(found.timings[s])
            hits_rows.append([int(h.id.split("-")[1]) for h in found])  # row i holds doc-i
        for s in steps:
            result[f"{precision}_{s[:-2]}_ms"] = round(p50_ms(times[s]), 2)
        result[f"{precision}_method"] = found.method
        if precision == "float32":  # the hits as they were found before: a scan of the rows sidecar
            scans = []
            for rows in hits_rows:
                t0 = time.perf_counter()
                _wanted_lines(rows_path(out), rows)
                scans.append(time.perf_counter() - t0)
            result["hits_by_scan_ms"] = round(p50_ms(scans), 2)
            offsets_path(out).unlink()  # an output written before the offsets: the first search builds them
            t0 = time.perf_counter()
            first = search(out, queries[0], k=args.k, model=MODEL, cache=None, index=False)
            result["first_search_without_offsets_hits_ms"] = round(first.timings["read_hits_s"] * 1000, 2)
            result["first_search_without_offsets_total_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        if precision == "int8":
            old = [dequantising_scan(out, q, args.k) for q in queries[: max(3, args.queries // 4)]]
            result["int8_dequantising_candidates_ms"] = round(p50_ms(old), 2)
    f32 = result["float32_candidate_search_ms"]
    result["int8_vs_float32_candidates"] = round(f32 / result["int8_candidate_search_ms"], 2)
    result["int8_fold_vs_dequantising"] = round(
        result["int8_dequantising_candidates_ms"] / result["int8_candidate_search_ms"], 2
    )
    result["binary_rescore_vs_float32_total"] = round(result["float32_total_ms"] / result["binary_total_ms"], 2)
    result["binary_rescore_vs_float32_search_steps"] = round(
        (f32 + result["float32_read_hits_ms"])
        / (result["binary_candidate_search_ms"] + result["binary_rescoring_ms"] + result["binary_read_hits_ms"]),
        2,
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
