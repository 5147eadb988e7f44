//! The outbound HTTP/1.1 client of webhook delivery: one connection per request,
//! to an address checked by the SSRF guard, with TLS (rustls, Mozilla's roots)
//! for `https` targets, all under one timeout.
//!
//! It does not follow redirects (a 3xx is a permanent failure) and reads at most
//! [`RESPONSE_BODY_SIZE_MAX`] bytes of a response body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

use super::policy::{AttemptResult, parse_retry_after};
use super::ssrf::AddressPolicy;

/// The most response body bytes read before the connection is dropped.
pub const RESPONSE_BODY_SIZE_MAX: usize = 64 * 1024;

/// A parsed target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Whether to use TLS.
    pub tls: bool,
    /// Host name or address literal (without IPv6 brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, at least `/`.
    pub path_and_query: String,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
}

/// Parses an `http` or `https` URL.
///
/// # Errors
/// A message for another scheme, a missing host, user info or a bad URL.
pub fn parse_target(url: &str) -> Result<Target, String> {
    let uri: hyper::Uri = url.parse().map_err(|error| format!("bad URL {url:?}: {error}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("URL {url:?} must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("URL {url:?} must not carry user info"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("URL {url:?} has no host"));
    }
    Ok(Target {
        tls,
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |path| path.as_str().to_string()),
        authority: authority.as_str().to_string(),
    })
}

/// What the client needs for every request.
#[derive(Clone)]
pub struct HttpClient {
    policy: Arc<AddressPolicy>,
    tls: TlsConnector,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("policy", &self.policy)
            .finish()
    }
}

/// The result of one request, with a message for humans when it failed.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The attempt's result.
    pub result: AttemptResult,
    /// What went wrong, empty on success.
    pub message: String,
}

impl HttpClient {
    /// A client that connects only where `policy` allows.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built.
    pub fn new(policy: AddressPolicy) -> Result<HttpClient, String> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|error| format!("TLS configuration: {error}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(HttpClient {
            policy: Arc::new(policy),
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// POSTs `body` with `headers` to `target` within `timeout`.
    pub async fn post(
        &self,
        target: &Target,
        headers: &[(&'static str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Sent {
        match tokio::time::timeout(timeout, self.post_unbounded(target, headers, body)).await {
            Ok(sent) => sent,
            Err(_) => Sent {
                result: AttemptResult::Timeout,
                message: format!("no response within {} ms", timeout.as_millis()),
            },
        }
    }

    async fn post_unbounded(&self, target: &Target, headers: &[(&'static str, String)], body: Bytes) -> Sent {
        let failed = |result, message: String| Sent { result, message };
        let addresses: Vec<SocketAddr> =
            match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                Ok(addresses) => addresses.collect(),
                Err(error) => {
                    return failed(
                        AttemptResult::Connection,
                        format!("cannot resolve {}: {error}", target.host),
                    );
                }
            };
        let mut denied = None;
        let mut last_error = None;
        let mut stream = None;
        for address in addresses {
            if let Err(reason) = self.policy.check(address.ip()) {
                denied = Some(reason);
                continue;
            }
            // Connect to the checked address itself: no second lookup.
            match TcpStream::connect(address).await {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = Some(format!("connect to {address}: {error}")),
            }
        }
        let Some(stream) = stream else {
            return match (last_error, denied) {
                (Some(error), _) => failed(AttemptResult::Connection, error),
                (None, Some(reason)) => failed(AttemptResult::Refused, format!("target denied: {reason}")),
                (None, None) => failed(
                    AttemptResult::Connection,
                    format!("{} resolves to no address", target.host),
                ),
            };
        };
        let _ = stream.set_nodelay(true);
        let request = match build_request(target, headers, body) {
            Ok(request) => request,
            Err(error) => return failed(AttemptResult::Refused, error),
        };
        let response = if target.tls {
            let name = match ServerName::try_from(target.host.clone()) {
                Ok(name) => name,
                Err(error) => return failed(AttemptResult::Refused, format!("bad TLS name: {error}")),
            };
            match self.tls.connect(name, stream).await {
                Ok(tls) => exchange(TokioIo::new(tls), request).await,
                Err(error) => Err(format!("TLS handshake: {error}")),
            }
        } else {
            exchange(TokioIo::new(stream), request).await
        };
        match response {
            Ok((status, retry_after)) => {
                let now_s = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_secs());
                let retry_after = retry_after.and_then(|value| parse_retry_after(&value, now_s));
                let result = AttemptResult::Status { status, retry_after };
                let message = if (200..300).contains(&status) {
                    String::new()
                } else {
                    format!("HTTP {status}")
                };
                Sent { result, message }
            }
            Err(error) => failed(AttemptResult::Connection, error),
        }
    }
}

fn build_request(
    target: &Target,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut builder = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(target.path_and_query.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("stele-webhook/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    builder
        .body(Full::new(body))
        .map_err(|error| format!("cannot build the request: {error}"))
}

/// Sends one request on a fresh connection; returns the status and Retry-After.
async fn exchange<I>(io: I, request: hyper::Request<Full<Bytes>>) -> Result<(u16, Option<String>), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| format!("HTTP handshake: {error}"))?;
    let driver = tokio::spawn(connection);
    let outcome = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let mut body = response.into_body();
        let mut read = 0usize;
        // Bounded: stops after RESPONSE_BODY_SIZE_MAX bytes or at the body's end.
        while read < RESPONSE_BODY_SIZE_MAX {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) | None => break,
            }
        }
        Ok((status, retry_after))
    }
    .await;
    driver.abort();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn https_targets_go_through_tls_and_denied_addresses_are_refused() {
        // Goal: an https URL runs the TLS handshake (which fails against a plain
        // socket), and a loopback target is refused without an allow-list.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            }
        });
        let allowed = HttpClient::new(AddressPolicy {
            allow: vec!["127.0.0.0/8".parse().expect("network")],
        })
        .expect("client");
        let target = parse_target(&format!("https://127.0.0.1:{port}/")).expect("target");
        let sent = allowed
            .post(&target, &[], Bytes::from_static(b"{}"), Duration::from_secs(5))
            .await;
        assert_eq!(sent.result, AttemptResult::Connection);
        assert!(sent.message.contains("TLS"), "{}", sent.message);
        let denied = HttpClient::new(AddressPolicy::default()).expect("client");
        let target = parse_target(&format!("http://localhost:{port}/")).expect("target");
        let sent = denied
            .post(&target, &[], Bytes::from_static(b"{}"), Duration::from_secs(5))
            .await;
        assert_eq!(sent.result, AttemptResult::Refused);
        assert!(sent.message.contains("loopback"), "{}", sent.message);
    }

    #[test]
    fn targets_parse_with_default_ports_and_paths() {
        // Goal: http/https URLs parse to host, port, path; other schemes and user info are refused.
        let target = parse_target("https://hooks.example.com/in?x=1").expect("parse");
        assert!(target.tls);
        assert_eq!(target.host, "hooks.example.com");
        assert_eq!(target.port, 443);
        assert_eq!(target.path_and_query, "/in?x=1");
        let target = parse_target("http://[::1]:8080").expect("parse");
        assert_eq!(target.host, "::1");
        assert_eq!(target.port, 8080);
        assert_eq!(target.path_and_query, "/");
        assert_eq!(target.authority, "[::1]:8080");
        assert!(parse_target("ftp://example.com/").is_err());
        assert!(parse_target("http://user:pw@example.com/").is_err());
        assert!(parse_target("example.com/x").is_err());
    }
}
