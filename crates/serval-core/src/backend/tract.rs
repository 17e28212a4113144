//! tract, the pure-Rust engine: the fallback where ONNX Runtime fails, the engine where it is
//! absent, and what the edge/WASM runtime runs.
//!
//! One optimized plan per model version with a symbolic batch dimension (the file's name for it,
//! else `N`), so every batch size runs on the same plan; one `SimpleState` per concurrent caller.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::{
    Datum, DatumType, InferenceFact, InferenceModelExt, IntoRunnable, IntoTValue, IntoTensor, TDim,
    TVec, Tensor as TractTensor, ToDim, TypedRunnableModel, TypedSimpleState, tract_ndarray,
};

use super::Backend;
use super::pool::Pool;
use crate::graph::GraphInfo;
use crate::tensor::{DataType, Tensor, TensorData};

type Plan = Arc<TypedRunnableModel>;

/// A model version loaded on tract.
pub struct TractBackend {
    states: Pool<TypedSimpleState>,
}

impl TractBackend {
    /// Loads and optimizes the parsed graph, making the batch axis of every input symbolic;
    /// external tensor data is read from `model_dir`.
    pub fn load(
        model_dir: Option<&Path>,
        graph: &GraphInfo,
        instances: usize,
    ) -> Result<TractBackend, String> {
        let onnx = tract_onnx::onnx();
        let model_dir = model_dir.and_then(Path::to_str);
        let parsed = onnx
            .parse(&graph.proto, model_dir)
            .map_err(|e| format!("tract cannot load the graph: {e:#}"))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(format!(
                "tract cannot resolve graph inputs {:?}",
                parsed.unresolved_inputs
            ));
        }
        let mut model = parsed.model;
        // The file's own dimension names are kept (its graph may refer to them); only the batch
        // axis is one symbol across inputs, named as the file names it, else `N`.
        let batch = model
            .symbols
            .sym(graph.batch_dim_name.as_deref().unwrap_or("N"));
        for (ix, (spec, names)) in graph.inputs.iter().zip(&graph.input_dim_names).enumerate() {
            let shape: TVec<TDim> = spec
                .shape
                .iter()
                .zip(names)
                .enumerate()
                .map(|(axis, (d, name))| match (d, name) {
                    (Some(d), _) => TDim::from(*d),
                    (None, _) if axis == 0 && graph.batched => batch.to_dim(),
                    (None, Some(name)) => model.symbols.sym(name).to_dim(),
                    (None, None) => model
                        .symbols
                        .new_with_prefix(&format!("{}_{axis}_", spec.name))
                        .to_dim(),
                })
                .collect();
            let fact = InferenceFact::dt_shape(datum_type(spec.data_type), shape);
            model
                .set_input_fact(ix, fact)
                .map_err(|e| format!("tract rejects input '{}': {e:#}", spec.name))?;
        }
        let plan: Plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("tract cannot optimize the graph: {e:#}"))?;
        let states = (0..instances.max(1))
            .map(|_| plan.spawn())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tract cannot create run state: {e:#}"))?;
        Ok(TractBackend {
            states: Pool::new(states),
        })
    }
}

impl Backend for TractBackend {
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        let inputs = inputs
            .into_iter()
            .map(|t| to_tract(t).map(IntoTValue::into_tvalue))
            .collect::<Result<TVec<_>, _>>()?;
        let outputs = self
            .states
            .with(|state| state.run(inputs))
            .map_err(|e| format!("{e:#}"))?;
        outputs
            .into_iter()
            .map(|t| from_tract(t.into_tensor()))
            .collect()
    }
}

fn datum_type(data_type: DataType) -> DatumType {
    match data_type {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
    }
}

fn to_tract(tensor: Tensor) -> Result<TractTensor, String> {
    fn build<T: Datum>(shape: &[usize], v: Vec<T>) -> Result<TractTensor, String> {
        let array = tract_ndarray::ArrayD::from_shape_vec(shape, v).map_err(|e| e.to_string())?;
        Ok(array.into_tensor())
    }
    let (shape, data) = tensor.into_parts();
    crate::with_tensor_data!(data, v => build(&shape, v))
}

fn from_tract(tensor: TractTensor) -> Result<Tensor, String> {
    // skl2onnx's ArgMax -> ArrayFeatureExtractor -> Cast chains come out as TDim; normalise to i64.
    let tensor = if tensor.datum_type() == DatumType::TDim {
        tensor
            .cast_to::<i64>()
            .map_err(|e| format!("{e:#}"))?
            .into_owned()
    } else {
        tensor
    };
    fn vec<T: Datum + Clone>(t: &TractTensor) -> Result<Vec<T>, String> {
        t.try_as_plain_ram()
            .and_then(|p| p.as_slice::<T>().map(<[T]>::to_vec))
            .map_err(|e| format!("{e:#}"))
    }
    let data = match tensor.datum_type() {
        DatumType::Bool => TensorData::Bool(vec(&tensor)?),
        DatumType::U8 => TensorData::Uint8(vec(&tensor)?),
        DatumType::U16 => TensorData::Uint16(vec(&tensor)?),
        DatumType::U32 => TensorData::Uint32(vec(&tensor)?),
        DatumType::U64 => TensorData::Uint64(vec(&tensor)?),
        DatumType::I8 => TensorData::Int8(vec(&tensor)?),
        DatumType::I16 => TensorData::Int16(vec(&tensor)?),
        DatumType::I32 => TensorData::Int32(vec(&tensor)?),
        DatumType::I64 => TensorData::Int64(vec(&tensor)?),
        DatumType::F16 => TensorData::Fp16(vec(&tensor)?),
        DatumType::F32 => TensorData::Fp32(vec(&tensor)?),
        DatumType::F64 => TensorData::Fp64(vec(&tensor)?),
        DatumType::String => TensorData::Bytes(vec(&tensor)?),
        other => {
            return Err(format!(
                "tract returned an output of unsupported type {other:?}"
            ));
        }
    };
    Tensor::new(tensor.shape().to_vec(), data).map_err(|e| e.to_string())
}
