//! Key format, checksum, hashing and scope matching. Pure: no I/O.
//!
//! A key is `bsr_` (or `bsra_` for admin keys), then 30 random base62
//! characters, then 6 base62 characters of the CRC32 of those 30, so a scanner
//! can tell a real key from noise offline. Only the SHA-256 of a key is stored.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const KEY_PREFIX: &str = "bsr_";
pub const ADMIN_PREFIX: &str = "bsra_";
const RANDOM_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A SHA-256 digest of a key secret.
pub type KeyHash = [u8; 32];

fn base62_fixed(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn checksum(random: &str) -> String {
    base62_fixed(u64::from(crc32fast::hash(random.as_bytes())), CHECKSUM_LEN)
}

/// Generate a new secret with the given prefix (`bsr_` or `bsra_`).
pub fn generate(prefix: &str) -> String {
    let mut rng = rand::rng();
    let random: String = (0..RANDOM_LEN)
        .map(|_| BASE62[rng.random_range(0..62)] as char)
        .collect();
    let sum = checksum(&random);
    format!("{prefix}{random}{sum}")
}

/// Whether `secret` has the key shape for `prefix` and a valid checksum.
pub fn is_well_formed(secret: &str, prefix: &str) -> bool {
    let Some(body) = secret.strip_prefix(prefix) else {
        return false;
    };
    if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (random, sum) = body.split_at(RANDOM_LEN);
    checksum(random).as_bytes().ct_eq(sum.as_bytes()).into()
}

pub fn hash(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn hash_hex(secret: &str) -> String {
    hex::encode(hash(secret))
}

/// Constant-time equality of two digests.
pub fn hashes_equal(a: &KeyHash, b: &KeyHash) -> bool {
    a.ct_eq(b).into()
}

/// The displayable prefix of a key: its type prefix and the first four random characters.
pub fn display_prefix(secret: &str) -> String {
    let cut = secret
        .find('_')
        .map(|i| i + 5)
        .unwrap_or(8)
        .min(secret.len());
    secret[..cut].to_string()
}

/// Every well-formed `bsr_` key inside `text` (for leak scanning).
pub fn find_keys(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let total = KEY_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
    for (i, _) in text.match_indices(KEY_PREFIX) {
        if let Some(candidate) = text.get(i..i + total)
            && is_well_formed(candidate, KEY_PREFIX)
        {
            out.push(candidate.to_string());
        }
    }
    out
}

/// Whether `name` matches any of the glob `patterns` (`*` and `?`). An empty
/// list means "no restriction".
pub fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| wildmatch::WildMatch::new(p).matches(name))
}

/// Whether every name matched by glob `child` is matched by some glob in
/// `parent`. Conservative: a literal child is covered by any parent pattern
/// that matches it; a child with wildcards only by `*`, by an identical
/// pattern, or by a `prefix*` parent whose prefix the child starts with.
pub fn glob_covered(parent: &[String], child: &str) -> bool {
    let wild = |s: &str| s.contains('*') || s.contains('?');
    parent.is_empty()
        || parent.iter().any(|p| {
            if !wild(child) {
                return wildmatch::WildMatch::new(p).matches(child);
            }
            if p == "*" || p == child {
                return true;
            }
            match p.strip_suffix('*') {
                Some(prefix) if !wild(prefix) => child.starts_with(prefix),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed() {
        for _ in 0..200 {
            let k = generate(KEY_PREFIX);
            assert_eq!(k.len(), 40);
            assert!(is_well_formed(&k, KEY_PREFIX), "{k}");
            assert!(!is_well_formed(&k, ADMIN_PREFIX));
            let a = generate(ADMIN_PREFIX);
            assert!(is_well_formed(&a, ADMIN_PREFIX));
        }
    }

    #[test]
    fn checksum_catches_a_changed_character() {
        let k = generate(KEY_PREFIX);
        let mut bytes = k.into_bytes();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        let k2 = String::from_utf8(bytes).unwrap();
        assert!(!is_well_formed(&k2, KEY_PREFIX));
        assert!(!is_well_formed("bsr_short", KEY_PREFIX));
        assert!(!is_well_formed("sk-abcdef", KEY_PREFIX));
    }

    #[test]
    fn prefix_and_hash() {
        let k = generate(KEY_PREFIX);
        assert_eq!(display_prefix(&k).len(), 8);
        assert!(k.starts_with(&display_prefix(&k)));
        assert!(hashes_equal(&hash(&k), &hash(&k)));
        assert!(!hashes_equal(&hash(&k), &hash("x")));
        assert_eq!(hash_hex(&k).len(), 64);
    }

    #[test]
    fn finds_keys_in_text() {
        let k = generate(KEY_PREFIX);
        let text = format!("leaked: {k} and bsr_notakey0000000000000000000000000000 end");
        assert_eq!(find_keys(&text), vec![k]);
    }

    #[test]
    fn globs() {
        let p = vec!["gpt-4o-mini".to_string(), "claude-*".to_string()];
        assert!(matches_any(&p, "gpt-4o-mini"));
        assert!(matches_any(&p, "claude-sonnet-4-5"));
        assert!(!matches_any(&p, "gpt-4o"));
        assert!(matches_any(&[], "anything"));
        let parent = vec!["g?t-*".to_string(), "claude-*".to_string()];
        assert!(
            !glob_covered(&parent, "g*t-*"),
            "a wider wildcard is not covered"
        );
        assert!(glob_covered(&parent, "gpt-4o"));
        assert!(glob_covered(&parent, "claude-sonnet-*"));
        assert!(!glob_covered(&parent, "claude*"));
    }
}

pub mod spec;
