//! Metering: turns a finished (or abandoned) answer into a usage row, and the
//! stream wrappers that read usage from a streamed answer as it passes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use super::App;
use super::cache::CachedKey;
use crate::providers::sse::{SseTap, Usage};
use crate::store::UsageRow;
use crate::usage::prices::Price;

/// Status recorded when the client went away before the answer ended.
pub const CLIENT_CLOSED: u16 = 499;

pub struct Meter {
    app: Arc<App>,
    pub row: UsageRow,
    started: Instant,
    pub price: Option<Price>,
    /// Counters held while the request runs, settled with the real usage.
    pub admission: Option<super::admit::Admission>,
    /// Prompt tokens estimated from the request, for streams cut short.
    pub prompt_estimate: u64,
}

impl Meter {
    pub fn new(app: Arc<App>, key: &CachedKey, request_id: &str, started: Instant) -> Meter {
        Meter {
            app,
            row: UsageRow {
                request_id: request_id.to_string(),
                key_id: key.row.id.clone(),
                user: key.row.user.clone(),
                team: key.row.team.clone(),
                purpose: key.row.purpose.clone(),
                provider: String::new(),
                model: String::new(),
                endpoint: String::new(),
                status: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                cost_usd: 0.0,
                latency_ms: 0,
                created_at: crate::util::now_ms(),
                flags: None,
            },
            started,
            price: None,
            admission: None,
            prompt_estimate: 0,
        }
    }

    /// Add a guardrail flag to the row.
    pub fn flag(&mut self, flag: &str) {
        match &mut self.row.flags {
            Some(f) => {
                f.push(',');
                f.push_str(flag);
            }
            None => self.row.flags = Some(flag.to_string()),
        }
    }

    pub fn cost(&self, usage: Usage) -> f64 {
        self.price
            .map(|p| p.cost(usage.prompt, usage.completion))
            .unwrap_or(0.0)
    }

    /// Record the row; answers its cost.
    pub fn finish(mut self, status: u16, usage: Usage) -> f64 {
        let cost = self.cost(usage);
        if let Some(a) = self.admission.take() {
            a.settle(usage, cost);
        }
        self.row.status = i64::from(status);
        self.row.prompt_tokens = usage.prompt as i64;
        self.row.completion_tokens = usage.completion as i64;
        self.row.cost_usd = cost;
        self.row.latency_ms = self.started.elapsed().as_millis() as i64;
        tracing::info!(
            request_id = %self.row.request_id,
            key_id = %self.row.key_id,
            provider = %self.row.provider,
            model = %self.row.model,
            endpoint = %self.row.endpoint,
            status,
            prompt_tokens = usage.prompt,
            completion_tokens = usage.completion,
            cost_usd = cost,
            latency_ms = self.row.latency_ms,
            "request"
        );
        let labels = [
            ("provider", self.row.provider.clone()),
            ("endpoint", self.row.endpoint.clone()),
        ];
        metrics::counter!("bursar_requests_total", "provider" => self.row.provider.clone(), "endpoint" => self.row.endpoint.clone(), "status" => status.to_string()).increment(1);
        metrics::histogram!("bursar_request_duration_seconds", &labels)
            .record(self.started.elapsed().as_secs_f64());
        metrics::counter!("bursar_tokens_total", "kind" => "prompt").increment(usage.prompt);
        metrics::counter!("bursar_tokens_total", "kind" => "completion")
            .increment(usage.completion);
        if cost > 0.0 {
            // Prometheus counters here are integers: cost in micro-dollars.
            metrics::counter!("bursar_cost_microusd_total").increment((cost * 1e6).round() as u64);
        }
        self.app.usage.record(self.row);
        cost
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// A streamed (SSE) answer: forwarded event by event, usage read on the way,
/// real keys scrubbed, the row written when it ends or the client leaves.
pub struct MeteredSse {
    inner: ByteStream,
    tap: SseTap,
    app: Arc<App>,
    meter: Option<Meter>,
    status: u16,
    done: bool,
}

impl MeteredSse {
    pub fn new(
        inner: ByteStream,
        tap: SseTap,
        app: Arc<App>,
        meter: Meter,
        status: u16,
    ) -> MeteredSse {
        MeteredSse {
            inner,
            tap,
            app,
            meter: Some(meter),
            status,
            done: false,
        }
    }

    /// `complete`: the upstream ended the stream itself. Otherwise (client
    /// gone, upstream failed) the row is charged at least what was streamed.
    fn settle(&mut self, status: u16, complete: bool) {
        if let Some(m) = self.meter.take() {
            let usage = if complete && self.tap.saw_usage {
                self.tap.usage
            } else {
                self.tap.usage_at_least(m.prompt_estimate)
            };
            m.finish(status, usage);
        }
    }
}

impl Stream for MeteredSse {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = this.tap.push(&chunk);
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(this.app.registry.scrubber.scrub(out))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.settle(502, false);
                    return Poll::Ready(Some(Err(std::io::Error::other(format!(
                        "upstream stream failed: {}",
                        this.app.registry.scrubber.scrub_str(&e.to_string())
                    )))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = this.tap.finish();
                    let status = this.status;
                    this.settle(status, true);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(this.app.registry.scrubber.scrub(rest))));
                }
            }
        }
    }
}

impl Drop for MeteredSse {
    fn drop(&mut self) {
        // The client went away mid-stream: record what was seen.
        self.settle(CLIENT_CLOSED, false);
    }
}

/// A non-metered answer streamed through as it arrives, with real keys
/// scrubbed even when one is split across chunks.
pub struct ScrubbedStream {
    inner: ByteStream,
    app: Arc<App>,
    held: BytesMut,
    meter: Option<Meter>,
    status: u16,
    done: bool,
}

impl ScrubbedStream {
    pub fn new(inner: ByteStream, app: Arc<App>, meter: Meter, status: u16) -> ScrubbedStream {
        ScrubbedStream {
            inner,
            app,
            held: BytesMut::new(),
            meter: Some(meter),
            status,
            done: false,
        }
    }
}

impl Stream for ScrubbedStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let scrubber = &this.app.registry.scrubber;
                    if !scrubber.is_active() {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    this.held.extend_from_slice(&chunk);
                    let clean = scrubber.scrub(this.held.split().freeze());
                    let keep = scrubber.partial_tail(&clean);
                    let send = clean.slice(..clean.len() - keep);
                    this.held.extend_from_slice(&clean[clean.len() - keep..]);
                    if send.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(send)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    if let Some(m) = this.meter.take() {
                        m.finish(502, Usage::default());
                    }
                    return Poll::Ready(Some(Err(std::io::Error::other(format!(
                        "upstream stream failed: {}",
                        this.app.registry.scrubber.scrub_str(&e.to_string())
                    )))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if let Some(m) = this.meter.take() {
                        m.finish(this.status, Usage::default());
                    }
                    if this.held.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(this.held.split().freeze())));
                }
            }
        }
    }
}

impl Drop for ScrubbedStream {
    fn drop(&mut self) {
        if let Some(m) = self.meter.take() {
            m.finish(CLIENT_CLOSED, Usage::default());
        }
    }
}
