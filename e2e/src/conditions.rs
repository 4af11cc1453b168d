//! Reading `status.conditions` of any object, built-in or custom.

use serde::{Deserialize, Serialize};

/// One entry of `status.conditions`, the fields common to every kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// Asserts that the condition's reason is `reason` and that its message
    /// contains each of `parts`.
    #[track_caller]
    pub fn assert_says(&self, reason: &str, parts: &[&str]) {
        assert_eq!(self.reason.as_deref(), Some(reason), "{self:?}");
        let message = self.message.as_deref().unwrap_or_default();
        for part in parts {
            assert!(message.contains(part), "{part:?} is not in: {message}");
        }
    }
}

/// The condition of type `type_` in `object`'s `status.conditions`, if any.
pub fn find_condition<T: Serialize>(object: &T, type_: &str) -> Option<Condition> {
    let value = serde_json::to_value(object).ok()?;
    let conditions = value.get("status")?.get("conditions")?.as_array()?;
    conditions
        .iter()
        .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
        .find(|c| c.type_ == type_)
}

/// Whether `object` has the condition `type_` with `status` ("True", "False"
/// or "Unknown").
pub fn has_condition<T: Serialize>(object: &T, type_: &str, status: &str) -> bool {
    find_condition(object, type_).is_some_and(|c| c.status == status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_condition_by_type() {
        let object = serde_json::json!({
            "status": {"conditions": [
                {"type": "Progressing", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": "fix it"}
            ]}
        });
        let ready = find_condition(&object, "Ready");
        assert_eq!(
            ready.as_ref().and_then(|c| c.reason.as_deref()),
            Some("InvalidSpec")
        );
        assert!(has_condition(&object, "Progressing", "True"));
        assert!(!has_condition(&object, "Ready", "True"));
        assert!(find_condition(&object, "Degraded").is_none());
        assert!(find_condition(&serde_json::json!({}), "Ready").is_none());
    }
}
