//! The fuzz targets' committed corpus (`fuzz/corpus/<target>/`), replayed on stable: every
//! input a fuzzer kept, and the protocol corpus's bodies it started from, must still decode or
//! be refused without a panic.

use std::path::Path;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "{}: only {} inputs",
        dir.display(),
        files.len()
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        if std::panic::catch_unwind(|| entry(&bytes)).is_err() {
            panic!("{} fails", file.display());
        }
    }
}

#[test]
fn tf_instances_corpus() {
    replay("tf_instances", serval_server::fuzzing::tf_instances);
}

#[test]
fn v2_infer_corpus() {
    replay("v2_infer", serval_server::fuzzing::v2_infer);
}

#[test]
fn grpc_model_infer_corpus() {
    replay("grpc_model_infer", serval_server::fuzzing::grpc_model_infer);
}
