//! Continued evaluation over Serval's prediction log: logged predictions joined with their
//! late labels by key, grouped into windows, scored with scikit-learn's metric definitions.
//!
//! The log is read by DataFusion (`serval-batch`'s typed table of the model); records stream
//! through in time order and only the open windows' accumulators are held.

mod collect;
pub mod deliver;
pub mod drift;
mod error;
mod evaluate;
pub mod metrics;
mod monitor;
pub mod profile;
mod rules;
mod window;

pub use collect::ColumnQuality;
pub use error::EvalError;
pub use evaluate::{
    EvalOptions, InsufficientData, MetricValues, Reference, WindowMetrics, WindowReport, evaluate,
    profile_log,
};
pub use monitor::{Monitor, MonitorOptions, Poll};
pub use rules::Alert;
pub use window::WindowSpec;
