#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gpufn_server::fuzzing::request_head(data));
