//! Cron schedules of Pipelines: which slot is due, when the next one is, the
//! name of a slot's run, and what to do with overlapping and old runs.
//!
//! A scheduled run's name comes from the pipeline and the slot, so every
//! operator replica, and every retry after a restart, creates the same object:
//! the second `create` gets AlreadyExists instead of a second run.

use std::str::FromStr;

use aleph_crds::pipeline::{ConcurrencyPolicy, RunPhase};
use chrono::{DateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::names::bounded_name;

/// Why a schedule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error(
        "schedule.cron {cron:?} is invalid: {why}; use five fields (minute hour day-of-month month day-of-week), for example \"0 2 * * *\", six with a leading seconds field, for example \"*/30 * * * * *\", or @hourly, @daily, @weekly, @monthly, @yearly"
    )]
    InvalidCron {
        /// The expression.
        cron: String,
        /// What the parser said.
        why: String,
    },
    /// The cron expression parses but no time ever matches it (`0 0 30 2 *`).
    #[error("schedule.cron {cron:?} never matches a date: pick a day that exists")]
    NeverDue {
        /// The expression.
        cron: String,
    },
    /// The time zone is not an IANA name.
    #[error(
        "schedule.timeZone {time_zone:?} is not an IANA time zone: use a name such as \"Europe/Paris\" or \"UTC\""
    )]
    InvalidTimeZone {
        /// The name given.
        time_zone: String,
    },
}

impl ScheduleError {
    /// The CamelCase reason for the Pipeline's conditions.
    pub fn reason(&self) -> &'static str {
        "InvalidSchedule"
    }
}

/// A parsed schedule: a five-field cron, a six-field one whose first field is
/// the seconds, or `@daily` and friends, read in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    time_zone: Tz,
}

/// What a schedule says at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The most recent slot at or before `now` that has no run yet: create
    /// its run. Older missed slots are not caught up on.
    pub missed: Option<DateTime<Utc>>,
    /// The first slot after `now`: requeue for then.
    pub next: Option<DateTime<Utc>>,
}

impl Schedule {
    /// Parses a cron expression and an optional IANA time zone (UTC when unset).
    pub fn parse(cron: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let time_zone = match time_zone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| ScheduleError::InvalidTimeZone {
                time_zone: name.to_string(),
            })?,
        };
        let trimmed = cron.trim();
        if trimmed.starts_with('@') {
            const NICKNAMES: [&str; 5] = ["@hourly", "@daily", "@weekly", "@monthly", "@yearly"];
            if !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(trimmed)) {
                return Err(ScheduleError::InvalidCron {
                    cron: cron.to_string(),
                    why: format!("unknown nickname {trimmed}"),
                });
            }
        } else if !(5..=6).contains(&trimmed.split_whitespace().count()) {
            return Err(ScheduleError::InvalidCron {
                cron: cron.to_string(),
                why: format!(
                    "it has {} fields, not 5 or 6",
                    trimmed.split_whitespace().count()
                ),
            });
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| ScheduleError::InvalidCron {
                cron: cron.to_string(),
                why: e.to_string(),
            })?;
        let schedule = Self {
            cron: parsed,
            time_zone,
        };
        let probe = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
        if probe.and_then(|t| schedule.next_after(t)).is_none() {
            return Err(ScheduleError::NeverDue {
                cron: cron.to_string(),
            });
        }
        Ok(schedule)
    }

    /// The time zone the schedule is read in.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// The first slot strictly after `time`.
    pub fn next_after(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&time.with_timezone(&self.time_zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last slot at or before `time`.
    pub fn latest_at_or_before(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&time.with_timezone(&self.time_zone), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Which slot is due and when the next one is. `last_schedule_time` is
    /// the Pipeline's `status.lastScheduleTime`; when it has never scheduled a
    /// run, slots before `created` (its creation time) are not due.
    pub fn due(
        &self,
        last_schedule_time: Option<DateTime<Utc>>,
        created: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Due {
        let since = last_schedule_time.unwrap_or(created);
        Due {
            missed: self.latest_at_or_before(now).filter(|&slot| slot > since),
            next: self.next_after(now),
        }
    }
}

/// The name of the run of a pipeline's slot: `<pipeline>-<yyyymmddhhmm>`
/// (the slot in UTC), with the seconds appended (`<yyyymmddhhmmss>`) for a
/// slot that is not on a whole minute, cut and hashed to stay within 63
/// characters.
pub fn run_name(pipeline: &str, slot: DateTime<Utc>) -> String {
    let stamp = if slot.second() == 0 {
        slot.format("%Y%m%d%H%M")
    } else {
        slot.format("%Y%m%d%H%M%S")
    };
    bounded_name(&format!("{pipeline}-{stamp}"), 63)
}

/// What to do about a due slot, given the runs of the pipeline still going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotDecision {
    /// Create the slot's run.
    Create,
    /// Do not run this slot (`Forbid` with a run still going); it is still
    /// recorded as scheduled, so it is not tried again.
    Skip {
        /// The runs still going.
        active: Vec<String>,
    },
    /// Cancel these runs (`Replace`), then create the slot's run.
    CancelThenCreate {
        /// The runs to cancel.
        active: Vec<String>,
    },
}

/// Applies the concurrency policy to a due slot. `active` are the names of
/// the pipeline's runs that have not finished.
pub fn decide_slot(policy: ConcurrencyPolicy, active: &[String]) -> SlotDecision {
    if active.is_empty() {
        return SlotDecision::Create;
    }
    match policy {
        ConcurrencyPolicy::Allow => SlotDecision::Create,
        ConcurrencyPolicy::Forbid => SlotDecision::Skip {
            active: active.to_vec(),
        },
        ConcurrencyPolicy::Replace => SlotDecision::CancelThenCreate {
            active: active.to_vec(),
        },
    }
}

/// A finished run, for history pruning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRun {
    /// The run's name.
    pub name: String,
    /// Succeeded, Failed or Cancelled (others are ignored).
    pub phase: RunPhase,
    /// When it finished.
    pub completion_time: DateTime<Utc>,
}

/// The runs to delete so that at most `successful_limit` succeeded and
/// `failed_limit` failed or cancelled runs are kept, the newest ones.
pub fn runs_to_prune(
    runs: &[FinishedRun],
    successful_limit: i32,
    failed_limit: i32,
) -> Vec<String> {
    let mut prune = Vec::new();
    for (phases, limit) in [
        (&[RunPhase::Succeeded][..], successful_limit),
        (&[RunPhase::Failed, RunPhase::Cancelled][..], failed_limit),
    ] {
        let mut group: Vec<&FinishedRun> =
            runs.iter().filter(|r| phases.contains(&r.phase)).collect();
        group.sort_by(|a, b| {
            b.completion_time
                .cmp(&a.completion_time)
                .then_with(|| b.name.cmp(&a.name))
        });
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        prune.extend(group.into_iter().skip(keep).map(|r| r.name.clone()));
    }
    prune.sort();
    prune
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Asserts that the first slot of `schedule` after the time `after` is `next`.
    #[track_caller]
    fn assert_next(schedule: &Schedule, after: &str, next: &str) {
        assert_eq!(schedule.next_after(utc(after)), Some(utc(next)));
    }

    /// `(case, cron, last scheduled, created, now, missed slot due, next slot)`.
    type DueCase = (
        &'static str,
        &'static str,
        Option<&'static str>,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );

    #[test]
    fn the_latest_missed_slot_since_creation_is_due_and_the_next_follows() {
        let cases: [DueCase; 6] = [
            (
                "daily in UTC",
                "0 2 * * *",
                Some("2026-01-01T02:00:00Z"),
                "2025-12-01T00:00:00Z",
                "2026-01-02T09:30:00Z",
                Some("2026-01-02T02:00:00Z"),
                Some("2026-01-03T02:00:00Z"),
            ),
            (
                "nothing due once the slot is scheduled",
                "*/15 * * * *",
                Some("2026-01-02T09:15:00Z"),
                "2025-12-01T00:00:00Z",
                "2026-01-02T09:29:59Z",
                None,
                Some("2026-01-02T09:30:00Z"),
            ),
            (
                "a slot exactly now is due",
                "30 9 * * *",
                None,
                "2026-01-01T00:00:00Z",
                "2026-01-02T09:30:00Z",
                Some("2026-01-02T09:30:00Z"),
                Some("2026-01-03T09:30:00Z"),
            ),
            (
                "only the latest missed slot is due",
                "@hourly",
                Some("2026-01-01T00:00:00Z"),
                "2025-01-01T00:00:00Z",
                "2026-01-03T05:10:00Z",
                Some("2026-01-03T05:00:00Z"),
                Some("2026-01-03T06:00:00Z"),
            ),
            (
                "slots before creation are not due",
                "@daily",
                None,
                "2026-01-02T08:00:00Z",
                "2026-01-02T09:00:00Z",
                None,
                Some("2026-01-03T00:00:00Z"),
            ),
            (
                "a leading seconds field is read as seconds",
                "*/20 * * * * *",
                Some("2026-01-02T09:30:00Z"),
                "2026-01-01T00:00:00Z",
                "2026-01-02T09:30:41Z",
                Some("2026-01-02T09:30:40Z"),
                Some("2026-01-02T09:31:00Z"),
            ),
        ];
        for (case, cron, last, created, now, missed, next) in cases {
            let s = Schedule::parse(cron, None).unwrap();
            let due = s.due(last.map(utc), utc(created), utc(now));
            assert_eq!(due.missed, missed.map(utc), "{case}: the slot due");
            assert_eq!(due.next, next.map(utc), "{case}: the next slot");
        }
    }

    #[test]
    fn time_zones_move_slots() {
        let s = Schedule::parse("0 2 * * *", Some("Europe/Paris")).unwrap();
        // Winter: Paris is UTC+1.
        assert_next(&s, "2026-01-10T12:00:00Z", "2026-01-11T01:00:00Z");
        // Summer: UTC+2.
        assert_next(&s, "2026-07-10T12:00:00Z", "2026-07-11T00:00:00Z");
        let ny = Schedule::parse("0 9 * * MON-FRI", Some("America/New_York")).unwrap();
        // Friday 2026-01-09 15:00 UTC is 10:00 in New York: next is Monday 09:00 EST.
        assert_next(&ny, "2026-01-09T15:00:00Z", "2026-01-12T14:00:00Z");
    }

    #[test]
    fn a_repeated_hour_does_not_run_twice() {
        // Paris leaves summer time on 2026-10-25: 02:30 happens at 00:30 and 01:30 UTC.
        let s = Schedule::parse("30 2 * * *", Some("Europe/Paris")).unwrap();
        let first = s
            .next_after(utc("2026-10-24T12:00:00Z"))
            .expect("a slot on the 25th");
        assert_eq!(first.date_naive(), utc("2026-10-25T00:00:00Z").date_naive());
        let due = s.due(Some(first), first, utc("2026-10-25T03:00:00Z"));
        assert_eq!(
            due.missed, None,
            "the same wall clock slot is not run twice"
        );
        assert_eq!(due.next, Some(utc("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn invalid_cron_and_time_zone_say_so() {
        for bad in [
            "",
            "* * * *",
            "0 0 * * * * *",
            "61 * * * *",
            "61 * * * * *",
            "0 25 * * *",
            "@fortnightly",
            "a b c d e",
        ] {
            let err = Schedule::parse(bad, None).unwrap_err();
            assert!(
                matches!(err, ScheduleError::InvalidCron { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("five fields"), "{err}");
            assert!(err.to_string().contains("seconds"), "{err}");
            assert_eq!(err.reason(), "InvalidSchedule");
        }
        let err = Schedule::parse("0 0 30 2 *", None).unwrap_err();
        assert!(matches!(err, ScheduleError::NeverDue { .. }), "{err}");
        let err = Schedule::parse("@daily", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(
            err,
            ScheduleError::InvalidTimeZone {
                time_zone: "Mars/Olympus".into()
            }
        );
        assert!(err.to_string().contains("IANA"));
    }

    #[test]
    fn nicknames_parse() {
        for n in [
            "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@DAILY",
        ] {
            assert!(Schedule::parse(n, Some("UTC")).is_ok(), "{n}");
        }
        let weekly = Schedule::parse("@weekly", None).unwrap();
        // 2026-01-07 is a Wednesday; the next Sunday midnight is the 11th.
        assert_next(&weekly, "2026-01-07T10:00:00Z", "2026-01-11T00:00:00Z");
    }

    #[test]
    fn a_leading_seconds_field_is_read_as_seconds() {
        let s = Schedule::parse("*/20 * * * * *", None).unwrap();
        assert_next(&s, "2026-01-02T09:30:05Z", "2026-01-02T09:30:20Z");
        // Five fields still mean minutes.
        let minutes = Schedule::parse("*/20 * * * *", None).unwrap();
        assert_next(&minutes, "2026-01-02T09:30:05Z", "2026-01-02T09:40:00Z");
    }

    #[test]
    fn run_names_are_deterministic_and_bounded() {
        let slot = utc("2026-01-02T02:00:00Z");
        assert_eq!(run_name("nightly", slot), "nightly-202601020200");
        assert_eq!(run_name("nightly", slot), run_name("nightly", slot));
        assert_ne!(
            run_name("nightly", slot),
            run_name("nightly", utc("2026-01-02T02:01:00Z"))
        );
        assert_eq!(
            run_name("nightly", utc("2026-01-02T02:00:20Z")),
            "nightly-20260102020020"
        );
        let long = "p".repeat(60);
        let a = run_name(&long, slot);
        let b = run_name(&long, utc("2026-01-03T02:00:00Z"));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
    }

    #[test]
    fn concurrency_policies() {
        let active = vec!["r1".to_string()];
        assert_eq!(
            decide_slot(ConcurrencyPolicy::Forbid, &[]),
            SlotDecision::Create
        );
        assert_eq!(
            decide_slot(ConcurrencyPolicy::Allow, &active),
            SlotDecision::Create
        );
        assert_eq!(
            decide_slot(ConcurrencyPolicy::Forbid, &active),
            SlotDecision::Skip {
                active: active.clone()
            }
        );
        assert_eq!(
            decide_slot(ConcurrencyPolicy::Replace, &active),
            SlotDecision::CancelThenCreate { active }
        );
    }

    #[test]
    fn prunes_the_oldest_runs_beyond_the_limits() {
        let run = |name: &str, phase, t: &str| FinishedRun {
            name: name.into(),
            phase,
            completion_time: utc(t),
        };
        let runs = [
            run("s1", RunPhase::Succeeded, "2026-01-01T00:00:00Z"),
            run("s2", RunPhase::Succeeded, "2026-01-02T00:00:00Z"),
            run("s3", RunPhase::Succeeded, "2026-01-03T00:00:00Z"),
            run("f1", RunPhase::Failed, "2026-01-01T00:00:00Z"),
            run("c1", RunPhase::Cancelled, "2026-01-04T00:00:00Z"),
            run("r1", RunPhase::Running, "2026-01-04T00:00:00Z"),
        ];
        assert_eq!(runs_to_prune(&runs, 2, 1), vec!["f1", "s1"]);
        assert_eq!(
            runs_to_prune(&runs, 0, 0),
            vec!["c1", "f1", "s1", "s2", "s3"]
        );
        assert!(runs_to_prune(&runs, 10, 10).is_empty());
    }
}
