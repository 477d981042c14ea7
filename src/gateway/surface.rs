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
    /// The native provider's kind (`None` on the OpenAI surface).
    pub kind: Option<Kind>,
    /// The path after the surface prefix, e.g. `v1/chat/completions`.
    pub rest: String,
}

/// What a request's path says: the endpoint's scope name, and for kinds
/// that name the model in the path (Gemini, Vertex AI, Azure deployments,
/// Hugging Face models) the model and whether it streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathFacts {
    pub endpoint: &'static str,
    pub model: Option<String>,
    pub stream: bool,
}

impl PathFacts {
    fn of(endpoint: &'static str) -> PathFacts {
        PathFacts {
            endpoint,
            model: None,
            stream: false,
        }
    }
}

/// The shape a kind's errors and listings take.
pub fn shape_of(kind: Kind) -> Shape {
    match kind {
        Kind::Anthropic => Shape::Anthropic,
        Kind::OpenAi | Kind::Azure | Kind::HuggingFace => Shape::OpenAi,
        Kind::Cohere => Shape::Cohere,
        Kind::Gemini | Kind::Vertex => Shape::Google,
        Kind::Vectara => Shape::Vectara,
    }
}

/// `…/models/{model}:{method}` (Gemini API, Vertex AI) → (model, method).
fn google_model_method(rest: &str) -> Option<(&str, &str)> {
    let i = rest.rfind("models/")?;
    let tail = &rest[i + "models/".len()..];
    let (model, method) = tail.split_once(':')?;
    (!model.is_empty() && !model.contains('/')).then_some((model, method))
}

/// The facts a native path gives for a provider of `kind`.
pub fn path_facts(kind: Option<Kind>, rest: &str) -> PathFacts {
    let Some(kind) = kind else {
        return PathFacts::of(endpoint_of(rest));
    };
    match kind {
        Kind::OpenAi | Kind::Anthropic => PathFacts::of(endpoint_of(rest)),
        Kind::Cohere => {
            let p = rest
                .strip_prefix("v1/")
                .or_else(|| rest.strip_prefix("v2/"))
                .unwrap_or(rest);
            PathFacts::of(match p.split('/').next().unwrap_or("") {
                "chat" => "chat",
                "generate" => "completions",
                "embed" => "embeddings",
                "rerank" => "rerank",
                "models" => "models",
                _ => "other",
            })
        }
        Kind::Gemini | Kind::Vertex => match google_model_method(rest) {
            Some((model, method)) => PathFacts {
                endpoint: match method {
                    "generateContent" | "streamGenerateContent" => "chat",
                    "countTokens" => "count_tokens",
                    "embedContent" | "batchEmbedContents" => "embeddings",
                    _ => "other",
                },
                model: Some(model.to_string()),
                stream: method == "streamGenerateContent",
            },
            None if rest.ends_with("/models") || rest.contains("/models/") => {
                PathFacts::of("models")
            }
            None => PathFacts::of("other"),
        },
        Kind::Azure => {
            // openai/deployments/{deployment}/chat/completions
            if let Some(tail) = rest.strip_prefix("openai/deployments/")
                && let Some((deployment, path)) = tail.split_once('/')
            {
                return PathFacts {
                    endpoint: endpoint_of(path),
                    model: Some(deployment.to_string()),
                    stream: false,
                };
            }
            PathFacts::of(endpoint_of(rest.strip_prefix("openai/").unwrap_or(rest)))
        }
        Kind::HuggingFace => {
            // {provider}/models/{org/model}/pipeline/{task} or models/{org/model}
            if let Some(i) = rest.find("models/")
                && (i == 0 || rest[..i].ends_with('/'))
                && !rest[..i].contains("v1/")
            {
                let tail = &rest[i + "models/".len()..];
                let (model, task) = match tail.split_once("/pipeline/") {
                    Some((m, t)) => (m, Some(t)),
                    None => (tail, None),
                };
                let endpoint = match task {
                    Some("feature-extraction") | Some("sentence-similarity") => "embeddings",
                    _ => "inference",
                };
                return PathFacts {
                    endpoint,
                    model: (!model.is_empty()).then(|| model.trim_end_matches('/').to_string()),
                    stream: false,
                };
            }
            // v1/chat/completions or {provider}/v1/chat/completions
            let p = match rest.find("v1/") {
                Some(i) => &rest[i..],
                None => rest,
            };
            PathFacts::of(endpoint_of(p))
        }
        Kind::Vectara => {
            let p = rest.strip_prefix("v2/").unwrap_or(rest);
            let segs: Vec<&str> = p.split('/').collect();
            PathFacts::of(match segs.as_slice() {
                ["query"] => "query",
                ["corpora", _, "query"] => "query",
                ["chats"] | ["chats", _, "turns"] => "chat",
                ["corpora", ..] => "corpora",
                _ => "other",
            })
        }
    }
}

impl Surface {
    pub fn classify(app: &App, path: &str) -> Option<Surface> {
        let trimmed = path.trim_start_matches('/');
        let (first, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        if first == "v1" {
            return Some(Surface {
                shape: Shape::OpenAi,
                native: None,
                kind: None,
                rest: trimmed.to_string(),
            });
        }
        let kind = match app.registry.get(first) {
            Some(p) => p.kind,
            // These native surfaces exist even unconfigured: `echo` answers there.
            None => match first {
                "openai" => Kind::OpenAi,
                "anthropic" => Kind::Anthropic,
                "cohere" => Kind::Cohere,
                "gemini" => Kind::Gemini,
                _ => return None,
            },
        };
        Some(Surface {
            shape: shape_of(kind),
            native: Some(first.to_string()),
            kind: Some(kind),
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
/// `messages`; a key with `chat` may count tokens too, see `proxy`).
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
        "chat" | "completions" | "embeddings" | "responses" | "messages" | "rerank"
    )
}

/// The echo model's name for an endpoint path, if it serves it.
///
/// Each surface's echo answers only its own shape's names: Cohere's chat is
/// `chat_v2` / `chat_v1`, Google's are the method names after
/// `models/{model}:` (`generateContent`, `streamGenerateContent`,
/// `countTokens`).
pub fn echo_endpoint(rest: &str) -> Option<&'static str> {
    match rest {
        "v2/chat" => return Some("chat_v2"),
        "v1/chat" => return Some("chat_v1"),
        _ => {}
    }
    if let Some((_, method)) = google_model_method(rest) {
        return match method {
            "generateContent" => Some("generateContent"),
            "streamGenerateContent" => Some("streamGenerateContent"),
            "countTokens" => Some("countTokens"),
            _ => None,
        };
    }
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

    #[test]
    fn native_paths_name_endpoint_and_model() {
        let f = path_facts(Some(Kind::Cohere), "v2/chat");
        assert_eq!((f.endpoint, f.model), ("chat", None));
        assert_eq!(
            path_facts(Some(Kind::Cohere), "v1/embed").endpoint,
            "embeddings"
        );
        assert_eq!(
            path_facts(Some(Kind::Cohere), "v1/rerank").endpoint,
            "rerank"
        );
        let f = path_facts(
            Some(Kind::Gemini),
            "v1beta/models/gemini-2.5-flash:streamGenerateContent",
        );
        assert_eq!(
            f,
            PathFacts {
                endpoint: "chat",
                model: Some("gemini-2.5-flash".into()),
                stream: true
            }
        );
        let f = path_facts(Some(Kind::Gemini), "v1/models/m:countTokens");
        assert_eq!(
            (f.endpoint, f.model.as_deref()),
            ("count_tokens", Some("m"))
        );
        assert_eq!(
            path_facts(Some(Kind::Gemini), "v1beta/models/m:batchEmbedContents").endpoint,
            "embeddings"
        );
        assert_eq!(
            path_facts(Some(Kind::Gemini), "v1beta/models").endpoint,
            "models"
        );
        let f = path_facts(
            Some(Kind::Vertex),
            "v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
        );
        assert_eq!(f.model.as_deref(), Some("gemini-2.5-pro"));
        let f = path_facts(
            Some(Kind::Azure),
            "openai/deployments/gpt-4o-mini/chat/completions",
        );
        assert_eq!(
            (f.endpoint, f.model.as_deref()),
            ("chat", Some("gpt-4o-mini"))
        );
        let f = path_facts(
            Some(Kind::HuggingFace),
            "hf-inference/models/BAAI/bge-small-en-v1.5/pipeline/feature-extraction",
        );
        assert_eq!(
            (f.endpoint, f.model.as_deref()),
            ("embeddings", Some("BAAI/bge-small-en-v1.5"))
        );
        let f = path_facts(Some(Kind::HuggingFace), "models/gpt2");
        assert_eq!(
            (f.endpoint, f.model.as_deref()),
            ("inference", Some("gpt2"))
        );
        assert_eq!(
            path_facts(Some(Kind::HuggingFace), "v1/chat/completions").endpoint,
            "chat"
        );
        assert_eq!(
            path_facts(Some(Kind::HuggingFace), "together/v1/chat/completions").endpoint,
            "chat"
        );
        assert_eq!(
            path_facts(Some(Kind::Vectara), "v2/query").endpoint,
            "query"
        );
        assert_eq!(
            path_facts(Some(Kind::Vectara), "v2/corpora/abc/query").endpoint,
            "query"
        );
        assert_eq!(path_facts(Some(Kind::Vectara), "v2/chats").endpoint, "chat");
    }
}
