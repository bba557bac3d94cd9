//! Human and JSON output of CLI commands.

use engram_api::{ListResponse, MemoryResponse};
use engram_core::time::format_rfc3339;
use engram_core::ApiKeyRecord;
use serde_json::json;

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

pub fn memory(m: &MemoryResponse, json: bool) {
    if json {
        return print_json(m);
    }
    println!("id        {}", m.id);
    println!(
        "type      {}  ·  source {}  ·  embedding {}  ·  version {}",
        m.memory_type, m.source, m.embedding_status, m.version
    );
    println!("created   {}", format_rfc3339(m.created_at));
    if m.updated_at != m.created_at {
        println!("updated   {}", format_rfc3339(m.updated_at));
    }
    if let Some(t) = &m.title {
        println!("title     {t}");
    }
    if !m.tags.is_empty() {
        println!("tags      {}", m.tags.join(", "));
    }
    let scope: Vec<String> = [
        ("user", &m.user_id),
        ("agent", &m.agent_id),
        ("project", &m.project),
        ("domain", &m.domain),
        ("session", &m.session_id),
    ]
    .iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
    .collect();
    if !scope.is_empty() {
        println!("scope     {}", scope.join("  "));
    }
    if let Some(r) = &m.source_ref {
        println!("from      {r}");
    }
    if !m.metadata.is_empty() {
        println!(
            "metadata  {}",
            serde_json::Value::Object(m.metadata.clone())
        );
    }
    println!();
    println!("{}", m.content);
}

pub fn list(l: &ListResponse, json: bool) {
    if json {
        return print_json(l);
    }
    if l.data.is_empty() {
        println!("no memories match");
    }
    for m in &l.data {
        println!(
            "{}  {:<9}  {}  {}",
            m.id,
            m.memory_type.as_str(),
            m.created_at.format("%Y-%m-%d %H:%M"),
            one_line(m.title.as_deref().unwrap_or(&m.content), 60)
        );
    }
    println!(
        "\npage {} of {} · {} total",
        l.meta.page,
        l.meta.total_pages.max(1),
        l.meta.total
    );
    if let Some(c) = &l.meta.next_cursor {
        println!("next page: --cursor {c}");
    }
}

pub fn search(r: &engram_api::SearchResponse, json: bool) {
    if json {
        return print_json(r);
    }
    if let Some(why) = &r.degraded {
        eprintln!("note: {why}");
    }
    if r.hits.is_empty() {
        println!("no memories match");
    }
    for h in &r.hits {
        println!(
            "{:>3}. {:>7.3}  {}  {}",
            h.rank,
            h.score,
            h.memory.id,
            one_line(h.memory.title.as_deref().unwrap_or(&h.memory.content), 60)
        );
    }
    println!(
        "\n{} hits · {} search · {:.1} ms",
        r.hits.len(),
        r.mode.as_str(),
        r.took_ms
    );
}

pub fn context(r: &engram_api::ContextResponse, json: bool) {
    if json {
        return print_json(r);
    }
    print!("{}", r.rendered);
    if !r.rendered.ends_with('\n') {
        println!();
    }
    eprintln!("\n{} chunks · {} tokens", r.chunks.len(), r.total_tokens);
}

pub fn deleted(id: &str, json: bool) {
    if json {
        print_json(&json!({ "deleted": id }));
    } else {
        println!("deleted {id}");
    }
}

pub fn key_created(key: &str, record: &ApiKeyRecord, json: bool) {
    if json {
        print_json(&json!({ "key": key, "tenant": record.tenant, "id": record.id }));
    } else {
        println!("{key}");
        eprintln!(
            "created key {} for tenant `{}`; it is shown only once, store it now",
            record.id, record.tenant
        );
    }
}

pub fn key_list(keys: &[ApiKeyRecord], json: bool) {
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({
                    "id": k.id,
                    "tenant": k.tenant,
                    "created_at": format_rfc3339(k.created_at),
                    "revoked_at": k.revoked_at.map(format_rfc3339),
                })
            })
            .collect();
        return print_json(&rows);
    }
    if keys.is_empty() {
        println!("no keys");
    }
    for k in keys {
        let state = match k.revoked_at {
            Some(t) => format!("revoked {}", format_rfc3339(t)),
            None => "active".into(),
        };
        println!(
            "{}  {:<20}  created {}  {state}",
            k.id,
            k.tenant.as_str(),
            format_rfc3339(k.created_at)
        );
    }
}

pub fn key_revoked(id: &str, json: bool) {
    if json {
        print_json(&json!({ "revoked": id }));
    } else {
        println!("revoked key {id}");
    }
}

pub fn embeddings(
    model: &engram_core::ModelInfo,
    texts: &[String],
    vectors: &[Vec<f32>],
    json: bool,
) {
    if json {
        return print_json(
            &json!({ "model": model.id, "revision": model.revision, "dim": model.dim, "vectors": vectors }),
        );
    }
    println!(
        "model {} ({} dimensions, revision {})",
        model.id, model.dim, model.revision
    );
    for (t, v) in texts.iter().zip(vectors) {
        let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        println!(
            "{}\n  [{} …] norm {norm:.4}",
            one_line(t, 70),
            head.join(", ")
        );
    }
}
