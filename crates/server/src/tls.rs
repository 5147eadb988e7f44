//! Connection facts for authentication (replaced by the TLS acceptor's).

use std::net::SocketAddr;

/// What a connection tells about its peer.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate's subject.
    pub certificate_subject: Option<String>,
}

/// The connection facts of `request`.
pub fn connection_info<T>(request: &tonic::Request<T>) -> Option<&ConnectionInfo> {
    request.extensions().get::<ConnectionInfo>()
}
