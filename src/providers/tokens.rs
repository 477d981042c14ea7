//! Token counting under OpenAI's `o200k_base` encoding.
//!
//! The encoder is built once, lazily, from the BPE table embedded in
//! `tiktoken-rs`. Should that ever fail, counts fall back to a
//! words-and-punctuation estimate; nothing here panics.
//!
//! Byte-pair encoding is quadratic in the length of one pre-tokenized piece,
//! so a hostile input (a megabyte without a space) could stall a thread. Text
//! is therefore cut into segments at spaces that follow a non-space character
//! (a boundary the o200k pre-tokenizer never crosses, so the count is exact),
//! and any run longer than [`MAX_RUN`] bytes without such a boundary is cut
//! every [`MAX_RUN`] bytes (which may shift the count by a token per cut).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

/// Longest stretch handed to the encoder without a safe boundary.
const MAX_RUN: usize = 256;
/// Segments are batched up to about this many bytes per encoder call.
const BATCH: usize = 4096;

static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();

fn bpe() -> Option<&'static CoreBPE> {
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Number of tokens in `text` under OpenAI's o200k_base encoding (loaded once, lazily).
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let Some(bpe) = bpe() else {
        return estimate(text);
    };
    let mut total = 0u64;
    let mut batch_start = 0usize;
    let mut batch_end = 0usize;
    for (start, end) in words(text) {
        let len = end - start;
        if len > MAX_RUN {
            if batch_end > batch_start {
                total += encode_len(bpe, &text[batch_start..batch_end]);
            }
            let mut s = start;
            while s < end {
                let mut e = (s + MAX_RUN).min(end);
                while !text.is_char_boundary(e) {
                    e += 1;
                }
                total += encode_len(bpe, &text[s..e]);
                s = e;
            }
            batch_start = end;
            batch_end = end;
            continue;
        }
        if end - batch_start > BATCH && batch_end > batch_start {
            total += encode_len(bpe, &text[batch_start..batch_end]);
            batch_start = start;
        }
        batch_end = end;
    }
    if batch_end > batch_start {
        total += encode_len(bpe, &text[batch_start..batch_end]);
    }
    total
}

/// Warm the tokenizer (called at start from a blocking thread).
pub fn warm() {
    let _ = count("warm");
}

/// Encode one segment; a panic inside the encoder (it unwraps regex
/// results) degrades to the estimate for that segment.
fn encode_len(bpe: &CoreBPE, segment: &str) -> u64 {
    match catch_unwind(AssertUnwindSafe(|| bpe.encode_ordinary(segment).len())) {
        Ok(n) => n as u64,
        Err(_) => estimate(segment),
    }
}

/// Byte ranges of `text` cut just before every space that follows a
/// non-whitespace character. Concatenated, the ranges cover `text`.
fn words(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0usize;
    let mut prev_is_ws = true;
    let mut cuts = text.char_indices().filter_map(move |(i, c)| {
        let cut = c == ' ' && !prev_is_ws && i > start;
        prev_is_ws = c.is_whitespace();
        if cut {
            let s = start;
            start = i;
            Some((s, i))
        } else {
            None
        }
    });
    let mut last = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match cuts.next() {
            Some((s, e)) => {
                last = e;
                Some((s, e))
            }
            None => {
                done = true;
                (last < text.len()).then_some((last, text.len()))
            }
        }
    })
}

/// Words-and-punctuation estimate: every run of letters and digits counts
/// one token per four characters (at least one), every other visible
/// character counts one.
fn estimate(text: &str) -> u64 {
    let mut tokens = 0u64;
    let mut run = 0u64;
    for c in text.chars() {
        if c.is_alphanumeric() {
            run += 1;
            continue;
        }
        tokens += run.div_ceil(4);
        run = 0;
        if !c.is_whitespace() {
            tokens += 1;
        }
    }
    tokens + run.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(text: &str) -> u64 {
        bpe().map(|b| b.encode_ordinary(text).len() as u64).unwrap()
    }

    #[test]
    fn counts_known_strings() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello"), 1);
        assert_eq!(count("Hello, world!"), 4);
        assert!(count("The quick brown fox jumps over the lazy dog.") >= 9);
    }

    #[test]
    fn segmentation_is_exact_on_ordinary_text() {
        let mut text = String::new();
        for i in 0..2000 {
            text.push_str(&format!("word{i}, isn't it?  Über\tcafé \n- {i}!! "));
        }
        assert!(text.len() > 4 * BATCH);
        assert_eq!(count(&text), exact(&text));
        for s in [
            "  leading",
            "trailing  ",
            " a  b   c ",
            "x\n\ny",
            "日本語 のテキスト",
        ] {
            assert_eq!(count(s), exact(s), "{s:?}");
        }
    }

    #[test]
    fn words_cover_text() {
        for s in ["", "a", " a b  c ", "héllo wörld", "   "] {
            let joined: String = words(s).map(|(a, b)| &s[a..b]).collect();
            assert_eq!(joined, s);
        }
    }

    #[test]
    fn long_runs_are_fast_and_close() {
        let text = "a".repeat(200_000);
        let started = std::time::Instant::now();
        let n = count(&text);
        assert!(n > 0);
        assert!(started.elapsed().as_secs() < 10);
        let multi = "é".repeat(1000);
        assert!(count(&multi) > 0);
    }

    #[test]
    fn estimate_is_reasonable() {
        assert_eq!(estimate(""), 0);
        assert_eq!(estimate("hello, world!"), 2 + 2 + 2);
        assert_eq!(estimate("a b c"), 3);
    }
}
