//! The fuzz corpus (`fuzz/corpus/<target>/`, grown by `fuzz/run.sh` with libFuzzer) replayed
//! through the fuzz targets' own entry points as an ordinary test: every input that ever found
//! new behaviour must still be handled without a panic.
#![allow(clippy::expect_used)]

const TARGETS: &[Target] = &[("spec", gpufn_spec::fuzz_document)];

include!("../../../fuzz/replay.rs");
