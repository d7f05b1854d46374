// The corpus replay shared by the crates' `tests/fuzz_corpus.rs` (each `include!`s this after
// defining `TARGETS`): every input in `fuzz/corpus/<target>/` goes through the target's entry point.

/// A target's name and its entry point.
type Target = (&'static str, fn(&[u8]));

#[test]
fn the_fuzz_corpus_replays_without_a_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
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
