//! `kind = "topic"`: publish/subscribe fan-out with an explicit gate per subscriber.

mod gate;
mod route;

pub use gate::Policy;
pub(crate) use route::{publish, render_subscriber_metrics, subscribe};
pub use route::{Topic, TopicError, TopicProblem, TopicSummary};
