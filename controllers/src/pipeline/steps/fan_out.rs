//! Fan-out: a step with `forEach` runs one Job per item of a list (`$(item)`
//! in its fields), at most `forEach.parallelism` (or the pipeline's
//! parallelism) at once. The step is one step to the scheduler: it succeeds
//! once every instance has finished and no more than
//! `forEach.allowedFailures` failed, and its output `results` is the JSON
//! array of the instances' outputs, in item order (`null` for an instance
//! that failed). A retry runs every instance again.
//!
//! The driver keeps no state of its own: each pass finds the instances from
//! the run's Jobs (labelled with the item's index), so a pass that dies
//! half-way is redone without starting an instance twice.

use std::collections::BTreeMap;

use aleph_crds::pipeline_data::ForEach;
use serde_json::{Map, Value};

use crate::pipeline::build::job_name;
use crate::pipeline::params::{self, StepOutputs};

/// The output holding the instances' outputs.
pub const RESULTS_OUTPUT: &str = "results";
/// The most items a fan-out runs.
pub const MAX_ITEMS: usize = 128;
/// The most bytes of `results`.
pub const MAX_RESULTS_BYTES: usize = 32 * 1024;

/// The items of a fan-out, from its literal list (substituted), its list
/// param, or an earlier step's output.
pub fn items(
    for_each: &ForEach,
    run_params: &BTreeMap<String, String>,
    outputs: &StepOutputs,
) -> Result<Vec<String>, String> {
    let items = if let Some(list) = &for_each.items {
        list.iter()
            .map(|item| params::substitute(item, run_params, outputs).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?
    } else if let Some(name) = &for_each.param {
        let value = run_params
            .get(name)
            .ok_or_else(|| format!("forEach.param {name} has no value"))?;
        params::parse_list(value).map_err(|e| format!("forEach.param {name}: {e}"))?
    } else if let Some(from) = &for_each.from_output {
        let (step, key) = from
            .strip_prefix("steps.")
            .and_then(|rest| rest.split_once(".outputs."))
            .ok_or_else(|| format!("forEach.fromOutput {from} is not steps.STEP.outputs.KEY"))?;
        let value = outputs
            .get(step)
            .and_then(|o| o.get(key))
            .ok_or_else(|| format!("forEach.fromOutput: step {step} wrote no output {key}"))?;
        params::parse_list(value).map_err(|e| format!("forEach.fromOutput {from}: {e}"))?
    } else {
        return Err("forEach has no list".into());
    };
    if items.len() > MAX_ITEMS {
        return Err(format!(
            "forEach has {} items; at most {MAX_ITEMS} run in one step",
            items.len()
        ));
    }
    Ok(items)
}

/// The Job of instance `index` of an attempt: `<run>-<step>-<attempt>-<index>`.
pub fn instance_job_name(run: &str, step: &str, attempt: i32, index: usize) -> String {
    job_name(
        run,
        &format!("{step}-{attempt}"),
        i32::try_from(index).unwrap_or(i32::MAX),
    )
}

/// What became of one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Instance {
    /// No Job yet.
    NotStarted,
    /// Its Job runs.
    Running,
    /// Succeeded with these outputs.
    Succeeded(BTreeMap<String, String>),
    /// Failed: why.
    Failed(String),
}

/// Where a fan-out stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Still going: start these instances (as many as the cap leaves room
    /// for), and what to say.
    Going {
        /// The instances to start now.
        start: Vec<usize>,
        /// The step's message.
        message: String,
    },
    /// Every instance finished and few enough failed.
    Succeeded(BTreeMap<String, String>),
    /// Too many instances failed (the running ones are to be stopped), or
    /// the results do not fit.
    Failed(String),
}

/// What to do with a fan-out whose instances stand as `instances` (one per
/// item, in order).
pub fn verdict(
    items: &[String],
    instances: &[Instance],
    allowed_failures: usize,
    cap: Option<usize>,
) -> Verdict {
    let failed: Vec<(usize, &str)> = instances
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Instance::Failed(why) => Some((i, why.as_str())),
            _ => None,
        })
        .collect();
    if failed.len() > allowed_failures {
        let (first, why) = failed[0];
        let list: Vec<String> = failed.iter().map(|(i, _)| i.to_string()).collect();
        return Verdict::Failed(format!(
            "{} of {} instances failed (at most {allowed_failures} may): items {}; item {first} ({:?}): {why}",
            failed.len(),
            items.len(),
            list.join(", "),
            items.get(first).map(String::as_str).unwrap_or_default(),
        ));
    }
    let running = instances
        .iter()
        .filter(|s| **s == Instance::Running)
        .count();
    let waiting: Vec<usize> = instances
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == Instance::NotStarted)
        .map(|(i, _)| i)
        .collect();
    if running > 0 || !waiting.is_empty() {
        let room = cap.map_or(usize::MAX, |c| c.saturating_sub(running));
        let start: Vec<usize> = waiting.into_iter().take(room).collect();
        let succeeded = instances
            .iter()
            .filter(|s| matches!(s, Instance::Succeeded(_)))
            .count();
        let mut message = format!(
            "{succeeded} of {} items succeeded, {} running",
            items.len(),
            running + start.len()
        );
        if !failed.is_empty() {
            message.push_str(&format!(", {} failed", failed.len()));
        }
        return Verdict::Going { start, message };
    }
    let results: Vec<Value> = instances
        .iter()
        .map(|s| match s {
            Instance::Succeeded(outputs) => Value::Object(
                outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect::<Map<_, _>>(),
            ),
            _ => Value::Null,
        })
        .collect();
    let results = Value::Array(results).to_string();
    if results.len() > MAX_RESULTS_BYTES {
        return Verdict::Failed(format!(
            "the instances wrote {} bytes of outputs in all; at most {MAX_RESULTS_BYTES} fit in results: write only small values",
            results.len()
        ));
    }
    Verdict::Succeeded(BTreeMap::from([
        (RESULTS_OUTPUT.to_string(), results),
        ("count".to_string(), items.len().to_string()),
        ("failed".to_string(), failed.len().to_string()),
    ]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "fan_out_tests.rs"]
mod tests;
