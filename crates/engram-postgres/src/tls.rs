//! TLS to Postgres, as libpq does it: the connection string's `sslmode` and `sslrootcert`
//! choose whether to encrypt and what to verify; rustls (with the aws-lc-rs provider,
//! named explicitly) does the work.
//!
//! tokio-postgres knows `sslmode` only up to `require` and not `sslrootcert` at all, so
//! both are taken out of the connection string (URL or key=value) before it parses the
//! rest, and engram sets the mode and builds the verifier itself:
//!
//! | sslmode            | TLS                     | certificate checked                 |
//! |--------------------|-------------------------|-------------------------------------|
//! | `disable`          | never                   | —                                   |
//! | `prefer` (default) | if the server offers it | no (chain, if `sslrootcert` is set) |
//! | `require`          | always                  | no (chain, if `sslrootcert` is set) |
//! | `verify-ca`        | always                  | chain                               |
//! | `verify-full`      | always                  | chain and host name                 |
//!
//! The chain is checked against `sslrootcert` (a PEM file) when set, else against the
//! system's CA certificates; `sslrootcert=system` names the latter and asks for
//! `verify-full`, as in libpq.

use std::path::PathBuf;
use std::sync::Arc;

use engram_core::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values that engram takes (all but `allow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, String> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow (plain first, TLS if refused) is not supported: use prefer or disable".into(),
                )
            }
            other => {
                return Err(format!(
                    "sslmode={other:?}: use disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the CA certificates come from (`sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCerts {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// The system's CA certificates (`sslrootcert=system`).
    System,
}

/// The TLS settings of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub mode: SslMode,
    /// `sslrootcert`, if given.
    pub root_cert: Option<RootCerts>,
}

/// Parameters taken out of the connection string here; tokio-postgres sees the rest.
const TLS_KEYS: [&str; 2] = ["sslmode", "sslrootcert"];
/// libpq parameters engram has no support for, refused by name rather than as unknown.
const UNSUPPORTED: [&str; 5] = ["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

/// Takes `sslmode` and `sslrootcert` out of a connection string, URL
/// (`postgres://…?sslmode=verify-full&sslrootcert=/ca.pem`) or key=value
/// (`host=db sslmode=verify-full sslrootcert=/ca.pem`), and returns the rest (for
/// tokio-postgres to parse) with the TLS settings they make. Errors name the parameter.
pub(crate) fn split(conn: &str) -> Result<(String, TlsParams), String> {
    let (rest, taken) = match url_query(conn) {
        Some(q) => split_url(conn, q),
        None if is_url(conn) => (conn.to_owned(), Vec::new()),
        None => split_key_value(conn),
    };
    let mut mode = None;
    let mut root = None;
    for (key, value) in taken {
        // The last of a repeated parameter wins, as in libpq.
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            other => {
                return Err(format!(
                    "{other} is not supported: engram neither presents TLS client certificates nor reads CRLs"
                ))
            }
        }
    }
    let root_cert = match root.as_deref() {
        None | Some("") => None,
        Some("system") => Some(RootCerts::System),
        Some(path) => Some(RootCerts::File(PathBuf::from(path))),
    };
    let mode = match mode.as_deref() {
        Some(v) => SslMode::parse(v)?,
        None if root_cert == Some(RootCerts::System) => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if root_cert == Some(RootCerts::System) && mode != SslMode::VerifyFull {
        return Err(format!(
            "sslrootcert=system needs sslmode=verify-full, not sslmode={}",
            mode.as_str()
        ));
    }
    Ok((rest, TlsParams { mode, root_cert }))
}

fn is_url(conn: &str) -> bool {
    conn.starts_with("postgres://") || conn.starts_with("postgresql://")
}

/// Where a URL's query string starts (the `?`), if it has one. Credentials come first and
/// end at an `@` before any `/`, as libpq reads them; the query starts at the next `?`.
fn url_query(conn: &str) -> Option<usize> {
    let start = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| conn.starts_with(p).then_some(p.len()))?;
    let rest = &conn[start..];
    let after_creds = match rest.find(['@', '/']) {
        Some(i) if rest.as_bytes()[i] == b'@' => start + i + 1,
        _ => start,
    };
    conn[after_creds..].find('?').map(|q| after_creds + q)
}

/// Splits the TLS parameters off a URL whose query starts at `q`.
fn split_url(conn: &str, q: usize) -> (String, Vec<(String, String)>) {
    let (head, query) = (&conn[..q], &conn[q + 1..]);
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(k), percent_decode(v)) {
            (Some(k), Some(v)) if is_taken(&k) => taken.push((k, v)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    (rest, taken)
}

fn is_taken(key: &str) -> bool {
    TLS_KEYS.contains(&key) || UNSUPPORTED.contains(&key)
}

/// `%XX` escapes decoded (others left as they are); None if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Splits the TLS parameters off a key=value string. It is read as tokio-postgres reads
/// it (values in `'…'` or bare, `\` escapes the next character); a string it cannot read
/// is returned whole, for tokio-postgres to say what is wrong with it.
fn split_key_value(conn: &str) -> (String, Vec<(String, String)>) {
    let Some(params) = key_values(conn) else {
        return (conn.to_owned(), Vec::new());
    };
    let mut rest = String::with_capacity(conn.len());
    let mut taken = Vec::new();
    let mut at = 0;
    for (key, value, span) in params {
        if is_taken(key) {
            rest.push_str(&conn[at..span.start]);
            at = span.end;
            taken.push((key.to_owned(), value));
        }
    }
    rest.push_str(&conn[at..]);
    (rest, taken)
}

/// The connection string with the value of any `password` parameter (URL query or
/// key=value) shown as `***`.
pub(crate) fn hide_password_params(conn: &str) -> String {
    if let Some(q) = url_query(conn) {
        let (head, query) = (&conn[..q], &conn[q + 1..]);
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if percent_decode(k).as_deref() == Some("password") => {
                    format!("{k}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        return format!("{head}?{}", pairs.join("&"));
    }
    if is_url(conn) {
        return conn.to_owned();
    }
    let Some(params) = key_values(conn) else {
        // Unreadable: hide everything from the first `password` on, to be safe.
        return match conn.find("password") {
            Some(i) => format!("{}password=***", &conn[..i]),
            None => conn.to_owned(),
        };
    };
    let mut out = String::with_capacity(conn.len());
    let mut at = 0;
    for (key, _, span) in params {
        if key == "password" {
            out.push_str(&conn[at..span.start]);
            out.push_str("password=***");
            at = span.end;
        }
    }
    out.push_str(&conn[at..]);
    out
}

/// The parameters of a key=value string: key, value, and the bytes they take up.
fn key_values(s: &str) -> Option<Vec<(&str, String, std::ops::Range<usize>)>> {
    let skip_ws = |i: usize| i + (s[i..].len() - s[i..].trim_start().len());
    let mut out = Vec::new();
    let mut i = skip_ws(0);
    while i < s.len() {
        let start = i;
        let key_len = s[i..]
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(s.len() - i);
        if key_len == 0 {
            return None;
        }
        let key = &s[i..i + key_len];
        i = skip_ws(i + key_len);
        i = skip_ws(i + s[i..].strip_prefix('=').map(|_| 1)?);
        let mut value = String::new();
        let mut chars = s[i..].char_indices();
        if s[i..].starts_with('\'') {
            chars.next();
            loop {
                match chars.next()? {
                    (j, '\'') => {
                        i += j + 1;
                        break;
                    }
                    (_, '\\') => value.push(chars.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            let mut end = s.len();
            while let Some((j, c)) = chars.next() {
                if c.is_whitespace() {
                    end = i + j;
                    break;
                }
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    c => value.push(c),
                }
            }
            if value.is_empty() {
                return None;
            }
            i = end;
        }
        out.push((key, value, start..i));
        i = skip_ws(i);
    }
    Some(out)
}

impl TlsParams {
    /// The mode tokio-postgres negotiates with: whether TLS is tried, and required.
    pub(crate) fn pg_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// The connector for the pool: rustls, verifying what the mode asks for. Reads the
    /// CA certificates (`sslrootcert`, or the system's) if they are needed.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Other(format!("TLS setup: {e}")))?;
        let roots = match (self.mode, &self.root_cert) {
            (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => None,
            (_, Some(RootCerts::File(path))) => Some(roots_from_file(path)?),
            (_, Some(RootCerts::System) | None) => Some(system_roots()?),
        };
        let mut config = match (self.mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            // libpq: with a root certificate, `prefer` and `require` check the chain as
            // `verify-ca` does; without one they check nothing.
            (_, roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoHostCheck {
                    roots: roots.map(Arc::new),
                    provider,
                }))
                .with_no_client_auth(),
        };
        // As libpq 17+ does; needed for `sslnegotiation=direct`, harmless otherwise.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustlsConnect::new(config))
    }

    /// What the chain is checked against, for error messages.
    fn roots_named(&self) -> String {
        match &self.root_cert {
            Some(RootCerts::File(p)) => format!("the CA certificates in sslrootcert {}", p.display()),
            _ => "the system's CA certificates (set sslrootcert to the CA's PEM file if the server's certificate comes from a private CA)".into(),
        }
    }

    /// Names the problem when a connection failed because of TLS; None for any other
    /// failure.
    pub(crate) fn explain(&self, e: &(dyn std::error::Error + 'static)) -> Option<String> {
        let mode = self.mode.as_str();
        if let Some(r) = rustls_error(e) {
            return Some(match r {
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                ) => format!(
                    "the server's certificate is not valid for the host name in the URL (sslmode={mode} checks it; verify-ca would not): {r}"
                ),
                rustls::Error::InvalidCertificate(_) => format!(
                    "the server's certificate does not verify against {} (sslmode={mode}): {r}",
                    self.roots_named()
                ),
                _ => format!("the TLS handshake failed (sslmode={mode}): {r}"),
            });
        }
        let text = error_chain(e);
        if text.contains("server does not support TLS") {
            return Some(format!(
                "the server does not support TLS but sslmode={mode} (turn ssl on in the server, or use sslmode=prefer or disable)"
            ));
        }
        if text.contains("TLS handshake") {
            return Some(format!("TLS to the server failed (sslmode={mode}): {text}"));
        }
        None
    }
}

/// An error and its sources, `: `-separated (tokio-postgres shows only the outermost).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let part = err.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = err.source();
    }
    text
}

/// The rustls error at the root of a connection error, if there is one.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // An io::Error's source() skips the error it wraps: look inside.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}

fn roots_from_file(path: &std::path::Path) -> Result<RootCertStore, StoreError> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| StoreError::Invalid(format!("cannot read sslrootcert {shown}: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| StoreError::Invalid(format!("sslrootcert {shown} is not PEM: {e}")))?;
        roots.add(cert).map_err(|e| {
            StoreError::Invalid(format!(
                "sslrootcert {shown} holds an unusable certificate: {e}"
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(StoreError::Invalid(format!(
            "sslrootcert {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, StoreError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(StoreError::Invalid(format!(
            "no system CA certificates found{}{why}: install them (ca-certificates) or set sslrootcert to the CA's PEM file",
            if why.is_empty() { "" } else { ": " }
        )));
    }
    Ok(roots)
}

/// `verify-ca` (and libpq's `prefer`/`require` with a root certificate): the certificate
/// chains to a trusted CA; its host names are not checked. Without roots (`prefer` and
/// `require` without a root certificate) nothing about the certificate is checked, as in
/// libpq, but the server must still prove it holds the certificate's key.
#[derive(Debug)]
struct NoHostCheck {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoHostCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: SslMode, root_cert: Option<RootCerts>) -> TlsParams {
        TlsParams { mode, root_cert }
    }

    #[test]
    fn urls_without_tls_parameters_pass_through() {
        for url in [
            "postgres://engram:pw@db:5432/engram",
            "postgresql://db/engram?application_name=x&connect_timeout=3",
            "postgres://db",
        ] {
            assert_eq!(
                split(url).unwrap(),
                (url.to_owned(), params(SslMode::Prefer, None))
            );
        }
    }

    #[test]
    fn url_tls_parameters_are_taken_out() {
        let (rest, p) = split(
            "postgres://u:p@db:5432/engram?sslmode=verify-full&connect_timeout=3&sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/engram?connect_timeout=3");
        assert_eq!(
            p,
            params(
                SslMode::VerifyFull,
                Some(RootCerts::File("/etc/ca.pem".into()))
            )
        );
        // Only TLS parameters: the `?` goes too. Percent-escapes are decoded.
        let (rest, p) =
            split("postgres://db/x?sslrootcert=%2Fa%20b%2Fca.pem&sslmode=verify-ca").unwrap();
        assert_eq!(rest, "postgres://db/x");
        assert_eq!(
            p,
            params(
                SslMode::VerifyCa,
                Some(RootCerts::File("/a b/ca.pem".into()))
            )
        );
        // tokio-postgres parses what is left.
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_dbname(), Some("x"));
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, p) = split("postgres://u:p?w@db/x?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://u:p?w@db/x");
        assert_eq!(p, params(SslMode::Require, None));
    }

    #[test]
    fn key_value_tls_parameters_are_taken_out() {
        let (rest, p) =
            split("host=db sslmode = verify-full  sslrootcert='/my certs/ca.pem' dbname=engram")
                .unwrap();
        assert_eq!(
            rest.split_whitespace().collect::<Vec<_>>(),
            ["host=db", "dbname=engram"]
        );
        assert_eq!(
            p,
            params(
                SslMode::VerifyFull,
                Some(RootCerts::File("/my certs/ca.pem".into()))
            )
        );
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_dbname(), Some("engram"));

        let (rest, p) = split(r"sslrootcert=/a\ b.pem host=db sslmode=require").unwrap();
        assert_eq!(rest.trim(), "host=db");
        assert_eq!(
            p,
            params(SslMode::Require, Some(RootCerts::File("/a b.pem".into())))
        );

        // A value holding `sslmode=` is not a parameter.
        let (rest, p) = split("host=db application_name='sslmode=disable'").unwrap();
        assert_eq!(rest, "host=db application_name='sslmode=disable'");
        assert_eq!(p.mode, SslMode::Prefer);
    }

    #[test]
    fn key_value_strings_that_do_not_parse_are_left_to_tokio_postgres() {
        let (rest, _) = split("host=db sslmode='verify-full").unwrap();
        assert_eq!(rest, "host=db sslmode='verify-full");
        assert!(rest.parse::<tokio_postgres::Config>().is_err());
    }

    #[test]
    fn modes_and_root_certificates() {
        assert_eq!(
            split("host=db sslmode=disable").unwrap().1.mode,
            SslMode::Disable
        );
        assert_eq!(
            split("host=db sslmode=prefer").unwrap().1.mode,
            SslMode::Prefer
        );
        // The last one wins.
        assert_eq!(
            split("postgres://db?sslmode=disable&sslmode=require")
                .unwrap()
                .1
                .mode,
            SslMode::Require
        );
        // `system`: the system's CAs, and verify-full unless said otherwise.
        assert_eq!(
            split("host=db sslrootcert=system").unwrap().1,
            params(SslMode::VerifyFull, Some(RootCerts::System))
        );
        // An empty sslrootcert is none.
        assert_eq!(
            split("postgres://db?sslrootcert=").unwrap().1.root_cert,
            None
        );
    }

    #[test]
    fn bad_tls_parameters_are_named() {
        let msg = |s: &str| split(s).unwrap_err();
        assert!(msg("postgres://db?sslmode=verify_full").contains("verify-ca or verify-full"));
        assert!(msg("host=db sslmode=allow").contains("sslmode=allow"));
        assert!(msg("host=db sslrootcert=system sslmode=require").contains("verify-full"));
        assert!(msg("postgres://db?sslcert=/c.pem").contains("sslcert"));
        assert!(msg("host=db sslkey=/k.pem").contains("sslkey"));
    }

    #[test]
    fn tokio_postgres_gets_the_mode() {
        use tokio_postgres::config::SslMode as Pg;
        for (mode, pg) in [
            (SslMode::Disable, Pg::Disable),
            (SslMode::Prefer, Pg::Prefer),
            (SslMode::Require, Pg::Require),
            (SslMode::VerifyCa, Pg::Require),
            (SslMode::VerifyFull, Pg::Require),
        ] {
            assert_eq!(params(mode, None).pg_mode(), pg);
        }
    }

    #[test]
    fn unreadable_root_certificates_are_named() {
        let missing = params(
            SslMode::VerifyFull,
            Some(RootCerts::File("/nonexistent/engram-ca.pem".into())),
        );
        match missing.connector() {
            Err(StoreError::Invalid(m)) => {
                assert!(
                    m.starts_with("cannot read sslrootcert /nonexistent/engram-ca.pem: "),
                    "{m}"
                )
            }
            other => panic!("{:?}", other.err()),
        }
        let dir = std::env::temp_dir().join(format!("engram-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        match params(SslMode::Require, Some(RootCerts::File(not_pem))).connector() {
            Err(StoreError::Invalid(m)) => assert!(m.contains("holds no PEM certificate"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // Modes that check nothing read nothing.
        assert!(params(SslMode::Require, None).connector().is_ok());
        assert!(params(SslMode::Disable, None).connector().is_ok());
    }
}
