//! Conditions: set one while keeping `lastTransitionTime` when the status does
//! not change, so a steady state writes nothing.

use aleph_crds::{Condition, ConditionStatus};

/// The current time as RFC 3339, second precision, as Kubernetes writes it.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An RFC 3339 time as written in a status; `None` when absent or unreadable.
pub fn parse_time(text: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    text.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A condition to set, without its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition {
    /// The condition type.
    pub type_: &'static str,
    /// Its status.
    pub status: ConditionStatus,
    /// A CamelCase reason.
    pub reason: String,
    /// A message that says what to do.
    pub message: String,
}

impl NewCondition {
    /// A condition of `type_` with the given status, reason and message.
    pub fn new(
        type_: &'static str,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A `True` condition.
    pub fn yes(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(type_, ConditionStatus::True, reason, message)
    }

    /// A `False` condition.
    pub fn no(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(type_, ConditionStatus::False, reason, message)
    }
}

/// Sets `new` in `conditions` (keyed by type), keeping the old transition time
/// when the status is unchanged. Conditions keep a stable order by type.
pub fn set_condition(conditions: &mut Vec<Condition>, new: NewCondition, generation: Option<i64>) {
    let existing = conditions.iter().position(|c| c.type_ == new.type_);
    let last_transition_time = match existing.map(|i| &conditions[i]) {
        Some(old) if old.status == new.status => old.last_transition_time.clone(),
        _ => now_rfc3339(),
    };
    let condition = Condition {
        type_: new.type_.to_string(),
        status: new.status,
        reason: new.reason,
        message: truncate(new.message, 1024),
        last_transition_time,
        observed_generation: generation,
    };
    match existing {
        Some(i) => conditions[i] = condition,
        None => {
            conditions.push(condition);
            conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        }
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let mut conditions = vec![Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: "Old".into(),
            message: String::new(),
            last_transition_time: "2020-01-01T00:00:00Z".into(),
            observed_generation: Some(1),
        }];
        set_condition(
            &mut conditions,
            NewCondition::yes("Ready", "New", "m"),
            Some(2),
        );
        assert_eq!(conditions[0].last_transition_time, "2020-01-01T00:00:00Z");
        assert_eq!(conditions[0].reason, "New");
        set_condition(
            &mut conditions,
            NewCondition::no("Ready", "Broken", "m"),
            Some(3),
        );
        assert_ne!(conditions[0].last_transition_time, "2020-01-01T00:00:00Z");
        set_condition(
            &mut conditions,
            NewCondition::no("Degraded", "X", "m"),
            Some(3),
        );
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].type_, "Degraded");
    }
}
