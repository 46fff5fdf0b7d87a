//! weir's HTTP side: a mock LLM upstream for demos, tests and benchmarks (and, later, `weir serve`).

pub mod mock_llm;
pub mod pipeline;
pub mod serve;
