#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gpufn_server::fuzzing::fc_signature(data));
