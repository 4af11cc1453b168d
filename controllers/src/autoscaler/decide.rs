//! The scaling rule, without a cluster: the replicas a model should have from
//! the requests in flight that the gateways measured.
//!
//! - In flight means the mean number of requests in flight since the last
//!   look (from the gateways' request-seconds counter), not a point sample
//!   that short requests slip through.
//! - Up at once: `ceil(in flight / targetConcurrency)`, at most `maxReplicas`,
//!   with the HPA's 10 % tolerance (1.05 per replica wanted is still 1).
//! - Down only to the highest recommendation of the last
//!   `scaleDownStabilizationSeconds` (as the HPA does), never below
//!   `minReplicas`.
//! - To zero (`minReplicas: 0`) once no request arrived and none was in flight
//!   for `scaleToZeroAfterSeconds`; from zero as soon as one is waiting.
//! - Without a complete measurement (no gateway, or one not answering), only
//!   up: a missing figure is never read as "no load".

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use aleph_crds::aimodel::Autoscaling;

/// A model's scaling bounds and targets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// The fewest replicas (0 scales to zero).
    pub min: i32,
    /// The most replicas.
    pub max: i32,
    /// Requests in flight per replica.
    pub target: f64,
    /// How long load must stay low before scaling down.
    pub stabilization: Duration,
    /// With `min == 0`: how long without requests before stopping the last replica.
    pub to_zero_after: Duration,
}

impl Policy {
    /// The policy of `spec.autoscaling`, when it scales on the gateway's load.
    pub fn of(auto: &Autoscaling) -> Option<Self> {
        let target = auto.target_concurrency?;
        Some(Self {
            min: auto.min_replicas.max(0),
            max: auto.max_replicas.max(1),
            target: f64::from(target.max(1)),
            stabilization: secs(auto.scale_down_stabilization_seconds),
            to_zero_after: secs(auto.scale_to_zero_after_seconds),
        })
    }
}

fn secs(value: i32) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

/// What the autoscaler remembers of a model between looks.
#[derive(Clone, Debug)]
pub struct History {
    recommendations: VecDeque<(Instant, i32)>,
    last_activity: Instant,
}

impl History {
    /// A model first seen at `now`: it counts as active then, so a restart of
    /// the operator never stops a replica early.
    pub fn new(now: Instant) -> Self {
        Self {
            recommendations: VecDeque::new(),
            last_activity: now,
        }
    }

    /// A request arrived or was in flight at `now`.
    pub fn active(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// Since when nothing arrived.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_activity)
    }
}

/// What one look measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// Requests in flight over every gateway replica, queued ones included.
    pub in_flight: f64,
    /// Whether every gateway replica answered (and there was at least one).
    pub complete: bool,
}

/// A change of replicas and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The replicas to set.
    pub desired: i32,
    /// ScaledUp, ScaledDown, ScaledToZero or ScaledFromZero.
    pub reason: &'static str,
    /// The figures behind it.
    pub message: String,
}

/// How close to the replicas below a ratio may be and still be served by
/// them (the HPA's default tolerance): a mean of 2.05 per target is 2.
const TOLERANCE: f64 = 0.1;

/// The replicas for `ratio` (in flight over the target per replica).
fn replicas_for(ratio: f64) -> i32 {
    if ratio <= 0.0 {
        return 0;
    }
    let below = ratio.floor();
    let replicas = if below >= 1.0 && ratio - below <= TOLERANCE + 1e-9 {
        below
    } else {
        ratio.ceil()
    };
    replicas.min(f64::from(i32::MAX)) as i32
}

/// The mean number in flight of each (gateway replica, model) between two
/// looks, from the request-seconds counter.
#[derive(Debug, Default)]
pub struct Means<K> {
    last: std::collections::HashMap<K, (f64, Instant)>,
}

impl<K: std::hash::Hash + Eq> Means<K> {
    /// The mean in flight of `key` since its last look, given its counter
    /// `seconds` at `now`; `point` (the gauge now) on a first look, and when
    /// the counter went back (the gateway restarted) or is missing.
    pub fn mean(&mut self, key: K, seconds: Option<f64>, point: f64, now: Instant) -> f64 {
        let Some(seconds) = seconds else {
            self.last.remove(&key);
            return point;
        };
        match self.last.insert(key, (seconds, now)) {
            Some((before, at)) if seconds >= before && now > at => {
                (seconds - before) / now.duration_since(at).as_secs_f64()
            }
            _ => point,
        }
    }

    /// Forgets the keys not kept.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.last.retain(|key, _| keep(key));
    }
}

/// The replicas `current` should become, or `None` to leave them.
pub fn decide(
    policy: &Policy,
    history: &mut History,
    current: i32,
    load: Load,
    now: Instant,
) -> Option<Decision> {
    if load.in_flight > 0.0 {
        history.active(now);
    }
    let raw = replicas_for(load.in_flight / policy.target);
    let desired = if load.complete {
        history.recommendations.push_back((now, raw));
        while history
            .recommendations
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > policy.stabilization)
        {
            history.recommendations.pop_front();
        }
        let window = history
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(raw);
        let idle = history.idle_for(now);
        let floor = if policy.min == 0 && idle < policy.to_zero_after {
            1
        } else {
            policy.min
        };
        window.max(floor)
    } else {
        // Only up: to what the measured part asks, and to the minimum.
        current.max(raw).max(policy.min)
    }
    .min(policy.max);
    if desired == current {
        return None;
    }
    // Two decimals: a mean, not a count.
    let in_flight = (load.in_flight * 100.0).round() / 100.0;
    let per = policy.target;
    let (reason, message) = if current == 0 {
        (
            "ScaledFromZero",
            format!(
                "{in_flight} request(s) waiting at zero replicas: starting {desired} (target {per} in flight per replica)"
            ),
        )
    } else if desired == 0 {
        (
            "ScaledToZero",
            format!(
                "no request for {}s (scaleToZeroAfterSeconds {}): stopping the last replica; the gateway holds the next request while one starts",
                history.idle_for(now).as_secs(),
                policy.to_zero_after.as_secs()
            ),
        )
    } else if desired > current {
        (
            "ScaledUp",
            format!(
                "{in_flight} request(s) in flight on average over the gateways since the last look, target {per} per replica: {current} -> {desired} replicas (max {})",
                policy.max
            ),
        )
    } else {
        (
            "ScaledDown",
            format!(
                "at most {} replica(s) needed over the last {}s ({in_flight} in flight now, target {per} per replica): {current} -> {desired} (min {})",
                desired,
                policy.stabilization.as_secs(),
                policy.min
            ),
        )
    };
    Some(Decision {
        desired,
        reason,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: i32, max: i32) -> Policy {
        Policy {
            min,
            max,
            target: 2.0,
            stabilization: Duration::from_secs(10),
            to_zero_after: Duration::from_secs(30),
        }
    }

    fn load(in_flight: f64) -> Load {
        Load {
            in_flight,
            complete: true,
        }
    }

    #[test]
    fn load_scales_up_at_once_and_down_after_the_window() {
        let p = policy(1, 4);
        let t0 = Instant::now();
        let mut h = History::new(t0);
        let up = decide(&p, &mut h, 1, load(5.0), t0).expect("up");
        assert_eq!((up.desired, up.reason), (3, "ScaledUp"));
        // More than max is capped.
        let capped = decide(&p, &mut h, 3, load(40.0), t0 + Duration::from_secs(1)).expect("cap");
        assert_eq!(capped.desired, 4);
        // The load stops: the window still remembers it.
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(decide(&p, &mut h, 4, load(0.0), at(5)), None);
        assert_eq!(decide(&p, &mut h, 4, load(0.0), at(11)), None);
        let down = decide(&p, &mut h, 4, load(0.0), at(12)).expect("down");
        assert_eq!((down.desired, down.reason), (1, "ScaledDown"));
    }

    #[test]
    fn an_idle_model_goes_to_zero_and_a_waiting_request_brings_it_back() {
        let p = policy(0, 3);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut h = History::new(t0);
        // Active at first sight: not stopped before the idle time.
        assert_eq!(decide(&p, &mut h, 1, load(0.0), at(29)), None);
        let zero = decide(&p, &mut h, 1, load(0.0), at(31)).expect("to zero");
        assert_eq!((zero.desired, zero.reason), (0, "ScaledToZero"));
        assert_eq!(decide(&p, &mut h, 0, load(0.0), at(40)), None);
        let back = decide(&p, &mut h, 0, load(1.0), at(41)).expect("from zero");
        assert_eq!((back.desired, back.reason), (1, "ScaledFromZero"));
        // Arrivals between looks count as activity too.
        h.active(at(60));
        assert_eq!(decide(&p, &mut h, 1, load(0.0), at(85)), None);
        assert_eq!(
            decide(&p, &mut h, 1, load(0.0), at(91)).map(|d| d.desired),
            Some(0)
        );
    }

    #[test]
    fn a_mean_just_over_a_whole_number_of_replicas_is_within_tolerance() {
        assert_eq!(replicas_for(0.0), 0);
        assert_eq!(replicas_for(0.05), 1);
        assert_eq!(replicas_for(0.7), 1);
        assert_eq!(replicas_for(1.0), 1);
        assert_eq!(replicas_for(1.1), 1);
        assert_eq!(replicas_for(1.11), 2);
        assert_eq!(replicas_for(2.4), 3);
        assert_eq!(replicas_for(3.08), 3);
        assert_eq!(replicas_for(1e12), i32::MAX);
    }

    #[test]
    fn the_mean_in_flight_is_the_counters_rate_between_looks() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut means = Means::default();
        // First look: the gauge.
        assert_eq!(means.mean("a", Some(10.0), 1.0, at(0)), 1.0);
        // 7 request-seconds over 2 s: 3.5 in flight on average, whatever
        // the gauge says at the instant of the look.
        assert_eq!(means.mean("a", Some(17.0), 0.0, at(2000)), 3.5);
        assert_eq!(means.mean("a", Some(17.0), 0.0, at(4000)), 0.0);
        // A restarted gateway's counter starts again: the gauge, once.
        assert_eq!(means.mean("a", Some(1.0), 2.0, at(6000)), 2.0);
        assert_eq!(means.mean("a", Some(2.0), 2.0, at(7000)), 1.0);
        // No counter (an older gateway): the gauge.
        assert_eq!(means.mean("a", None, 4.0, at(8000)), 4.0);
        means.retain(|k| *k != "a");
        assert_eq!(means.mean("a", Some(9.0), 5.0, at(9000)), 5.0);
    }

    #[test]
    fn an_incomplete_measurement_never_scales_down() {
        let p = policy(0, 5);
        let t0 = Instant::now();
        let mut h = History::new(t0 - Duration::from_secs(3600));
        let partial = Load {
            in_flight: 0.0,
            complete: false,
        };
        assert_eq!(decide(&p, &mut h, 3, partial, t0), None);
        assert_eq!(decide(&p, &mut h, 1, partial, t0), None);
        let some = Load {
            in_flight: 9.0,
            complete: false,
        };
        assert_eq!(decide(&p, &mut h, 1, some, t0).map(|d| d.desired), Some(5));
        // The minimum holds even unmeasured.
        assert_eq!(
            decide(&policy(2, 5), &mut h, 1, partial, t0).map(|d| d.desired),
            Some(2)
        );
    }
}
