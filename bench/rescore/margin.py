#!/usr/bin/env python3
"""How far i8 rounding moves a cosine, and how many memories a search must read again
from the database to settle its cut (docs/benchmarks.md, "A semantic search reads again
only the memories at its cut").

Reads the corpus cache of `engram bench corpus` (`vectors.f32`), takes the first N
vectors as memories and the last 1,000 rows as queries, rounds each memory to i8 as the
vector index does (largest component ±127), and for each query, over all memories and
over a random 1,000 of them (a filter of one user of 100):
- scores the memories with the f32 query against the rounded vectors, as the index does;
- takes the margin engram gives each score, 7 × sqrt(1/12) / |rounded vector|
  (`i8_margin` in crates/engram-index/src/vector.rs), and the largest error seen as a
  share of it;
- among the best 16 by rounded score, counts the memories within twice the list's widest
  margin of the 10th (those engram reads again, `unsettled` in
  crates/engram-sqlite/src/ann.rs) and checks that the top 10 after reading them is the
  exact top 10.

    python3 bench/rescore/margin.py [CORPUS_DIR] [N]      # needs numpy; ~2 minutes
"""

import os
import sys

import numpy as np

corpus = os.path.expanduser(
    sys.argv[1] if len(sys.argv) > 1
    else os.environ.get("ENGRAM_BENCH_CORPUS", "~/.cache/engram/bench/corpus"))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
dim, k, depth = 384, 10, 16
v = np.fromfile(os.path.join(corpus, "vectors.f32"), dtype="<f4").reshape(-1, dim)
unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
base, queries = unit(v[:n]), unit(v[-1000:])
stored = np.clip(np.round(base * 127 / np.abs(base).max(1, keepdims=True)), -127, 127)
length = np.linalg.norm(stored, axis=1)
margin = 7 * np.sqrt(1 / 12) / length
rounded = (stored / length[:, None]).astype(np.float32)
print(f"{n} memories: margin min {margin.min():.5f}, median {np.median(margin):.5f}, "
      f"max {margin.max():.5f}")
rng = np.random.default_rng(7)
totals = {False: [0, 0, 0, 0.0], True: [0, 0, 0, 0.0]}
for q in queries:
    for filtered in (False, True):
        cand = rng.choice(n, 1000, replace=False) if filtered else np.arange(n)
        exact = base[cand] @ q
        approx = rounded[cand] @ q
        head = np.argsort(-approx)[:depth]
        cut = approx[head[k - 1]]
        m = margin[cand][head].max()
        window = [i for i in head if abs(approx[i] - cut) <= 2 * m]
        score = {i: approx[i] for i in head}
        score.update({i: exact[i] for i in window})
        top = set(sorted(score, key=lambda i: -score[i])[:k])
        t = totals[filtered]
        t[0] += len(window)
        t[1] += top != set(np.argsort(-exact)[:k])
        t[2] += 1
        t[3] = max(t[3], float((np.abs(exact - approx) / margin[cand]).max()))
for filtered, (reads, wrong, queries_run, worst) in totals.items():
    print(f"{'filtered (1,000 memories)' if filtered else 'unfiltered':<26} read again "
          f"{reads / queries_run:.2f} a query; top {k} differs from exact in {wrong} of "
          f"{queries_run}; largest error {worst:.3f} of its margin")
