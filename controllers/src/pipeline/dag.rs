//! The DAG scheduler of a PipelineRun: pure functions, no client.
