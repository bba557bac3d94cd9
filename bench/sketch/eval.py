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

With `--two-bit` (docs/benchmarks.md, "A hybrid search's vector half keeps the graph's
scores; two-bit sketches tried") it compares, over the last 600 rows as queries and a
random 1,000 and 10,000 memories as candidates, how deep in each sketch's order the exact
top k reaches (the worst query's rank of its exact top k, the 99th percentile, and the
share within the best M). Sketches are taken there from the vectors rounded to i8 as the
graph keeps them: one bit (the query multiplied into the signs, what engram does), and
two bits, the query's cosine with the vector of ±1, or ±WEIGHT where a component's
magnitude is above LARGE × the vector's mean magnitude (tried on 2026-12-07 and not kept:
reading twice the bytes a candidate cost about what the shorter shortlist saved).

    python3 bench/sketch/eval.py --two-bit [CORPUS_DIR] [N]
"""

import os
import sys

import numpy as np

two_bits = "--two-bit" in sys.argv[1:]
args = [a for a in sys.argv[1:] if a != "--two-bit"]
corpus = os.path.expanduser(
    args[0] if len(args) > 0
    else os.environ.get("ENGRAM_BENCH_CORPUS", "~/.cache/engram/bench/corpus"))
n = int(args[1]) if len(args) > 1 else 100_000
dim = 384
v = np.fromfile(os.path.join(corpus, "vectors.f32"), dtype="<f4").reshape(-1, dim)
unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
base, queries = unit(v[:n]), unit(v[-600:] if two_bits else v[-300:])


def compare_two_bits():
    # As the graph keeps them: scaled so the largest component is ±127, rounded.
    stored = np.clip(np.round(base * 127 / np.abs(base).max(1, keepdims=True)), -127, 127)

    def two_bit(large, weight):
        big = np.abs(stored) > large * np.abs(stored).mean(1, keepdims=True)
        return unit(np.where(stored > 0, 1.0, -1.0) * np.where(big, weight, 1.0)).astype(np.float32)

    sketches = {"one bit (signs)": np.where(stored > 0, 1.0, -1.0).astype(np.float32)}
    for large, weight in ((1.0, 3.0), (1.2, 3.0), (1.2, 2.5), (1.2, 3.5)):
        sketches[f"two bits, LARGE {large}, WEIGHT {weight}"] = two_bit(large, weight)
    rng = np.random.default_rng(1)
    for size in (1_000, 10_000):
        cands = [rng.choice(n, size, replace=False) for _ in queries]
        print(f"{size} candidates of {n}, {len(queries)} queries")
        for name, sk in sketches.items():
            ranks = {10: [], 16: [], 100: []}
            within = {(10, 64): [], (10, 100): [], (16, 100): [], (100, 200): [], (100, 300): []}
            for q, cand in zip(queries, cands):
                exact = np.argsort(-(base[cand] @ q))
                rank = np.empty(size, dtype=np.int64)
                rank[np.argsort(-(sk[cand] @ q), kind="stable")] = np.arange(size)
                for k in ranks:
                    ranks[k].append(rank[exact[:k]].max() + 1)
                for k, m in within:
                    within[(k, m)].append(np.mean(rank[exact[:k]] < m))
            print(f"  {name}")
            for k, r in ranks.items():
                print(f"    exact top {k:3} within the best {max(r):5} (worst query), {int(np.quantile(r, 0.99)):5} (p99)")
            for (k, m), s in within.items():
                print(f"    top {k:3} within the best {m:3}: {np.mean(s):.4f} (worst query {min(s):.2f})")


def compare_one_bit():
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


compare_two_bits() if two_bits else compare_one_bit()
