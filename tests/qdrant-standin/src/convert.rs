//! Translation between Qdrant's gRPC messages (`qdrant_client::qdrant`) and the engine's own
//! types (`qdrant_edge`), which are the types the Qdrant server itself uses internally.
//!
//! Only what the served RPCs need is translated. A request that uses a feature the stand-in
//! does not translate (geo filters, multi-dense vectors, …) gets `Unimplemented` naming
//! that feature, never a silently different answer.

use std::collections::HashMap;

use qdrant_client::qdrant as grpc;
use qdrant_client::qdrant::value::Kind;
use qdrant_edge as edge;
use qdrant_edge::external::ordered_float::OrderedFloat;
use tonic::Status;

/// A feature of a served RPC that the stand-in does not implement.
pub(crate) fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "qdrant-standin does not implement {what} (it serves only what Heimdex uses)"
    ))
}

/// Engine error → gRPC status, with the classes the Qdrant server uses.
pub(crate) fn map_edge_err(e: edge::OperationError) -> Status {
    use edge::OperationError as E;
    let msg = e.to_string();
    match e {
        E::WrongVectorDimension { .. }
        | E::VectorNameNotExists { .. }
        | E::TypeError { .. }
        | E::TypeInferenceError { .. }
        | E::ValidationError { .. }
        | E::WrongSparse
        | E::WrongMulti
        | E::MissingRangeIndexForOrderBy { .. }
        | E::MissingMapIndexForFacet { .. }
        | E::VariableTypeError { .. }
        | E::NonFiniteNumber { .. } => Status::invalid_argument(format!("Wrong input: {msg}")),
        E::PointIdError { .. } => Status::not_found(format!("Not found: {msg}")),
        E::Timeout { .. } => Status::deadline_exceeded(msg),
        E::Cancelled { .. } => Status::cancelled(msg),
        E::OutOfMemory { .. } => Status::resource_exhausted(msg),
        E::ServiceError { .. } | E::InconsistentStorage { .. } => {
            Status::internal(format!("Service internal error: {msg}"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Point ids

pub(crate) fn point_id_in(id: Option<grpc::PointId>) -> Result<edge::PointId, Status> {
    use grpc::point_id::PointIdOptions;
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Num(n)) => Ok(edge::PointId::NumId(n)),
        Some(PointIdOptions::Uuid(s)) => uuid::Uuid::parse_str(&s)
            .map(edge::PointId::Uuid)
            .map_err(|e| Status::invalid_argument(format!("Unable to parse UUID: {s}: {e}"))),
        None => Err(Status::invalid_argument("Empty ID is not allowed")),
    }
}

pub(crate) fn point_ids_in(ids: Vec<grpc::PointId>) -> Result<Vec<edge::PointId>, Status> {
    ids.into_iter().map(|id| point_id_in(Some(id))).collect()
}

pub(crate) fn point_id_out(id: edge::PointId) -> grpc::PointId {
    use grpc::point_id::PointIdOptions;
    let options = match id {
        edge::PointId::NumId(n) => PointIdOptions::Num(n),
        edge::PointId::Uuid(u) => PointIdOptions::Uuid(u.to_string()),
    };
    grpc::PointId {
        point_id_options: Some(options),
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads (the engine keeps them as JSON, like the server)

pub(crate) fn payload_in(fields: HashMap<String, grpc::Value>) -> edge::Payload {
    edge::Payload(
        fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

pub(crate) fn payload_out(payload: Option<edge::Payload>) -> HashMap<String, grpc::Value> {
    payload
        .map(|p| {
            p.0.into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect()
        })
        .unwrap_or_default()
}

fn value_to_json(v: grpc::Value) -> serde_json::Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::IntegerValue(i)) => serde_json::Value::from(i),
        Some(Kind::DoubleValue(d)) => serde_json::Number::from_f64(d)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
    }
}

/// Integers that fit `i64` come back as integers, every other number as a double: the
/// server's rule.
fn json_to_value(v: serde_json::Value) -> grpc::Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(grpc::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(grpc::Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    grpc::Value { kind: Some(kind) }
}

pub(crate) fn json_path(key: &str) -> Result<edge::JsonPath, Status> {
    edge::JsonPath::try_from(key)
        .map_err(|()| Status::invalid_argument(format!("Wrong input: bad payload key {key:?}")))
}

// ---------------------------------------------------------------------------------------------
// Vectors

/// A point's vectors: one unnamed dense vector, or named dense and sparse vectors (the
/// unnamed one under the name `""`).
pub(crate) fn vectors_in(
    vectors: Option<grpc::Vectors>,
) -> Result<edge::VectorStructPersisted, Status> {
    use grpc::vectors::VectorsOptions;
    match vectors.and_then(|v| v.vectors_options) {
        Some(VectorsOptions::Vector(v)) => match vector_in(v)? {
            edge::VectorPersisted::Dense(d) => Ok(edge::VectorStructPersisted::Single(d)),
            edge::VectorPersisted::Sparse(_) | edge::VectorPersisted::MultiDense(_) => Err(
                Status::invalid_argument("Wrong input: the unnamed vector must be dense"),
            ),
        },
        Some(VectorsOptions::Vectors(named)) => Ok(edge::VectorStructPersisted::Named(
            named
                .vectors
                .into_iter()
                .map(|(name, v)| Ok((name, vector_in(v)?)))
                .collect::<Result<_, Status>>()?,
        )),
        None => Err(Status::invalid_argument("Wrong input: point has no vector")),
    }
}

fn vector_in(v: grpc::Vector) -> Result<edge::VectorPersisted, Status> {
    use grpc::vector::Vector;
    #[allow(deprecated)]
    match v.vector {
        Some(Vector::Dense(d)) => Ok(edge::VectorPersisted::Dense(d.data)),
        Some(Vector::Sparse(s)) => sparse_in(s.indices, s.values),
        // Older clients send the values in the deprecated `data` field, with `indices` beside
        // them for a sparse vector (and `vectors_count` for a multi-dense one).
        None if v.vectors_count.is_none() => match v.indices {
            None => Ok(edge::VectorPersisted::Dense(v.data)),
            Some(indices) => sparse_in(indices.data, v.data),
        },
        None | Some(Vector::MultiDense(_)) => Err(unsupported("multi-dense vectors")),
        Some(Vector::Document(_) | Vector::Image(_) | Vector::Object(_)) => {
            Err(unsupported("server-side inference"))
        }
    }
}

fn sparse_in(indices: Vec<u32>, values: Vec<f32>) -> Result<edge::VectorPersisted, Status> {
    Ok(edge::VectorPersisted::Sparse(sparse_vector_in(
        indices, values,
    )?))
}

/// A sparse vector, checked as the server checks it (as many values as indices, no index
/// twice).
pub(crate) fn sparse_vector_in(
    indices: Vec<u32>,
    values: Vec<f32>,
) -> Result<edge::SparseVector, Status> {
    if indices.len() != values.len() {
        return Err(Status::invalid_argument(
            "Wrong input: sparse vector has a different number of indices and values",
        ));
    }
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(Status::invalid_argument(
            "Wrong input: sparse vector indices must be unique",
        ));
    }
    Ok(edge::SparseVector { indices, values })
}

pub(crate) fn vectors_out(v: Option<edge::VectorStructInternal>) -> Option<grpc::VectorsOutput> {
    use grpc::vectors_output::VectorsOptions;
    let options = match v? {
        edge::VectorStructInternal::Single(dense) => VectorsOptions::Vector(dense_out(dense)),
        edge::VectorStructInternal::MultiDense(_) => return None,
        edge::VectorStructInternal::Named(mut named) => {
            // The default vector alone is what a single-vector collection answers.
            if named.len() == 1
                && let Some(edge::VectorInternal::Dense(dense)) =
                    named.remove(edge::DEFAULT_VECTOR_NAME)
            {
                VectorsOptions::Vector(dense_out(dense))
            } else {
                VectorsOptions::Vectors(grpc::NamedVectorsOutput {
                    vectors: named
                        .into_iter()
                        .filter_map(|(name, v)| match v {
                            edge::VectorInternal::Dense(d) => Some((name, dense_out(d))),
                            edge::VectorInternal::Sparse(s) => Some((name, sparse_out(s))),
                            edge::VectorInternal::MultiDense(_) => None,
                        })
                        .collect(),
                })
            }
        }
    };
    Some(grpc::VectorsOutput {
        vectors_options: Some(options),
    })
}

fn dense_out(data: Vec<f32>) -> grpc::VectorOutput {
    grpc::VectorOutput {
        vector: Some(grpc::vector_output::Vector::Dense(grpc::DenseVector {
            data,
        })),
        ..grpc::VectorOutput::default()
    }
}

fn sparse_out(v: edge::SparseVector) -> grpc::VectorOutput {
    grpc::VectorOutput {
        vector: Some(grpc::vector_output::Vector::Sparse(grpc::SparseVector {
            values: v.values,
            indices: v.indices,
        })),
        ..grpc::VectorOutput::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Queries (the query API: prefetches, nearest, fusion, MMR)

/// Qdrant's RRF constant when a request names none.
const DEFAULT_RRF_K: u32 = 2;
/// Qdrant's MMR diversity when a request names none.
const DEFAULT_MMR_DIVERSITY: f32 = 0.5;

/// A query (with the vector it uses) as the engine's scoring query. `limit` is the node's own
/// limit: MMR preselects that many candidates unless told otherwise, as on the server.
pub(crate) fn query_in(
    query: Option<grpc::Query>,
    using: Option<String>,
    limit: usize,
) -> Result<Option<edge::ScoringQuery>, Status> {
    use grpc::query::Variant;
    let using = using.filter(|u| !u.is_empty());
    let Some(variant) = query.and_then(|q| q.variant) else {
        return Ok(None);
    };
    let scoring = match variant {
        Variant::Nearest(input) => {
            edge::ScoringQuery::Vector(edge::QueryEnum::Nearest(edge::NamedQuery {
                query: vector_input_in(input)?,
                using,
            }))
        }
        Variant::Fusion(fusion) => match grpc::Fusion::try_from(fusion) {
            Ok(grpc::Fusion::Rrf) => edge::ScoringQuery::Fusion(edge::Fusion::Rrf {
                k: DEFAULT_RRF_K as usize,
                weights: None,
            }),
            Ok(grpc::Fusion::Dbsf) => edge::ScoringQuery::Fusion(edge::Fusion::Dbsf),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "Wrong input: unknown fusion {fusion}"
                )));
            }
        },
        Variant::Rrf(rrf) => {
            let k = rrf.k.unwrap_or(DEFAULT_RRF_K);
            if k == 0 {
                return Err(Status::invalid_argument(
                    "Validation error in body: [rrf.k: value 0 invalid, must be 1 or larger]",
                ));
            }
            if rrf.weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
                return Err(Status::invalid_argument(
                    "Validation error in body: [rrf.weights: must be finite and non-negative]",
                ));
            }
            edge::ScoringQuery::Fusion(edge::Fusion::Rrf {
                k: k as usize,
                weights: (!rrf.weights.is_empty())
                    .then(|| rrf.weights.into_iter().map(OrderedFloat).collect()),
            })
        }
        Variant::NearestWithMmr(input) => {
            let vector = vector_input_in(input.nearest.ok_or_else(|| {
                Status::invalid_argument("Wrong input: nearest_with_mmr without a vector")
            })?)?;
            let mmr = input.mmr.unwrap_or_default();
            let diversity = mmr.diversity.unwrap_or(DEFAULT_MMR_DIVERSITY);
            if !(0.0..=1.0).contains(&diversity) {
                return Err(Status::invalid_argument(
                    "Validation error in body: [mmr.diversity: must be between 0 and 1]",
                ));
            }
            edge::ScoringQuery::Mmr(edge::Mmr {
                vector,
                using: using.unwrap_or_default(),
                lambda: OrderedFloat(1.0 - diversity),
                candidates_limit: mmr.candidates_limit.map_or(limit, |c| c as usize),
            })
        }
        Variant::Recommend(_)
        | Variant::Discover(_)
        | Variant::Context(_)
        | Variant::OrderBy(_)
        | Variant::Sample(_)
        | Variant::Formula(_)
        | Variant::RelevanceFeedback(_)
        | Variant::Text(_) => {
            return Err(unsupported(
                "query types other than nearest, fusion, rrf and nearest_with_mmr",
            ));
        }
    };
    Ok(Some(scoring))
}

fn vector_input_in(input: grpc::VectorInput) -> Result<edge::VectorInternal, Status> {
    use grpc::vector_input::Variant as Input;
    match input.variant {
        Some(Input::Dense(d)) => Ok(edge::VectorInternal::Dense(d.data)),
        Some(Input::Sparse(s)) => Ok(edge::VectorInternal::Sparse(sparse_vector_in(
            s.indices, s.values,
        )?)),
        Some(Input::Id(_)) => Err(unsupported("queries by point id")),
        Some(Input::MultiDense(_)) => Err(unsupported("multi-dense vectors")),
        Some(Input::Document(_) | Input::Image(_) | Input::Object(_)) => {
            Err(unsupported("server-side inference"))
        }
        None => Err(Status::invalid_argument("Wrong input: empty query vector")),
    }
}

/// Prefetches, recursively. Their filters are AND-ed with the request's by the engine.
pub(crate) fn prefetches_in(
    prefetch: Vec<grpc::PrefetchQuery>,
) -> Result<Vec<edge::Prefetch>, Status> {
    prefetch
        .into_iter()
        .map(|p| {
            if p.lookup_from.is_some() {
                return Err(unsupported("lookup_from"));
            }
            let limit = p
                .limit
                .map_or(10, |l| usize::try_from(l).unwrap_or(usize::MAX));
            Ok(edge::Prefetch {
                prefetches: prefetches_in(p.prefetch)?,
                query: query_in(p.query, p.using, limit)?,
                limit,
                params: None,
                filter: optional_filter_in(p.filter)?,
                score_threshold: p.score_threshold.map(OrderedFloat),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Selectors

/// `with_payload`; `default` is what the server does when the field is absent.
pub(crate) fn with_payload_in(
    selector: Option<grpc::WithPayloadSelector>,
    default: bool,
) -> Result<edge::WithPayloadInterface, Status> {
    use grpc::with_payload_selector::SelectorOptions;
    let paths = |fields: Vec<String>| -> Result<Vec<edge::JsonPath>, Status> {
        fields.iter().map(|f| json_path(f)).collect()
    };
    Ok(match selector.and_then(|s| s.selector_options) {
        None => edge::WithPayloadInterface::Bool(default),
        Some(SelectorOptions::Enable(b)) => edge::WithPayloadInterface::Bool(b),
        Some(SelectorOptions::Include(i)) => edge::WithPayloadInterface::Selector(
            edge::PayloadSelector::Include(edge::PayloadSelectorInclude::new(paths(i.fields)?)),
        ),
        Some(SelectorOptions::Exclude(e)) => edge::WithPayloadInterface::Selector(
            edge::PayloadSelector::Exclude(edge::PayloadSelectorExclude::new(paths(e.fields)?)),
        ),
    })
}

/// `with_vectors`; absent means no vectors, as on the server.
pub(crate) fn with_vectors_in(selector: Option<grpc::WithVectorsSelector>) -> edge::WithVector {
    use grpc::with_vectors_selector::SelectorOptions;
    match selector.and_then(|s| s.selector_options) {
        None => edge::WithVector::Bool(false),
        Some(SelectorOptions::Enable(b)) => edge::WithVector::Bool(b),
        Some(SelectorOptions::Include(names)) => edge::WithVector::Selector(names.names),
    }
}

// ---------------------------------------------------------------------------------------------
// Filters

pub(crate) fn filter_in(filter: grpc::Filter) -> Result<edge::Filter, Status> {
    let conditions = |cs: Vec<grpc::Condition>| -> Result<Option<Vec<edge::Condition>>, Status> {
        if cs.is_empty() {
            return Ok(None);
        }
        cs.into_iter()
            .map(condition_in)
            .collect::<Result<_, _>>()
            .map(Some)
    };
    let min_should = match filter.min_should {
        Some(m) => Some(edge::MinShould {
            conditions: conditions(m.conditions)?.unwrap_or_default(),
            min_count: usize::try_from(m.min_count).unwrap_or(usize::MAX),
        }),
        None => None,
    };
    Ok(edge::Filter {
        should: conditions(filter.should)?,
        min_should,
        must: conditions(filter.must)?,
        must_not: conditions(filter.must_not)?,
    })
}

pub(crate) fn optional_filter_in(
    filter: Option<grpc::Filter>,
) -> Result<Option<edge::Filter>, Status> {
    filter.map(filter_in).transpose()
}

fn condition_in(c: grpc::Condition) -> Result<edge::Condition, Status> {
    use grpc::condition::ConditionOneOf;
    match c.condition_one_of {
        Some(ConditionOneOf::Field(f)) => field_condition_in(f),
        Some(ConditionOneOf::IsEmpty(c)) => Ok(edge::Condition::IsEmpty(
            edge::IsEmptyCondition::from(json_path(&c.key)?),
        )),
        Some(ConditionOneOf::IsNull(c)) => Ok(edge::Condition::IsNull(
            edge::IsNullCondition::from(json_path(&c.key)?),
        )),
        Some(ConditionOneOf::HasId(c)) => Ok(edge::Condition::HasId(
            point_ids_in(c.has_id)?.into_iter().collect(),
        )),
        Some(ConditionOneOf::Filter(f)) => Ok(edge::Condition::Filter(filter_in(f)?)),
        Some(ConditionOneOf::Nested(_)) => Err(unsupported("nested conditions")),
        Some(ConditionOneOf::HasVector(c)) => Ok(edge::Condition::HasVector(
            edge::HasVectorCondition::from(c.has_vector),
        )),
        Some(ConditionOneOf::Slice(_)) => Err(unsupported("slice conditions")),
        None => Err(Status::invalid_argument("Wrong input: empty condition")),
    }
}

fn field_condition_in(f: grpc::FieldCondition) -> Result<edge::Condition, Status> {
    let key = json_path(&f.key)?;
    let other = f.geo_bounding_box.is_some()
        || f.geo_radius.is_some()
        || f.geo_polygon.is_some()
        || f.values_count.is_some()
        || f.datetime_range.is_some()
        || f.is_empty.is_some()
        || f.is_null.is_some();
    let condition = match (f.r#match, f.range) {
        (Some(m), None) if !other => edge::FieldCondition::new_match(key, match_in(m)?),
        (None, Some(r)) if !other => edge::FieldCondition::new_range(
            key,
            edge::Range {
                lt: r.lt.map(OrderedFloat),
                gt: r.gt.map(OrderedFloat),
                gte: r.gte.map(OrderedFloat),
                lte: r.lte.map(OrderedFloat),
            },
        ),
        (None, None) if !other => {
            return Err(Status::invalid_argument(
                "Wrong input: field condition without a condition",
            ));
        }
        _ => {
            return Err(unsupported(
                "field conditions other than a single match or range",
            ));
        }
    };
    Ok(edge::Condition::Field(condition))
}

fn match_in(m: grpc::Match) -> Result<edge::Match, Status> {
    use edge::{AnyVariants, Match, MatchAny, MatchExcept, ValueVariants};
    use grpc::r#match::MatchValue as M;
    Ok(match m.match_value {
        Some(M::Keyword(s)) => Match::new_value(ValueVariants::String(s)),
        Some(M::Integer(i)) => Match::new_value(ValueVariants::Integer(i)),
        Some(M::Boolean(b)) => Match::new_value(ValueVariants::Bool(b)),
        Some(M::Text(t)) => Match::new_text(&t),
        Some(M::Keywords(k)) => Match::Any(MatchAny {
            any: AnyVariants::Strings(k.strings.into_iter().collect()),
        }),
        Some(M::Integers(i)) => Match::Any(MatchAny {
            any: AnyVariants::Integers(i.integers.into_iter().collect()),
        }),
        Some(M::ExceptKeywords(k)) => Match::Except(MatchExcept {
            except: AnyVariants::Strings(k.strings.into_iter().collect()),
        }),
        Some(M::ExceptIntegers(i)) => Match::Except(MatchExcept {
            except: AnyVariants::Integers(i.integers.into_iter().collect()),
        }),
        Some(M::Phrase(_) | M::TextAny(_) | M::Prefix(_) | M::Substring(_)) => {
            return Err(unsupported(
                "phrase, text_any, prefix and substring matches",
            ));
        }
        None => return Err(Status::invalid_argument("Wrong input: empty match")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip_keeps_integers_and_doubles_apart() {
        let json = serde_json::json!({
            "null": null, "b": true, "i": -42, "f": 2.5, "whole_f": 2.0,
            "s": "x", "arr": [1, "two", {"three": 3.5}], "obj": {"nested": [null]}
        });
        let serde_json::Value::Object(map) = json.clone() else {
            panic!("not an object");
        };
        let out = payload_out(Some(edge::Payload(map)));
        assert_eq!(
            out.get("i").and_then(|v| v.kind.clone()),
            Some(Kind::IntegerValue(-42))
        );
        assert_eq!(
            out.get("whole_f").and_then(|v| v.kind.clone()),
            Some(Kind::DoubleValue(2.0))
        );
        assert_eq!(serde_json::Value::Object(payload_in(out).0), json);
    }

    #[test]
    fn bad_ids_are_invalid_arguments() {
        let bad = grpc::PointId::from("not-a-uuid".to_owned());
        assert_eq!(
            point_id_in(Some(bad)).expect_err("bad uuid").code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            point_id_in(None).expect_err("no id").code(),
            tonic::Code::InvalidArgument
        );
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            point_id_in(Some(point_id_out(edge::PointId::Uuid(id)))).expect("roundtrip"),
            edge::PointId::Uuid(id)
        );
    }

    #[test]
    fn unsupported_conditions_are_unimplemented() {
        let filter = grpc::Filter::must([
            grpc::Condition::is_empty("a"),
            grpc::Condition::has_vector("bm25"),
            grpc::Condition {
                condition_one_of: Some(grpc::condition::ConditionOneOf::Slice(
                    grpc::SliceCondition::default(),
                )),
            },
        ]);
        assert_eq!(
            filter_in(filter).expect_err("slice").code(),
            tonic::Code::Unimplemented
        );
    }

    #[test]
    fn sparse_vectors_are_checked() {
        assert!(sparse_vector_in(vec![3, 1], vec![0.5, 1.0]).is_ok());
        assert_eq!(
            sparse_vector_in(vec![1, 1], vec![0.5, 1.0])
                .expect_err("twice")
                .code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            sparse_vector_in(vec![1], vec![0.5, 1.0])
                .expect_err("lengths")
                .code(),
            tonic::Code::InvalidArgument
        );
    }
}
