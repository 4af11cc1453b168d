use super::*;
use proptest::prelude::*;

#[test]
fn backoff_formula() {
    let p = RetryPolicy {
        limit: 20,
        initial_delay_seconds: 10,
        factor: 3,
        max_delay_seconds: 1000,
    };
    let secs: Vec<i64> = (1..=7).map(|a| backoff(&p, a).num_seconds()).collect();
    assert_eq!(secs, [10, 30, 90, 270, 810, 1000, 1000]);
    assert_eq!(backoff(&p, i32::MAX).num_seconds(), 1000);
    assert_eq!(backoff(&p, 0).num_seconds(), 10);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn backoff_grows_and_stays_capped(
        initial in 0i64..3600, factor in 1i32..=10, extra in 0i64..86400, attempt in 1i32..30,
    ) {
        let p = RetryPolicy { limit: 20, initial_delay_seconds: initial, factor, max_delay_seconds: initial + extra };
        let d = backoff(&p, attempt);
        prop_assert!(d <= TimeDelta::seconds(initial + extra));
        prop_assert!(d >= TimeDelta::seconds(initial));
        prop_assert!(backoff(&p, attempt + 1) >= d);
    }
}
