//! Per-tenant limits: requests per minute, tokens per minute, tokens per day.
//!
//! **Windows.** Fixed windows: the minute windows start on each whole UTC
//! minute, the day window at 00:00 UTC. A request is admitted against the
//! request count before it is forwarded; its tokens are charged when the
//! engine reports its `usage`, so the token limits refuse the *next* requests
//! once used up, and one window can overshoot its token limit by the tokens
//! of the requests already admitted when it ran out. As with any fixed window,
//! a client can get up to twice a per-minute limit within 60 seconds that
//! straddle a window boundary. `Retry-After` is the time until the window
//! that refused the request ends.
//!
//! **Replicas.** Counts are in memory, per gateway replica. With `share = n`
//! each replica enforces `ceil(limit / n)`, so the tenant gets at most
//! `n * ceil(limit / n) <= limit + n - 1` per window across all replicas
//! when its traffic is spread over them, and as little as `ceil(limit / n)`
//! when all of it reaches one replica (e.g. one long-lived client connection).
//! A limit is never enforced below 1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::error::ApiError;
use crate::state::TenantLimits;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// One tenant's counts in the current windows.
#[derive(Debug, Default, Clone, Copy)]
struct TenantWindows {
    /// Index of the current minute since the epoch.
    minute: u64,
    requests_this_minute: u64,
    tokens_this_minute: u64,
    /// Index of the current UTC day since the epoch.
    day: u64,
    tokens_today: u64,
}

impl TenantWindows {
    fn roll(&mut self, now: Duration) {
        let minute = now.as_secs() / MINUTE.as_secs();
        if minute != self.minute {
            self.minute = minute;
            self.requests_this_minute = 0;
            self.tokens_this_minute = 0;
        }
        let day = now.as_secs() / DAY.as_secs();
        if day != self.day {
            self.day = day;
            self.tokens_today = 0;
        }
    }
}

/// The limit counters of every tenant this replica has seen.
#[derive(Debug)]
pub struct Limits {
    clock: Arc<dyn Clock>,
    share: u64,
    tenants: Mutex<crate::FastMap<String, TenantWindows>>,
}

impl Limits {
    /// Counters on `clock`, each replica enforcing `1/share` of every limit
    /// (`share` 0 is taken as 1).
    pub fn new(clock: Arc<dyn Clock>, share: u64) -> Self {
        Self {
            clock,
            share: share.max(1),
            tenants: Mutex::default(),
        }
    }

    /// This replica's part of a tenant-wide limit.
    pub fn replica_limit(&self, limit: u64) -> u64 {
        limit.div_ceil(self.share).max(1)
    }

    /// Admits one request of `tenant` or says which limit refuses it and for
    /// how long. An admitted request counts against the request limit.
    pub fn admit(&self, tenant: &str, limits: &TenantLimits) -> Result<(), ApiError> {
        let now = self.clock.now();
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let windows = crate::entry_for(&mut tenants, tenant, TenantWindows::default);
        windows.roll(now);
        let until_next = |period: Duration| {
            let period_ms = period.as_millis();
            let into = now.as_millis() % period_ms;
            Duration::from_millis(u64::try_from(period_ms - into).unwrap_or(u64::MAX))
        };
        let refused = |limit: &'static str, period: Duration| ApiError::RateLimited {
            limit,
            retry_after: until_next(period),
        };
        if let Some(limit) = limits.tokens_per_day
            && windows.tokens_today >= self.replica_limit(limit)
        {
            return Err(refused("tokens per day", DAY));
        }
        if let Some(limit) = limits.tokens_per_minute
            && windows.tokens_this_minute >= self.replica_limit(limit)
        {
            return Err(refused("tokens per minute", MINUTE));
        }
        if let Some(limit) = limits.requests_per_minute
            && windows.requests_this_minute >= self.replica_limit(limit)
        {
            return Err(refused("requests per minute", MINUTE));
        }
        windows.requests_this_minute += 1;
        Ok(())
    }

    /// Charges `tokens` (prompt plus completion) used by one of `tenant`'s
    /// requests to the current windows.
    pub fn charge(&self, tenant: &str, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let now = self.clock.now();
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let windows = crate::entry_for(&mut tenants, tenant, TenantWindows::default);
        windows.roll(now);
        windows.tokens_this_minute = windows.tokens_this_minute.saturating_add(tokens);
        windows.tokens_today = windows.tokens_today.saturating_add(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limits(share: u64) -> (Arc<ManualClock>, Limits) {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_700_000_040)));
        (clock.clone(), Limits::new(clock, share))
    }

    fn tenant_limits(
        requests_per_minute: Option<u64>,
        tokens_per_minute: Option<u64>,
        tokens_per_day: Option<u64>,
    ) -> TenantLimits {
        TenantLimits {
            requests_per_minute,
            tokens_per_minute,
            tokens_per_day,
        }
    }

    #[test]
    fn requests_per_minute_refuse_until_the_minute_ends() {
        let (clock, limits) = limits(1);
        let tenant = tenant_limits(Some(2), None, None);
        clock.advance(Duration::from_secs(15));
        assert!(limits.admit("a", &tenant).is_ok());
        assert!(limits.admit("a", &tenant).is_ok());
        let refused = limits.admit("a", &tenant);
        assert_eq!(
            refused,
            Err(ApiError::RateLimited {
                limit: "requests per minute",
                retry_after: Duration::from_secs(45)
            })
        );
        assert!(limits.admit("b", &tenant).is_ok(), "tenants are separate");
        clock.advance(Duration::from_secs(45));
        assert!(limits.admit("a", &tenant).is_ok());
    }

    #[test]
    fn tokens_refuse_the_next_request_once_used() {
        let (clock, limits) = limits(1);
        let tenant = tenant_limits(None, None, Some(100));
        assert!(limits.admit("a", &tenant).is_ok());
        limits.charge("a", 150);
        let Err(ApiError::RateLimited { limit, retry_after }) = limits.admit("a", &tenant) else {
            panic!("expected a refusal");
        };
        assert_eq!(limit, "tokens per day");
        clock.advance(retry_after);
        assert!(limits.admit("a", &tenant).is_ok());
    }

    #[test]
    fn share_divides_the_limit_rounding_up() {
        let (_, limits) = limits(3);
        assert_eq!(limits.replica_limit(10), 4);
        assert_eq!(limits.replica_limit(1), 1);
        let tenant = tenant_limits(Some(10), None, None);
        for _ in 0..4 {
            assert!(limits.admit("a", &tenant).is_ok());
        }
        assert!(limits.admit("a", &tenant).is_err());
    }
}
