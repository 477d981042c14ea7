//! Request policies that look at what a request says rather than who sent it.
//!
//! - [`dlp`]: data-loss prevention on the user-supplied text of a request body
//!   (cards, SSNs, IBANs, emails, phones, cloud and LLM secrets, private keys,
//!   JWTs, bursar keys, custom regexes), with scan and in-place redaction.
//! - [`anomaly`]: a per-key running baseline of prompt size and request rate
//!   that flags sudden jumps.
//!
//! Both are pure (no I/O, no clock of their own) and depend on nothing else in
//! the crate.

pub mod anomaly;
pub mod dlp;

pub use anomaly::{AnomalyConfig, AnomalyDetector, Verdict};
pub use dlp::{CustomRule, Dlp, Finding, Mode};
