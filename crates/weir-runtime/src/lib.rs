//! weir's pipeline runtime: a source, transforms and a sink, each a concurrent task,
//! joined by channels whose capacity is counted in bytes.
//!
//! # What
//!
//! A [`Pipeline`] moves items from a [`Source`] through zero or more [`Transform`]s into a
//! [`Sink`]. Between two stages sits a [`channel`] with a byte budget: a stage that
//! produces faster than its downstream consumes waits on a full channel, and that wait
//! travels stage by stage back to the source. At any moment the bytes held by a pipeline
//! are at most the sum of its channel budgets plus one in-flight item per stage.
//!
//! # Cancel safety and shutdown
//!
//! The first error, in any stage (a panic included), cancels every stage; [`Pipeline::run`]
//! returns only after every stage's future has been dropped, so every file, socket or
//! cursor a stage owned is released by then. Dropping the `run` future cancels the stages
//! too. A [`CancellationToken`] given to the builder stops the pipeline from outside.
//!
//! # Example
//!
//! ```
//! use weir_runtime::{BoxError, Emit, Pipeline, Sink, Source, Transform};
//!
//! struct Count(u32);
//! impl Source for Count {
//!     type Item = String;
//!     async fn next(&mut self) -> Result<Option<String>, BoxError> {
//!         self.0 = self.0.checked_sub(1).ok_or("done")?;
//!         Ok((self.0 > 0).then(|| format!("item {}", self.0)))
//!     }
//! }
//! struct Upper;
//! impl Transform for Upper {
//!     type In = String;
//!     type Out = String;
//!     async fn apply(&mut self, item: String, out: &mut Emit<'_, String>) -> Result<(), BoxError> {
//!         out.send(item.to_uppercase()).await
//!     }
//! }
//! struct Collect(Vec<String>);
//! impl Sink for Collect {
//!     type Item = String;
//!     async fn write(&mut self, item: String) -> Result<(), BoxError> {
//!         self.0.push(item);
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let report = Pipeline::builder()
//!     .buffer(1024)
//!     .source("count", Count(4))
//!     .transform("upper", Upper)
//!     .sink("collect", Collect(Vec::new()))
//!     .run()
//!     .await
//!     .expect("pipeline ran");
//! assert_eq!(report.stages[2].items_in, 3);
//! println!("{report}");
//! # });
//! ```

pub mod ack;
pub mod budget;
pub mod channel;
mod error;
mod pipeline;
pub mod size;
mod stage;
mod stats;
mod weight;

pub use ack::{AckToken, Ledger};
pub use budget::{BudgetExhausted, MemoryBudget, Reservation, WhenFull};
pub use error::{error_chain, BoxError, DownstreamClosed, FailureKind, PipelineError};
pub use pipeline::{Pipeline, PipelineBuilder, PipelineStart, DEFAULT_BUFFER};
pub use stage::{Emit, Sink, Source, Transform};
pub use stats::{Report, StageKind, StageSnapshot, StageStats};
pub use tokio_util::sync::CancellationToken;
pub use weight::Weighted;
