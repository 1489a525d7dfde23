//! Metadata filters, planned once for both adapters.
//!
//! A client's metadata lives in each point's payload under [`META_KEY`]: key `k` is the
//! payload path `meta.k`. A [`MetaFilter`] becomes Qdrant conditions here, as adapter-neutral
//! [`MetaCond`]s that each adapter only spells in its own types, so the embedded store and a
//! Qdrant server filter alike (the contract suite checks both against the same cases).
//!
//! How each test becomes a Qdrant condition, and what follows from it:
//! * `eq` a string: a keyword match. It matches a string value equal to it, or an array of
//!   strings holding it; never a number (`"5"` is not `5`).
//! * `eq` a number: a range `gte = lte = x`. Qdrant's integer match would miss a value stored
//!   as a float (`5.0`) and has no float form; a range compares every number as a 64-bit
//!   float, so `5` equals `5.0` and a float can be matched at all. Never a string.
//! * `eq` a boolean: a boolean match.
//! * `any`: the values' conditions as above, one of which must hold (a nested `should`; the
//!   strings together as one keyword-any match).
//! * `range`: a range; only number values are in a range (a string never is).
//! * `must_not`: Qdrant's `must_not`: a point is excluded when the condition holds for it, so
//!   a point without the key (for which no condition holds) is kept.
//!
//! The `meta.*` paths have no payload index: the keys are the client's and unknown ahead of
//! time. Qdrant checks an unindexed condition by reading each candidate's payload: the
//! org's points (found through the `org_id` tenant index) when the planner expects few
//! matches, else each point the HNSW graph search visits. So a metadata filter costs time in
//! proportion to the points it has to look at, not to the matches.

use heimdex_domain::MetaFilter;
use heimdex_domain::metadata::{MetaCondition, MetaRange, MetaScalar, MetaTest};

use crate::META_KEY;

/// One condition in adapter-neutral form; `path` is the payload path (`meta.<key>`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum MetaCond {
    Keyword {
        path: String,
        value: String,
    },
    Keywords {
        path: String,
        values: Vec<String>,
    },
    Bool {
        path: String,
        value: bool,
    },
    Range {
        path: String,
        range: MetaRange,
    },
    /// At least one holds.
    AnyOf(Vec<MetaCond>),
}

/// The conditions a filter adds: `(must, must_not)`.
pub(crate) fn plan(filter: &MetaFilter) -> (Vec<MetaCond>, Vec<MetaCond>) {
    (
        filter.must.iter().map(condition).collect(),
        filter.must_not.iter().map(condition).collect(),
    )
}

fn condition(c: &MetaCondition) -> MetaCond {
    let path = format!("{META_KEY}.{}", c.key);
    match &c.test {
        MetaTest::Eq(value) => scalar(&path, value),
        MetaTest::Range(range) => MetaCond::Range {
            path,
            range: *range,
        },
        MetaTest::Any(values) => {
            let strings: Vec<String> = values
                .iter()
                .filter_map(|v| match v {
                    MetaScalar::String(s) => Some(s.clone()),
                    MetaScalar::Number(_) | MetaScalar::Bool(_) => None,
                })
                .collect();
            let mut any: Vec<MetaCond> = values
                .iter()
                .filter(|v| !matches!(v, MetaScalar::String(_)))
                .map(|v| scalar(&path, v))
                .collect();
            match strings.len() {
                0 => {}
                1 => any.push(MetaCond::Keyword {
                    path: path.clone(),
                    value: strings.into_iter().next().unwrap_or_default(),
                }),
                _ => any.push(MetaCond::Keywords {
                    path: path.clone(),
                    values: strings,
                }),
            }
            if any.len() == 1 {
                any.pop().unwrap_or(MetaCond::AnyOf(Vec::new()))
            } else {
                MetaCond::AnyOf(any)
            }
        }
    }
}

fn scalar(path: &str, value: &MetaScalar) -> MetaCond {
    let path = path.to_owned();
    match value {
        MetaScalar::String(s) => MetaCond::Keyword {
            path,
            value: s.clone(),
        },
        MetaScalar::Bool(b) => MetaCond::Bool { path, value: *b },
        MetaScalar::Number(x) => MetaCond::Range {
            path,
            range: MetaRange {
                gte: Some(*x),
                lte: Some(*x),
                ..MetaRange::default()
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(eq: Option<serde_json::Value>, any: Option<Vec<serde_json::Value>>) -> MetaCond {
        condition(&MetaCondition::parse("k", eq, any, None).unwrap())
    }

    #[test]
    fn each_test_becomes_one_condition_on_meta_dot_key() {
        assert_eq!(
            cond(Some(json!("en")), None),
            MetaCond::Keyword {
                path: "meta.k".into(),
                value: "en".into()
            }
        );
        assert_eq!(
            cond(Some(json!(5)), None),
            MetaCond::Range {
                path: "meta.k".into(),
                range: MetaRange {
                    gte: Some(5.0),
                    lte: Some(5.0),
                    ..MetaRange::default()
                }
            }
        );
        assert_eq!(
            cond(None, Some(vec![json!("a"), json!("b")])),
            MetaCond::Keywords {
                path: "meta.k".into(),
                values: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            cond(None, Some(vec![json!(true)])),
            MetaCond::Bool {
                path: "meta.k".into(),
                value: true
            }
        );
        let MetaCond::AnyOf(mixed) = cond(None, Some(vec![json!("a"), json!(1), json!(false)]))
        else {
            panic!("mixed any-of is a should");
        };
        assert_eq!(mixed.len(), 3);
    }
}
