//! The fuzz corpus (`fuzz/corpus/<target>/`, grown by `fuzz/run.sh` with libFuzzer) replayed
//! through the fuzz targets' own entry points as an ordinary test: every input that ever found
//! new behaviour must still be handled without a panic.
#![allow(clippy::expect_used)]

const TARGETS: &[Target] = &[
    ("request_head", gpufn_server::fuzzing::request_head),
    ("response_head", gpufn_server::fuzzing::response_head),
    ("chunked", gpufn_server::fuzzing::chunked),
    ("fc_signature", gpufn_server::fuzzing::fc_signature),
];

include!("../../../fuzz/replay.rs");
