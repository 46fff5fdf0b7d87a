//! `kind = "topic"`: publish/subscribe fan-out with an explicit gate per subscriber.

pub mod gate;
mod route;

pub use gate::Policy;
pub use route::{
    publish, render_subscriber_metrics, subscribe, Topic, TopicError, TopicProblem, TopicSummary,
};
