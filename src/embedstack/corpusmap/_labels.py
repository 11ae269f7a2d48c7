"""Cluster labels: each cluster's most distinctive words by class-based TF-IDF over the texts."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["STOP_WORDS", "cluster_labels", "tokens"]

_WORD = re.compile(r"[a-z0-9]+")

#: A small English stop-word list (with a few words that every package description uses).
STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just let may me might more most much must my
    myself no nor not now of off on once only or other our ours ourselves out over own same shall she should so some
    such than that the their theirs them themselves then there these they this those through to too under until up
    upon us use used uses using very via was we were what when where which while who whom why will with within
    without would yet you your yours yourself yourselves one two many well like etc eg ie
    """.split()
)


def tokens(text: str) -> set[str]:
    """The distinct words of a text: lowercase letters and digits, at least 2 long, not all digits, no stop words."""
    return {w for w in _WORD.findall(text.lower()) if len(w) > 1 and not w.isdigit() and w not in STOP_WORDS}


def cluster_labels(texts: Sequence[str], clusters: Sequence[int], words: int = 3) -> list[list[str]]:
    """The `words` most distinctive words of each cluster 0..max (class-based TF-IDF).

    A word scores tf * log(tf / df): tf is the share of the cluster's texts that contain it, df the share of all
    texts that do, so a word scores high when it is frequent in the cluster and rare elsewhere, and words that
    most texts use ("package", "provides") score near zero. A word must occur in two of a cluster's texts (one,
    for clusters of fewer than 4).
    """
    k = max(clusters, default=-1) + 1
    counts = [Counter[str]() for _ in range(k)]
    sizes = [0] * k
    for text, c in zip(texts, clusters):
        counts[c].update(tokens(text or ""))
        sizes[c] += 1
    overall: Counter[str] = Counter()
    for cnt in counts:
        overall.update(cnt)
    n = sum(sizes)
    labels = []
    for cnt, size in zip(counts, sizes):
        least = 2 if size >= 4 else 1
        scored = []
        for w, m in cnt.items():
            tf, df = m / size, overall[w] / n
            if m >= least and tf > df:
                scored.append((-tf * math.log(tf / df), w))
        labels.append([w for _, w in sorted(scored)[:words]])
    return labels
