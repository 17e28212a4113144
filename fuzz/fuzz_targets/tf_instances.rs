#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| serval_server::fuzzing::tf_instances(bytes));
