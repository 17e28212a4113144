//! The entry points of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), also replayed on
//! stable over their committed corpus by `tests/fuzz_corpus.rs`. Each decodes arbitrary bytes
//! the way a front end does, and panics only where an invariant breaks: any input is either
//! decoded or refused with a client error, and the fast JSON path agrees with the reference.

use prost::Message as _;
use serval_core::graph::TensorSpec;
use serval_core::signature::Signature;
use serval_core::tensor::DataType;

use crate::error::ServerError;

/// TF Serving's `instances`, on the row fast path and through `Value`, for a static and a
/// dynamic signature; and the node count that guards the slow path.
pub fn tf_instances(bytes: &[u8]) {
    for shape in [[None, Some(3)], [None, None]] {
        let signature = Signature {
            name: "serving_default".into(),
            inputs: vec![TensorSpec {
                name: "features".into(),
                data_type: DataType::Fp32,
                shape: shape.to_vec(),
            }],
            outputs: Vec::new(),
            postprocess: Vec::new(),
            class_maps: Default::default(),
        };
        serval_core::instances::assert_fast_path_agrees(&signature, bytes);
    }
    let counted = serval_core::instances::json_nodes_within(bytes, usize::MAX);
    if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        assert!(counted.is_some_and(|n| n > 0), "a valid text holds a value");
    }
}

/// An OIP REST `infer` body: the first two bytes say how long its JSON part is (the
/// `Inference-Header-Content-Length`), the rest is JSON and then binary tensor data.
pub fn v2_infer(bytes: &[u8]) {
    let Some((length, body)) = bytes.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes(*length)).min(body.len());
    let (json, binary) = body.split_at(split);
    if let Ok((_, inputs, _)) = crate::http::v2::infer::read_request(json, binary, None)
        .or_else(|_| crate::http::v2::infer::read_request(body, &[], None))
    {
        check_tensors(&inputs);
    }
}

/// A gRPC `ModelInfer` message, through prost and the service's input decoding.
pub fn grpc_model_infer(bytes: &[u8]) {
    let Ok(request) = crate::grpc::proto::ModelInferRequest::decode(bytes) else {
        return;
    };
    match crate::grpc::decode_inputs(&request, None) {
        Ok(inputs) => check_tensors(&inputs),
        Err(e) => assert!(
            matches!(e, ServerError::BadRequest(_)),
            "a bad message must be the client's error: {e:?}"
        ),
    }
}

/// Decoded tensors hold exactly the values their shapes say.
fn check_tensors(inputs: &[(String, serval_core::Tensor)]) {
    for (name, tensor) in inputs {
        let elements: usize = tensor.shape().iter().product();
        assert_eq!(elements, tensor.data().len(), "input '{name}'");
    }
}
