//! The outbound HTTP/1.1 client of webhook delivery: hyper-util's connection pool
//! over a connector that connects only to an address checked by the SSRF guard,
//! with TLS (rustls, Mozilla's roots) for `https` targets; each request (connect
//! included) runs under one timeout.
//!
//! It does not follow redirects (a 3xx is a permanent failure) and reads at most
//! [`RESPONSE_BODY_SIZE_MAX`] bytes of a response body.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// Host name (ASCII, lowercase) or address literal in its canonical form
    /// (without IPv6 brackets).
    pub host: String,
    /// The address when the host is an address literal, in whichever spelling.
    pub address: Option<IpAddr>,
    /// Port.
    pub port: u16,
    /// Path and query, at least `/`.
    pub path_and_query: String,
    /// The host (IPv6 in brackets) and the port when it is not the scheme's
    /// default, for the Host header: what a browser would send.
    pub authority: String,
}

/// Parses an `http` or `https` URL. The host is read the way a WHATWG URL
/// parser (browsers, curl's and most HTTP clients' URL handling) reads it, so an
/// address spelled `127.1`, `2130706433`, `0x7f000001` or `0177.0.0.1` is the
/// address `127.0.0.1`, and the SSRF guard judges what a client would connect to.
///
/// # Errors
/// A message for another scheme, a missing or malformed host, user info, a
/// port that is not a number from 1 to 65535, or a bad URL.
pub fn parse_target(url: &str) -> Result<Target, String> {
    let uri: hyper::Uri = url.parse().map_err(|error| format!("bad URL {url:?}: {error}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("URL {url:?} must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {url:?} has no host"))?
        .as_str();
    if authority.contains('@') {
        return Err(format!("URL {url:?} must not carry user info"));
    }
    let (host_text, port_text) =
        split_authority(authority).map_err(|error| format!("URL {url:?}: {error}"))?;
    let host = parse_host(host_text).map_err(|error| format!("URL {url:?}: {error}"))?;
    let port_default = if tls { 443 } else { 80 };
    let port = parse_port(port_text, port_default).map_err(|error| format!("URL {url:?}: {error}"))?;
    let (host, address) = match host {
        Host::Domain(name) => (name, None),
        Host::Address(address) => (address.to_string(), Some(address)),
    };
    let bracketed = if matches!(address, Some(IpAddr::V6(_))) {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let authority = if port == port_default {
        bracketed
    } else {
        format!("{bracketed}:{port}")
    };
    Ok(Target {
        tls,
        host,
        address,
        port,
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |path| path.as_str().to_string()),
        authority,
    })
}

/// A URL's host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// A name to resolve at delivery time (ASCII, lowercase).
    Domain(String),
    /// An address literal.
    Address(IpAddr),
}

/// Splits `host[:port]` (user info already refused) into the host and the port
/// text, if any.
fn split_authority(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| "an IPv6 host lacks its closing ']'".to_string())?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if rest.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected {rest:?} after the host {host}")),
        };
    }
    match authority.split_once(':') {
        Some((_, port)) if port.contains(':') => {
            Err("an IPv6 host must be written in brackets, like [2001:db8::1]".to_string())
        }
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((authority, None)),
    }
}

/// Parses a port: absent or empty means the scheme's default; otherwise digits
/// only, 1 to 65535 (leading zeros allowed, as WHATWG URLs allow them).
fn parse_port(text: Option<&str>, default: u16) -> Result<u16, String> {
    let Some(text) = text.filter(|text| !text.is_empty()) else {
        return Ok(default);
    };
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("port {text:?} is not a number"));
    }
    let digits = text.trim_start_matches('0');
    match digits.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ if digits.is_empty() => Err("port 0 cannot be connected to; use 1 to 65535".to_string()),
        _ => Err(format!("port {text} is out of range; use 1 to 65535")),
    }
}

/// Parses a host as the WHATWG URL standard's host parser does, except that a
/// non-ASCII name is refused (rather than mapped by IDNA, whose mappings would
/// turn e.g. full-width digits into an address): write it in its `xn--` form.
fn parse_host(text: &str) -> Result<Host, String> {
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("bad IPv6 host {text:?}"))?;
        let address: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("{text} is not an IPv6 address"))?;
        return Ok(Host::Address(IpAddr::V6(address)));
    }
    let decoded = percent_decode(text.as_bytes());
    let decoded = String::from_utf8(decoded).map_err(|_| format!("host {text:?} is not UTF-8"))?;
    if !decoded.is_ascii() {
        return Err(format!(
            "host {text:?} is not ASCII; write an internationalised name in its xn-- form"
        ));
    }
    let name = decoded.to_ascii_lowercase();
    if name.is_empty() {
        return Err("the host is empty".to_string());
    }
    if let Some(bad) = name.chars().find(|c| is_forbidden_in_domain(*c)) {
        return Err(format!("host {text:?} contains {bad:?}"));
    }
    if ends_in_a_number(&name) {
        return parse_ipv4(&name)
            .map(|address| Host::Address(IpAddr::V4(address)))
            .ok_or_else(|| format!("host {text:?} ends in a number but is not an IPv4 address"));
    }
    Ok(Host::Domain(name))
}

/// WHATWG's forbidden domain code points (ASCII only: others are refused earlier).
fn is_forbidden_in_domain(c: char) -> bool {
    c.is_ascii_control()
        || matches!(
            c,
            ' ' | '#' | '%' | '/' | ':' | '<' | '>' | '?' | '@' | '[' | '\\' | ']' | '^' | '|'
        )
}

/// Decodes `%XX` sequences; a `%` not followed by two hex digits stays.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |byte: u8| (byte as char).to_digit(16).map(|digit| digit as u8);
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    // Bounded: each step consumes one or three input bytes.
    while index < bytes.len() {
        let high = bytes.get(index + 1).copied().and_then(hex);
        let low = bytes.get(index + 2).copied().and_then(hex);
        match (bytes[index], high, low) {
            (b'%', Some(high), Some(low)) => {
                decoded.push(high << 4 | low);
                index += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    decoded
}

/// WHATWG's "ends in a number" check: whether the host must be read as IPv4.
fn ends_in_a_number(name: &str) -> bool {
    let mut parts: Vec<&str> = name.split('.').collect();
    if parts.last() == Some(&"") {
        if parts.len() == 1 {
            return false;
        }
        parts.pop();
    }
    let last = parts.last().copied().unwrap_or_default();
    (!last.is_empty() && last.bytes().all(|byte| byte.is_ascii_digit())) || parse_ipv4_number(last).is_some()
}

/// One part of an IPv4 host: decimal, `0x` hexadecimal or `0` octal; `None` on
/// failure or when it does not fit in 64 bits (too big for any part anyway).
fn parse_ipv4_number(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        (hex, 16)
    } else if text.len() >= 2 && text.starts_with('0') {
        (&text[1..], 8)
    } else {
        (text, 10)
    };
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// WHATWG's IPv4 parser: one to four parts; every part but the last is one
/// byte, the last fills the remaining bytes (`127.1` is `127.0.0.1`).
fn parse_ipv4(name: &str) -> Option<Ipv4Addr> {
    let mut parts: Vec<&str> = name.split('.').collect();
    if parts.last() == Some(&"") && parts.len() > 1 {
        parts.pop();
    }
    if parts.len() > 4 {
        return None;
    }
    let numbers: Vec<u64> = parts
        .iter()
        .map(|part| parse_ipv4_number(part))
        .collect::<Option<_>>()?;
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|number| *number > 255) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut address = *last;
    for (index, number) in leading.iter().enumerate() {
        address += number << (8 * (3 - index as u32));
    }
    Some(Ipv4Addr::from(address as u32))
}

/// The pooled HTTP/1.1 client of webhook delivery (hyper-util's connection pool)
/// over [`GuardedConnector`]: a connection is made only to an address the SSRF
/// guard passed, and kept for the next request to the same scheme, host and port.
#[derive(Clone)]
pub struct HttpClient {
    policy: Arc<AddressPolicy>,
    pool: Client<GuardedConnector, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("policy", &self.policy)
            .finish()
    }
}

/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per scheme, host and port: one per key in flight of an
/// endpoint at the default setting.
pub const POOL_IDLE_PER_HOST_MAX: usize = 16;

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
        let policy = Arc::new(policy);
        let connector = GuardedConnector {
            policy: Arc::clone(&policy),
            tls: TlsConnector::from(Arc::new(config)),
        };
        let pool = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(HttpClient { policy, pool })
    }

    /// The addresses this client may connect to.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
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
        let request = match build_request(target, headers, body) {
            Ok(request) => request,
            Err(error) => return failed(AttemptResult::Refused, error),
        };
        match exchange(&self.pool, request).await {
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
            Err(error) => match connect_error_of(&error) {
                Some(refused) => failed(refused.result, refused.message.clone()),
                None => failed(AttemptResult::Connection, describe(&error)),
            },
        }
    }
}

/// The request line carries the target's canonical host (an address literal in
/// its canonical spelling, IPv6 in brackets), so the connector sees the host the
/// guard judged at `CreateWebhook`, not the URL's spelling.
fn build_request(
    target: &Target,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let host = match target.address {
        Some(IpAddr::V6(_)) => format!("[{}]", target.host),
        _ => target.host.clone(),
    };
    let scheme = if target.tls { "https" } else { "http" };
    let uri = format!("{scheme}://{host}:{}{}", target.port, target.path_and_query);
    let mut builder = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(uri)
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

/// Sends one request on a pooled or new connection; returns the status and
/// Retry-After. The body is read (up to [`RESPONSE_BODY_SIZE_MAX`]) so that the
/// connection can go back to the pool; a longer body closes it.
async fn exchange(
    pool: &Client<GuardedConnector, Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Option<String>), hyper_util::client::legacy::Error> {
    let response = pool.request(request).await?;
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

/// The connector's own failure inside a client error, if that is what it was.
fn connect_error_of(error: &hyper_util::client::legacy::Error) -> Option<&ConnectError> {
    let mut source = std::error::Error::source(error);
    // Bounded by the error chain's length.
    while let Some(cause) = source {
        if let Some(connect) = cause.downcast_ref::<ConnectError>() {
            return Some(connect);
        }
        source = cause.source();
    }
    None
}

/// A client error with its causes, for the endpoint's `last_error`.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut message = format!("request failed: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Why the connector made no connection: a denied address (`Refused`, final)
/// or a network failure (`Connection`, retried).
#[derive(Debug)]
pub struct ConnectError {
    result: AttemptResult,
    message: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectError {}

/// Connects the pool to a target: resolves the host, checks every address with
/// the SSRF guard, connects to the first allowed one that answers (that address
/// itself: no second lookup, so no DNS-rebinding window), then TLS for `https`.
#[derive(Clone)]
pub struct GuardedConnector {
    policy: Arc<AddressPolicy>,
    tls: TlsConnector,
}

impl tower_service::Service<hyper::Uri> for GuardedConnector {
    type Response = Pooled;
    type Error = ConnectError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Pooled, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ConnectError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            connector
                .connect(uri)
                .await
                .map(|stream| Pooled(TokioIo::new(stream)))
        })
    }
}

impl GuardedConnector {
    async fn connect(&self, uri: hyper::Uri) -> Result<Stream, ConnectError> {
        let failed = |result, message: String| ConnectError { result, message };
        let tls = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']').to_string())
            .ok_or_else(|| failed(AttemptResult::Refused, format!("{uri} has no host")))?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|error| {
                failed(
                    AttemptResult::Connection,
                    format!("cannot resolve {host}: {error}"),
                )
            })?
            .collect();
        let mut denied = None;
        let mut last_error = None;
        let mut stream = None;
        for address in addresses {
            if let Err(reason) = self.policy.check(address.ip()) {
                denied = Some(reason);
                continue;
            }
            match TcpStream::connect(address).await {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = Some(format!("connect to {address}: {error}")),
            }
        }
        let Some(stream) = stream else {
            return Err(match (last_error, denied) {
                (Some(error), _) => failed(AttemptResult::Connection, error),
                (None, Some(reason)) => failed(AttemptResult::Refused, format!("target denied: {reason}")),
                (None, None) => failed(
                    AttemptResult::Connection,
                    format!("{host} resolves to no address"),
                ),
            });
        };
        let _ = stream.set_nodelay(true);
        if !tls {
            return Ok(Stream::Plain(stream));
        }
        let name = ServerName::try_from(host)
            .map_err(|error| failed(AttemptResult::Refused, format!("bad TLS name: {error}")))?;
        match self.tls.connect(name, stream).await {
            Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
            Err(error) => Err(failed(
                AttemptResult::Connection,
                format!("TLS handshake: {error}"),
            )),
        }
    }
}

/// A connection of the pool: plain TCP or TLS over TCP.
pub enum Stream {
    /// `http`.
    Plain(TcpStream),
    /// `https`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A pooled connection as hyper sees it.
pub struct Pooled(TokioIo<Stream>);

impl Connection for Pooled {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Pooled {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(context, buffer)
    }
}

impl hyper::rt::Write for Pooled {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(context, bytes)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(context)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(context)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => std::pin::Pin::new(stream).poll_read(context, buffer),
            Stream::Tls(stream) => std::pin::Pin::new(stream).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => std::pin::Pin::new(stream).poll_write(context, bytes),
            Stream::Tls(stream) => std::pin::Pin::new(stream).poll_write(context, bytes),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => std::pin::Pin::new(stream).poll_flush(context),
            Stream::Tls(stream) => std::pin::Pin::new(stream).poll_flush(context),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => std::pin::Pin::new(stream).poll_shutdown(context),
            Stream::Tls(stream) => std::pin::Pin::new(stream).poll_shutdown(context),
        }
    }
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

    #[tokio::test]
    async fn connections_are_pooled_per_target_and_made_only_to_checked_addresses() {
        // Goal: requests to one target reuse one kept-alive connection (the pool),
        // and another target on a denied address is refused although the pool
        // holds an allowed connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (accepted_sender, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = accepted_sender.send(());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    // One response per request head seen (bodies are "{}", sent
                    // with the head or right after; requests are sequential).
                    while let Ok(read) = stream.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                        request.extend_from_slice(&buffer[..read]);
                        while let Some(end) = request.windows(6).position(|window| window == b"\r\n\r\n{}") {
                            request.drain(..end + 6);
                            let response = b"HTTP/1.1 204 No Content\r\n\r\n";
                            if stream.write_all(response).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let client = HttpClient::new(AddressPolicy {
            allow: vec!["127.0.0.1".parse().expect("network")],
        })
        .expect("client");
        let target = parse_target(&format!("http://127.0.0.1:{port}/hook")).expect("target");
        for round in 0..3 {
            let sent = client
                .post(&target, &[], Bytes::from_static(b"{}"), Duration::from_secs(5))
                .await;
            assert_eq!(
                sent.result,
                AttemptResult::Status {
                    status: 204,
                    retry_after: None
                },
                "round {round}: {}",
                sent.message
            );
        }
        accepted.recv().await.expect("one connection");
        assert!(
            accepted.try_recv().is_err(),
            "three requests made more than one connection"
        );
        // 127.0.0.2 is loopback outside the allow-list: refused before any
        // connection, pooled connections to 127.0.0.1 notwithstanding.
        let spelled = parse_target("http://127.0.0.2:1/").expect("target");
        let sent = client
            .post(&spelled, &[], Bytes::from_static(b"{}"), Duration::from_secs(5))
            .await;
        assert_eq!(sent.result, AttemptResult::Refused, "{}", sent.message);
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
        let target = parse_target("http://Hooks.Example.COM:80/x").expect("parse");
        assert_eq!(target.host, "hooks.example.com");
        assert_eq!(target.address, None);
        assert_eq!(target.authority, "hooks.example.com");
        let target = parse_target("https://hooks.example.com:08443/").expect("parse");
        assert_eq!(target.port, 8443);
        assert_eq!(target.authority, "hooks.example.com:8443");
        assert_eq!(
            parse_target("http://hooks.example.com:/").expect("parse").port,
            80
        );
    }

    #[test]
    fn address_hosts_are_read_in_every_spelling_a_url_parser_accepts() {
        // Goal: each spelling of an address that a WHATWG URL parser reads as an
        // address comes out as that address (so the SSRF guard sees it), and
        // names stay names. Method: a table of spellings and what they must be.
        for (url, address) in [
            ("http://127.0.0.1/", "127.0.0.1"),
            ("http://127.1/", "127.0.0.1"),
            ("http://127.0.1/", "127.0.0.1"),
            ("http://2130706433/", "127.0.0.1"),
            ("http://0x7f000001/", "127.0.0.1"),
            ("http://0X7F000001/", "127.0.0.1"),
            ("http://0x7f.1/", "127.0.0.1"),
            ("http://0177.0.0.1/", "127.0.0.1"),
            ("http://0177.0.0.01/", "127.0.0.1"),
            ("http://017700000001/", "127.0.0.1"),
            ("http://127.0.0.1./", "127.0.0.1"),
            ("http://0/", "0.0.0.0"),
            ("http://0.0.0.0/", "0.0.0.0"),
            ("http://0x/", "0.0.0.0"),
            ("http://10.0.258/", "10.0.1.2"),
            ("http://3232235777/", "192.168.1.1"),
            ("http://0xa9fea9fe/", "169.254.169.254"),
            ("http://[::1]/", "::1"),
            ("http://[::]/", "::"),
            ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
            ("http://[0:0:0:0:0:ffff:7f00:1]:8080/", "::ffff:127.0.0.1"),
            ("http://8.8.8.8/", "8.8.8.8"),
        ] {
            let target = parse_target(url).unwrap_or_else(|error| panic!("{url}: {error}"));
            let expected: IpAddr = address.parse().expect("test address");
            assert_eq!(target.address, Some(expected), "{url}");
            assert_eq!(target.host, expected.to_string(), "{url}");
        }
        for (url, name) in [
            ("http://localhost/", "localhost"),
            ("http://127.0.0.1.example.com/", "127.0.0.1.example.com"),
            ("http://0x7f000001.example/", "0x7f000001.example"),
            ("http://1.2.3.example/", "1.2.3.example"),
        ] {
            let target = parse_target(url).unwrap_or_else(|error| panic!("{url}: {error}"));
            assert_eq!(target.address, None, "{url}");
            assert_eq!(target.host, name, "{url}");
        }
        // Hosts that end in a number but are no address are refused, as a URL
        // parser refuses them, rather than handed to the resolver.
        for url in [
            "http://1.2.3.4.5/",
            "http://256.0.0.1/",
            "http://1.2.3.256/",
            "http://1.2.65536/",
            "http://4294967296/",
            "http://0x100000000/",
            "http://08.0.0.1/",
            "http://0x7g.0.0.1/",
            "http://example.08/",
            "http://[::1/",
            "http://[127.0.0.1]/",
            "http://[::1]x/",
            // The URL parser refuses percent signs in a host; were they let
            // through, this would decode to 127.0.0.1.
            "http://%31%32%37.0.0.1/",
        ] {
            assert!(parse_target(url).is_err(), "{url} must be refused");
        }
    }

    #[test]
    fn ports_must_be_numbers_from_1_to_65535() {
        // Goal: port 0, ports above 65535 and non-numeric ports are refused with a
        // message, never replaced by the default port.
        assert_eq!(parse_target("http://example.com:1/").expect("parse").port, 1);
        assert_eq!(
            parse_target("http://example.com:65535/").expect("parse").port,
            65535
        );
        for (url, wanted) in [
            ("http://example.com:0/", "port 0"),
            ("http://example.com:00/", "port 0"),
            ("http://example.com:65536/", "out of range"),
            ("http://example.com:99999999999999999999/", "out of range"),
            ("http://[::1]:70000/", "out of range"),
            ("http://example.com:8o8o/", ""),
            ("http://example.com:-1/", ""),
        ] {
            let error = parse_target(url).expect_err(url);
            assert!(error.contains(wanted), "{url}: {error}");
        }
    }
}
