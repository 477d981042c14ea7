//! Dynamic SQL pieces shared by the stores: bind values, `WHERE` builders
//! with `$N` placeholders, and the usage filter's conditions (so every view of
//! usage — admin API, CLI, console — counts the same rows).

use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use super::UsageFilter;

/// A bind value for dynamically built queries.
pub(crate) enum Arg {
    S(Option<String>),
    I(Option<i64>),
}

pub(crate) fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    args: &'q [Arg],
) -> Query<'q, Any, AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::S(s) => q.bind(s.as_deref()),
            Arg::I(i) => q.bind(*i),
        };
    }
    q
}

/// Builds a `WHERE` clause with `$N` placeholders.
#[derive(Default)]
pub(crate) struct Where {
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl Where {
    pub(crate) fn push(&mut self, sql: &str, arg: Arg) {
        self.args.push(arg);
        self.clauses
            .push(sql.replace('?', &format!("${}", self.args.len())));
    }
    pub(crate) fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
    pub(crate) fn next_placeholder(&self) -> String {
        format!("${}", self.args.len() + 1)
    }
    /// Bind the clauses' values to a query built from `sql()`.
    pub(crate) fn bind<'q>(
        &'q self,
        q: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        bind_all(q, &self.args)
    }
}

/// The conditions of a usage filter.
pub(crate) fn usage_where(f: &UsageFilter) -> Where {
    let mut w = Where::default();
    for (col, v) in [
        ("key_id", &f.key_id),
        ("user_name", &f.user),
        ("team", &f.team),
        ("model", &f.model),
        ("provider", &f.provider),
    ] {
        if let Some(v) = v {
            w.push(&format!("{col} = ?"), Arg::S(Some(v.clone())));
        }
    }
    if let Some(s) = f.since {
        w.push("created_at >= ?", Arg::I(Some(s)));
    }
    if let Some(u) = f.until {
        w.push("created_at < ?", Arg::I(Some(u)));
    }
    w
}
