//! Kafka record headers: W3C trace context and the tenant id.
//!
//! The trace context rides from the gateway's request span, through `events`, `deliveries` and
//! the retry tiers, to every delivery attempt, so one trace shows an event's whole life. The
//! propagator is used directly (not the global one) so propagation works whether or not an OTLP
//! exporter is configured.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

use crate::ids::TenantId;

pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TENANT_HEADER: &str = "harborhook-tenant-id";

/// The most of a `tracestate` carried (the W3C recommendation: propagate at least 512
/// characters, drop the state rather than exceed what downstream accepts). A caller's header
/// therefore cannot make every record of its event larger than the size budget allows.
pub const TRACESTATE_MAX: usize = 512;

struct HeaderWriter(Vec<(String, String)>);

impl Injector for HeaderWriter {
    fn set(&mut self, key: &str, value: String) {
        if key.eq_ignore_ascii_case("tracestate") && value.len() > TRACESTATE_MAX {
            return;
        }
        self.0.push((key.to_owned(), value));
    }
}

struct HeaderReader<'a>(Option<&'a BorrowedHeaders>);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let headers = self.0?;
        headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.iter().map(|h| h.key).collect())
            .unwrap_or_default()
    }
}

/// `cx`, or a new trace when `cx` carries no valid span: a CLI that installs no tracing, or a
/// direct producer's event that came without headers. Every record then carries the
/// `traceparent` docs/kafka.md promises, and what happens to it from here on is one trace.
pub fn or_new_trace(cx: &Context) -> Context {
    if cx.span().span_context().is_valid() {
        return cx.clone();
    }
    let span = SpanContext::new(
        TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes()),
        SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes()),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    Context::new().with_remote_span_context(span)
}

/// Headers for a record: the trace context of `cx` (`traceparent`, `tracestate`; a new trace
/// when `cx` has none, [`or_new_trace`]) and the tenant.
pub fn trace_headers(cx: &Context, tenant: &TenantId) -> OwnedHeaders {
    let mut writer = HeaderWriter(Vec::with_capacity(2));
    TraceContextPropagator::new().inject_context(&or_new_trace(cx), &mut writer);
    let tenant = tenant.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(writer.0.len() + 1);
    for (key, value) in &writer.0 {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers.insert(Header {
        key: TENANT_HEADER,
        value: Some(&tenant),
    })
}

/// The trace context carried by a record's headers; an empty context when there is none or it
/// is malformed (a bad header never fails the record).
pub fn extract_trace_context(headers: Option<&BorrowedHeaders>) -> Context {
    TraceContextPropagator::new().extract(&HeaderReader(headers))
}
