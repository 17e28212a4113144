//! DataFusion sessions with Serval's functions and object stores.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::GetExt;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::json::JsonFormatFactory;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::object_store::ObjectStore;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use url::Url;

use crate::catalog::ModelCatalog;
use crate::udf::{MintKeyUdf, OnError, PredictReport, PredictUdf};

/// Knobs of a batch session.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Partitions run at once (default: cores). Each runs the model on its own engine instance.
    pub partitions: usize,
    /// Rows per record batch, hence per model call.
    pub batch_size: usize,
    /// What `predict` does with rows it cannot predict.
    pub on_error: OnError,
    /// Bytes that sorts, joins and aggregations may hold before they spill to temporary files
    /// (default: unbounded). Model outputs and record batches in flight are not counted.
    pub memory_limit: Option<usize>,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            partitions: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batch_size: 8192,
            on_error: OnError::Fail,
            memory_limit: None,
        }
    }
}

/// A session where SQL can call `predict(...)` on `catalog`'s models and `mint_key()`, and read
/// files and object-store URLs directly (`SELECT ... FROM 's3://bucket/data/*.parquet'`).
///
/// The report counts every row `predict` sees in this session.
pub fn batch_session(
    catalog: Arc<ModelCatalog>,
    options: SessionOptions,
) -> (SessionContext, Arc<PredictReport>) {
    let mut config = SessionConfig::new()
        .with_target_partitions(options.partitions.max(1))
        .with_batch_size(options.batch_size.max(1))
        .with_information_schema(true);
    // Plain strings, not views: outputs are read by other tools (pyarrow, Spark), and the
    // server's precomputed tables, that handle `string` better than `string_view`.
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    // Snappy, the default of Spark, pyarrow and pandas, rather than DataFusion's zstd(3): it
    // writes several times faster, and batch outputs are usually read again soon.
    config.options_mut().execution.parquet.compression = Some("snappy".to_owned());
    let mut runtime =
        RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(LazyObjectStores::default()));
    if let Some(limit) = options.memory_limit {
        runtime = runtime.with_memory_limit(limit, 1.0);
    }
    let runtime = runtime
        .build_arc()
        .unwrap_or_else(|_| unreachable!("a runtime with default limits always builds"));
    let ctx = SessionContext::new_with_config_rt(config, runtime).enable_url_table();
    if let Err(e) = ctx.state_ref().write().register_file_format(
        Arc::new(JsonLinesFormatFactory(JsonFormatFactory::new())),
        false,
    ) {
        tracing::warn!(error = %e, "cannot register the .jsonl file format");
    }
    let report = Arc::new(PredictReport::default());
    ctx.register_udf(PredictUdf::new(catalog, options.on_error, report.clone()).into_udf());
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        MintKeyUdf::default(),
    ));
    (ctx, report)
}

/// JSON Lines under its own extension: DataFusion knows newline-delimited JSON only as `.json`,
/// so `SELECT ... FROM 'rows.jsonl'` found no format for the file.
#[derive(Debug)]
struct JsonLinesFormatFactory(JsonFormatFactory);

impl GetExt for JsonLinesFormatFactory {
    fn get_ext(&self) -> String {
        "jsonl".to_owned()
    }
}

impl FileFormatFactory for JsonLinesFormatFactory {
    fn create(
        &self,
        state: &dyn Session,
        format_options: &HashMap<String, String>,
    ) -> Result<Arc<dyn FileFormat>> {
        self.0.create(state, format_options)
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        self.0.default()
    }
}

/// Object stores created from the environment the first time a URL names their bucket, so
/// queries and jobs can use `s3://...` without registering anything.
#[derive(Debug, Default)]
struct LazyObjectStores {
    known: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for LazyObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        match serval_storage::object_store_for_url(url.as_str()) {
            Ok(Some(store)) => {
                self.known.register_store(url, store.clone());
                Ok(store)
            }
            Ok(None) => self.known.get_store(url),
            Err(e) => Err(DataFusionError::External(Box::new(e))),
        }
    }
}

/// Parses a script of `;`-separated statements (semicolons inside strings and comments do not
/// separate).
pub fn parse_script(sql: &str) -> Result<Vec<Statement>> {
    Ok(DFParser::parse_sql(sql)?.into_iter().collect())
}

/// Plans one parsed statement (DDL runs now; queries run when the frame is collected). Planned
/// from the parsed statement because printing it back to SQL loses the quotes of
/// `COPY ... TO 'path'`.
pub async fn statement_frame(ctx: &SessionContext, statement: Statement) -> Result<DataFrame> {
    let plan = ctx.state().statement_to_plan(statement).await?;
    ctx.execute_logical_plan(plan).await
}
