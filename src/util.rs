//! Small shared helpers: clock, ids, time formats.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time-ordered id with a type prefix (`key_…`, `req_…`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// RFC 3339 (UTC, second precision) of epoch milliseconds.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Hex HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            hex::encode(m.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// `YYYY-MM-DD` of a day number since the epoch.
pub fn day_string(day: i64) -> String {
    rfc3339(day * 86_400_000).chars().take(10).collect()
}

/// Parse an RFC 3339 time, a `YYYY-MM-DD` date, epoch seconds, or a span
/// back from now (`7d`, `24h`, `30m`), into epoch milliseconds.
pub fn parse_time(s: &str, now_ms: i64) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    if s.len() == 10
        && let Ok(t) = OffsetDateTime::parse(&format!("{s}T00:00:00Z"), &Rfc3339)
    {
        return Some(t.unix_timestamp() * 1000);
    }
    if let Ok(secs) = s.parse::<i64>() {
        return Some(secs * 1000);
    }
    humantime::parse_duration(s)
        .ok()
        .map(|d| now_ms - d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(day_string(1), "1970-01-02");
        assert_eq!(parse_time("1970-01-02", 0), Some(86_400_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z", 0), Some(1000));
        assert_eq!(parse_time("7d", 7 * 86_400_000), Some(0));
        assert_eq!(parse_time("nonsense", 0), None);
        assert!(new_id("req") < new_id("req"));
    }
}
