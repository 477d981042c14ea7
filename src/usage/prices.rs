//! Built-in price table (USD per million tokens), as published by the
//! providers on 2025-11-01; `[[models]]` entries in the config override it.
//! A dated model name (`gpt-4o-2024-08-06`) takes the price of the longest
//! listed prefix (`gpt-4o`); an `org/` prefix is ignored
//! (`meta-llama/Meta-Llama-3-8B-Instruct`). Providers that bill otherwise
//! (Hugging Face Inference Providers pass through the serving provider's
//! rates, Vectara bills per query, Azure per deployment) are priced with
//! `[[models]]` entries; an Azure deployment named like a model takes its price.

use std::collections::HashMap;

pub const TABLE_DATE: &str = "2025-11-01";

// The built-in provider entries that serve a model (first: the one the
// OpenAI surface routes it to).
const OA: &[&str] = &["openai"];
const AN: &[&str] = &["anthropic"];
const CO: &[&str] = &["cohere"];
const GG: &[&str] = &["gemini", "vertex"];
const MI: &[&str] = &["mistral"];
const GQ: &[&str] = &["groq"];
const PX: &[&str] = &["perplexity"];
const AS: &[&str] = &["anyscale"];

/// (model, provider entries, input USD/Mtok, output USD/Mtok)
const TABLE: &[(&str, &[&str], f64, f64)] = &[
    ("gpt-5", OA, 1.25, 10.0),
    ("gpt-5-mini", OA, 0.25, 2.0),
    ("gpt-5-nano", OA, 0.05, 0.40),
    ("gpt-5-chat-latest", OA, 1.25, 10.0),
    ("gpt-4.1", OA, 2.0, 8.0),
    ("gpt-4.1-mini", OA, 0.40, 1.60),
    ("gpt-4.1-nano", OA, 0.10, 0.40),
    ("gpt-4o", OA, 2.50, 10.0),
    ("gpt-4o-mini", OA, 0.15, 0.60),
    ("gpt-4-turbo", OA, 10.0, 30.0),
    ("gpt-4", OA, 30.0, 60.0),
    ("gpt-3.5-turbo", OA, 0.50, 1.50),
    ("o1", OA, 15.0, 60.0),
    ("o1-mini", OA, 1.10, 4.40),
    ("o3", OA, 2.0, 8.0),
    ("o3-mini", OA, 1.10, 4.40),
    ("o4-mini", OA, 1.10, 4.40),
    ("text-embedding-3-small", OA, 0.02, 0.0),
    ("text-embedding-3-large", OA, 0.13, 0.0),
    ("text-embedding-ada-002", OA, 0.10, 0.0),
    ("claude-opus-4-1", AN, 15.0, 75.0),
    ("claude-opus-4", AN, 15.0, 75.0),
    ("claude-sonnet-4-5", AN, 3.0, 15.0),
    ("claude-sonnet-4", AN, 3.0, 15.0),
    ("claude-haiku-4-5", AN, 1.0, 5.0),
    ("claude-3-7-sonnet", AN, 3.0, 15.0),
    ("claude-3-5-sonnet", AN, 3.0, 15.0),
    ("claude-3-5-haiku", AN, 0.80, 4.0),
    ("claude-3-opus", AN, 15.0, 75.0),
    ("claude-3-haiku", AN, 0.25, 1.25),
    // Cohere (https://cohere.com/pricing)
    ("command-a", CO, 2.50, 10.0),
    ("command-r-plus", CO, 2.50, 10.0),
    ("command-r", CO, 0.15, 0.60),
    ("command-r7b", CO, 0.0375, 0.15),
    ("embed-v4.0", CO, 0.12, 0.0),
    ("embed-english-v3.0", CO, 0.10, 0.0),
    ("embed-multilingual-v3.0", CO, 0.10, 0.0),
    ("embed-english-light-v3.0", CO, 0.10, 0.0),
    // Google Gemini API and Vertex AI (https://ai.google.dev/pricing; prompts up to 200k tokens)
    ("gemini-2.5-pro", GG, 1.25, 10.0),
    ("gemini-2.5-flash", GG, 0.30, 2.50),
    ("gemini-2.5-flash-lite", GG, 0.10, 0.40),
    ("gemini-2.0-flash", GG, 0.10, 0.40),
    ("gemini-2.0-flash-lite", GG, 0.075, 0.30),
    ("gemini-embedding-001", GG, 0.15, 0.0),
    // Mistral (https://mistral.ai/pricing)
    ("mistral-large", MI, 2.0, 6.0),
    ("mistral-medium", MI, 0.40, 2.0),
    ("mistral-small", MI, 0.10, 0.30),
    ("magistral-medium", MI, 2.0, 5.0),
    ("magistral-small", MI, 0.50, 1.50),
    ("codestral", MI, 0.30, 0.90),
    ("devstral-medium", MI, 0.40, 2.0),
    ("devstral-small", MI, 0.10, 0.30),
    ("ministral-8b", MI, 0.10, 0.10),
    ("ministral-3b", MI, 0.04, 0.04),
    ("pixtral-large", MI, 2.0, 6.0),
    ("open-mistral-nemo", MI, 0.15, 0.15),
    ("mistral-embed", MI, 0.10, 0.0),
    // Groq (https://groq.com/pricing)
    ("llama-3.3-70b-versatile", GQ, 0.59, 0.79),
    ("llama-3.1-8b-instant", GQ, 0.05, 0.08),
    ("llama-4-scout-17b-16e-instruct", GQ, 0.11, 0.34),
    ("llama-4-maverick-17b-128e-instruct", GQ, 0.20, 0.60),
    ("gpt-oss-120b", GQ, 0.15, 0.75),
    ("gpt-oss-20b", GQ, 0.10, 0.50),
    ("qwen3-32b", GQ, 0.29, 0.59),
    ("kimi-k2-instruct", GQ, 1.0, 3.0),
    // Perplexity (https://docs.perplexity.ai/getting-started/pricing; token prices, request fees not included)
    ("sonar", PX, 1.0, 1.0),
    ("sonar-pro", PX, 3.0, 15.0),
    ("sonar-reasoning", PX, 1.0, 5.0),
    ("sonar-reasoning-pro", PX, 2.0, 8.0),
    ("sonar-deep-research", PX, 2.0, 8.0),
    // Anyscale Endpoints (last published list; the service is closed to new accounts)
    ("Meta-Llama-3-70B-Instruct", AS, 1.0, 1.0),
    ("Meta-Llama-3-8B-Instruct", AS, 0.15, 0.15),
    ("Mixtral-8x7B-Instruct-v0.1", AS, 0.50, 0.50),
    ("Mixtral-8x22B-Instruct-v0.1", AS, 0.90, 0.90),
];

/// The built-in `echo` model's fictitious price, so that cost accounting and
/// budgets can be exercised without a real provider.
pub const ECHO_PRICE: Price = Price {
    input_per_mtok: 1.0,
    output_per_mtok: 2.0,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.input_per_mtok + completion as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// Model names a built-in provider entry serves (for `/v1/models`).
pub fn models_of_provider(entry: &str) -> impl Iterator<Item = &'static str> {
    TABLE
        .iter()
        .filter(move |e| e.1.contains(&entry))
        .map(|e| e.0)
}

/// The built-in entry the OpenAI surface routes a listed model to (longest
/// listed prefix, as for prices).
pub fn provider_of(model: &str) -> Option<&'static str> {
    lookup(model).and_then(|e| e.1.first().copied())
}

/// Every row of the table: (model, provider entries, input, output).
pub fn table() -> &'static [(&'static str, &'static [&'static str], f64, f64)] {
    TABLE
}

pub struct Prices {
    overrides: HashMap<String, Price>,
}

impl Prices {
    pub fn new(config: &crate::config::Config) -> Prices {
        let mut overrides = HashMap::new();
        for m in &config.models {
            if m.input_per_mtok.is_some() || m.output_per_mtok.is_some() {
                let base = m.model.as_deref().and_then(builtin).unwrap_or(Price {
                    input_per_mtok: 0.0,
                    output_per_mtok: 0.0,
                });
                overrides.insert(
                    m.name.clone(),
                    Price {
                        input_per_mtok: m.input_per_mtok.unwrap_or(base.input_per_mtok),
                        output_per_mtok: m.output_per_mtok.unwrap_or(base.output_per_mtok),
                    },
                );
            }
        }
        Prices { overrides }
    }

    /// The price of `model` (the client's name) whose upstream name is `upstream`.
    pub fn price(&self, model: &str, upstream: &str) -> Option<Price> {
        if let Some(p) = self.overrides.get(model) {
            return Some(*p);
        }
        if model == "echo" {
            return Some(ECHO_PRICE);
        }
        builtin(upstream).or_else(|| builtin(model))
    }
}

type Row = (&'static str, &'static [&'static str], f64, f64);

/// Exact match, else the longest prefix followed by `-`.
fn lookup(model: &str) -> Option<&'static Row> {
    let model = model.rsplit('/').next().unwrap_or(model);
    let mut best: Option<&'static Row> = None;
    for row in TABLE {
        let name = row.0;
        let hit = model == name
            || (model.starts_with(name) && model.as_bytes().get(name.len()) == Some(&b'-'));
        if hit && best.is_none_or(|b| name.len() > b.0.len()) {
            best = Some(row);
        }
    }
    best
}

/// The built-in price of a model.
pub fn builtin(model: &str) -> Option<Price> {
    lookup(model).map(|r| Price {
        input_per_mtok: r.2,
        output_per_mtok: r.3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(
            builtin("gpt-4o-mini-2024-07-18").map(|p| p.input_per_mtok),
            Some(0.15)
        );
        assert_eq!(
            builtin("gpt-4o-2024-08-06").map(|p| p.input_per_mtok),
            Some(2.50)
        );
        assert_eq!(
            builtin("claude-sonnet-4-5-20250929").map(|p| p.output_per_mtok),
            Some(15.0)
        );
        assert_eq!(
            builtin("openai/gpt-4o").map(|p| p.input_per_mtok),
            Some(2.50)
        );
        assert!(builtin("llama3.1:8b").is_none());
        assert_eq!(
            builtin("gemini-2.5-flash-lite-preview-09-2025").map(|p| p.input_per_mtok),
            Some(0.10)
        );
        assert_eq!(
            builtin("mistral-large-latest").map(|p| p.output_per_mtok),
            Some(6.0)
        );
        assert_eq!(
            builtin("command-r-plus-08-2024").map(|p| p.input_per_mtok),
            Some(2.50)
        );
        assert_eq!(
            builtin("command-r-08-2024").map(|p| p.input_per_mtok),
            Some(0.15)
        );
        assert_eq!(
            builtin("meta-llama/Meta-Llama-3-8B-Instruct").map(|p| p.input_per_mtok),
            Some(0.15)
        );
        assert_eq!(provider_of("sonar-pro"), Some("perplexity"));
        assert_eq!(provider_of("gemini-2.5-pro"), Some("gemini"));
        assert_eq!(provider_of("gpt-4o"), Some("openai"));
        assert!(models_of_provider("vertex").any(|m| m == "gemini-2.5-flash"));
        assert!(builtin("gpt-4oo").is_none());
        let p = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        };
        assert!((p.cost(1_000_000, 500_000) - 2.0).abs() < 1e-12);
    }
}
