//! The data plane's one error type, mapped to the contract's status/type
//! table in one place and rendered in each surface's own shape.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Which error body shape a surface speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    OpenAi,
    Anthropic,
    /// Cohere: `{"message": ...}` (plus bursar's `type`).
    Cohere,
    /// Google (Gemini API, Vertex AI): `{"error": {"code", "message", "status"}}`.
    Google,
    /// Vectara: `{"messages": [...]}` (plus bursar's `type`).
    Vectara,
}

/// Google's canonical status name for an HTTP status.
fn google_status(code: u16) -> &'static str {
    match code {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// The contract's stable type (`invalid_api_key`, `permission_denied`, …).
    pub kind: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// The upstream's own error body (already scrubbed), for upstream errors.
    pub upstream: Option<serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
            upstream: None,
        }
    }
    pub fn invalid_key(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
    }
    pub fn denied(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "permission_denied", message)
    }
    pub fn blocked(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "request_blocked", message)
    }
    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn too_large(limit: usize) -> ApiError {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("request body is larger than the gateway's limit of {limit} bytes"),
        )
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn model_not_found(model: &str) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("the model '{model}' does not exist or no configured provider serves it"),
        )
    }
    pub fn rate_limited(message: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            message,
        )
    }
    pub fn budget_exceeded(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "budget_exceeded", message)
    }
    pub fn upstream_error(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
    }
    pub fn upstream_timeout(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    pub fn body(&self, shape: Shape) -> serde_json::Value {
        let mut v = match shape {
            Shape::OpenAi => json!({
                "error": {"message": self.message, "type": self.kind, "param": null, "code": self.kind}
            }),
            Shape::Anthropic => json!({
                "type": "error",
                "error": {"type": self.kind, "message": self.message}
            }),
            Shape::Cohere => json!({"message": self.message, "type": self.kind}),
            Shape::Google => json!({
                "error": {
                    "code": self.status.as_u16(),
                    "message": self.message,
                    "status": google_status(self.status.as_u16()),
                    "type": self.kind,
                    "details": [{
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": self.kind,
                        "domain": "bursar"
                    }]
                }
            }),
            Shape::Vectara => json!({"messages": [self.message], "type": self.kind}),
        };
        if let Some(up) = &self.upstream {
            match v.get_mut("error").and_then(|e| e.as_object_mut()) {
                Some(e) => {
                    e.insert("upstream".into(), up.clone());
                }
                None => {
                    if let Some(o) = v.as_object_mut() {
                        o.insert("upstream".into(), up.clone());
                    }
                }
            }
        }
        v
    }

    pub fn render(&self, shape: Shape) -> Response {
        let mut resp = (self.status, axum::Json(self.body(shape))).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert("retry-after", v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_carries_a_stable_type() {
        let e = ApiError::invalid_key("nope");
        assert_eq!(e.body(Shape::OpenAi)["error"]["type"], "invalid_api_key");
        assert_eq!(e.body(Shape::Anthropic)["error"]["type"], "invalid_api_key");
        assert_eq!(e.body(Shape::Cohere)["type"], "invalid_api_key");
        assert_eq!(e.body(Shape::Cohere)["message"], "nope");
        let g = e.body(Shape::Google);
        assert_eq!(g["error"]["code"], 401);
        assert_eq!(g["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(g["error"]["type"], "invalid_api_key");
        assert_eq!(g["error"]["details"][0]["reason"], "invalid_api_key");
        assert_eq!(
            ApiError::budget_exceeded("x").body(Shape::Google)["error"]["status"],
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(e.body(Shape::Vectara)["messages"][0], "nope");
    }
}
