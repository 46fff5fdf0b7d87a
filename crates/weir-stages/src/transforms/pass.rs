//! The identity transform, to measure the runtime itself.

use bytes::Bytes;
use weir_runtime::{BoxError, Emit, Transform};

/// Passes every item on unchanged.
#[derive(Default)]
pub struct Pass;

impl Transform for Pass {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        out.send(item).await
    }
}
