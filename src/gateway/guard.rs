//! Guardrails on what a request says: DLP (log, redact, block) and the
//! per-key anomaly baseline (log, flag, block). Modes come from the key, else
//! its user, else its team. Findings are recorded by rule name only, never
//! the matched text.

use std::net::IpAddr;

use bytes::Bytes;
use serde_json::{Value, json};

use super::App;
use super::cache::CachedKey;
use super::error::ApiError;
use super::meter::Meter;
use crate::keys::spec::{AnomalyMode, Guardrails, validate_guardrails};
use crate::policy::{Mode, Verdict};

/// The guardrail modes in force for a key.
pub fn effective(app: &App, key: &CachedKey) -> Guardrails {
    let mut g = key
        .spec
        .guardrails
        .as_ref()
        .and_then(|v| validate_guardrails(v).ok())
        .unwrap_or_default();
    for (kind, name) in [("user", &key.row.user), ("team", &key.row.team)] {
        if let Some(o) = name.as_ref().and_then(|n| app.keys.owner(kind, n))
            && let Some(og) = o
                .guardrails
                .as_ref()
                .and_then(|v| validate_guardrails(v).ok())
        {
            g.dlp = g.dlp.or(og.dlp);
            g.anomaly = g.anomaly.or(og.anomaly);
        }
    }
    g
}

fn event(app: &App, key: &CachedKey, ip: IpAddr, action: &str, detail: Value) {
    app.audit.event(
        &format!("key:{}", key.row.id),
        action,
        Some(&key.row.id),
        Some(ip.to_string()),
        detail,
    );
}

/// Apply the key's guardrails to a request body; answers the body to forward
/// (redacted where asked) or the refusal.
pub fn apply(
    app: &App,
    key: &CachedKey,
    ip: IpAddr,
    body: Bytes,
    prompt_estimate: u64,
    metered: bool,
    meter: &mut Option<Meter>,
) -> Result<Bytes, ApiError> {
    let g = effective(app, key);
    let mut body = body;
    let dlp = g.dlp.unwrap_or(Mode::Off);
    if dlp != Mode::Off && body.first() == Some(&b'{') {
        let Ok(mut json) = serde_json::from_slice::<Value>(&body) else {
            return Ok(body);
        };
        match dlp {
            Mode::Block => {
                let rules = app.dlp.scan_request(&json);
                if !rules.is_empty() {
                    event(
                        app,
                        key,
                        ip,
                        "guardrail.dlp_blocked",
                        json!({"rules": rules}),
                    );
                    return Err(ApiError::blocked(format!(
                        "the request was blocked by this key's DLP guardrail (rules: {})",
                        rules.join(", ")
                    )));
                }
            }
            Mode::Redact => {
                let rules = app.dlp.redact_request(&mut json);
                if !rules.is_empty() {
                    event(
                        app,
                        key,
                        ip,
                        "guardrail.dlp_redacted",
                        json!({"rules": rules}),
                    );
                    if let Some(m) = meter.as_mut() {
                        m.flag("dlp:redacted");
                    }
                    body = serde_json::to_vec(&json)
                        .map(Bytes::from)
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                }
            }
            Mode::Log => {
                let rules = app.dlp.scan_request(&json);
                if !rules.is_empty() {
                    tracing::warn!(key_id = %key.row.id, rules = ?rules, "DLP findings in a request");
                    event(
                        app,
                        key,
                        ip,
                        "guardrail.dlp_detected",
                        json!({"rules": rules}),
                    );
                    if let Some(m) = meter.as_mut() {
                        m.flag("dlp:detected");
                    }
                }
            }
            Mode::Off => {}
        }
    }
    let anomaly = g.anomaly.unwrap_or(AnomalyMode::Off);
    if metered && anomaly != AnomalyMode::Off {
        let verdict = app
            .anomaly
            .observe(&key.row.id, prompt_estimate, crate::util::now_ms());
        if let Verdict::Anomalous {
            reason,
            value,
            baseline,
        } = verdict
        {
            let detail = json!({"reason": reason, "value": value, "baseline": baseline});
            match anomaly {
                AnomalyMode::Log => {
                    tracing::warn!(key_id = %key.row.id, reason, value, baseline, "anomalous request")
                }
                AnomalyMode::Flag => {
                    event(app, key, ip, "guardrail.anomaly_flagged", detail);
                    if let Some(m) = meter.as_mut() {
                        m.flag(&format!("anomaly:{reason}"));
                    }
                }
                AnomalyMode::Block => {
                    event(app, key, ip, "guardrail.anomaly_blocked", detail);
                    return Err(ApiError::blocked(format!(
                        "the request was blocked as anomalous for this key ({reason} {value:.0} against a baseline of {baseline:.0})"
                    )));
                }
                AnomalyMode::Off => {}
            }
        }
    }
    Ok(body)
}
