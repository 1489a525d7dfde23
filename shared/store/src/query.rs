//! What a search asks for ([`SearchMode`], [`Fusion`], [`Mmr`]), and the one query plan both
//! adapters run.
//!
//! A search is planned here, once, as a tree in the shape of Qdrant's query API (a root query
//! over prefetches, each a query over its own prefetches). Each adapter only translates the
//! tree node by node into its own types (`qdrant_edge` structs, or gRPC messages), so fusion
//! and MMR always run inside the engine, and the embedded store and a Qdrant server run the
//! same query.
//!
//! | mode | root query | prefetches |
//! |---|---|---|
//! | `dense` | nearest by the dense vector | none |
//! | `keyword` | nearest by the BM25 sparse vector (`using: bm25`) | none |
//! | `hybrid` | fusion (RRF or DBSF) | dense and keyword, `depth` each |
//! | any, with MMR | nearest by the dense vector, re-ranked by MMR | the mode's query, `candidates` deep |

use crate::keyword::{self, SparseVector};
use crate::{SearchRequest, StoreError};

/// Every leg of a hybrid search fetches at least this many candidates, however small the page:
/// fusion needs more than the page from each side to find the points both sides rank well.
pub const MIN_DEPTH: usize = 100;
/// Most candidates MMR may re-rank (its cost grows with the square of this).
pub const MAX_MMR_CANDIDATES: usize = 1_000;
/// The RRF constant of Cormack et al. (2009), used unless a request sets its own.
pub const DEFAULT_RRF_K: u32 = 60;
/// MMR's diversity unless a request sets its own (Qdrant's default).
pub const DEFAULT_DIVERSITY: f32 = 0.5;
/// Results asked of the engine beyond `offset + limit`. Qdrant's fusion leaves points with
/// equal scores in no particular order (and RRF gives equal scores often: ranks 1 and 3 sum as
/// ranks 3 and 1 do), so the store orders equal scores by point id; the extra results let it
/// see the whole tie at the edge of the page, so pages do not overlap or skip a point.
pub(crate) const TIE_SLACK: usize = 16;

/// How a search ranks points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SearchMode {
    /// Dense and keyword results fused ([`Fusion`]). Needs a vector; without query text only
    /// the dense side can run, and the search is [`SearchMode::Dense`].
    #[default]
    Hybrid,
    /// Cosine similarity of the dense vectors.
    Dense,
    /// BM25 over the points' text. Needs query text.
    Keyword,
}

impl SearchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Dense => "dense",
            SearchMode::Keyword => "keyword",
        }
    }
}

/// How hybrid search merges its two ranked lists.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fusion {
    /// Reciprocal rank fusion: a point scores `Σ 1 / (k + rank / weight)` over the lists it is
    /// in, `rank` counted from 1. With both weights 1 this is Cormack et al.'s RRF.
    Rrf {
        k: u32,
        dense_weight: f32,
        keyword_weight: f32,
    },
    /// Distribution-based score fusion: each list's scores are scaled by their mean ± 3
    /// standard deviations into [0, 1], then summed.
    Dbsf,
}

impl Fusion {
    /// The `k` to send to Qdrant. Qdrant scores a list position `p` (from 0) as
    /// `1 / ((p + 1) / weight + k − 1)`, so Qdrant's `k + 1` is this crate's `k`.
    pub(crate) fn engine_k(k: u32) -> u32 {
        k.saturating_add(1)
    }
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf {
            k: DEFAULT_RRF_K,
            dense_weight: 1.0,
            keyword_weight: 1.0,
        }
    }
}

/// Maximal marginal relevance: re-rank the best `candidates` of the mode's results so each
/// next result is relevant to the query (dense cosine) but unlike those already chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mmr {
    /// 0 = pure relevance, 1 = pure diversity.
    pub diversity: f32,
    /// How many of the mode's best results are re-ranked.
    pub candidates: usize,
}

/// One side of a search.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Leg {
    Dense(Vec<f32>),
    Keyword(SparseVector),
}

/// How a node of the plan scores points.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scoring {
    /// Nearest neighbours by one leg's vector.
    Nearest(Leg),
    /// Fusion of the node's prefetches.
    Fusion(Fusion),
    /// Nearest by the dense vector, then MMR over the `candidates` best.
    Mmr {
        vector: Vec<f32>,
        diversity: f32,
        candidates: usize,
    },
}

/// A node of the query tree: score the prefetched points (or, without prefetches, the
/// collection) and keep the best `limit`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub prefetch: Vec<Node>,
    pub scoring: Scoring,
    pub limit: usize,
}

/// The whole search: the root node (whose `limit` covers `offset + limit`: the first `offset`
/// are dropped after the engine answers), and the legs that `explain` runs on their own.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Plan {
    pub root: Node,
    pub offset: usize,
    pub limit: usize,
    /// Whether the engine's order is by score (everything but MMR, whose order is its
    /// selection order while the scores are the query similarities).
    pub ordered_by_score: bool,
    pub explain: Vec<(LegKind, Node)>,
}

/// Which list an explanation entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LegKind {
    Dense,
    Keyword,
}

impl SearchRequest {
    /// The mode the search actually runs: `hybrid` without query text is `dense`.
    pub fn effective_mode(&self) -> SearchMode {
        match self.mode {
            SearchMode::Hybrid if self.text.is_none() => SearchMode::Dense,
            mode @ (SearchMode::Hybrid | SearchMode::Dense | SearchMode::Keyword) => mode,
        }
    }
}

/// Checks a request and plans it. `vector_size` is the collection's dense dimension.
pub(crate) fn plan(req: &SearchRequest, vector_size: usize) -> Result<Plan, StoreError> {
    if let Some(vector) = &req.vector {
        crate::check_vector(vector, vector_size, "search")?;
    }
    if let Some(threshold) = req.score_threshold
        && !threshold.is_finite()
    {
        return Err(StoreError::InvalidInput(
            "score_threshold must be a finite number".into(),
        ));
    }
    let end = req.offset.saturating_add(req.limit);
    let mode = req.effective_mode();
    let dense = || {
        req.vector.clone().map(Leg::Dense).ok_or_else(|| {
            StoreError::InvalidInput(format!("{} search needs a query vector", mode.as_str()))
        })
    };
    let keyword = || {
        req.text
            .as_deref()
            .map(|text| Leg::Keyword(keyword::query(text)))
            .ok_or_else(|| StoreError::InvalidInput("keyword search needs query text".into()))
    };
    if let Fusion::Rrf {
        k,
        dense_weight,
        keyword_weight,
    } = req.fusion
    {
        if k == 0 {
            return Err(StoreError::InvalidInput("RRF k must be at least 1".into()));
        }
        for (name, w) in [("dense", dense_weight), ("keyword", keyword_weight)] {
            if !w.is_finite() || w < 0.0 {
                return Err(StoreError::InvalidInput(format!(
                    "RRF {name} weight must be a finite number >= 0"
                )));
            }
        }
        if dense_weight == 0.0 && keyword_weight == 0.0 {
            return Err(StoreError::InvalidInput(
                "RRF weights may not both be 0".into(),
            ));
        }
    }
    if let Some(mmr) = req.mmr {
        if !(0.0..=1.0).contains(&mmr.diversity) {
            return Err(StoreError::InvalidInput(format!(
                "MMR diversity must be in 0..1, got {}",
                mmr.diversity
            )));
        }
        if mmr.candidates < end || mmr.candidates > MAX_MMR_CANDIDATES {
            return Err(StoreError::InvalidInput(format!(
                "MMR candidates must be at least offset + limit ({end}) and at most \
                 {MAX_MMR_CANDIDATES}, got {}",
                mmr.candidates
            )));
        }
    }

    // Each leg fetches enough for the page, at least MIN_DEPTH, and at least what MMR re-ranks.
    let depth = end.max(MIN_DEPTH).max(req.mmr.map_or(0, |m| m.candidates));
    let leaf = |leg: Leg, limit: usize| Node {
        prefetch: Vec::new(),
        scoring: Scoring::Nearest(leg),
        limit,
    };
    // The mode's own ranking, `limit` deep.
    let ranking = |limit: usize| -> Result<Node, StoreError> {
        Ok(match mode {
            SearchMode::Dense => leaf(dense()?, limit),
            SearchMode::Keyword => leaf(keyword()?, limit),
            SearchMode::Hybrid => Node {
                prefetch: vec![leaf(dense()?, depth), leaf(keyword()?, depth)],
                scoring: Scoring::Fusion(req.fusion),
                limit,
            },
        })
    };
    let root = match req.mmr {
        None => ranking(end.saturating_add(TIE_SLACK))?,
        Some(mmr) => {
            let Some(Leg::Dense(vector)) = req.vector.clone().map(Leg::Dense) else {
                return Err(StoreError::InvalidInput(
                    "MMR needs a query vector (it diversifies by the dense vectors)".into(),
                ));
            };
            // Dense mode re-ranks its own nearest neighbours; the other modes re-rank their
            // ranking's best `candidates`, prefetched.
            let prefetch = match mode {
                SearchMode::Dense => Vec::new(),
                SearchMode::Hybrid | SearchMode::Keyword => vec![ranking(mmr.candidates)?],
            };
            Node {
                prefetch,
                scoring: Scoring::Mmr {
                    vector,
                    diversity: mmr.diversity,
                    candidates: mmr.candidates,
                },
                limit: end,
            }
        }
    };
    let mut explain = Vec::new();
    if req.explain {
        // Every list the request has input for, as deep as the legs of the search itself.
        if let Some(vector) = &req.vector {
            explain.push((LegKind::Dense, leaf(Leg::Dense(vector.clone()), depth)));
        }
        if let Some(text) = &req.text {
            explain.push((
                LegKind::Keyword,
                leaf(Leg::Keyword(keyword::query(text)), depth),
            ));
        }
    }
    Ok(Plan {
        root,
        offset: req.offset,
        limit: req.limit,
        ordered_by_score: req.mmr.is_none(),
        explain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PointFilter;
    use uuid::Uuid;

    fn req(mode: SearchMode, vector: bool, text: bool) -> SearchRequest {
        SearchRequest {
            org_id: Uuid::nil(),
            vector: vector.then(|| vec![1.0, 0.0]),
            text: text.then(|| "kernel scheduling".to_owned()),
            mode,
            fusion: Fusion::default(),
            mmr: None,
            explain: false,
            limit: 10,
            offset: 0,
            filter: PointFilter::default(),
            score_threshold: None,
            with_vector: false,
        }
    }

    #[test]
    fn hybrid_fuses_two_legs_at_least_min_depth_deep() {
        let plan = plan(&req(SearchMode::Hybrid, true, true), 2).expect("plan");
        assert_eq!(plan.root.scoring, Scoring::Fusion(Fusion::default()));
        assert_eq!(plan.root.limit, 10 + TIE_SLACK);
        let legs: Vec<_> = plan
            .root
            .prefetch
            .iter()
            .map(|n| match &n.scoring {
                Scoring::Nearest(Leg::Dense(_)) => ("dense", n.limit),
                Scoring::Nearest(Leg::Keyword(_)) => ("keyword", n.limit),
                other @ (Scoring::Fusion(_) | Scoring::Mmr { .. }) => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(legs, vec![("dense", MIN_DEPTH), ("keyword", MIN_DEPTH)]);
    }

    #[test]
    fn hybrid_without_text_is_dense() {
        let r = req(SearchMode::Hybrid, true, false);
        assert_eq!(r.effective_mode(), SearchMode::Dense);
        let plan = plan(&r, 2).expect("plan");
        assert!(plan.root.prefetch.is_empty());
        assert!(matches!(plan.root.scoring, Scoring::Nearest(Leg::Dense(_))));
    }

    #[test]
    fn missing_inputs_are_invalid() {
        for (mode, vector, text) in [
            (SearchMode::Keyword, true, false),
            (SearchMode::Dense, false, true),
            (SearchMode::Hybrid, false, true),
        ] {
            assert!(
                matches!(
                    plan(&req(mode, vector, text), 2),
                    Err(StoreError::InvalidInput(_))
                ),
                "{mode:?} vector={vector} text={text}"
            );
        }
    }

    #[test]
    fn mmr_over_hybrid_is_a_nested_prefetch() {
        let mut r = req(SearchMode::Hybrid, true, true);
        r.mmr = Some(Mmr {
            diversity: 0.3,
            candidates: 50,
        });
        let plan = plan(&r, 2).expect("plan");
        assert!(matches!(
            plan.root.scoring,
            Scoring::Mmr { candidates: 50, .. }
        ));
        let fused = &plan.root.prefetch[0];
        assert_eq!(fused.limit, 50);
        assert!(matches!(fused.scoring, Scoring::Fusion(_)));
        assert_eq!(fused.prefetch.len(), 2);

        r.mmr = Some(Mmr {
            diversity: 1.5,
            candidates: 50,
        });
        assert!(matches!(plan_err(&r), StoreError::InvalidInput(_)));
        r.mmr = Some(Mmr {
            diversity: 0.5,
            candidates: 5,
        });
        assert!(matches!(plan_err(&r), StoreError::InvalidInput(_)));
    }

    fn plan_err(r: &SearchRequest) -> StoreError {
        plan(r, 2).expect_err("invalid")
    }

    #[test]
    fn bad_fusion_parameters_are_invalid() {
        let mut r = req(SearchMode::Hybrid, true, true);
        for fusion in [
            Fusion::Rrf {
                k: 0,
                dense_weight: 1.0,
                keyword_weight: 1.0,
            },
            Fusion::Rrf {
                k: 60,
                dense_weight: -1.0,
                keyword_weight: 1.0,
            },
            Fusion::Rrf {
                k: 60,
                dense_weight: 0.0,
                keyword_weight: 0.0,
            },
        ] {
            r.fusion = fusion;
            assert!(
                matches!(plan_err(&r), StoreError::InvalidInput(_)),
                "{fusion:?}"
            );
        }
    }

    #[test]
    fn explain_runs_every_list_it_has_input_for() {
        let mut r = req(SearchMode::Dense, true, true);
        r.explain = true;
        let plan = plan(&r, 2).expect("plan");
        let kinds: Vec<_> = plan.explain.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![LegKind::Dense, LegKind::Keyword]);
    }
}
