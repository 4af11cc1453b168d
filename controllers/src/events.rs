//! Kubernetes Events (`events.k8s.io/v1`), published as kube's recorder
//! publishes them: the first of its kind is created, and a repeat within
//! [`SERIES_WINDOW`] (same object, type, reason, action and note) counts in
//! that Event's series instead of making another. kube's recorder keeps each
//! Event it sent, whole, to patch it back with the new count; this one keeps
//! of it only what the repeat needs (its name, count and time, under a hash
//! of its key): tens of bytes where the whole Event took over a kilobyte, at
//! an operator that publishes one or two Events for each of thousands of
//! objects.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;

/// How long a published Event takes repeats into its series (kube's
/// recorder's and client-go's window).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_secs(6 * 60);

/// How often the Events older than the window are forgotten.
const SWEEP_EVERY: SignedDuration = SignedDuration::from_secs(60);

/// Publishes Events for one controller instance.
pub struct Recorder {
    client: kube::Client,
    /// The reporting controller.
    controller: String,
    /// The reporting instance (the pod), the controller's name when unknown.
    instance: String,
    recent: Mutex<Recent>,
}

/// The Events published within the window, by the hash of their key.
#[derive(Default)]
struct Recent {
    sent: HashMap<u64, Sent>,
    swept: Option<Timestamp>,
}

/// What a repeat needs of an Event published: its name, and its count and
/// time so far.
struct Sent {
    name: Box<str>,
    count: i32,
    last: Timestamp,
}

/// One Event to publish about `regarding`.
pub struct Note<'a> {
    /// Normal or Warning.
    pub type_: EventType,
    /// Why (`ScaledUp`, `ReconcileFailed`, ...).
    pub reason: &'a str,
    /// What was done.
    pub action: &'a str,
    /// The human-readable message.
    pub note: &'a str,
}

impl Note<'_> {
    /// The hash of what makes two Events one series: the object, type,
    /// reason, action and note (kube's recorder's key).
    fn key(&self, regarding: &ObjectReference) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        matches!(self.type_, EventType::Warning).hash(&mut hasher);
        (self.reason, self.action, self.note).hash(&mut hasher);
        (
            &regarding.api_version,
            &regarding.kind,
            &regarding.namespace,
            &regarding.name,
            &regarding.uid,
        )
            .hash(&mut hasher);
        hasher.finish()
    }
}

impl Recorder {
    /// A recorder reporting as `controller` (its `instance`, the pod's name,
    /// when known).
    pub fn new(client: kube::Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Publishes `note` about `regarding`: a new Event, or the next count of
    /// the same one published within the window. Cluster-scoped objects'
    /// Events go to the `default` namespace.
    pub async fn publish(
        &self,
        note: &Note<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = note.key(regarding);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let repeat = self.repeat_of(key, now);
        let counted = match repeat {
            Some((name, count)) => {
                let series = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: MicroTime(now) },
                });
                match events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                    .await
                {
                    Ok(_) => Some(Sent {
                        name,
                        count,
                        last: now,
                    }),
                    // Deleted meanwhile (by hand, or its time to live): a
                    // new one is published instead.
                    Err(kube::Error::Api(status)) if status.code == 404 => None,
                    Err(error) => return Err(error),
                }
            }
            None => None,
        };
        let sent = match counted {
            Some(sent) => sent,
            None => {
                let event = self.event(note, regarding, now);
                let created = events.create(&PostParams::default(), &event).await?;
                Sent {
                    name: created.metadata.name.unwrap_or_default().into(),
                    count: 1,
                    last: now,
                }
            }
        };
        if let Ok(mut recent) = self.recent.lock() {
            recent.sent.insert(key, sent);
        }
        Ok(())
    }

    /// The name and next count of the Event with `key` published within the
    /// window, if one was.
    fn repeat_of(&self, key: u64, now: Timestamp) -> Option<(Box<str>, i32)> {
        self.recent.lock().ok()?.repeat_of(key, now)
    }

    /// A new Event (see [`new_event`]).
    fn event(&self, note: &Note<'_>, regarding: &ObjectReference, now: Timestamp) -> Event {
        new_event(&self.controller, &self.instance, note, regarding, now)
    }
}

impl Recent {
    /// The name and next count of the Event with `key` published within the
    /// window, if one was; forgets the older ones now and then.
    fn repeat_of(&mut self, key: u64, now: Timestamp) -> Option<(Box<str>, i32)> {
        if self.swept.is_none_or(|at| at + SWEEP_EVERY <= now) {
            self.sent.retain(|_, s| s.last + SERIES_WINDOW > now);
            self.sent.shrink_to_fit();
            self.swept = Some(now);
        }
        let sent = self.sent.get(&key)?;
        (sent.last + SERIES_WINDOW > now).then(|| (sent.name.clone(), sent.count + 1))
    }
}

/// A new Event reported by `controller` (its `instance`), named after its
/// object and the time in nanoseconds (as kube's recorder names them).
fn new_event(
    controller: &str,
    instance: &str,
    note: &Note<'_>,
    regarding: &ObjectReference,
    now: Timestamp,
) -> Event {
    let object = regarding.name.as_deref().unwrap_or(controller);
    Event {
        action: Some(note.action.to_string()),
        reason: Some(note.reason.to_string()),
        note: Some(note.note.to_string()),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            ..ObjectMeta::default()
        },
        reporting_controller: Some(controller.to_string()),
        reporting_instance: Some(instance.to_string()),
        type_: Some(
            match note.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_string(),
        ),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("aleph.dev/v1alpha1".into()),
            kind: Some("AIModel".into()),
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    fn note(reason: &'static str, text: &'static str) -> Note<'static> {
        Note {
            type_: EventType::Normal,
            reason,
            action: reason,
            note: text,
        }
    }

    #[test]
    fn a_series_is_one_object_type_reason_action_and_note() {
        let base = note("ScaledUp", "1 to 2");
        let key = base.key(&reference("m"));
        assert_eq!(key, note("ScaledUp", "1 to 2").key(&reference("m")));
        assert_ne!(key, base.key(&reference("n")));
        assert_ne!(key, note("ScaledUp", "2 to 3").key(&reference("m")));
        assert_ne!(key, note("ScaledDown", "1 to 2").key(&reference("m")));
        let warning = Note {
            type_: EventType::Warning,
            ..note("ScaledUp", "1 to 2")
        };
        assert_ne!(key, warning.key(&reference("m")));
        let mut other_uid = reference("m");
        other_uid.uid = Some("another".into());
        assert_ne!(key, base.key(&other_uid));
    }

    #[test]
    fn a_repeat_within_the_window_counts_on_and_an_old_one_is_forgotten() {
        let mut recent = Recent::default();
        let start = Timestamp::now();
        assert!(recent.repeat_of(1, start).is_none());
        recent.sent.insert(
            1,
            Sent {
                name: "m.17".into(),
                count: 3,
                last: start,
            },
        );
        let later = start + SignedDuration::from_secs(5 * 60);
        assert_eq!(recent.repeat_of(1, later), Some(("m.17".into(), 4)));
        let past = start + SERIES_WINDOW;
        assert_eq!(recent.repeat_of(1, past), None);
        // Swept a minute after the last sweep: forgotten.
        let swept = past + SWEEP_EVERY;
        assert_eq!(recent.repeat_of(2, swept), None);
        assert!(recent.sent.is_empty());
    }

    #[test]
    fn a_new_event_says_who_reports_it_and_about_what() {
        let now = Timestamp::now();
        let event = new_event(
            "aleph-operator",
            "aleph-0",
            &note("ScaledUp", "1 to 2"),
            &reference("m"),
            now,
        );
        assert_eq!(event.reason.as_deref(), Some("ScaledUp"));
        assert_eq!(event.action.as_deref(), Some("ScaledUp"));
        assert_eq!(event.note.as_deref(), Some("1 to 2"));
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(
            event.reporting_controller.as_deref(),
            Some("aleph-operator")
        );
        assert_eq!(event.reporting_instance.as_deref(), Some("aleph-0"));
        assert_eq!(event.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            event.metadata.name,
            Some(format!("m.{:x}", now.as_nanosecond()))
        );
        assert_eq!(event.regarding, Some(reference("m")));
        assert_eq!(event.event_time, Some(MicroTime(now)));
        assert!(event.series.is_none());
    }
}
