//! Incremental server-sent-events handling and usage extraction from every
//! response shape (OpenAI chat/completions/embeddings/responses, Anthropic
//! messages), plain or streamed.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// Token counts of one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

impl Usage {
    /// Read a `usage` object of any known shape.
    pub fn from_usage_object(u: &Value) -> Option<Usage> {
        if !u.is_object() {
            return None;
        }
        let prompt = if u.get("prompt_tokens").is_some() {
            num(u, "prompt_tokens")
        } else {
            num(u, "input_tokens")
                + num(u, "cache_creation_input_tokens")
                + num(u, "cache_read_input_tokens")
        };
        let completion = if u.get("completion_tokens").is_some() {
            num(u, "completion_tokens")
        } else {
            num(u, "output_tokens")
        };
        Some(Usage { prompt, completion })
    }

    /// Gemini's `usageMetadata`: thinking tokens are billed as output.
    fn from_google(u: &Value) -> Option<Usage> {
        if !u.is_object() {
            return None;
        }
        Some(Usage {
            prompt: num(u, "promptTokenCount") + num(u, "toolUsePromptTokenCount"),
            completion: num(u, "candidatesTokenCount") + num(u, "thoughtsTokenCount"),
        })
    }

    /// Cohere's `billed_units` (what is charged; `search_units` are not tokens).
    fn from_billed_units(u: &Value) -> Option<Usage> {
        if !u.is_object() {
            return None;
        }
        Some(Usage {
            prompt: num(u, "input_tokens"),
            completion: num(u, "output_tokens"),
        })
    }

    /// Usage carried by a response body or a stream event, wherever it sits.
    pub fn from_json(v: &Value) -> Option<Usage> {
        if let Some(u) = v.get("usageMetadata") {
            return Usage::from_google(u);
        }
        // Cohere: v2 `usage.billed_units`, v2 stream `message-end`
        // `delta.usage.billed_units`, v1 `meta.billed_units`, v1 stream-end
        // `response.meta.billed_units`.
        for path in [
            "/usage/billed_units",
            "/delta/usage/billed_units",
            "/meta/billed_units",
            "/response/meta/billed_units",
        ] {
            if let Some(u) = v.pointer(path) {
                return Usage::from_billed_units(u);
            }
        }
        for path in [
            &["usage"][..],
            &["message", "usage"],
            &["response", "usage"],
        ] {
            let mut cur = v;
            let mut found = true;
            for p in path {
                match cur.get(p) {
                    Some(x) => cur = x,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            if found && let Some(u) = Usage::from_usage_object(cur) {
                return Some(u);
            }
        }
        None
    }

    /// Usage of a whole (non-streamed) answer, reading only the members that
    /// can carry it: the answer's content (`choices`, `output`, `data`,
    /// `candidates`, …) is skipped, never built into a JSON tree.
    pub fn from_answer(raw: &[u8]) -> Option<Usage> {
        #[derive(serde::Deserialize)]
        struct Carrier {
            usage: Option<Value>,
            #[serde(rename = "usageMetadata")]
            usage_metadata: Option<Value>,
            meta: Option<Value>,
            delta: Option<Value>,
            response: Option<Value>,
            message: Option<Value>,
        }
        let c: Carrier = serde_json::from_slice(raw).ok()?;
        let mut v = serde_json::Map::new();
        for (k, x) in [
            ("usage", c.usage),
            ("usageMetadata", c.usage_metadata),
            ("meta", c.meta),
            ("delta", c.delta),
            ("response", c.response),
            ("message", c.message),
        ] {
            if let Some(x) = x {
                v.insert(k.to_string(), x);
            }
        }
        Usage::from_json(&Value::Object(v))
    }

    /// Merge a later report: streamed counts are cumulative, so keep the larger.
    pub fn merge(&mut self, other: Usage) {
        self.prompt = self.prompt.max(other.prompt);
        self.completion = self.completion.max(other.completion);
    }
}

/// Splits a byte stream into complete SSE events (each with its blank line).
/// With `lines`, each line is an event (JSON lines, Cohere v1 streams).
#[derive(Default)]
pub struct EventSplitter {
    buf: BytesMut,
    lines: bool,
}

impl EventSplitter {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        if self.lines {
            while let Some(i) = memchr::memchr(b'\n', &self.buf) {
                out.push(self.buf.split_to(i + 1).freeze());
            }
            return out;
        }
        loop {
            let lf = memchr::memmem::find(&self.buf, b"\n\n").map(|i| i + 2);
            let crlf = memchr::memmem::find(&self.buf, b"\r\n\r\n").map(|i| i + 4);
            let end = match (lf, crlf) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => break,
                },
            };
            out.push(self.buf.split_to(end).freeze());
        }
        out
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn rest(&mut self) -> Option<Bytes> {
        if self.buf.is_empty() {
            None
        } else {
            Some(self.buf.split().freeze())
        }
    }
}

/// The joined `data:` lines of one event.
pub fn event_data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data: Option<String> = None;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            let d = d.strip_prefix(' ').unwrap_or(d);
            match &mut data {
                Some(s) => {
                    s.push('\n');
                    s.push_str(d);
                }
                None => data = Some(d.to_string()),
            }
        }
    }
    data
}

/// Reads usage out of a stream event by event; optionally drops the usage-only
/// chunk that bursar asked an OpenAI upstream for on the client's behalf.
pub struct SseTap {
    splitter: EventSplitter,
    pub usage: Usage,
    pub saw_usage: bool,
    hide_usage_chunk: bool,
    /// The events that carried text so far (bounded), kept unparsed: only a
    /// stream that ends before its usage report needs them, to estimate the
    /// completion tokens.
    deltas: Vec<Bytes>,
    deltas_len: usize,
    deltas_overflow: usize,
}

/// Whether `key` appears in `event` with a value other than `null` (every
/// OpenAI chunk says `"usage":null` once usage is asked for).
fn has_value(event: &[u8], key: &[u8]) -> bool {
    let finder = memchr::memmem::Finder::new(key);
    finder.find_iter(event).any(|at| {
        let rest = &event[at + key.len()..];
        let rest = rest.trim_ascii_start();
        let rest = rest.strip_prefix(b":").unwrap_or(rest).trim_ascii_start();
        !rest.starts_with(b"null")
    })
}

/// Most streamed text kept for the completion estimate.
const MAX_TAP_TEXT: usize = 1024 * 1024;

/// Text deltas of every streamed shape: OpenAI chat and completions,
/// Anthropic `content_block_delta`, Responses `output_text.delta`, Gemini
/// candidates, Cohere v2 `content-delta` and v1 `text-generation`.
fn delta_text(v: &Value, out: &mut String) {
    if let Some(cands) = v.get("candidates").and_then(Value::as_array) {
        for c in cands {
            if let Some(parts) = c.pointer("/content/parts").and_then(Value::as_array) {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                    }
                }
            }
        }
        return;
    }
    if let Some(t) = v
        .pointer("/delta/message/content/text")
        .and_then(Value::as_str)
    {
        out.push_str(t);
        return;
    }
    if v.get("event_type").and_then(Value::as_str) == Some("text-generation") {
        if let Some(t) = v.get("text").and_then(Value::as_str) {
            out.push_str(t);
        }
        return;
    }
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for c in choices {
            if let Some(t) = c.pointer("/delta/content").and_then(Value::as_str) {
                out.push_str(t);
            }
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                out.push_str(t);
            }
        }
    }
    match v.get("delta") {
        Some(Value::String(t)) => out.push_str(t),
        Some(d) => {
            for k in ["text", "partial_json", "thinking"] {
                if let Some(t) = d.get(k).and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
        }
        None => {}
    }
}

impl SseTap {
    pub fn new(hide_usage_chunk: bool) -> SseTap {
        SseTap::with_splitter(hide_usage_chunk, EventSplitter::default())
    }

    /// A tap for a JSON-lines stream (one JSON object per line).
    pub fn json_lines() -> SseTap {
        SseTap::with_splitter(
            false,
            EventSplitter {
                buf: BytesMut::new(),
                lines: true,
            },
        )
    }

    fn with_splitter(hide_usage_chunk: bool, splitter: EventSplitter) -> SseTap {
        SseTap {
            splitter,
            usage: Usage::default(),
            saw_usage: false,
            hide_usage_chunk,
            deltas: Vec::new(),
            deltas_len: 0,
            deltas_overflow: 0,
        }
    }

    /// The text streamed so far (within the kept bound).
    pub fn streamed_text(&self) -> String {
        let mut text = String::new();
        for e in &self.deltas {
            let data = event_data(e).or_else(|| {
                let t = std::str::from_utf8(e).ok()?.trim();
                t.starts_with('{').then(|| t.to_string())
            });
            if let Some(v) = data.and_then(|d| serde_json::from_str::<Value>(&d).ok()) {
                delta_text(&v, &mut text);
            }
        }
        text
    }

    /// Usage for a stream that did not end normally: the reported counts, or
    /// where larger, the streamed text's tokens and the prompt estimate.
    pub fn usage_at_least(&self, prompt_estimate: u64) -> Usage {
        let counted =
            super::tokens::count(&self.streamed_text()) + (self.deltas_overflow / 4) as u64;
        Usage {
            prompt: if self.usage.prompt == 0 {
                prompt_estimate
            } else {
                self.usage.prompt
            },
            completion: self.usage.completion.max(counted),
        }
    }

    fn inspect(&mut self, event: &Bytes) -> bool {
        let has_usage = has_value(event, b"\"usage\"")
            || has_value(event, b"\"usageMetadata\"")
            || memchr::memmem::find(event, b"billed_units").is_some();
        let has_delta = memchr::memmem::find(event, b"delta").is_some()
            || memchr::memmem::find(event, b"\"text\"").is_some();
        if has_delta {
            if self.deltas_len + event.len() <= MAX_TAP_TEXT {
                self.deltas_len += event.len();
                self.deltas.push(event.clone());
            } else {
                self.deltas_overflow += event.len();
            }
        }
        if !has_usage {
            return true;
        }
        // A JSON line (Cohere v1's `application/stream+json`) is its own data.
        let Some(data) = event_data(event).or_else(|| {
            let t = std::str::from_utf8(event).ok()?.trim();
            t.starts_with('{').then(|| t.to_string())
        }) else {
            return true;
        };
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return true;
        };
        if let Some(u) = Usage::from_json(&v) {
            self.usage.merge(u);
            self.saw_usage = true;
            if self.hide_usage_chunk
                && v.get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(|c| c.is_empty())
            {
                return false;
            }
        }
        true
    }

    /// Feed a chunk; answers the bytes to forward now (complete events only).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let events = self.splitter.push(chunk);
        let mut out = BytesMut::new();
        for e in events {
            if self.inspect(&e) {
                out.extend_from_slice(&e);
            }
        }
        out.freeze()
    }

    /// Flush the unterminated tail at the end of the stream.
    pub fn finish(&mut self) -> Bytes {
        match self.splitter.rest() {
            Some(e) if self.inspect(&e) => e,
            _ => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_usage_shape() {
        let openai = serde_json::json!({"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}});
        assert_eq!(
            Usage::from_json(&openai),
            Some(Usage {
                prompt: 5,
                completion: 7
            })
        );
        let anth = serde_json::json!({"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1, "cache_read_input_tokens": 1}}});
        assert_eq!(
            Usage::from_json(&anth),
            Some(Usage {
                prompt: 10,
                completion: 1
            })
        );
        let resp = serde_json::json!({"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 4}}});
        assert_eq!(
            Usage::from_json(&resp),
            Some(Usage {
                prompt: 3,
                completion: 4
            })
        );
        assert_eq!(Usage::from_json(&serde_json::json!({"usage": null})), None);
        let answer = br#"{"id":"x","choices":[{"message":{"content":"usage: lots"}}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;
        assert_eq!(
            Usage::from_answer(answer),
            Some(Usage {
                prompt: 5,
                completion: 7
            })
        );
        let gemini =
            br#"{"candidates":[],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4}}"#;
        assert_eq!(
            Usage::from_answer(gemini),
            Some(Usage {
                prompt: 3,
                completion: 4
            })
        );
        let cohere =
            br#"{"text":"hi","meta":{"billed_units":{"input_tokens":2,"output_tokens":1}}}"#;
        assert_eq!(
            Usage::from_answer(cohere),
            Some(Usage {
                prompt: 2,
                completion: 1
            })
        );
        assert_eq!(Usage::from_answer(b"not json"), None);
        assert_eq!(
            Usage::from_json(&serde_json::json!({"input_tokens": 11})),
            None,
            "count_tokens is not usage"
        );
    }

    #[test]
    fn reads_cohere_and_gemini_usage() {
        let g = serde_json::json!({"candidates": [], "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, "thoughtsTokenCount": 2, "totalTokenCount": 12}});
        assert_eq!(
            Usage::from_json(&g),
            Some(Usage {
                prompt: 7,
                completion: 5
            })
        );
        let v2 = serde_json::json!({"usage": {"billed_units": {"input_tokens": 4, "output_tokens": 6}, "tokens": {"input_tokens": 70, "output_tokens": 6}}});
        assert_eq!(
            Usage::from_json(&v2),
            Some(Usage {
                prompt: 4,
                completion: 6
            })
        );
        let end = serde_json::json!({"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {"billed_units": {"input_tokens": 2, "output_tokens": 9}}}});
        assert_eq!(
            Usage::from_json(&end),
            Some(Usage {
                prompt: 2,
                completion: 9
            })
        );
        let v1 = serde_json::json!({"text": "x", "meta": {"billed_units": {"input_tokens": 3, "output_tokens": 1}}});
        assert_eq!(
            Usage::from_json(&v1),
            Some(Usage {
                prompt: 3,
                completion: 1
            })
        );
        let rerank =
            serde_json::json!({"results": [], "meta": {"billed_units": {"search_units": 1}}});
        assert_eq!(Usage::from_json(&rerank), Some(Usage::default()));
    }

    #[test]
    fn taps_json_lines() {
        let mut tap = SseTap::json_lines();
        let a = tap.push(b"{\"event_type\":\"text-generation\",\"text\":\"ab\"}\n{\"event_type\":\"stream-end\",\"response\":{\"meta\":{\"billed_units\":{\"input_tokens\":4,");
        assert_eq!(
            &a[..],
            b"{\"event_type\":\"text-generation\",\"text\":\"ab\"}\n"
        );
        let b = tap.push(b"\"output_tokens\":1}}}}\n");
        assert!(b.ends_with(b"}}}}\n"));
        assert_eq!(tap.streamed_text(), "ab");
        assert_eq!(
            tap.usage,
            Usage {
                prompt: 4,
                completion: 1
            }
        );
    }

    #[test]
    fn taps_gemini_and_cohere_streams() {
        let mut tap = SseTap::new(false);
        tap.push(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hi \"}]}}],\"usageMetadata\":{\"promptTokenCount\":5}}\r\n\r\n");
        tap.push(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"there\"}]}}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":2}}\r\n\r\n");
        assert_eq!(
            tap.usage,
            Usage {
                prompt: 5,
                completion: 2
            }
        );
        assert_eq!(tap.streamed_text(), "hi there");
        let mut tap = SseTap::new(false);
        tap.push(b"event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"yo\"}}}}\n\n");
        tap.push(b"event: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":3,\"output_tokens\":1},\"tokens\":{\"input_tokens\":60,\"output_tokens\":1}}}}\n\n");
        assert_eq!(tap.streamed_text(), "yo");
        assert_eq!(
            tap.usage,
            Usage {
                prompt: 3,
                completion: 1
            }
        );
    }

    #[test]
    fn splits_events_across_chunks_and_hides_usage_chunk() {
        let mut tap = SseTap::new(true);
        let a = tap
            .push(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\nda");
        assert_eq!(
            &a[..],
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n"
        );
        let b = tap.push(b"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        assert_eq!(&b[..], b"data: [DONE]\n\n");
        assert_eq!(
            tap.usage,
            Usage {
                prompt: 3,
                completion: 2
            }
        );
        assert!(tap.finish().is_empty());
    }

    #[test]
    fn anthropic_stream_usage_is_cumulative() {
        let mut tap = SseTap::new(false);
        let body = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        let out = tap.push(body.as_bytes());
        assert_eq!(out.len(), body.len());
        assert_eq!(
            tap.usage,
            Usage {
                prompt: 25,
                completion: 15
            }
        );
    }
}
