//! The models a deployment serves, by name. A model that cannot be loaded stays listed with the
//! reason, so `/readyz`, the start-up log and every request naming it can say why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{
    DEFAULT_MODEL_SUBDIR, Embedder, MiniLm, Mock, Products, ThreadBudget, Variant,
    default_model_dir,
};

/// A model's state in the registry.
#[derive(Clone)]
pub enum ModelStatus {
    Ready(Arc<dyn Embedder>),
    /// Known, but not loaded: the reason (e.g. the weights are missing).
    Unavailable(String),
}

impl std::fmt::Debug for ModelStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelStatus::Ready(m) => write!(f, "Ready({} {})", m.model(), m.model_ver()),
            ModelStatus::Unavailable(reason) => write!(f, "Unavailable({reason})"),
        }
    }
}

/// Why a model cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model `{name}`; this service knows: {known}")]
    Unknown { name: String, known: String },
    #[error("model `{name}` is not available: {reason}")]
    Unavailable { name: String, reason: String },
}

/// Models by name, and which one a request without `model` gets.
#[derive(Clone, Debug)]
pub struct Registry {
    models: BTreeMap<String, ModelStatus>,
    default: String,
}

impl Registry {
    /// The default model when a request names none.
    pub const DEFAULT_MODEL: &'static str = MiniLm::NAME;

    /// `mock` (always available, `vector_size`-d), `minilm-l6-v2` from `model_dir` (else
    /// [`default_model_dir`]) and `paraphrase-minilm-l3-v2` from the directory beside it
    /// (`<model_dir>/../paraphrase-minilm-l3-v2`). A MiniLM is unavailable, with the reason,
    /// when its files are missing or the collection's `vector_size` is not its 384. Their
    /// forward passes use `threads` (each model its own pool of that size).
    pub fn load(model_dir: Option<&Path>, vector_size: usize, threads: ThreadBudget) -> Self {
        let dir: PathBuf = model_dir
            .map(Path::to_path_buf)
            .or_else(default_model_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_SUBDIR));
        let beside = |variant: Variant| {
            dir.parent()
                .map_or_else(|| PathBuf::from(variant.subdir), |p| p.join(variant.subdir))
        };
        let mut models = vec![(
            Mock::NAME.to_owned(),
            ModelStatus::Ready(Arc::new(Mock::new(vector_size))),
        )];
        for (variant, dir) in [
            (Variant::ALL_L6_V2, dir.clone()),
            (Variant::PARAPHRASE_L3_V2, beside(Variant::PARAPHRASE_L3_V2)),
        ] {
            let status = load_minilm(variant, &dir, vector_size, threads);
            if let ModelStatus::Unavailable(reason) = &status {
                if variant.name == Self::DEFAULT_MODEL {
                    tracing::error!(model = variant.name, %reason, "model unavailable: requests naming it will be refused");
                } else {
                    tracing::warn!(model = variant.name, %reason, "model unavailable: requests naming it will be refused");
                }
            }
            models.push((variant.name.to_owned(), status));
        }
        Self::new(models, Self::DEFAULT_MODEL)
    }

    /// A registry of exactly these models.
    pub fn new(models: impl IntoIterator<Item = (String, ModelStatus)>, default: &str) -> Self {
        Self {
            models: models.into_iter().collect(),
            default: default.to_owned(),
        }
    }

    /// The model named `name`, or the default model for `None`.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<dyn Embedder>, ModelError> {
        let name = name.unwrap_or(&self.default);
        match self.models.get(name) {
            Some(ModelStatus::Ready(model)) => Ok(Arc::clone(model)),
            Some(ModelStatus::Unavailable(reason)) => Err(ModelError::Unavailable {
                name: name.to_owned(),
                reason: reason.clone(),
            }),
            None => Err(ModelError::Unknown {
                name: name.to_owned(),
                known: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    pub fn default_model(&self) -> &str {
        &self.default
    }

    /// Every model and its state, by name.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelStatus)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// One MiniLM from `dir`, or why it cannot serve.
fn load_minilm(
    variant: Variant,
    dir: &Path,
    vector_size: usize,
    threads: ThreadBudget,
) -> ModelStatus {
    match MiniLm::load_variant(variant, dir, threads, Products::Auto) {
        Ok(m) if m.dim() == vector_size => {
            tracing::info!(
                model = variant.name,
                model_ver = m.model_ver(),
                dir = %dir.display(),
                threads = m.threads(),
                products = %m.products(),
                "model loaded"
            );
            ModelStatus::Ready(Arc::new(m))
        }
        Ok(m) => ModelStatus::Unavailable(format!(
            "it produces {}-d vectors but the collection is configured for VECTOR_SIZE={vector_size}",
            m.dim()
        )),
        Err(err) => ModelStatus::Unavailable(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_weights_make_minilm_unavailable_with_the_reason() {
        let dir = std::env::temp_dir().join("heimdex-no-such-model-dir");
        let registry = Registry::load(Some(&dir), 384, ThreadBudget::ONE);
        assert!(registry.get(Some("mock")).is_ok());
        match registry.get(None).map(|m| m.model().to_owned()) {
            Err(ModelError::Unavailable { name, reason }) => {
                assert_eq!(name, "minilm-l6-v2");
                assert!(reason.contains("config.json"), "{reason}");
                assert!(reason.contains("setup.sh"), "{reason}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
        match registry.get(Some("paraphrase-minilm-l3-v2")).map(|_| ()) {
            Err(ModelError::Unavailable { reason, .. }) => {
                assert!(reason.contains("paraphrase-minilm-l3-v2"), "{reason}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn unknown_model_lists_the_known_ones() {
        let registry = Registry::new(
            [(
                "mock".to_owned(),
                ModelStatus::Ready(Arc::new(Mock::new(4))),
            )],
            "mock",
        );
        let err = registry
            .get(Some("gpt-9"))
            .map(|_| ())
            .expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown model `gpt-9`; this service knows: mock"
        );
        assert_eq!(registry.get(None).map(|m| m.dim()).ok(), Some(4));
    }
}
