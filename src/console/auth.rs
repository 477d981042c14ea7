//! Console sign-in: argon2id passwords, random session and invite tokens
//! (stored as SHA-256 only), per-session CSRF tokens, cookies and the
//! sign-in rate limiter. The pure parts are unit-tested here.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

/// The session cookie (HttpOnly, SameSite=Strict, Path=/console).
pub const SESSION_COOKIE: &str = "bursar_session";
/// A random value set on the sign-in and invite forms and echoed in a hidden
/// field: a cross-site form post carries neither (login CSRF).
pub const FORM_COOKIE: &str = "bursar_form";
/// How long a session lasts from sign-in.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
/// How long an invite link is valid.
pub const INVITE_TTL_MS: i64 = 7 * 86_400 * 1000;
/// Failed sign-ins allowed per account in the window.
pub const MAX_FAILURES: usize = 5;
/// Failed sign-ins allowed per IP address in the window (higher: many
/// people may share one address behind a NAT or proxy).
pub const MAX_FAILURES_PER_IP: usize = 20;
pub const FAILURE_WINDOW_MS: i64 = 15 * 60 * 1000;
pub const MIN_PASSWORD_CHARS: usize = 10;
pub const MAX_PASSWORD_BYTES: usize = 256;

/// 32 random bytes, URL-safe base64 (43 characters).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// What is stored of a session or invite token.
pub fn token_hash(token: &str) -> String {
    crate::keys::hash_hex(token)
}

/// Whether a string can be a token we issued (before any database lookup).
pub fn token_shaped(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn hasher() -> Argon2<'static> {
    // OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The argon2id PHC string of a password (random 16-byte salt).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("password hash: {e}"))
}

/// Check a password against a stored PHC string (constant time in the hash).
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the account does not exist, so that an
/// unknown name takes as long as a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// Why a new password is not acceptable, if it is not.
pub fn password_problem(password: &str, account: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Some(format!(
            "The password must have at least {MIN_PASSWORD_CHARS} characters."
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Some(format!(
            "The password must have at most {MAX_PASSWORD_BYTES} bytes."
        ));
    }
    if password.eq_ignore_ascii_case(account) {
        return Some("The password must not be the account name.".into());
    }
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 4 {
        return Some("The password is too repetitive; use more different characters.".into());
    }
    None
}

/// Constant-time equality of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of a cookie in a request's `Cookie` headers.
pub fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// A `Set-Cookie` value for the console: HttpOnly, SameSite=Strict,
/// Path=/console, `Secure` behind HTTPS. `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/console; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Sign-in rate limiting: at most `MAX_FAILURES` failures per account and
/// `MAX_FAILURES_PER_IP` per address in a sliding `FAILURE_WINDOW_MS`. In memory, per
/// process.
#[derive(Default)]
pub struct Limiter {
    failures: Mutex<HashMap<String, Vec<i64>>>,
}

/// Entries kept before expired ones are pruned.
const LIMITER_PRUNE_AT: usize = 10_000;

impl Limiter {
    /// Seconds until another attempt is allowed, when any key is blocked.
    pub fn retry_after(&self, keys: &[String], now: i64) -> Option<i64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait: Option<i64> = None;
        for k in keys {
            if let Some(times) = map.get(k) {
                let recent: Vec<i64> = times
                    .iter()
                    .copied()
                    .filter(|t| now - t < FAILURE_WINDOW_MS)
                    .collect();
                let max = if k.starts_with("ip:") {
                    MAX_FAILURES_PER_IP
                } else {
                    MAX_FAILURES
                };
                if recent.len() >= max {
                    // Free again when enough of the recent failures age out.
                    let idx = recent.len() - max;
                    let until = recent[idx] + FAILURE_WINDOW_MS;
                    let secs = ((until - now) + 999) / 1000;
                    wait = Some(wait.map_or(secs, |w| w.max(secs)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, keys: &[String], now: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= LIMITER_PRUNE_AT {
            map.retain(|_, v| v.iter().any(|t| now - t < FAILURE_WINDOW_MS));
        }
        for k in keys {
            let v = map.entry(k.clone()).or_default();
            v.retain(|t| now - t < FAILURE_WINDOW_MS);
            v.push(now);
            // Never more than the window needs.
            if v.len() > MAX_FAILURES_PER_IP * 2 {
                let cut = v.len() - MAX_FAILURES_PER_IP * 2;
                v.drain(..cut);
            }
        }
    }

    /// A successful sign-in clears the account's failures (not the IP's).
    pub fn succeeded(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}

/// Limiter keys of a sign-in attempt.
pub fn limiter_keys(ip: &str, account: &str) -> Vec<String> {
    vec![
        format!("ip:{ip}"),
        format!("account:{}", account.to_ascii_lowercase()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse battery "));
        assert!(!verify_password("not a phc string", "x"));
        // Random salts: the same password hashes differently.
        assert_ne!(h, hash_password("correct horse battery").unwrap());
        assert!(!verify_password(dummy_hash(), "anything"));
    }

    #[test]
    fn password_policy() {
        assert!(password_problem("short", "a").unwrap().contains("at least"));
        assert!(
            password_problem("aaaaaaaaaaaa", "a")
                .unwrap()
                .contains("repetitive")
        );
        assert!(password_problem("alice-the-admin", "Alice-The-Admin").is_some());
        assert!(
            password_problem(&"ab1!".repeat(100), "a")
                .unwrap()
                .contains("at most")
        );
        assert_eq!(password_problem("a fine passphrase", "alice"), None);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(token_shaped(&a), "{a}");
        assert!(!token_shaped("short"));
        assert!(!token_shaped(&format!("{}!", &a[..42])));
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }

    #[test]
    fn csrf_compare() {
        let t = new_token();
        assert!(same_token(&t, &t.clone()));
        assert!(!same_token(&t, &new_token()));
        assert!(!same_token("", ""));
        assert!(!same_token(&t, &t[..10]));
    }

    #[test]
    fn cookies_parse_and_are_strict() {
        let mut h = http::HeaderMap::new();
        h.append("cookie", "a=1; bursar_session=abc ; c=3".parse().unwrap());
        h.append("cookie", "d=4".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "d").as_deref(), Some("4"));
        assert_eq!(cookie(&h, "bursar"), None);
        let c = set_cookie(SESSION_COOKIE, "v", 60, false);
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/console")
        );
        assert!(!c.contains("Secure"));
        assert!(set_cookie(SESSION_COOKIE, "v", 60, true).ends_with("; Secure"));
    }

    #[test]
    fn limiter_blocks_an_account_after_five_failures() {
        let l = Limiter::default();
        let now = 1_000_000_000;
        let keys = limiter_keys("10.0.0.1", "Alice");
        for i in 0..MAX_FAILURES as i64 {
            assert_eq!(l.retry_after(&keys, now + i), None);
            l.failed(&keys, now + i);
        }
        let wait = l.retry_after(&keys, now + 10).unwrap();
        assert!(wait > 14 * 60 && wait <= 15 * 60, "{wait}");
        // The account is blocked from any address; the address not yet for others.
        assert!(
            l.retry_after(&limiter_keys("10.0.0.2", "alice"), now + 10)
                .is_some()
        );
        assert!(
            l.retry_after(&limiter_keys("10.0.0.1", "bob"), now + 10)
                .is_none()
        );
        // After the window it is free again.
        assert_eq!(l.retry_after(&keys, now + FAILURE_WINDOW_MS + 10), None);
        // A success clears the account.
        l.succeeded("account:alice");
        assert!(
            l.retry_after(&limiter_keys("10.0.0.2", "alice"), now + 10)
                .is_none()
        );
    }

    #[test]
    fn limiter_blocks_an_address_trying_many_accounts() {
        let l = Limiter::default();
        let now = 1_000_000_000;
        for i in 0..MAX_FAILURES_PER_IP as i64 {
            let keys = limiter_keys("10.0.0.9", &format!("user{i}"));
            assert_eq!(l.retry_after(&keys, now + i), None);
            l.failed(&keys, now + i);
        }
        assert!(
            l.retry_after(&limiter_keys("10.0.0.9", "fresh"), now + 30)
                .is_some()
        );
        assert!(
            l.retry_after(&limiter_keys("10.0.0.8", "fresh"), now + 30)
                .is_none()
        );
    }
}
