//! Data-loss prevention on the user-supplied text of a request body.
//!
//! [`Dlp::new`] compiles the built-in rules and any custom regexes once; the
//! scan functions are then cheap to call per request. Every rule is a
//! linear-time regex (the `regex` crate has no backtracking) plus, for most
//! built-ins, a validator that rejects look-alikes: Luhn for cards, the
//! invalid SSN ranges, ISO 7064 mod-97 for IBANs, digit counts and neighbours
//! for phones.
//!
//! Findings never overlap. When two rules claim overlapping text the rule
//! earlier in this list wins: `private_key`, `jwt`, `api_key`,
//! `aws_access_key`, `bsr_key`, `iban`, `credit_card`, `us_ssn`, `email`,
//! `phone`, then custom rules in the order given.
//!
//! Only the texts a person or tool put into the request are scanned (see
//! [`Dlp::scan_request`]); model names, roles, ids, image data and the like
//! are never looked at or changed.

use std::collections::{BTreeMap, BTreeSet};

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde_json::Value;

/// What the gateway does with DLP findings (the lead wires this to config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No scanning.
    #[default]
    Off,
    /// Scan and record the rule names; forward unchanged.
    Log,
    /// Replace findings with `[REDACTED:<rule>]` before forwarding.
    Redact,
    /// Refuse the request when anything is found.
    Block,
}

/// An operator-supplied rule: findings are named `name`.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, Default)]
pub struct CustomRule {
    pub name: String,
    pub pattern: String,
}

/// One match in one text: byte offsets `start..end` into that text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub rule: String,
    pub start: usize,
    pub end: usize,
}

/// Accepts or rejects a regex candidate `text[start..end]`, answering the span
/// to report (which may be narrower than the candidate).
type Validator = fn(&str, usize, usize) -> Option<(usize, usize)>;

#[derive(Clone, Debug)]
struct Rule {
    name: String,
    re: Regex,
    check: Validator,
    /// The private-key rule: `re` matches the BEGIN line, the block is
    /// completed by [`Dlp::pem_blocks`].
    pem: bool,
}

/// Compiled DLP rules. Cheap to share behind an `Arc`; `Clone` copies the
/// compiled regexes' handles.
#[derive(Clone, Debug)]
pub struct Dlp {
    rules: Vec<Rule>,
    /// All rules' patterns in one set, to skip rules that cannot match.
    set: RegexSet,
    /// The END line of a private key block.
    pem_end: Regex,
    /// The base64 lines after a BEGIN line without an END (anchored).
    pem_body: Regex,
}

/// A private key block's END line is looked for at most this far after its
/// BEGIN line (the largest PEM/PGP private keys are well under this).
const PEM_MAX_BLOCK: usize = 64 * 1024;

/// ASCII word boundary: usable by the regex crate's fast DFA engines on any
/// input (a Unicode `\b` is not).
const B: &str = r"(?-u:\b)";

/// Built-in rules, in priority order. `\b` in these patterns is rewritten to
/// the ASCII boundary [`B`].
const BUILTINS: &[(&str, &str, Validator)] = &[
    // The BEGIN line; see [`Dlp::pem_blocks`] for the rest of the block.
    (
        "private_key",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
        accept,
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
        accept,
    ),
    (
        "api_key",
        concat!(
            r"\bsk-[A-Za-z0-9_-]{20,}", // OpenAI sk- / sk-proj- / sk-svcacct-, Anthropic sk-ant-
            r"|\bAIza[0-9A-Za-z_-]{35}", // Google
            r"|\bgh[pousr]_[A-Za-z0-9]{36,}", // GitHub classic tokens
            r"|\bgithub_pat_[A-Za-z0-9_]{22,}", // GitHub fine-grained
            r"|\bxox[baprs]-[A-Za-z0-9-]{10,}", // Slack
            r"|\bhf_[A-Za-z0-9]{30,}",  // Hugging Face
        ),
        check_api_key,
    ),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", accept),
    // Bursar's own keys (and admin keys): prefix + 30 random + 6 checksum base62.
    ("bsr_key", r"\bbsra?_[A-Za-z0-9]{36}\b", accept),
    (
        "iban",
        r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        check_iban,
    ),
    ("credit_card", r"\b[0-9](?:[ -]?[0-9]){12,18}\b", check_card),
    ("us_ssn", r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", check_ssn),
    (
        "email",
        r"[A-Za-z0-9_.%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b",
        check_email,
    ),
    (
        "phone",
        concat!(
            // International: +CC then digit groups separated by single spaces,
            // dots or dashes, a group possibly in parentheses.
            r"\+[1-9][0-9]{0,2}(?:[ .-]?(?:\([0-9]{1,5}\)|[0-9]{1,5})){1,7}\b",
            // North American: (AAA) BBB-CCCC, AAA-BBB-CCCC, AAA.BBB.CCCC.
            r"|\([0-9]{3}\) ?[0-9]{3}-[0-9]{4}\b",
            r"|\b[0-9]{3}-[0-9]{3}-[0-9]{4}\b",
            r"|\b[0-9]{3}\.[0-9]{3}\.[0-9]{4}\b",
        ),
        check_phone,
    ),
];

/// Keys whose string values (and strings in arrays under them) are user text.
const TEXT_KEYS: &[&str] = &[
    "content",
    "text",
    "prompt",
    "input",
    "instructions",
    "system",
    "message",
    "preamble",
    "arguments",
    "query",
    "output",
];

/// Keys whose object value is tool data to scan in full (Anthropic `tool_use`
/// input, object-valued tool arguments, Gemini function args and responses).
const TOOL_OBJECT_KEYS: &[&str] = &["input", "arguments", "args", "response", "output"];

/// Keys scanned in full whatever their value (Cohere documents are free-form).
const DEEP_KEYS: &[&str] = &["documents"];

/// Inside a fully scanned value, string values under these keys are left alone
/// (identifiers and binary payloads, never prose).
const SKIP_KEYS: &[&str] = &[
    "model",
    "role",
    "id",
    "type",
    "name",
    "tool_call_id",
    "tool_use_id",
    "call_id",
    "url",
    "image_url",
    "data",
    "media_type",
    "mime_type",
    "mimeType",
    "file_id",
    "file_data",
    "fileData",
    "file_url",
    "file_uri",
    "fileUri",
    "signature",
    "encrypted_content",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Only object keys decide; bare strings are not scanned.
    Structure,
    /// Strings (and strings in arrays) are user text; objects go by their keys.
    Text,
    /// Every string except those under [`SKIP_KEYS`].
    Deep,
}

fn child_walk(parent: Walk, key: &str, child: &Value) -> Walk {
    match parent {
        Walk::Deep => Walk::Deep,
        Walk::Structure | Walk::Text => {
            if DEEP_KEYS.contains(&key) || (child.is_object() && TOOL_OBJECT_KEYS.contains(&key)) {
                Walk::Deep
            } else if TEXT_KEYS.contains(&key) {
                Walk::Text
            } else {
                Walk::Structure
            }
        }
    }
}

impl Dlp {
    /// Built-in rules plus custom regexes. The error names the bad custom rule.
    pub fn new(custom: &[CustomRule]) -> Result<Dlp, String> {
        let mut rules = Vec::with_capacity(BUILTINS.len() + custom.len());
        for (name, pattern, check) in BUILTINS {
            let pattern = pattern.replace(r"\b", B);
            let re = compile(&pattern)
                .map_err(|e| format!("built-in DLP rule '{name}' does not compile: {e}"))?;
            rules.push(Rule {
                name: (*name).to_string(),
                re,
                check: *check,
                pem: *name == "private_key",
            });
        }
        for rule in custom {
            if rule.name.trim().is_empty() {
                return Err(format!(
                    "custom DLP rule with pattern '{}' has an empty name",
                    rule.pattern
                ));
            }
            let re = compile(&rule.pattern)
                .map_err(|e| format!("custom DLP rule '{}': invalid pattern: {e}", rule.name))?;
            if re.is_match("") {
                return Err(format!(
                    "custom DLP rule '{}': pattern matches the empty string",
                    rule.name
                ));
            }
            rules.push(Rule {
                name: rule.name.clone(),
                re,
                check: accept,
                pem: false,
            });
        }
        let set = RegexSetBuilder::new(rules.iter().map(|r| r.re.as_str()))
            .size_limit(64 << 20)
            .build()
            .map_err(|e| format!("DLP rules do not compile together: {e}"))?;
        let pem_end = compile(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
            .map_err(|e| format!("built-in DLP rule 'private_key' does not compile: {e}"))?;
        // Base64 lines of 16+ characters (prose words are shorter), with real
        // or JSON-escaped line breaks (as inside tool-call arguments).
        let pem_body = compile(r"\A(?:(?:\s|\\[nr])*[A-Za-z0-9+/=]{16,})*")
            .map_err(|e| format!("built-in DLP rule 'private_key' does not compile: {e}"))?;
        Ok(Dlp {
            rules,
            set,
            pem_end,
            pem_body,
        })
    }

    /// Names of all rules, built-in first, in priority order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Findings in one text: non-overlapping, ordered by position.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        if text.is_empty() {
            return Vec::new();
        }
        let hits = self.set.matches(text);
        if !hits.matched_any() {
            return Vec::new();
        }
        // start -> (end, rule index); kept non-overlapping.
        let mut taken: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for idx in hits.iter() {
            let Some(rule) = self.rules.get(idx) else {
                continue;
            };
            let spans: Vec<(usize, usize)> = if rule.pem {
                self.pem_blocks(&rule.re, text)
            } else {
                rule.re
                    .find_iter(text)
                    .filter(|m| !m.is_empty())
                    .filter_map(|m| (rule.check)(text, m.start(), m.end()))
                    .collect()
            };
            for (start, end) in spans {
                let overlaps_before = taken
                    .range(..end)
                    .next_back()
                    .is_some_and(|(_, (prev_end, _))| *prev_end > start);
                if !overlaps_before {
                    taken.insert(start, (end, idx));
                }
            }
        }
        taken
            .into_iter()
            .filter_map(|(start, (end, idx))| {
                self.rules.get(idx).map(|r| Finding {
                    rule: r.name.clone(),
                    start,
                    end,
                })
            })
            .collect()
    }

    /// Private key blocks: each BEGIN line through the first END line after
    /// it (within [`PEM_MAX_BLOCK`]); without one (a truncated paste), through
    /// the base64 lines that follow, if any. Linear in the text: the END lines are
    /// found in one pass and each BEGIN line looks up the next one.
    fn pem_blocks(&self, begin: &Regex, text: &str) -> Vec<(usize, usize)> {
        let ends: Vec<(usize, usize)> = self
            .pem_end
            .find_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        let mut out = Vec::new();
        let mut cursor = 0;
        for m in begin.find_iter(text) {
            if m.start() < cursor {
                continue; // inside the previous block
            }
            let next = ends.partition_point(|(s, _)| *s < m.end());
            let end = match ends.get(next) {
                Some((s, e)) if s - m.end() <= PEM_MAX_BLOCK => *e,
                _ => {
                    let rest = text.get(m.end()..).unwrap_or_default();
                    match self.pem_body.find(rest) {
                        Some(b) if !b.is_empty() => m.end() + b.end(),
                        // A bare BEGIN line (someone asking about the format).
                        _ => continue,
                    }
                }
            };
            out.push((m.start(), end));
            cursor = end;
        }
        out
    }

    /// `text` with every finding replaced by `[REDACTED:<rule>]`, and the
    /// findings (offsets into the original `text`).
    pub fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        let findings = self.scan(text);
        if findings.is_empty() {
            return (text.to_string(), findings);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in &findings {
            out.push_str(text.get(at..f.start).unwrap_or_default());
            out.push_str("[REDACTED:");
            out.push_str(&f.rule);
            out.push(']');
            at = f.end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        (out, findings)
    }

    /// Scan every user-supplied text of a request body of any surface
    /// (OpenAI chat/completions/embeddings/Responses, Anthropic, Cohere,
    /// Gemini) and answer the rule names found, deduplicated and sorted.
    ///
    /// User text is: string values under the keys `content`, `text`,
    /// `prompt`, `input`, `instructions`, `system`, `message`, `preamble`,
    /// `arguments`, `query`, `output`, and strings in arrays under them,
    /// wherever they are nested; plus everything under `documents` and
    /// object-valued tool data under `input`/`arguments`/`args`/`response`/
    /// `output` (except ids, names, types, URLs and binary `data`).
    pub fn scan_request(&self, body: &Value) -> Vec<String> {
        let mut found = BTreeSet::new();
        self.walk(body, Walk::Structure, &mut |text| {
            for f in self.scan(text) {
                found.insert(f.rule);
            }
        });
        found.into_iter().collect()
    }

    /// Replace every finding in every user-supplied text (as for
    /// [`Dlp::scan_request`]) with `[REDACTED:<rule>]`, in place, and answer
    /// the rule names redacted, deduplicated and sorted. Only string values
    /// change, so the body stays valid for its surface.
    pub fn redact_request(&self, body: &mut Value) -> Vec<String> {
        let mut found = BTreeSet::new();
        self.walk_mut(body, Walk::Structure, &mut |text| {
            let (redacted, findings) = self.redact(text);
            if findings.is_empty() {
                return;
            }
            *text = redacted;
            for f in findings {
                found.insert(f.rule);
            }
        });
        found.into_iter().collect()
    }

    fn walk(&self, v: &Value, mode: Walk, visit: &mut dyn FnMut(&str)) {
        match v {
            Value::String(s) if mode != Walk::Structure => visit(s),
            Value::Array(items) => {
                for item in items {
                    self.walk(item, mode, visit);
                }
            }
            Value::Object(map) => {
                for (key, child) in map {
                    if mode == Walk::Deep && child.is_string() && SKIP_KEYS.contains(&key.as_str())
                    {
                        continue;
                    }
                    self.walk(child, child_walk(mode, key, child), visit);
                }
            }
            _ => {}
        }
    }

    fn walk_mut(&self, v: &mut Value, mode: Walk, visit: &mut dyn FnMut(&mut String)) {
        match v {
            Value::String(s) if mode != Walk::Structure => visit(s),
            Value::Array(items) => {
                for item in items {
                    self.walk_mut(item, mode, visit);
                }
            }
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if mode == Walk::Deep && child.is_string() && SKIP_KEYS.contains(&key.as_str())
                    {
                        continue;
                    }
                    let child_mode = child_walk(mode, key, child);
                    self.walk_mut(child, child_mode, visit);
                }
            }
            _ => {}
        }
    }
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(16 << 20).build()
}

fn accept(_: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    Some((start, end))
}

fn byte_before(text: &str, i: usize, back: usize) -> Option<u8> {
    i.checked_sub(back)
        .and_then(|j| text.as_bytes().get(j).copied())
}

fn byte_at(text: &str, i: usize) -> Option<u8> {
    text.as_bytes().get(i).copied()
}

fn is_digit(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_digit())
}

/// Whether `text[start..end]` continues a longer chain of digit groups, like
/// `12-` before it or `.5` after it.
fn in_digit_chain(text: &str, start: usize, end: usize, seps: &[u8]) -> bool {
    let before = byte_before(text, start, 1).is_some_and(|b| seps.contains(&b))
        && is_digit(byte_before(text, start, 2));
    let after =
        byte_at(text, end).is_some_and(|b| seps.contains(&b)) && is_digit(byte_at(text, end + 1));
    before || after
}

// ---------------------------------------------------------------- credit_card

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// A card number: 13–19 digits, a major-network first digit (2–6: Mastercard
/// 2-series, Amex/Diners/JCB, Visa, Mastercard/Maestro, Discover/UnionPay),
/// and a valid Luhn check digit.
fn card_digits_valid(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len())
        && digits.first().is_some_and(|d| (2..=6).contains(d))
        && luhn(digits)
}

/// Checks the whole candidate; when it fails and has separators, the longest
/// run of whole groups that is a valid card (so "4111 1111 1111 1111 123"
/// still finds the card).
fn check_card(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    // Not part of a phone number (+CC …) or a decimal fraction (0.4242…).
    if byte_before(text, start, 1) == Some(b'+') || in_digit_chain(text, start, end, b".,") {
        return None;
    }
    let span = text.get(start..end)?;
    // Groups of digits: (byte start, byte end, digit values).
    let mut groups: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut cur: Option<(usize, Vec<u8>)> = None;
    for (i, b) in span.bytes().enumerate() {
        if b.is_ascii_digit() {
            match cur.as_mut() {
                Some((_, ds)) => ds.push(b - b'0'),
                None => cur = Some((start + i, vec![b - b'0'])),
            }
        } else if let Some((s, ds)) = cur.take() {
            groups.push((s, start + i, ds));
        }
    }
    if let Some((s, ds)) = cur.take() {
        groups.push((s, end, ds));
    }
    let all: Vec<u8> = groups.iter().flat_map(|g| g.2.iter().copied()).collect();
    if card_digits_valid(&all) {
        return Some((start, end));
    }
    // The whole candidate was rejected above: only proper sub-runs here, and
    // (being shorter) they never repeat that check.
    let mut best: Option<(usize, usize, usize)> = None; // (digits, start, end)
    for (i, first) in groups.iter().enumerate() {
        let mut digits: Vec<u8> = Vec::new();
        for last in groups.iter().skip(i) {
            digits.extend_from_slice(&last.2);
            if digits.len() > 19 || digits.len() == all.len() {
                break;
            }
            if card_digits_valid(&digits) && best.is_none_or(|b| digits.len() > b.0) {
                best = Some((digits.len(), first.0, last.1));
            }
        }
    }
    best.map(|(_, s, e)| (s, e))
}

// --------------------------------------------------------------------- us_ssn

fn check_ssn(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if in_digit_chain(text, start, end, b"-") {
        return None;
    }
    let span = text.get(start..end)?;
    let mut parts = span.split('-');
    let area = parts.next()?;
    let group = parts.next()?;
    let serial = parts.next()?;
    let area_ok = area != "000" && area != "666" && !area.starts_with('9');
    (area_ok && group != "00" && serial != "0000").then_some((start, end))
}

// ----------------------------------------------------------------------- iban

/// ISO 7064 mod-97 of an IBAN (upper-case alphanumerics, no spaces).
fn iban_mod97(compact: &[u8]) -> Option<u32> {
    if compact.len() < 5 {
        return None;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem = 0u32;
    for &c in tail.iter().chain(head) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return None,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    Some(rem)
}

/// Valid when mod-97 == 1 and 15–34 characters long. When the whole
/// candidate fails, shorter candidates ending at a space are tried (so a
/// following upper-case word does not hide the IBAN).
fn check_iban(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let span = text.get(start..end)?;
    let mut ends: Vec<usize> = vec![end];
    ends.extend(
        span.bytes()
            .enumerate()
            .filter(|(_, b)| *b == b' ')
            .map(|(i, _)| start + i)
            .rev(),
    );
    for e in ends {
        let compact: Vec<u8> = text.get(start..e)?.bytes().filter(|b| *b != b' ').collect();
        if (15..=34).contains(&compact.len()) && iban_mod97(&compact) == Some(1) {
            return Some((start, e));
        }
    }
    None
}

// ---------------------------------------------------------------------- email

fn check_email(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    // A local part does not start or end with a dot.
    let span = text.get(start..end)?;
    let at = span.find('@')?;
    let lead = span.bytes().take_while(|b| *b == b'.').count();
    if lead >= at || span.as_bytes().get(at.wrapping_sub(1)) == Some(&b'.') {
        return None;
    }
    Some((start + lead, end))
}

// ---------------------------------------------------------------------- phone

fn check_phone(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let span = text.get(start..end)?;
    let prev = byte_before(text, start, 1);
    if span.starts_with('+') {
        // Not "a+1…", "x)+1…" or "1+2…": a + that starts a number.
        if prev.is_some_and(|b| b.is_ascii_alphanumeric() || b == b')' || b == b'_') {
            return None;
        }
        // E.164 allows at most 15 digits: drop trailing groups beyond that.
        let mut digits = 0usize;
        let mut last_ok = None;
        for (i, b) in span.bytes().enumerate() {
            if b.is_ascii_digit() {
                digits += 1;
                let group_ends = span
                    .as_bytes()
                    .get(i + 1)
                    .is_none_or(|n| !n.is_ascii_digit());
                if group_ends && digits <= 15 {
                    let close = usize::from(span.as_bytes().get(i + 1) == Some(&b')'));
                    last_ok = Some((digits, start + i + 1 + close));
                }
            }
        }
        let (digits, e) = last_ok?;
        return (digits >= 8).then_some((start, e));
    }
    // North American forms.
    if span.starts_with('(') && prev.is_some_and(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    // A leading "1-" / "1." trunk prefix belongs to the number; any other
    // digit chain around it (10.415.555.2671, 415-555-2671-99) is not a phone.
    let sep = byte_before(text, start, 1);
    let trunk = matches!(sep, Some(b'-' | b'.'))
        && sep == span.bytes().find(|b| *b == b'-' || *b == b'.')
        && byte_before(text, start, 2) == Some(b'1')
        && !byte_before(text, start, 3)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if trunk {
        let after = byte_at(text, end).is_some_and(|b| b == b'-' || b == b'.')
            && is_digit(byte_at(text, end + 1));
        return (!after).then_some((start - 2, end));
    }
    if in_digit_chain(text, start, end, b".-") {
        return None;
    }
    Some((start, end))
}

// -------------------------------------------------------------------- api_key

/// `sk-` keys must look random: a run of at least 16 characters without a
/// dash somewhere in them (so `sk-some-long-hyphenated-slug` is not a key).
fn check_api_key(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let span = text.get(start..end)?;
    if let Some(body) = span.strip_prefix("sk-") {
        let longest = body.split('-').map(str::len).max().unwrap_or(0);
        if longest < 16 {
            return None;
        }
    }
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dlp() -> &'static Dlp {
        static DLP: std::sync::OnceLock<Dlp> = std::sync::OnceLock::new();
        DLP.get_or_init(|| Dlp::new(&[]).expect("built-ins compile"))
    }

    fn rules(text: &str) -> Vec<String> {
        dlp().scan(text).into_iter().map(|f| f.rule).collect()
    }

    fn finds(text: &str, rule: &str) -> bool {
        rules(text).iter().any(|r| r == rule)
    }

    /// The exact matched text of the only finding of `rule`.
    fn matched<'a>(text: &'a str, rule: &str) -> Option<&'a str> {
        let found: Vec<Finding> = dlp()
            .scan(text)
            .into_iter()
            .filter(|f| f.rule == rule)
            .collect();
        assert!(found.len() <= 1, "{found:?}");
        found.first().map(|f| &text[f.start..f.end])
    }

    #[test]
    fn mode_serde_is_lowercase() {
        let m: Mode = serde_json::from_str("\"redact\"").unwrap();
        assert_eq!(m, Mode::Redact);
        assert_eq!(serde_json::to_string(&Mode::Block).unwrap(), "\"block\"");
        assert_eq!(Mode::default(), Mode::Off);
        assert!(serde_json::from_str::<Mode>("\"Redact\"").is_err());
    }

    #[test]
    fn credit_card_true_positives() {
        for t in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "6011 1111 1111 1117",
            "4222222222222",
            "card: 4111 1111 1111 1111, exp 12/29",
            "my card is 4111111111111111.",
        ] {
            assert!(finds(t, "credit_card"), "{t}");
        }
        assert_eq!(
            matched("pay 4111 1111 1111 1111 now", "credit_card"),
            Some("4111 1111 1111 1111")
        );
        // A trailing CVV group does not hide the card.
        assert_eq!(
            matched("4111 1111 1111 1111 123", "credit_card"),
            Some("4111 1111 1111 1111")
        );
    }

    #[test]
    fn credit_card_false_positives() {
        for t in [
            "4111 1111 1111 1112",          // fails Luhn
            "4111111111111112",             // fails Luhn
            "41111111111111111111111111",   // plain long digit run
            "order 1234567890123",          // 13 digits, fails Luhn
            "1700000000000 ms since epoch", // not a card network
            "id a4111111111111111",         // inside an identifier
            "pi is 3.4111111111111111",     // decimal fraction
            "4111  1111  1111  1111",       // double separators
            "4111 1111 1111",               // too short
        ] {
            assert!(!finds(t, "credit_card"), "{t}");
        }
    }

    #[test]
    fn us_ssn() {
        for t in ["078-05-1120", "ssn 123-45-6789.", "(219-09-9999)"] {
            assert!(finds(t, "us_ssn"), "{t}");
        }
        for t in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123456789",
            "2026-11-23",
            "1-123-45-6789",
            "123-45-6789-1",
        ] {
            assert!(!finds(t, "us_ssn"), "{t}");
        }
    }

    #[test]
    fn iban() {
        for t in [
            "GB82 WEST 1234 5698 7654 32",
            "GB82WEST12345698765432",
            "DE89 3704 0044 0532 0130 00",
            "FR14 2004 1010 0505 0001 3M02 606",
            "NO9386011117947",
            "pay to NL91ABNA0417164300 please",
        ] {
            assert!(matched(t, "iban").is_some(), "{t}");
        }
        assert_eq!(
            matched("GB82 WEST 1234 5698 7654 32 today", "iban"),
            Some("GB82 WEST 1234 5698 7654 32")
        );
        assert_eq!(
            matched("GB82WEST12345698765432 THEN", "iban"),
            Some("GB82WEST12345698765432")
        );
        for t in [
            "GB82 WEST 1234 5698 7654 33", // one digit changed
            "GB83 WEST 1234 5698 7654 32",
            "DE89 3704 0044 0532 0130 01",
            "AB12 CDEF GHIJ KLMN",
            "gb82 west 1234 5698 7654 32",
        ] {
            assert!(!finds(t, "iban"), "{t}");
        }
    }

    #[test]
    fn email() {
        assert_eq!(
            matched("write to jane.doe+tag@mail.example.co.uk!", "email"),
            Some("jane.doe+tag@mail.example.co.uk")
        );
        assert_eq!(
            matched("to first_last@x.io.", "email"),
            Some("first_last@x.io")
        );
        for t in [
            "user@localhost",
            "pkg@1.2.3",
            "@decorator.name",
            "foo@bar",
            "npm i @scope/pkg@latest",
            "a@b.c",
        ] {
            assert!(!finds(t, "email"), "{t}");
        }
    }

    #[test]
    fn phone() {
        for (t, want) in [
            ("call +1 415 555 2671 now", "+1 415 555 2671"),
            ("+44 20 7946 0958", "+44 20 7946 0958"),
            ("+14155552671", "+14155552671"),
            ("+1 (415) 555-2671", "+1 (415) 555-2671"),
            ("+49-30-123456", "+49-30-123456"),
            ("(415) 555-2671", "(415) 555-2671"),
            ("(415)555-2671", "(415)555-2671"),
            ("tel 415-555-2671.", "415-555-2671"),
            ("415.555.2671", "415.555.2671"),
            ("1-800-555-1234", "1-800-555-1234"),
            ("call 1.800.555.1234", "1.800.555.1234"),
        ] {
            assert_eq!(matched(t, "phone"), Some(want), "{t}");
        }
        for t in [
            "2026-11-23",
            "on 2026-11-23 at 10:00",
            "version 1.2.3.4",
            "v10.20.30.40",
            "12345678901234",
            "415555267",
            "1+2345678",
            "x+12345678901",
            "+12",
            "10.415.555.2671",
            "1.415-555-2671",
            "2-800-555-1234",
            "415-555-2671-99",
            "192.168.100.1",
            "2026.11.23",
        ] {
            assert!(!finds(t, "phone"), "{t}");
        }
    }

    #[test]
    fn aws_access_key() {
        assert!(finds("key AKIAIOSFODNN7EXAMPLE here", "aws_access_key"));
        assert!(finds("ASIAY34FZKBOKMUTVV7A", "aws_access_key"));
        for t in [
            "AKIAIOSFODNN7EXAMPL",   // too short
            "AKIAIOSFODNN7EXAMPLE1", // too long
            "akiaiosfodnn7example",
            "XAKIAIOSFODNN7EXAMPLE",
        ] {
            assert!(!finds(t, "aws_access_key"), "{t}");
        }
    }

    #[test]
    fn api_keys() {
        let alnum48 = "T3BlbkFJabcdefghijklmnopqrstuvwxyz0123456789ABCD";
        for t in [
            format!("sk-{alnum48}"),
            format!("sk-proj-{alnum48}_-{alnum48}"),
            format!("sk-svcacct-{alnum48}"),
            format!("sk-ant-api03-{alnum48}{alnum48}-AA"),
            "AIzaSyA1234567890abcdefghijklmnopqrstuv".to_string(),
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789".to_string(),
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz".to_string(),
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx".to_string(),
            "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH".to_string(),
        ] {
            assert_eq!(
                matched(&format!("token: {t} end"), "api_key"),
                Some(t.as_str()),
                "{t}"
            );
        }
        for t in [
            "sk-learn is a library",
            "use sk-some-long-hyphenated-slug-name-here",
            "task-abcdefghijklmnopqrstuvwxyz0123456789",
            "sk-short123",
            "AIzaShort",
            "ghp_short",
            "hf_model_name_is_here_and_long_enough",
            "xoxb-",
            "myhf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
        ] {
            assert!(!finds(t, "api_key"), "{t}");
        }
    }

    #[test]
    fn private_key() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234567890abcdefghijABCDEFGHIJ+/=\nQWERTYUIOPASDFGHJKLZXCVBNM0123456789abcd\n-----END RSA PRIVATE KEY-----";
        let text = format!("here:\n{pem}\nthanks");
        assert_eq!(matched(&text, "private_key"), Some(pem));
        let ossh = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----";
        assert_eq!(matched(ossh, "private_key"), Some(ossh));
        let pkcs8 = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----";
        assert_eq!(matched(pkcs8, "private_key"), Some(pkcs8));
        // Truncated paste: the base64 lines are still covered, the prose after is not.
        let cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcw\nwhat is this?";
        let m = matched(cut, "private_key").unwrap();
        assert!(m.ends_with("ASCBKcw"), "{m}");
        // Escaped newlines inside tool-call arguments.
        let esc = r#"{"file":"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY\n-----END EC PRIVATE KEY-----"}"#;
        assert!(finds(esc, "private_key"));
        // Public keys and certificates are not private keys.
        assert!(!finds(
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
            "private_key"
        ));
        assert!(!finds(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "private_key"
        ));
        // A bare BEGIN line is a question about the format, not a key.
        assert!(!finds(
            "what does -----BEGIN RSA PRIVATE KEY----- mean?",
            "private_key"
        ));
    }

    #[test]
    fn private_key_blocks_are_bounded_and_linear() {
        let d = dlp();
        // An END far beyond the largest key does not swallow the text between.
        let far = format!(
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n{}-----END PRIVATE KEY-----",
            "prose. ".repeat(20_000)
        );
        let found = d.scan(&far);
        assert_eq!(found.len(), 1);
        assert_eq!(
            &far[found[0].start..found[0].end],
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC"
        );
        // Two blocks, then many BEGIN lines without END: each handled once.
        let block = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----";
        let text = format!("{block} and {block}");
        assert_eq!(d.scan(&text).len(), 2);
        let many = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n".repeat(20_000);
        let t = std::time::Instant::now();
        assert_eq!(d.scan(&many).len(), 20_000);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn private_key_wins_over_what_is_inside_it() {
        let pem = "-----BEGIN PRIVATE KEY-----\nAKIAIOSFODNN7EXAMPLE 4111111111111111 a@b.io\n-----END PRIVATE KEY-----";
        assert_eq!(rules(pem), vec!["private_key"]);
    }

    #[test]
    fn jwt() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(matched(&format!("Bearer {jwt}"), "jwt"), Some(jwt));
        for t in [
            "eyJ.abc.def",
            "notajwt.eyJhbGciOiJIUzI1NiJ9.sig",
            "xeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            "abc.def.ghi",
        ] {
            assert!(!finds(t, "jwt"), "{t}");
        }
    }

    #[test]
    fn bsr_key() {
        let key = "bsr_0123456789ABCDEFGHIJabcdefghijKLMNOP";
        assert_eq!(key.len(), 40);
        assert_eq!(matched(&format!("my key {key}."), "bsr_key"), Some(key));
        let admin = "bsra_0123456789ABCDEFGHIJabcdefghijKLMNOP";
        assert_eq!(matched(admin, "bsr_key"), Some(admin));
        for t in [
            "bsr_short",
            "bsr_0123456789ABCDEFGHIJabcdefghijKLMNO", // 35
            "bsr_0123456789ABCDEFGHIJabcdefghijKLMNOPQ", // 37
            "xbsr_0123456789ABCDEFGHIJabcdefghijKLMNOP",
        ] {
            assert!(!finds(t, "bsr_key"), "{t}");
        }
    }

    #[test]
    fn clean_prose_has_no_findings() {
        let text = "Release 1.2.3.4 ships on 2026-11-23 at 10:30. See section 4.1.2 and RFC 7231; \
                    the build took 12345 ms, used 3.5 GB, order #998877 for $1,234.56. \
                    Call the function f(x) = x + 10 with ids 550e8400-e29b-41d4-a716-446655440000.";
        assert_eq!(dlp().scan(text), vec![]);
    }

    #[test]
    fn findings_are_ordered_and_non_overlapping() {
        let text =
            "mail a@b.io, card 4111 1111 1111 1111, ssn 078-05-1120, aws AKIAIOSFODNN7EXAMPLE";
        let found = dlp().scan(text);
        let names: Vec<&str> = found.iter().map(|f| f.rule.as_str()).collect();
        assert_eq!(names, ["email", "credit_card", "us_ssn", "aws_access_key"]);
        for w in found.windows(2) {
            assert!(w[0].end <= w[1].start);
        }
    }

    #[test]
    fn non_ascii_text_is_fine() {
        let text = "Grüße — meine Karte: 4111 1111 1111 1111 😀 und mail jürgen@example.de";
        let (out, found) = dlp().redact(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(out.contains("[REDACTED:credit_card] 😀"), "{out}");
        // 'ü' is not in the local-part class: the address after it is still caught.
        assert!(out.contains("jü[REDACTED:email]"), "{out}");
    }

    #[test]
    fn custom_rules() {
        let d = Dlp::new(&[CustomRule {
            name: "project_code".into(),
            pattern: r"\bPRJ-[0-9]{4}\b".into(),
        }])
        .unwrap();
        let found = d.scan("see PRJ-1234 and PRJ-12");
        assert_eq!(
            found,
            vec![Finding {
                rule: "project_code".into(),
                start: 4,
                end: 12
            }]
        );
        let mut body = json!({"messages": [{"role": "user", "content": "PRJ-9999 ok"}]});
        assert_eq!(d.redact_request(&mut body), vec!["project_code"]);
        assert_eq!(body["messages"][0]["content"], "[REDACTED:project_code] ok");
        assert!(d.rule_names().any(|n| n == "project_code"));
    }

    #[test]
    fn bad_custom_rule_is_named() {
        let err = Dlp::new(&[
            CustomRule {
                name: "fine".into(),
                pattern: "abc".into(),
            },
            CustomRule {
                name: "broken_rule".into(),
                pattern: "(unclosed".into(),
            },
        ])
        .unwrap_err();
        assert!(err.contains("broken_rule"), "{err}");
        let err = Dlp::new(&[CustomRule {
            name: "empty".into(),
            pattern: "x*".into(),
        }])
        .unwrap_err();
        assert!(err.contains("empty"), "{err}");
        assert!(
            Dlp::new(&[CustomRule {
                name: " ".into(),
                pattern: "x".into()
            }])
            .is_err()
        );
    }

    #[test]
    fn custom_rule_with_lookaround_is_an_error_not_a_panic() {
        let err = Dlp::new(&[CustomRule {
            name: "look".into(),
            pattern: "(?=a)b".into(),
        }])
        .unwrap_err();
        assert!(err.contains("look"), "{err}");
    }

    // ------------------------------------------------------------ request bodies

    const CARD: &str = "4111 1111 1111 1111";
    const SSN: &str = "078-05-1120";

    fn roundtrip_valid(body: &Value) {
        let s = serde_json::to_string(body).unwrap();
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(&back, body);
    }

    #[test]
    fn clean_body_scans_empty() {
        let d = dlp();
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "What is 2+2? Version 1.2.3.4, date 2026-11-23."}
            ],
            "temperature": 0.2,
            "user": "alice@example.com"
        });
        assert!(d.scan_request(&body).is_empty());
        let mut copy = body.clone();
        assert!(d.redact_request(&mut copy).is_empty());
        assert_eq!(copy, body);
    }

    #[test]
    fn metadata_fields_are_never_scanned() {
        let d = dlp();
        let body = json!({
            "model": "AKIAIOSFODNN7EXAMPLE",
            "id": "078-05-1120",
            "user": "bob@example.com",
            "metadata": {"card": CARD},
            "stop": [SSN],
            "messages": [{"role": "a@b.io", "name": "x@y.io", "content": "hi"}]
        });
        assert!(d.scan_request(&body).is_empty());
    }

    #[test]
    fn openai_chat_string_and_parts() {
        let d = dlp();
        let mut body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Contact ops@example.com"},
                {"role": "user", "content": [
                    {"type": "text", "text": format!("my card {CARD}")},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,4111111111111111"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {
                        "name": "lookup", "arguments": format!("{{\"ssn\":\"{SSN}\"}}")
                    }}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "phone (415) 555-2671"}
            ]
        });
        assert_eq!(
            d.scan_request(&body),
            ["credit_card", "email", "phone", "us_ssn"]
        );
        let names = d.redact_request(&mut body);
        assert_eq!(names, ["credit_card", "email", "phone", "us_ssn"]);
        roundtrip_valid(&body);
        assert_eq!(body["messages"][0]["content"], "Contact [REDACTED:email]");
        assert_eq!(
            body["messages"][1]["content"][0]["text"],
            "my card [REDACTED:credit_card]"
        );
        assert_eq!(
            body["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,4111111111111111"
        );
        let args = body["messages"][2]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap();
        assert_eq!(args, "{\"ssn\":\"[REDACTED:us_ssn]\"}");
        assert!(serde_json::from_str::<Value>(args).is_ok());
        assert_eq!(body["messages"][3]["content"], "phone [REDACTED:phone]");
        assert_eq!(body["messages"][2]["tool_calls"][0]["id"], "call_1");
        assert!(d.scan_request(&body).is_empty());
    }

    #[test]
    fn openai_legacy_prompt_and_embeddings() {
        let d = dlp();
        let mut body =
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": [format!("a {SSN}"), "clean"]});
        assert_eq!(d.redact_request(&mut body), ["us_ssn"]);
        assert_eq!(body["prompt"], json!(["a [REDACTED:us_ssn]", "clean"]));

        let mut body = json!({"model": "text-embedding-3-small", "input": format!("x {CARD}")});
        assert_eq!(d.redact_request(&mut body), ["credit_card"]);
        assert_eq!(body["input"], "x [REDACTED:credit_card]");

        let mut body = json!({
            "model": "text-embedding-3-small",
            "input": ["fine", "mail me: a.b@example.org", "AKIAIOSFODNN7EXAMPLE"]
        });
        assert_eq!(d.scan_request(&body), ["aws_access_key", "email"]);
        assert_eq!(d.redact_request(&mut body), ["aws_access_key", "email"]);
        assert_eq!(
            body["input"],
            json!([
                "fine",
                "mail me: [REDACTED:email]",
                "[REDACTED:aws_access_key]"
            ])
        );
        // Token-array inputs are left alone.
        let body = json!({"model": "m", "input": [[1, 2, 3], [4111111111111111u64]]});
        assert!(d.scan_request(&body).is_empty());
    }

    #[test]
    fn responses_api_input() {
        let d = dlp();
        let mut body = json!({"model": "gpt-4.1", "input": format!("card {CARD}"), "instructions": "mail x@y.io"});
        assert_eq!(d.redact_request(&mut body), ["credit_card", "email"]);
        assert_eq!(body["input"], "card [REDACTED:credit_card]");
        assert_eq!(body["instructions"], "mail [REDACTED:email]");

        let mut body = json!({
            "model": "gpt-4.1",
            "input": [
                {"role": "user", "content": format!("ssn {SSN}")},
                {"role": "user", "content": [
                    {"type": "input_text", "text": "iban GB82 WEST 1234 5698 7654 32"},
                    {"type": "input_image", "image_url": "https://x.test/078-05-1120.png"}
                ]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"k\":\"AKIAIOSFODNN7EXAMPLE\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "found a@b.io"}
            ],
            "text": {"format": {"type": "text"}}
        });
        let names = d.redact_request(&mut body);
        assert_eq!(names, ["aws_access_key", "email", "iban", "us_ssn"]);
        roundtrip_valid(&body);
        assert_eq!(body["input"][0]["content"], "ssn [REDACTED:us_ssn]");
        assert_eq!(
            body["input"][1]["content"][0]["text"],
            "iban [REDACTED:iban]"
        );
        assert_eq!(
            body["input"][1]["content"][1]["image_url"],
            "https://x.test/078-05-1120.png"
        );
        assert_eq!(
            body["input"][2]["arguments"],
            "{\"k\":\"[REDACTED:aws_access_key]\"}"
        );
        assert_eq!(body["input"][3]["output"], "found [REDACTED:email]");
    }

    #[test]
    fn anthropic_messages_with_system_blocks() {
        let d = dlp();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        let mut body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "system": [{"type": "text", "text": format!("admin ssn {SSN}"), "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": format!("token {jwt}")},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUtJQUlPU0ZPRE5ON0VYQU1QTEU="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "/x", "note": "mail a@b.io"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": format!("card {CARD}")},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "iban DE89 3704 0044 0532 0130 00"}]}
                ]}
            ]
        });
        let names = d.redact_request(&mut body);
        assert_eq!(names, ["credit_card", "email", "iban", "jwt", "us_ssn"]);
        roundtrip_valid(&body);
        assert_eq!(body["system"][0]["text"], "admin ssn [REDACTED:us_ssn]");
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(
            body["messages"][0]["content"][0]["text"],
            "token [REDACTED:jwt]"
        );
        assert_eq!(
            body["messages"][0]["content"][1]["source"]["data"],
            "QUtJQUlPU0ZPRE5ON0VYQU1QTEU="
        );
        assert_eq!(
            body["messages"][1]["content"][0]["input"]["note"],
            "mail [REDACTED:email]"
        );
        assert_eq!(body["messages"][1]["content"][0]["id"], "toolu_1");
        assert_eq!(
            body["messages"][2]["content"][0]["content"],
            "card [REDACTED:credit_card]"
        );
        assert_eq!(
            body["messages"][2]["content"][1]["content"][0]["text"],
            "iban [REDACTED:iban]"
        );

        let mut body = json!({"model": "claude", "system": "key AKIAIOSFODNN7EXAMPLE", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(d.redact_request(&mut body), ["aws_access_key"]);
        assert_eq!(body["system"], "key [REDACTED:aws_access_key]");
    }

    #[test]
    fn gemini_contents() {
        let d = dlp();
        let mut body = json!({
            "systemInstruction": {"parts": [{"text": "owner: +44 20 7946 0958"}]},
            "contents": [
                {"role": "user", "parts": [
                    {"text": format!("card {CARD}")},
                    {"inlineData": {"mimeType": "image/png", "data": "4111111111111111"}}
                ]},
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"q": "x@y.io"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"ssn": SSN}}}]}
            ],
            "generationConfig": {"temperature": 0.1}
        });
        let names = d.redact_request(&mut body);
        assert_eq!(names, ["credit_card", "email", "phone", "us_ssn"]);
        roundtrip_valid(&body);
        assert_eq!(
            body["systemInstruction"]["parts"][0]["text"],
            "owner: [REDACTED:phone]"
        );
        assert_eq!(
            body["contents"][0]["parts"][0]["text"],
            "card [REDACTED:credit_card]"
        );
        assert_eq!(
            body["contents"][0]["parts"][1]["inlineData"]["data"],
            "4111111111111111"
        );
        assert_eq!(
            body["contents"][1]["parts"][0]["functionCall"]["args"]["q"],
            "[REDACTED:email]"
        );
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"]["response"]["ssn"],
            "[REDACTED:us_ssn]"
        );
    }

    #[test]
    fn cohere_bodies() {
        let d = dlp();
        let mut body = json!({
            "model": "command-r",
            "message": format!("card {CARD}"),
            "preamble": "ssn 078-05-1120",
            "chat_history": [{"role": "USER", "message": "mail a@b.io"}],
            "documents": [{"title": "AKIAIOSFODNN7EXAMPLE", "snippet": "call (415) 555-2671"}, "plain GB82WEST12345698765432"]
        });
        let names = d.redact_request(&mut body);
        assert_eq!(
            names,
            [
                "aws_access_key",
                "credit_card",
                "email",
                "iban",
                "phone",
                "us_ssn"
            ]
        );
        roundtrip_valid(&body);
        assert_eq!(body["documents"][0]["title"], "[REDACTED:aws_access_key]");
        assert_eq!(body["documents"][1], "plain [REDACTED:iban]");

        let body = json!({"model": "rerank", "query": "who is a@b.io", "documents": [{"id": "x@y.io", "data": {"text": "fine"}}]});
        assert_eq!(d.scan_request(&body), ["email"]);
    }

    #[test]
    fn placeholders_are_typed_and_every_finding_is_replaced() {
        let d = dlp();
        let mut body = json!({"messages": [{"role": "user", "content": format!("{CARD} and {CARD} and {SSN}")}]});
        d.redact_request(&mut body);
        assert_eq!(
            body["messages"][0]["content"],
            "[REDACTED:credit_card] and [REDACTED:credit_card] and [REDACTED:us_ssn]"
        );
    }

    #[test]
    fn large_text_scans_quickly() {
        let d = dlp();
        let chunk = "The quick brown fox jumps over the lazy dog 1234 5678 on 2026-11-23. ";
        let text = chunk.repeat(5_000); // ~350 KB
        let t = std::time::Instant::now();
        assert!(d.scan(&text).is_empty());
        let dirty = format!("{text} 4111 1111 1111 1111");
        assert_eq!(d.scan(&dirty).len(), 1);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            t.elapsed()
        );
    }
}
