//! TLS to Postgres, against a real server: the cluster `scripts/pgvector` starts takes TLS
//! with a certificate for 127.0.0.1 and localhost, signed by a CA of its own.
//!
//! The server is `ENGRAM_TEST_POSTGRES_URL` (default that cluster; only its host, port,
//! user, password and database are used). The CA that signed the server's certificate is
//! `ENGRAM_TEST_POSTGRES_CA`, default `${ENGRAM_PG_HOME:-/var/tmp/engram-pg18}/tls/ca.pem`;
//! `other-ca.pem` beside it is a CA that signed nothing the server has. A missing server
//! or CA file fails every test, loudly (in CI too: never a skip).

use std::path::PathBuf;

use engram_core::StoreError;
use engram_postgres::{PgConfig, PgStore};
use tokio_postgres::config::Host;

fn postgres_url() -> String {
    std::env::var("ENGRAM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/postgres".into())
}

/// The CA that signed the server's certificate, and an unrelated one.
fn cas() -> (PathBuf, PathBuf) {
    let ca = std::env::var_os("ENGRAM_TEST_POSTGRES_CA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("ENGRAM_PG_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/var/tmp/engram-pg18".into());
            home.join("tls/ca.pem")
        });
    let other = ca.with_file_name("other-ca.pem");
    for f in [&ca, &other] {
        assert!(
            f.is_file(),
            "{} is missing: the TLS tests need the CA files of the cluster scripts/pgvector \
             starts (run it), or ENGRAM_TEST_POSTGRES_CA naming the CA of the server at \
             ENGRAM_TEST_POSTGRES_URL{}",
            f.display(),
            if std::env::var_os("CI").is_some() {
                " (CI is set: this is a failure, not a skip)"
            } else {
                ""
            }
        );
    }
    (ca, other)
}

/// The test server's address and credentials.
struct Server {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
}

fn server() -> Server {
    let url = postgres_url();
    let cfg: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("ENGRAM_TEST_POSTGRES_URL {url}: {e}"));
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => panic!("ENGRAM_TEST_POSTGRES_URL {url}: the TLS tests need a TCP host"),
    };
    Server {
        host,
        port: cfg.get_ports().first().copied().unwrap_or(5432),
        user: cfg.get_user().unwrap_or("postgres").to_owned(),
        password: cfg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        dbname: cfg.get_dbname().unwrap_or("postgres").to_owned(),
    }
}

/// `%XX` for everything but unreserved characters.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Server {
    /// A URL to the server under the name `host`, with `query` (`sslmode=…&…`).
    fn url(&self, host: &str, query: &str) -> String {
        let password = self
            .password
            .as_deref()
            .map(|p| format!(":{}", enc(p)))
            .unwrap_or_default();
        format!(
            "postgres://{}{password}@{host}:{}/{}?{query}",
            enc(&self.user),
            self.port,
            enc(&self.dbname)
        )
    }

    /// A key=value string that names the server `host` and connects to its address.
    fn key_value(&self, host: &str, extra: &str) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        let password = self
            .password
            .as_deref()
            .map(|p| format!("password={}", q(p)))
            .unwrap_or_default();
        format!(
            "host={} hostaddr={} port={} user={} {password} dbname={} {extra}",
            q(host),
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.dbname)
        )
    }
}

async fn connect(url: &str) -> Result<(PgStore, String), StoreError> {
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut cfg = PgConfig::new(url);
    cfg.schema = Some(schema.clone());
    cfg.pool_size = 2;
    cfg.connect_timeout = std::time::Duration::from_secs(10);
    PgStore::connect(&cfg).await.map(|s| (s, schema))
}

/// Connects (a failure fails the test), says whether the session is encrypted, and drops
/// the test's schema.
async fn encrypted(url: &str) -> bool {
    let (store, schema) = connect(url).await.unwrap_or_else(|e| {
        let url = engram_postgres::redact_url(url);
        panic!(
            "Postgres with pgvector and TLS is needed at {url} (run scripts/pgvector, or set \
             ENGRAM_TEST_POSTGRES_URL): {e}"
        )
    });
    let on = store.connection_is_encrypted().await.unwrap();
    store.drop_schema(&schema).await.unwrap();
    on
}

/// The error of a connect that must fail.
async fn refused(url: &str) -> StoreError {
    match connect(url).await {
        Ok((store, schema)) => {
            store.drop_schema(&schema).await.unwrap();
            panic!("{url}: connected, but should not have")
        }
        Err(e) => {
            eprintln!("{e}");
            e
        }
    }
}

#[tokio::test]
async fn disable_is_plain() {
    let s = server();
    assert!(!encrypted(&s.url(&s.host, "sslmode=disable")).await);
}

#[tokio::test]
async fn prefer_encrypts_when_the_server_offers_tls() {
    let s = server();
    assert!(encrypted(&s.url(&s.host, "sslmode=prefer")).await);
    // `prefer` is the default, as in libpq.
    assert!(encrypted(&s.url(&s.host, "application_name=engram")).await);
}

#[tokio::test]
async fn require_encrypts_without_checking_the_certificate() {
    // The server's certificate comes from a CA nobody trusts here: `require` alone does
    // not check it.
    let s = server();
    assert!(encrypted(&s.url(&s.host, "sslmode=require")).await);
}

#[tokio::test]
async fn require_with_a_root_certificate_checks_the_chain() {
    let (ca, other) = cas();
    let s = server();
    let with = |ca: &PathBuf| {
        s.url(
            &s.host,
            &format!("sslmode=require&sslrootcert={}", enc(&ca.to_string_lossy())),
        )
    };
    assert!(encrypted(&with(&ca)).await);
    match refused(&with(&other)).await {
        StoreError::Unavailable(m) => assert!(
            m.contains("does not verify against the CA certificates in sslrootcert")
                && m.contains("other-ca.pem"),
            "{m}"
        ),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn verify_full_with_the_servers_ca() {
    let (ca, _) = cas();
    let s = server();
    let ca = enc(&ca.to_string_lossy());
    assert!(
        encrypted(&s.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}")
        ))
        .await
    );
    assert!(
        encrypted(&s.url(
            "localhost",
            &format!("sslrootcert={ca}&sslmode=verify-full")
        ))
        .await
    );
}

#[tokio::test]
async fn verify_full_with_another_ca_fails() {
    let (_, other) = cas();
    // The handshake fails before any password is sent: this one only has to stay hidden.
    let s = Server {
        password: Some("pw-not-shown".into()),
        ..server()
    };
    let url = s.url(
        &s.host,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            enc(&other.to_string_lossy())
        ),
    );
    match refused(&url).await {
        StoreError::Unavailable(m) => {
            assert!(
                m.contains("the server's certificate does not verify against the CA certificates in sslrootcert")
                    && m.contains(&other.display().to_string())
                    && m.contains("sslmode=verify-full"),
                "{m}"
            );
            assert!(
                m.starts_with("cannot connect to Postgres at postgres://postgres:***@"),
                "{m}"
            );
            assert!(!m.contains("pw-not-shown"), "{m}");
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn verify_full_with_the_system_cas_fails_for_a_private_ca() {
    let s = server();
    match refused(&s.url(&s.host, "sslmode=verify-full")).await {
        StoreError::Unavailable(m) => assert!(m.contains("the system's CA certificates"), "{m}"),
        // A machine without system CA certificates says so.
        StoreError::Invalid(m) => assert!(m.contains("no system CA certificates"), "{m}"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    // Key=value form: the certificate does not name `engram-wrong-name`; hostaddr gets
    // the connection to the server all the same.
    let (ca, other) = cas();
    let s = server();
    let ca = ca.to_string_lossy().into_owned();
    let kv = |mode: &str, ca: &str| {
        s.key_value(
            "engram-wrong-name",
            &format!("sslmode={mode} sslrootcert='{ca}'"),
        )
    };
    assert!(encrypted(&kv("verify-ca", &ca)).await);
    let with_password = Server {
        password: Some("pw-not-shown".into()),
        ..server()
    };
    let url = with_password.key_value(
        "engram-wrong-name",
        &format!("sslmode=verify-full sslrootcert='{ca}'"),
    );
    match refused(&url).await {
        StoreError::Unavailable(m) => {
            assert!(m.contains("not valid for the host name"), "{m}");
            assert!(m.contains("engram-wrong-name"), "{m}");
            assert!(
                m.contains("password=***") && !m.contains("pw-not-shown"),
                "{m}"
            );
        }
        e => panic!("{e:?}"),
    }
    match refused(&kv("verify-ca", &other.to_string_lossy())).await {
        StoreError::Unavailable(m) => assert!(m.contains("does not verify against"), "{m}"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn an_unreadable_root_certificate_is_named() {
    let s = server();
    let url = s.url(
        &s.host,
        "sslmode=verify-full&sslrootcert=/nonexistent/engram/ca.pem",
    );
    match refused(&url).await {
        StoreError::Invalid(m) => assert!(
            m.starts_with("cannot read sslrootcert /nonexistent/engram/ca.pem: "),
            "{m}"
        ),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn require_fails_clearly_when_the_server_has_no_tls() {
    // A socket that answers the TLS request with `N`, as a server with `ssl = off` does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            if sock.read_exact(&mut request).await.is_ok() {
                // SSLRequest: length 8, code 80877103.
                assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47]);
                let _ = sock.write_all(b"N").await;
            }
        }
    });
    let url = format!("postgres://postgres:secret@127.0.0.1:{port}/postgres?sslmode=require");
    match refused(&url).await {
        StoreError::Unavailable(m) => {
            assert!(
                m.contains("the server does not support TLS but sslmode=require"),
                "{m}"
            );
            assert!(!m.contains("secret"), "{m}");
        }
        e => panic!("{e:?}"),
    }
    server.abort();
}
