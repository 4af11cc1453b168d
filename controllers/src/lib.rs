//! Aleph's reconcilers. Each kind has a module with the same stages:
//! `validate` (spec -> typed errors, no client), `build` (spec -> desired child
//! objects, pure), `apply` (server-side apply) and `status` (conditions from
//! what was observed). External systems sit behind a trait (see `sagemaker`).

pub mod pipeline;
pub mod sagemaker;
