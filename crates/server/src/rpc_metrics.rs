//! Per-RPC metrics of every gRPC service the server hosts (Stele, health,
//! reflection): calls in flight, calls handled by method and status code, and
//! the handling time of unary calls.
//!
//! [`RpcMetered`] wraps a generated service the way `MessageLimitStatus` does:
//! it sees the HTTP request's path and the response, whose status is in the
//! headers (a trailers-only error) or in the trailers at the end of the body.
//! A call is counted once, when its status is known or when its body is dropped
//! unfinished (the client went away: `CANCELLED`).
//!
//! Invariant: method labels come from a fixed list (the Stele RPCs of the
//! authorisation table, and the health and reflection methods); any other path
//! is counted as `(unknown)`, so a client cannot mint label values.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use stele_engine::metrics::{Declared, HistogramFamily};
use tonic::codegen::http;

use super::auth::rpc::Rpc;

/// Buckets of unary handling time, in seconds: 50 µs to 10 s.
const RPC_BUCKETS_SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Methods outside `stele.v1.Stele` that the server hosts, by path.
const OTHER_METHODS: [(&str, &str, bool); 4] = [
    (
        "/grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Check",
        false,
    ),
    (
        "/grpc.health.v1.Health/Watch",
        "grpc.health.v1.Health/Watch",
        true,
    ),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        true,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        true,
    ),
];

/// Stele's streaming RPCs: their "handling time" is a stream's life, not a
/// latency, so they have no histogram.
const STREAMING: [Rpc; 3] = [Rpc::AppendSession, Rpc::Subscribe, Rpc::Consume];

/// The label of a request path and whether the method streams.
fn method_of(path: &str) -> (&'static str, bool) {
    if let Some(name) = path.strip_prefix("/stele.v1.Stele/")
        && let Some(rpc) = Rpc::from_name(name)
    {
        return (rpc.name(), STREAMING.contains(&rpc));
    }
    OTHER_METHODS
        .iter()
        .find(|(known, _, _)| *known == path)
        .map_or(("(unknown)", false), |(_, label, streaming)| (label, *streaming))
}

/// The name of a gRPC status code as its label (`OK`, `NOT_FOUND`, ...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The status a header map carries, if any (`grpc-status`).
fn code_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    method: &'static str,
    code: &'static str,
}

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS_SECONDS)
}

/// One method's series, resolved at its first call: a call then costs no
/// lookup in the families (a lock and a hash each) but for a status other
/// than OK.
#[derive(Debug)]
struct MethodSeries {
    in_flight: Gauge,
    handled_ok: Counter,
    /// `None` for a streaming method.
    duration_seconds: Option<Histogram>,
}

/// The per-RPC families.
#[derive(Debug)]
pub struct RpcMetrics {
    in_flight: Family<MethodLabels, Gauge>,
    handled: Family<HandledLabels, Counter>,
    duration_seconds: HistogramFamily<MethodLabels>,
    /// Every label `method_of` can give, each with its series once called
    /// (series appear with their first call, not before).
    series: std::collections::HashMap<&'static str, std::sync::OnceLock<MethodSeries>>,
}

impl Default for RpcMetrics {
    fn default() -> RpcMetrics {
        let labels = Rpc::ALL
            .iter()
            .map(|rpc| rpc.name())
            .chain(OTHER_METHODS.iter().map(|(_, label, _)| *label))
            .chain(["(unknown)"]);
        RpcMetrics {
            in_flight: Family::default(),
            handled: Family::default(),
            duration_seconds: Family::new_with_constructor(rpc_histogram),
            series: labels.map(|label| (label, std::sync::OnceLock::new())).collect(),
        }
    }
}

impl RpcMetrics {
    /// Registers the families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "stele_rpc_in_flight",
            "gRPC calls being handled by method (streams while they are open)",
            Declared(self.in_flight.clone()),
        );
        registry.register(
            "stele_rpc_handled",
            "gRPC calls finished by method and status code (CANCELLED when the client went away first)",
            Declared(self.handled.clone()),
        );
        registry.register(
            "stele_rpc_duration_seconds",
            "Time from a unary call's request to the end of its response, by method (streams have none)",
            Declared(self.duration_seconds.clone()),
        );
    }

    /// The series of `method`, a label `method_of` gave.
    fn series(&self, method: &'static str, streaming: bool) -> &MethodSeries {
        let slot = self
            .series
            .get(method)
            .expect("method labels come from method_of's fixed list");
        slot.get_or_init(|| {
            let labels = MethodLabels { method };
            MethodSeries {
                in_flight: self.in_flight.get_or_create_owned(&labels),
                handled_ok: self
                    .handled
                    .get_or_create_owned(&HandledLabels { method, code: "OK" }),
                duration_seconds: (!streaming).then(|| self.duration_seconds.get_or_create_owned(&labels)),
            }
        })
    }

    fn started(&self, method: &'static str, streaming: bool) {
        self.series(method, streaming).in_flight.inc();
    }

    fn finished(&self, method: &'static str, streaming: bool, code: tonic::Code, started: Instant) {
        let series = self.series(method, streaming);
        series.in_flight.dec();
        if code == tonic::Code::Ok {
            series.handled_ok.inc();
        } else {
            self.handled
                .get_or_create(&HandledLabels {
                    method,
                    code: code_name(code),
                })
                .inc();
        }
        if let Some(histogram) = &series.duration_seconds {
            histogram.observe(started.elapsed().as_secs_f64());
        }
    }
}

/// A generated service whose calls are counted in [`RpcMetrics`].
#[derive(Clone)]
pub struct RpcMetered<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S> RpcMetered<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, metrics: Arc<RpcMetrics>) -> RpcMetered<S> {
        RpcMetered { inner, metrics }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RpcMetered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, RequestBody, ResponseBody> tonic::codegen::Service<http::Request<RequestBody>> for RpcMetered<S>
where
    S: tonic::codegen::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    ResponseBody: Body<Data = Bytes> + Send + 'static,
    ResponseBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = super::backend::BoxFuture<std::result::Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let (method, streaming) = method_of(request.uri().path());
        let call = Call {
            metrics: Arc::clone(&self.metrics),
            method,
            streaming,
            started: Instant::now(),
            done: false,
        };
        call.metrics.started(method, streaming);
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut call = call;
            let response = match future.await {
                Ok(response) => response,
                Err(error) => {
                    call.finish(tonic::Code::Internal);
                    return Err(error);
                }
            };
            if let Some(code) = code_in(response.headers()) {
                // A trailers-only response: the call ended here.
                call.finish(code);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(MeteredBody {
                    inner: Box::pin(body),
                    call,
                })
            }))
        })
    }
}

/// One call being counted; counted as `CANCELLED` if dropped unfinished.
struct Call {
    metrics: Arc<RpcMetrics>,
    method: &'static str,
    streaming: bool,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if !self.done {
            self.done = true;
            self.metrics
                .finished(self.method, self.streaming, code, self.started);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// A response body that reports its call's status when the trailers pass.
struct MeteredBody<B> {
    inner: Pin<Box<B>>,
    call: Call,
}

impl<B: Body<Data = Bytes>> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = this.inner.as_mut().poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call.finish(code_in(trailers).unwrap_or(tonic::Code::Ok));
                }
            }
            // A broken body (the connection failed under it).
            Poll::Ready(Some(Err(_))) => this.call.finish(tonic::Code::Unknown),
            // The end without trailers: tonic always sends them, so this is a
            // response whose status was in its headers (already counted).
            Poll::Ready(None) => this.call.finish(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_from_the_fixed_list_only() {
        assert_eq!(method_of("/stele.v1.Stele/Append"), ("Append", false));
        assert_eq!(method_of("/stele.v1.Stele/Subscribe"), ("Subscribe", true));
        assert_eq!(method_of("/stele.v1.Stele/Consume"), ("Consume", true));
        assert_eq!(
            method_of("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health/Check", false)
        );
        assert_eq!(method_of("/stele.v1.Stele/NoSuchCall"), ("(unknown)", false));
        assert_eq!(method_of("/evil/../stele.v1.Stele/Append"), ("(unknown)", false));
        // Every label it gives has a series slot (a missing one would panic
        // on the call).
        let metrics = RpcMetrics::default();
        let paths = Rpc::ALL
            .iter()
            .map(|rpc| format!("/stele.v1.Stele/{}", rpc.name()))
            .chain(OTHER_METHODS.iter().map(|(path, _, _)| path.to_string()))
            .chain(["/nope".to_string()]);
        for path in paths {
            let (label, streaming) = method_of(&path);
            assert!(path.ends_with(label) || label == "(unknown)", "{path} -> {label}");
            metrics.started(label, streaming);
            metrics.finished(label, streaming, tonic::Code::Ok, Instant::now());
        }
        assert_eq!(
            metrics
                .handled
                .get_or_create(&HandledLabels {
                    method: "Append",
                    code: "OK"
                })
                .get(),
            1
        );
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("stele_rpc_duration_seconds_count{method=\"Append\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("stele_rpc_duration_seconds_count{method=\"Subscribe\"}"),
            "{text}"
        );
        assert!(
            text.contains("stele_rpc_in_flight{method=\"Subscribe\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn a_call_is_counted_once_and_as_cancelled_when_dropped_unfinished() {
        let metrics = Arc::new(RpcMetrics::default());
        let count = |method, code| {
            metrics
                .handled
                .get_or_create(&HandledLabels { method, code })
                .get()
        };
        let call = |method| {
            metrics.started(method, false);
            Call {
                metrics: Arc::clone(&metrics),
                method,
                streaming: false,
                started: Instant::now(),
                done: false,
            }
        };
        let mut finished = call("Append");
        finished.finish(tonic::Code::NotFound);
        finished.finish(tonic::Code::Ok);
        drop(finished);
        drop(call("Read"));
        assert_eq!(count("Append", "NOT_FOUND"), 1);
        assert_eq!(count("Append", "OK"), 0);
        assert_eq!(count("Append", "CANCELLED"), 0);
        assert_eq!(count("Read", "CANCELLED"), 1);
        assert_eq!(
            metrics
                .in_flight
                .get_or_create(&MethodLabels { method: "Append" })
                .get(),
            0
        );
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("stele_rpc_duration_seconds_count{method=\"Append\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("stele_rpc_handled_total{method=\"Read\",code=\"CANCELLED\"} 1\n"),
            "{text}"
        );
    }
}
