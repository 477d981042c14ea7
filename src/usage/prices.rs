//! Built-in price table (USD per million tokens), as published by the
//! providers on 2025-11-01; `[[models]]` entries in the config override it.
//! A dated model name (`gpt-4o-2024-08-06`) takes the price of the longest
//! listed prefix (`gpt-4o`).

use std::collections::HashMap;

use crate::providers::Kind;

pub const TABLE_DATE: &str = "2025-11-01";

/// (model, kind, input USD/Mtok, output USD/Mtok)
const TABLE: &[(&str, Kind, f64, f64)] = &[
    ("gpt-5", Kind::OpenAi, 1.25, 10.0),
    ("gpt-5-mini", Kind::OpenAi, 0.25, 2.0),
    ("gpt-5-nano", Kind::OpenAi, 0.05, 0.40),
    ("gpt-5-chat-latest", Kind::OpenAi, 1.25, 10.0),
    ("gpt-4.1", Kind::OpenAi, 2.0, 8.0),
    ("gpt-4.1-mini", Kind::OpenAi, 0.40, 1.60),
    ("gpt-4.1-nano", Kind::OpenAi, 0.10, 0.40),
    ("gpt-4o", Kind::OpenAi, 2.50, 10.0),
    ("gpt-4o-mini", Kind::OpenAi, 0.15, 0.60),
    ("gpt-4-turbo", Kind::OpenAi, 10.0, 30.0),
    ("gpt-4", Kind::OpenAi, 30.0, 60.0),
    ("gpt-3.5-turbo", Kind::OpenAi, 0.50, 1.50),
    ("o1", Kind::OpenAi, 15.0, 60.0),
    ("o1-mini", Kind::OpenAi, 1.10, 4.40),
    ("o3", Kind::OpenAi, 2.0, 8.0),
    ("o3-mini", Kind::OpenAi, 1.10, 4.40),
    ("o4-mini", Kind::OpenAi, 1.10, 4.40),
    ("text-embedding-3-small", Kind::OpenAi, 0.02, 0.0),
    ("text-embedding-3-large", Kind::OpenAi, 0.13, 0.0),
    ("text-embedding-ada-002", Kind::OpenAi, 0.10, 0.0),
    ("claude-opus-4-1", Kind::Anthropic, 15.0, 75.0),
    ("claude-opus-4", Kind::Anthropic, 15.0, 75.0),
    ("claude-sonnet-4-5", Kind::Anthropic, 3.0, 15.0),
    ("claude-sonnet-4", Kind::Anthropic, 3.0, 15.0),
    ("claude-haiku-4-5", Kind::Anthropic, 1.0, 5.0),
    ("claude-3-7-sonnet", Kind::Anthropic, 3.0, 15.0),
    ("claude-3-5-sonnet", Kind::Anthropic, 3.0, 15.0),
    ("claude-3-5-haiku", Kind::Anthropic, 0.80, 4.0),
    ("claude-3-opus", Kind::Anthropic, 15.0, 75.0),
    ("claude-3-haiku", Kind::Anthropic, 0.25, 1.25),
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

/// Model names of one kind in the table (for `/v1/models`).
pub fn models_of_kind(kind: Kind) -> impl Iterator<Item = &'static str> {
    TABLE.iter().filter(move |e| e.1 == kind).map(|e| e.0)
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

/// Exact match, else the longest prefix followed by `-`.
pub fn builtin(model: &str) -> Option<Price> {
    let model = model.rsplit('/').next().unwrap_or(model);
    let mut best: Option<(usize, Price)> = None;
    for (name, _, i, o) in TABLE {
        let hit = model == *name
            || (model.starts_with(name) && model.as_bytes().get(name.len()) == Some(&b'-'));
        if hit && best.is_none_or(|(len, _)| name.len() > len) {
            best = Some((
                name.len(),
                Price {
                    input_per_mtok: *i,
                    output_per_mtok: *o,
                },
            ));
        }
    }
    best.map(|(_, p)| p)
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
        assert!(builtin("gpt-4oo").is_none());
        let p = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        };
        assert!((p.cost(1_000_000, 500_000) - 2.0).abs() < 1e-12);
    }
}
