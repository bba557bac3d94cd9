//! `engram_bm25(fts, k1, b)`: BM25 with tunable `k1` and `b` as an FTS5 auxiliary
//! function. FTS5's own `bm25()` fixes k1 = 1.2 and b = 0.75; on conversations, where a
//! turn's length says little about its relevance, a small `b` ranks better
//! (docs/retrieval.md). Same formula as `bm25()` otherwise: IDF `ln((N − n + 0.5) /
//! (n + 0.5))` (at least 1e-6) over the whole table, term frequency over all columns,
//! document length in tokens over all columns. Higher is better (unlike `bm25()`).
//!
//! Registered on every connection through the `fts5_api` pointer SQLite hands out for
//! `SELECT fts5(?1)`; the per-query IDFs are computed once per statement and kept as the
//! function's auxiliary data, as `bm25()` does.

use std::os::raw::{c_int, c_void};
use std::ptr;

use rusqlite::ffi;
use rusqlite::Connection;

/// The name SQL calls the function by.
pub const FUNCTION: &str = "engram_bm25";

/// Per-statement data: the IDF of each query phrase and the mean document length.
struct Stats {
    idf: Vec<f64>,
    avgdl: f64,
}

/// Registers `engram_bm25` on `conn`.
pub fn register(conn: &Connection) -> Result<(), String> {
    // SAFETY: the raw handle stays valid while `conn` is borrowed; the statement is
    // finalized before returning; `api` is written by SQLite during the step only.
    unsafe {
        let db = conn.handle();
        let mut api: *mut ffi::fts5_api = ptr::null_mut();
        let mut stmt: *mut ffi::sqlite3_stmt = ptr::null_mut();
        let rc = ffi::sqlite3_prepare_v2(
            db,
            c"SELECT fts5(?1)".as_ptr(),
            -1,
            &mut stmt,
            ptr::null_mut(),
        );
        if rc != ffi::SQLITE_OK {
            return Err(format!("FTS5 is not available (prepare: {rc})"));
        }
        ffi::sqlite3_bind_pointer(
            stmt,
            1,
            (&mut api as *mut *mut ffi::fts5_api).cast::<c_void>(),
            c"fts5_api_ptr".as_ptr(),
            None,
        );
        ffi::sqlite3_step(stmt);
        ffi::sqlite3_finalize(stmt);
        if api.is_null() {
            return Err("FTS5 did not hand out its API".into());
        }
        let Some(create) = (*api).xCreateFunction else {
            return Err("FTS5's API has no xCreateFunction".into());
        };
        let rc = create(
            api,
            c"engram_bm25".as_ptr(),
            ptr::null_mut(),
            Some(bm25),
            None,
        );
        if rc != ffi::SQLITE_OK {
            return Err(format!("cannot register {FUNCTION} ({rc})"));
        }
    }
    Ok(())
}

/// Counts the rows `xQueryPhrase` visits.
unsafe extern "C" fn count_row(
    _api: *const ffi::Fts5ExtensionApi,
    _fts: *mut ffi::Fts5Context,
    user: *mut c_void,
) -> c_int {
    *user.cast::<i64>() += 1;
    ffi::SQLITE_OK
}

unsafe extern "C" fn free_stats(p: *mut c_void) {
    drop(Box::from_raw(p.cast::<Stats>()));
}

/// Computes the statement's IDFs and mean document length.
unsafe fn stats(api: &ffi::Fts5ExtensionApi, fts: *mut ffi::Fts5Context) -> Result<Stats, c_int> {
    let call = |rc: c_int| {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(rc)
        }
    };
    let mut rows: i64 = 0;
    call(api.xRowCount.ok_or(ffi::SQLITE_ERROR)?(fts, &mut rows))?;
    let mut tokens: i64 = 0;
    call(api.xColumnTotalSize.ok_or(ffi::SQLITE_ERROR)?(
        fts,
        -1,
        &mut tokens,
    ))?;
    let phrases = api.xPhraseCount.ok_or(ffi::SQLITE_ERROR)?(fts);
    let query_phrase = api.xQueryPhrase.ok_or(ffi::SQLITE_ERROR)?;
    let n = rows as f64;
    let mut idf = Vec::with_capacity(phrases.max(0) as usize);
    for i in 0..phrases {
        let mut hits: i64 = 0;
        call(query_phrase(
            fts,
            i,
            (&mut hits as *mut i64).cast::<c_void>(),
            Some(count_row),
        ))?;
        let h = hits as f64;
        idf.push(((n - h + 0.5) / (h + 0.5)).ln().max(1e-6));
    }
    Ok(Stats {
        idf,
        avgdl: if rows > 0 { tokens as f64 / n } else { 1.0 },
    })
}

/// The function FTS5 calls per row.
unsafe extern "C" fn bm25(
    api: *const ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
    ctx: *mut ffi::sqlite3_context,
    n_val: c_int,
    values: *mut *mut ffi::sqlite3_value,
) {
    let api = &*api;
    let arg = |i: c_int, default: f64| {
        if n_val > i {
            ffi::sqlite3_value_double(*values.add(i as usize))
        } else {
            default
        }
    };
    let (k1, b) = (arg(0, 1.2), arg(1, 0.75));
    let (Some(get_aux), Some(set_aux)) = (api.xGetAuxdata, api.xSetAuxdata) else {
        ffi::sqlite3_result_error_code(ctx, ffi::SQLITE_ERROR);
        return;
    };
    let mut stats_ptr = get_aux(fts, 0).cast::<Stats>();
    if stats_ptr.is_null() {
        match stats(api, fts) {
            Ok(s) => {
                let p = Box::into_raw(Box::new(s));
                let rc = set_aux(fts, p.cast::<c_void>(), Some(free_stats));
                if rc != ffi::SQLITE_OK {
                    // SQLite freed it with `free_stats` already.
                    ffi::sqlite3_result_error_code(ctx, rc);
                    return;
                }
                stats_ptr = p;
            }
            Err(rc) => {
                ffi::sqlite3_result_error_code(ctx, rc);
                return;
            }
        }
    }
    let stats = &*stats_ptr;
    let (Some(inst_count), Some(inst), Some(column_size)) =
        (api.xInstCount, api.xInst, api.xColumnSize)
    else {
        ffi::sqlite3_result_error_code(ctx, ffi::SQLITE_ERROR);
        return;
    };
    let mut freq = vec![0f64; stats.idf.len()];
    let mut n_inst: c_int = 0;
    if inst_count(fts, &mut n_inst) != ffi::SQLITE_OK {
        ffi::sqlite3_result_error_code(ctx, ffi::SQLITE_ERROR);
        return;
    }
    for i in 0..n_inst {
        let (mut phrase, mut col, mut off): (c_int, c_int, c_int) = (0, 0, 0);
        if inst(fts, i, &mut phrase, &mut col, &mut off) == ffi::SQLITE_OK {
            if let Some(f) = freq.get_mut(phrase as usize) {
                *f += 1.0;
            }
        }
    }
    let mut len: c_int = 0;
    if column_size(fts, -1, &mut len) != ffi::SQLITE_OK {
        ffi::sqlite3_result_error_code(ctx, ffi::SQLITE_ERROR);
        return;
    }
    let norm = k1 * (1.0 - b + b * f64::from(len) / stats.avgdl);
    let score: f64 = freq
        .iter()
        .zip(&stats.idf)
        .map(|(f, idf)| idf * f * (k1 + 1.0) / (f + norm))
        .sum();
    ffi::sqlite3_result_double(ctx, score);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        register(&conn).unwrap();
        conn.execute_batch(
            "CREATE VIRTUAL TABLE t USING fts5(a, b, tokenize = 'porter unicode61');
             INSERT INTO t (rowid, a, b) VALUES
               (1, 'the cat sat on the mat', ''),
               (2, 'a dog', 'cat cat'),
               (3, 'nothing here at all, nothing whatsoever, a long text about birds', ''),
               (4, 'cats and dogs and birds', '');",
        )
        .unwrap();
        conn
    }

    fn scores(conn: &Connection, q: &str, k1: f64, b: f64) -> Vec<(i64, f64)> {
        conn.prepare(
            "SELECT rowid, engram_bm25(t, ?2, ?3), -bm25(t) FROM t WHERE t MATCH ?1 ORDER BY rowid",
        )
        .unwrap()
        .query_map(rusqlite::params![q, k1, b], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn matches_fts5_bm25_at_its_own_constants() {
        let conn = db();
        let mine: Vec<(i64, f64, f64)> = conn
            .prepare(
                "SELECT rowid, engram_bm25(t, 1.2, 0.75), -bm25(t) FROM t WHERE t MATCH 'cat OR bird'",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(mine.len(), 4);
        for (row, ours, theirs) in mine {
            assert!(
                (ours - theirs).abs() < 1e-9,
                "row {row}: {ours} vs {theirs}"
            );
        }
    }

    #[test]
    fn b_sets_how_much_length_counts() {
        let conn = db();
        // Rows 3 (long) and 4 (short) both say "bird" once.
        let with_length = scores(&conn, "bird", 1.2, 1.0);
        let without = scores(&conn, "bird", 1.2, 0.0);
        assert!(with_length[1].1 > with_length[0].1 * 1.2, "{with_length:?}");
        assert!((without[0].1 - without[1].1).abs() < 1e-12, "{without:?}");
        // Term frequency counts: "cat" twice beats once at equal settings.
        let cat = scores(&conn, "cat", 1.2, 0.0);
        let (one, two) = (cat[0].1, cat[1].1);
        assert!(two > one, "{cat:?}");
    }
}
