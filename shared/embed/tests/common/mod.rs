//! Shared test helpers: the real weights are required (deploy/setup.sh installs them).

use std::num::NonZeroUsize;

use heimdex_embed::{MiniLm, Products, ThreadBudget, Variant, default_model_dir};

/// The thread budget these tests run with: two, so that a batch takes the pool's path (a pass of
/// up to 64 tokens runs on the calling thread whatever the budget).
pub const THREADS: NonZeroUsize = NonZeroUsize::new(2).expect("non-zero");

/// Loads the real model with [`THREADS`], or fails the test with instructions.
#[allow(dead_code)] // not every test file uses every helper
pub fn load_model() -> MiniLm {
    load_model_with(ThreadBudget::new(THREADS))
}

/// [`THREADS`] as a budget.
#[allow(dead_code)] // not every test file uses every helper
pub fn threads() -> ThreadBudget {
    ThreadBudget::new(THREADS)
}

/// Loads the real model with `threads`, or fails the test with instructions.
#[allow(dead_code)] // not every test file uses every helper
pub fn load_model_with(threads: ThreadBudget) -> MiniLm {
    load_model_with_products(threads, Products::Auto)
}

/// Loads the real model with `threads` and `products`, or fails the test with instructions.
#[allow(dead_code)] // not every test file uses every helper
pub fn load_model_with_products(threads: ThreadBudget, products: Products) -> MiniLm {
    load_variant(Variant::ALL_L6_V2, threads, products)
}

/// Loads `variant` (from beside the default model's directory, as the registry does) with
/// `threads` and `products`, or fails the test with instructions.
#[allow(clippy::panic)]
pub fn load_variant(variant: Variant, threads: ThreadBudget, products: Products) -> MiniLm {
    let Some(dir) = default_model_dir() else {
        panic!(
            "all-MiniLM-L6-v2 weights not found (HEIMDEX_MODEL_DIR unset and no \
             .tools/models/all-minilm-l6-v2 in the current dir or its parents): run ./deploy/setup.sh"
        );
    };
    let dir = match (variant == Variant::ALL_L6_V2, dir.parent()) {
        (false, Some(parent)) => parent.join(variant.subdir),
        _ => dir,
    };
    match MiniLm::load_variant(variant, &dir, threads, products) {
        Ok(m) => m,
        Err(e) => panic!(
            "cannot load {} from {}: {e}; run ./deploy/setup.sh",
            variant.name,
            dir.display()
        ),
    }
}
