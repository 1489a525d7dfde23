//! Shared test helpers: the real weights are required (deploy/setup.sh installs them).

use heimdex_embed::{MiniLm, default_model_dir};

/// Loads the real model, or fails the test with instructions.
#[allow(clippy::panic)]
pub fn load_model() -> MiniLm {
    let Some(dir) = default_model_dir() else {
        panic!(
            "all-MiniLM-L6-v2 weights not found (HEIMDEX_MODEL_DIR unset and no \
             .tools/models/all-minilm-l6-v2 in the current dir or its parents): run ./deploy/setup.sh"
        );
    };
    match MiniLm::load(&dir) {
        Ok(m) => m,
        Err(e) => panic!(
            "cannot load all-MiniLM-L6-v2 from {}: {e}; run ./deploy/setup.sh",
            dir.display()
        ),
    }
}
