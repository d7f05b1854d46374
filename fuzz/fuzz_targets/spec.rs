#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gpufn_spec::fuzz_document(data));
