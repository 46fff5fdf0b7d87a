//! weir's stages, grouped by role: where bytes come from (`sources`), what happens to
//! them on the way (`transforms`), where they go (`sinks`); `codec` holds the
//! runtime-free format logic the transforms are built on.

pub mod catalogue;
pub mod codec;
#[cfg(feature = "kafka")]
pub mod kafka_client;
pub mod record;
pub mod sinks;
pub mod sources;
pub mod transforms;

#[cfg(test)]
pub(crate) mod test_support;
