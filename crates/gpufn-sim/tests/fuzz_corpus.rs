//! The fuzz corpus (`fuzz/corpus/<target>/`, grown by `fuzz/run.sh` with libFuzzer) replayed
//! through the fuzz targets' own entry points as an ordinary test: every input that ever found
//! new behaviour must still be handled without a panic.
#![allow(clippy::expect_used)]

use std::path::Path;

/// A target's name and its entry point.
type Target = (&'static str, fn(&[u8]));

const TARGETS: &[Target] = &[("trace", gpufn_sim::trace::fuzz_formats)];

#[test]
fn the_fuzz_corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, run) in TARGETS {
        let dir = root.join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("the corpus directory") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            run(&bytes);
            n += 1;
        }
        assert!(n > 0, "{target}: an empty corpus");
    }
}
