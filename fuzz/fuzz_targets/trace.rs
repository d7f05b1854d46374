#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gpufn_sim::trace::fuzz_formats(data));
