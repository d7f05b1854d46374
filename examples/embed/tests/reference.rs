//! The example's embeddings against the reference implementation's (sentence-transformers), for
//! the fixed sentences in tests/fixtures/reference.json (written by reference.py).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use candle_core::Device;
use gpufn_example_embed::{DIM, Embedder, cosine};

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("model"));
    assert!(
        dir.join("model.safetensors").exists(),
        "no model in {}: run examples/embed/fetch-model.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

#[test]
fn embeddings_match_sentence_transformers_and_rank_meaning() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/reference.json")).expect("fixture");
    let sentences: Vec<String> = fixture["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let reference: Vec<Vec<f32>> = fixture["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let model = Embedder::load(&model_dir(), Device::Cpu).expect("load");
    // All in one batch (padding to the longest), as the server batches them.
    let got = model.embed(&sentences).expect("embed");
    assert_eq!(got.len(), sentences.len());
    for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
        assert_eq!(g.len(), DIM);
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "sentence {i} not normalized: {norm}"
        );
        let c = cosine(g, r);
        assert!(c > 0.999, "sentence {i} {:?}: cosine {c}", sentences[i]);
    }
    // One at a time gives the same vectors as in a padded batch.
    let alone = model.embed(&sentences[..1]).expect("embed one");
    assert!(cosine(&alone[0], &got[0]) > 0.9999);
    // Meaning: the two eating sentences are closer to each other than to unrelated ones.
    let similar = cosine(&got[0], &got[1]);
    for unrelated in [2, 3, 4, 5] {
        assert!(
            similar > cosine(&got[0], &got[unrelated]) + 0.2,
            "eating/eating {similar} vs eating/{unrelated} {}",
            cosine(&got[0], &got[unrelated])
        );
    }
}
