#!/usr/bin/env python3
"""How well one-bit sketches shortlist an exact search's candidates (docs/benchmarks.md,
"A filter's candidates shortlisted by one-bit sketches").

Reads the corpus cache of `engram bench corpus` (`vectors.f32`), takes the first N vectors
as memories and the last 300 rows as queries, and for a random 1 % and 10 % of the
memories as a filter's candidates prints the share of the exact top k (cosine, f32) that
is within the best M by each sketch score: the full-precision query against the sketch's
signs (what engram does), and sketch against sketch (Hamming distance), each on the raw
vectors and on vectors centred on their mean.

    python3 bench/sketch/eval.py [CORPUS_DIR] [N]      # needs numpy
"""

import os
import sys

import numpy as np

corpus = os.path.expanduser(
    sys.argv[1] if len(sys.argv) > 1
    else os.environ.get("ENGRAM_BENCH_CORPUS", "~/.cache/engram/bench/corpus"))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
dim = 384
v = np.fromfile(os.path.join(corpus, "vectors.f32"), dtype="<f4").reshape(-1, dim)
unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
base, queries = unit(v[:n]), unit(v[-300:])
mean = base.mean(axis=0)
popcount = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)
bits = lambda x: np.packbits(x > 0, axis=-1)
signs = lambda x: np.where(x > 0, 1.0, -1.0).astype(np.float32)
sk_raw, sk_centred = bits(base), bits(base - mean)
sg_raw, sg_centred = signs(base), signs(base - mean)
rng = np.random.default_rng(1)
for share in (100, 10):
    found = {}
    for q in queries:
        cand = np.arange(rng.integers(share), n, share)
        exact = cand[np.argsort(-(base[cand] @ q))]
        scores = {
            "query x signs": sg_raw[cand] @ q,
            "query x signs, centred": sg_centred[cand] @ q,
            "hamming": -popcount[np.bitwise_xor(sk_raw[cand], bits(q))].sum(1),
            "hamming, centred": -popcount[np.bitwise_xor(sk_centred[cand], bits(q - mean))].sum(1),
        }
        for name, score in scores.items():
            order = cand[np.argsort(-score, kind="stable")]
            for k, ms in ((10, (20, 40, 100, 200)), (100, (200, 300, 400))):
                truth = set(exact[:k])
                for m in ms:
                    found.setdefault((name, k, m), []).append(len(truth & set(order[:m])) / k)
    print(f"{n // share} candidates of {n}, {len(queries)} queries")
    for (name, k, m), shares in found.items():
        print(f"  {name:24} top {k:3} within the best {m:3}: {np.mean(shares):.4f} (worst {min(shares):.2f})")
