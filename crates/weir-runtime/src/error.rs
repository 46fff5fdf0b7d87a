//! What a failed pipeline reports: which stage, and why.

use std::fmt;

/// The error type stages return: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error and its sources joined by `: `, for messages that must say why in one line
/// (the detail of an I/O or parse failure often sits in a source).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// A stage tried to emit after the stage below it had stopped.
#[derive(Debug, thiserror::Error)]
#[error("downstream stage stopped")]
pub struct DownstreamClosed;

/// Why a pipeline stopped before its end.
#[derive(Debug)]
pub enum FailureKind {
    /// The stage returned an error.
    Failed(BoxError),
    /// The stage panicked; the panic message, when it had one.
    Panicked(String),
    /// The pipeline was cancelled from outside.
    Cancelled,
    /// The memory budget could not hold this pipeline's buffers (fail-fast admission).
    Refused(crate::budget::BudgetExhausted),
}

/// The first failure of a pipeline, with the stage that raised it.
#[derive(Debug)]
pub struct PipelineError {
    /// Position of the stage, 0 being the source; `None` when no stage is to blame.
    pub stage_index: Option<usize>,
    /// Name of the stage, as given to the builder.
    pub stage: String,
    pub kind: FailureKind,
}

impl PipelineError {
    pub fn is_cancelled(&self) -> bool {
        matches!(self.kind, FailureKind::Cancelled)
    }

    pub fn is_refused(&self) -> bool {
        matches!(self.kind, FailureKind::Refused(_))
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FailureKind::Failed(e) => write!(f, "stage `{}` failed: {e}", self.stage),
            FailureKind::Panicked(m) => write!(f, "stage `{}` panicked: {m}", self.stage),
            FailureKind::Cancelled => write!(f, "pipeline cancelled"),
            FailureKind::Refused(e) => write!(f, "pipeline refused: {e}"),
        }
    }
}

impl std::error::Error for PipelineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            FailureKind::Failed(e) => Some(e.as_ref()),
            FailureKind::Refused(e) => Some(e),
            _ => None,
        }
    }
}
