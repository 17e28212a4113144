#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| serval_server::fuzzing::grpc_model_infer(bytes));
