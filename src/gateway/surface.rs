//! Which surface a path belongs to, the client's credential and address,
//! endpoint names, and header hygiene in both directions.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};

use super::App;
use super::error::Shape;
use crate::providers::Kind;

/// A request's surface: the shape it speaks and, for a native surface, the
/// provider entry it names.
#[derive(Clone, Debug)]
pub struct Surface {
    pub shape: Shape,
    pub native: Option<String>,
    /// The path after the surface prefix, e.g. `v1/chat/completions`.
    pub rest: String,
}

impl Surface {
    pub fn classify(app: &App, path: &str) -> Option<Surface> {
        let trimmed = path.trim_start_matches('/');
        let (first, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        if first == "v1" {
            return Some(Surface {
                shape: Shape::OpenAi,
                native: None,
                rest: trimmed.to_string(),
            });
        }
        let kind = match app.registry.get(first) {
            Some(p) => p.kind,
            // The two native surfaces exist even unconfigured: `echo` answers there.
            None => match first {
                "openai" => Kind::OpenAi,
                "anthropic" => Kind::Anthropic,
                _ => return None,
            },
        };
        Some(Surface {
            shape: match kind {
                Kind::Anthropic => Shape::Anthropic,
                Kind::OpenAi => Shape::OpenAi,
            },
            native: Some(first.to_string()),
            rest: rest.to_string(),
        })
    }
}

/// The scope name of an endpoint path such as `v1/chat/completions`.
pub fn endpoint_of(rest: &str) -> &'static str {
    let p = rest.strip_prefix("v1/").unwrap_or(rest);
    let p = p.strip_prefix("openai/").unwrap_or(p);
    if p == "messages/count_tokens" {
        return "count_tokens";
    }
    let first = p.split('/').next().unwrap_or("");
    match first {
        "chat" => "chat",
        "completions" => "completions",
        "embeddings" => "embeddings",
        "responses" => "responses",
        "models" => "models",
        "messages" => "messages",
        "images" => "images",
        "audio" => "audio",
        "files" | "uploads" => "files",
        "batches" => "batches",
        "moderations" => "moderations",
        "fine_tuning" | "fine-tunes" => "fine_tuning",
        "assistants" | "threads" => "assistants",
        "vector_stores" => "vector_stores",
        "realtime" => "realtime",
        _ => "other",
    }
}

/// The scope name an endpoint is authorized under (counting tokens is part of
/// `messages`).
pub fn scope_name(endpoint: &str) -> &str {
    match endpoint {
        "count_tokens" => "messages",
        e => e,
    }
}

/// Endpoints whose answers carry token usage.
pub fn is_metered(endpoint: &str) -> bool {
    matches!(
        endpoint,
        "chat" | "completions" | "embeddings" | "responses" | "messages"
    )
}

/// The echo model's name for an endpoint path, if it serves it.
pub fn echo_endpoint(rest: &str) -> Option<&'static str> {
    let p = rest.strip_prefix("v1/").unwrap_or(rest);
    Some(match p {
        "chat/completions" => "chat",
        "completions" => "completions",
        "embeddings" => "embeddings",
        "responses" => "responses",
        "messages" => "messages",
        "messages/count_tokens" => "count_tokens",
        _ => return None,
    })
}

/// The virtual key the client presented, in whichever header its SDK uses.
pub fn credential<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v)
            .trim();
        if !token.is_empty() {
            return Some(token);
        }
    }
    for h in ["x-api-key", "api-key", "x-goog-api-key"] {
        if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()).map(str::trim)
            && !v.is_empty()
        {
            return Some(v);
        }
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("key="))
        .filter(|k| !k.is_empty())
}

/// The query string without a client credential (`key=`).
pub fn strip_key_param(query: Option<&str>) -> Option<String> {
    let q = query?;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| !kv.starts_with("key=") && !kv.is_empty())
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("&"))
    }
}

/// The client's address: the socket peer, or the first untrusted address in
/// `X-Forwarded-For` (read right to left) when the peer is a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer_ip = peer.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let Some(xff) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) else {
        return peer_ip;
    };
    let mut last = peer_ip;
    for part in xff.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => last = ip,
            Ok(ip) => return ip,
            Err(_) => return last,
        }
    }
    last
}

const CLIENT_HEADERS_DROPPED: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "accept-encoding",
    "cookie",
    "openai-organization",
    "openai-project",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
];

const UPSTREAM_HEADERS_DROPPED: &[&str] = &[
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
    "x-request-id",
    "request-id",
    "alt-svc",
    "server",
    "date",
];

/// Headers of the client's request that go upstream.
pub fn upstream_request_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (n, v) in headers {
        if !CLIENT_HEADERS_DROPPED.contains(&n.as_str()) {
            out.append(n.clone(), v.clone());
        }
    }
    out
}

/// Headers of the upstream's answer that go to the client (values scrubbed
/// of real keys); the upstream's request id is kept as `x-upstream-request-id`.
pub fn client_response_headers(app: &App, headers: &reqwest::header::HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 3);
    for (n, v) in headers {
        let name = n.as_str();
        if name == "x-request-id" || name == "request-id" {
            out.insert(HeaderName::from_static("x-upstream-request-id"), v.clone());
            continue;
        }
        if UPSTREAM_HEADERS_DROPPED.contains(&name) {
            continue;
        }
        match v.to_str() {
            Ok(s) if app.registry.scrubber.is_active() => {
                let clean = app.registry.scrubber.scrub_str(s);
                if let Ok(hv) = axum::http::HeaderValue::from_str(&clean) {
                    out.append(n.clone(), hv);
                }
            }
            _ => {
                out.append(n.clone(), v.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_credentials_in_every_header() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer bsr_x".parse().unwrap());
        assert_eq!(credential(&h, None), Some("bsr_x"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "bsr_y".parse().unwrap());
        assert_eq!(credential(&h, None), Some("bsr_y"));
        let h = HeaderMap::new();
        assert_eq!(credential(&h, Some("alt=sse&key=bsr_z")), Some("bsr_z"));
        assert_eq!(credential(&h, None), None);
        assert_eq!(
            strip_key_param(Some("alt=sse&key=bsr_z")).as_deref(),
            Some("alt=sse")
        );
        assert_eq!(strip_key_param(Some("key=bsr_z")), None);
    }

    #[test]
    fn trusts_forwarded_for_only_from_trusted_proxies() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(stranger, &h, &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &h, &[]),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn endpoint_names() {
        assert_eq!(endpoint_of("v1/chat/completions"), "chat");
        assert_eq!(endpoint_of("v1/messages/count_tokens"), "count_tokens");
        assert_eq!(scope_name("count_tokens"), "messages");
        assert!(!is_metered("count_tokens"));
        assert_eq!(endpoint_of("v1/files/abc/content"), "files");
        assert_eq!(endpoint_of("v1/whatever"), "other");
        assert_eq!(
            echo_endpoint("v1/messages/count_tokens"),
            Some("count_tokens")
        );
    }
}
