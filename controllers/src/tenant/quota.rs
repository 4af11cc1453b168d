//! The tenant-wide quota: plan defaults, quantity arithmetic, and how the
//! tenant's hard limits are split into per-namespace ResourceQuotas whose hard
//! limits always sum to at most the tenant's, rebalanced from usage.
//!
//! Why this cannot be overrun: the API server admits a pod only when its
//! namespace's ResourceQuota has room, atomically per namespace. The split
//! keeps `sum(hard_i) <= tenant hard` at every instant: a namespace's hard
//! limit is lowered (never below what it uses, checked against the quota's
//! resourceVersion so a concurrent admission makes the write fail and retry)
//! before any other namespace's is raised.

use std::collections::BTreeMap;

use aleph_crds::tenant::{TenantPlan, TenantQuota};

/// Resource names of the per-namespace ResourceQuota.
pub const CPU: &str = "requests.cpu";
/// Memory requests.
pub const MEMORY: &str = "requests.memory";
/// GPU requests.
pub const GPU: &str = "requests.nvidia.com/gpu";
/// Pod count.
pub const PODS: &str = "pods";
/// Storage requests of PersistentVolumeClaims.
pub const STORAGE: &str = "requests.storage";
/// AIModel count.
pub const AI_MODELS: &str = "count/aimodels.aleph.dev";
/// Plugin count.
pub const PLUGINS: &str = "count/plugins.aleph.dev";
/// Pipeline count.
pub const PIPELINES: &str = "count/pipelines.aleph.dev";

/// A quantity in thousandths of its unit (millicores, millibytes, milli-pods).
pub type Milli = i128;

/// The tenant-wide hard limits: the plan's defaults overridden by `quota`.
pub fn tenant_hard(
    plan: TenantPlan,
    quota: Option<&TenantQuota>,
) -> Result<BTreeMap<&'static str, Milli>, String> {
    let (cpu, memory, gpu, pods, storage, models, plugins, pipelines) = match plan {
        TenantPlan::Free => ("4", "8Gi", 0, 20, "20Gi", 2, 5, 5),
        TenantPlan::Pro => ("32", "128Gi", 4, 200, "500Gi", 20, 50, 50),
        TenantPlan::Enterprise => ("256", "1Ti", 32, 2000, "10Ti", 200, 500, 500),
    };
    let q = quota.cloned().unwrap_or_default();
    let pick = |set: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                default: &str| {
        parse_quantity(set.map(|q| q.0.as_str()).unwrap_or(default))
    };
    let count = |set: Option<i64>, default: i64| Milli::from(set.unwrap_or(default)) * 1000;
    Ok(BTreeMap::from([
        (CPU, pick(q.cpu.as_ref(), cpu)?),
        (MEMORY, pick(q.memory.as_ref(), memory)?),
        (GPU, count(q.gpus, gpu)),
        (PODS, count(q.pods, pods)),
        (STORAGE, pick(q.storage.as_ref(), storage)?),
        (AI_MODELS, count(q.ai_models, models)),
        (PLUGINS, count(q.plugins, plugins)),
        (PIPELINES, count(q.pipelines, pipelines)),
    ]))
}

/// How many namespaces the tenant may have, declared and owner-created.
pub fn namespace_limit(plan: TenantPlan, quota: Option<&TenantQuota>) -> usize {
    let default = match plan {
        TenantPlan::Free => 3,
        TenantPlan::Pro => 10,
        TenantPlan::Enterprise => 100,
    };
    let limit = quota.and_then(|q| q.namespaces).unwrap_or(default);
    usize::try_from(limit.max(0)).unwrap_or(usize::MAX)
}

/// Parses a Kubernetes quantity (`250m`, `2`, `1.5`, `64Gi`, `1e3`, `10M`) into thousandths.
pub fn parse_quantity(s: &str) -> Result<Milli, String> {
    let s = s.trim();
    let bad = || format!("`{s}` is not a valid quantity");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let negative = whole.starts_with('-');
    let whole = whole.trim_start_matches(['-', '+']);
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    // Keep up to nine fractional digits as nano-units, enough for every suffix.
    let frac_digits: String = frac.chars().take(9).collect();
    if !frac_digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let frac_nanos: i128 = if frac_digits.is_empty() {
        0
    } else {
        frac_digits.parse::<i128>().map_err(|_| bad())? * 10i128.pow(9 - frac_digits.len() as u32)
    };
    let nanos = whole * 1_000_000_000 + frac_nanos;
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        // An exponent (`1e3`, `2E6`); `E` alone is exa, above.
        e if e.starts_with(['e', 'E']) => {
            let exp: u32 = e[1..].parse().map_err(|_| bad())?;
            (10i128.checked_pow(exp).ok_or_else(bad)?, 1)
        }
        _ => return Err(bad()),
    };
    // nanos * mul / div gives nano-units; thousandths = that / 1e6.
    let milli = nanos.checked_mul(mul).ok_or_else(bad)? / div / 1_000_000;
    Ok(if negative { -milli } else { milli })
}

/// Formats thousandths as a quantity: whole units when exact, `m` otherwise.
pub fn format_quantity(milli: Milli) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// Formats a value for people (and for the quotas' hard limits): GPUs and
/// counts as integers, memory and storage in the largest binary unit that
/// divides them (`128Gi`, `1Ti`, `500Mi`).
pub fn display(resource: &str, milli: Milli) -> String {
    if (resource == MEMORY || resource == STORAGE) && milli != 0 {
        for (suffix, shift) in [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            let unit: Milli = (1 << shift) * 1000;
            if milli % unit == 0 {
                return format!("{}{suffix}", milli / unit);
            }
        }
    }
    format_quantity(milli)
}

/// One namespace's current quota.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceQuota {
    /// Hard limits now.
    pub hard: BTreeMap<String, Milli>,
    /// Usage now.
    pub used: BTreeMap<String, Milli>,
}

/// The new hard limits of each namespace for one resource: each namespace
/// keeps what it uses, and the tenant's headroom (hard minus total usage) is
/// split evenly. The result sums to at most `tenant_hard`; when usage already
/// exceeds it (the quota was lowered), namespaces get exactly their usage and
/// no more can be created anywhere.
pub fn split(tenant_hard: Milli, used: &[Milli], unit: Milli) -> Vec<Milli> {
    let n = used.len() as Milli;
    if n == 0 {
        return Vec::new();
    }
    let used: Vec<Milli> = used.iter().map(|u| (*u).max(0)).collect();
    let total: Milli = used.iter().sum();
    let headroom = (tenant_hard - total).max(0);
    // Split in whole units (one GPU, one pod, one millicore) so no share is unusable.
    let units = headroom / unit;
    let base = units / n;
    let extra = units % n;
    used.iter()
        .enumerate()
        .map(|(i, u)| u + (base + Milli::from((i as Milli) < extra)) * unit)
        .collect()
}

/// What one namespace needs of one resource after a refusal for quota: the
/// usage its refused creation would have brought it to, and since when it
/// has been refused (earlier refusals are served first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Demand {
    /// Usage the namespace needs room for.
    pub level: Milli,
    /// When the first refusal still unanswered was seen (seconds since the epoch).
    pub since: i64,
}

/// The new hard limits of each namespace for one resource, moving the
/// tenant's headroom to where creations were refused: each namespace keeps
/// what it uses; then each namespace with a demand gets what its refused
/// creation needs, oldest first, when the headroom left covers all of it (a
/// part would admit nothing); what is left is split evenly, demanders first.
/// The result sums to at most `tenant_hard` (or to the usage, when usage
/// already exceeds it).
pub fn targets(
    tenant_hard: Milli,
    used: &[Milli],
    demands: &[Option<Demand>],
    unit: Milli,
) -> Vec<Milli> {
    let used: Vec<Milli> = used.iter().map(|u| (*u).max(0)).collect();
    let mut target = used.clone();
    let mut free = tenant_hard - used.iter().sum::<Milli>();
    if free <= 0 || used.is_empty() {
        return target;
    }
    let mut demanders: Vec<(i64, usize, Milli)> = demands
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let d = (*d)?;
            let need = d.level - used.get(i).copied().unwrap_or(0);
            // Whole units: a refused pod asked for whole GPUs, pods, MiB.
            let need = (need + unit - 1) / unit * unit;
            (need > 0).then_some((d.since, i, need))
        })
        .collect();
    demanders.sort();
    for (_, i, need) in &demanders {
        if *need <= free {
            target[*i] += need;
            free -= need;
        }
    }
    let mut order: Vec<usize> = demanders.iter().map(|(_, i, _)| *i).collect();
    let rest: Vec<usize> = (0..used.len()).filter(|i| !order.contains(i)).collect();
    order.extend(rest);
    let n = used.len() as Milli;
    let units = free / unit;
    let (base, extra) = (units / n, units % n);
    for (rank, i) in order.into_iter().enumerate() {
        target[i] += (base + Milli::from((rank as Milli) < extra)) * unit;
    }
    target
}

/// How far namespace `i`'s hard limit may be raised now toward `target`
/// without the limits the API server enforces exceeding the tenant's:
/// `enforced[j]` is what namespace j may admit up to now, the larger of its
/// quota's spec and status (the quota controller copies a new spec into the
/// status, which admission reads, a moment later). Never lower than `hard`.
pub fn raise_to(
    tenant_hard: Milli,
    enforced: &[Milli],
    i: usize,
    hard: Milli,
    target: Milli,
) -> Milli {
    let others: Milli = enforced
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, e)| *e)
        .sum();
    hard.max(target.min(tenant_hard - others))
}

/// A refusal by the tenant's quota, read from its message (`exceeded quota:
/// <quota>, requested: r=v,..., used: r=v,..., limited: r=v,...`): the
/// resources requested and the usage at that moment.
pub fn parse_refusal(
    message: &str,
    quota: &str,
) -> Option<(BTreeMap<String, Milli>, BTreeMap<String, Milli>)> {
    let rest = message
        .split_once(&format!("exceeded quota: {quota}, requested: "))?
        .1;
    let (requested, rest) = rest.split_once(", used: ")?;
    let used = rest.split_once(", limited: ").map_or(rest, |(u, _)| u);
    let pairs = |list: &str| -> Option<BTreeMap<String, Milli>> {
        list.split(',')
            .map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                Some((k.to_string(), parse_quantity(v).ok()?))
            })
            .collect()
    };
    Some((pairs(requested)?, pairs(used)?))
}

/// The granularity a resource is split in.
pub fn unit_of(resource: &str) -> Milli {
    match resource {
        CPU => 1,
        MEMORY | STORAGE => 1000 * (1 << 20),
        _ => 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(level: Milli, since: i64) -> Option<Demand> {
        Some(Demand { level, since })
    }

    #[test]
    fn quantities_parse_to_thousandths() {
        assert_eq!(parse_quantity("250m"), Ok(250));
        assert_eq!(parse_quantity("2"), Ok(2000));
        assert_eq!(parse_quantity("1.5"), Ok(1500));
        assert_eq!(parse_quantity("1Ki"), Ok(1024 * 1000));
        assert_eq!(parse_quantity("64Gi"), Ok(64 * (1 << 30) * 1000));
        assert_eq!(parse_quantity("1e3"), Ok(1_000_000));
        assert_eq!(parse_quantity("2E3"), Ok(2_000_000));
        assert_eq!(parse_quantity("1E"), Ok(1_000_000_000_000_000_000_000));
        assert_eq!(parse_quantity("1Ei"), Ok((1i128 << 60) * 1000));
        assert!(parse_quantity("1Ex").is_err());
        assert_eq!(parse_quantity("10M"), Ok(10_000_000_000));
        assert!(parse_quantity("abc").is_err());
        assert!(parse_quantity("5Xi").is_err());
        assert_eq!(format_quantity(1500), "1500m");
        assert_eq!(format_quantity(2000), "2");
        let gi = (1 << 30) * 1000;
        assert_eq!(display(MEMORY, 128 * gi), "128Gi");
        assert_eq!(display(MEMORY, 1024 * gi), "1Ti");
        assert_eq!(display(STORAGE, gi / 2), "512Mi");
        assert_eq!(display(STORAGE, 1500), "1500m");
        assert_eq!(display(CPU, 1024 * 1000), "1024");
        for value in [128 * gi, gi / 2, 7 * 1024 * 1000, 1500] {
            assert_eq!(parse_quantity(&display(MEMORY, value)), Ok(value));
        }
    }

    #[test]
    fn split_never_exceeds_the_tenant_and_keeps_usage() {
        for (hard, used) in [
            (8000, vec![0, 0, 0]),
            (8000, vec![3000, 1000, 0]),
            (8000, vec![5000, 5000]),
            (0, vec![0, 0]),
            (7000, vec![1000, 0, 0, 0]),
        ] {
            let hards = split(hard, &used, 1000);
            let sum: Milli = hards.iter().sum();
            let used_sum: Milli = used.iter().sum();
            assert!(sum <= hard.max(used_sum), "{hards:?} for {hard} {used:?}");
            for (h, u) in hards.iter().zip(&used) {
                assert!(h >= u);
                assert_eq!(h % 1000, 0);
            }
        }
        assert_eq!(split(8000, &[0, 0, 0], 1000), vec![3000, 3000, 2000]);
    }

    #[test]
    fn headroom_moves_to_a_refused_namespace_and_never_past_the_tenant() {
        // Two namespaces, 4 GPUs, nothing used: an even split, 2 and 2.
        assert_eq!(
            targets(4000, &[0, 0], &[None, None], 1000),
            vec![2000, 2000]
        );
        // A Deployment in the first asks for all 4: the first gets them.
        let all = demand(4000, 10);
        assert_eq!(targets(4000, &[0, 0], &[all, None], 1000), vec![4000, 0]);
        // 3 of 4: the first gets 3, the one left goes to it too (demanders first).
        let three = demand(3000, 10);
        assert_eq!(targets(4000, &[0, 0], &[three, None], 1000), vec![4000, 0]);
        // What the other uses stays with it; a demand larger than the headroom gets nothing extra.
        assert_eq!(
            targets(4000, &[0, 2000], &[all, None], 1000),
            vec![1000, 3000]
        );
        // Two demands: the older first; the younger only if what is left covers it.
        let old = demand(3000, 1);
        let young = demand(2000, 2);
        assert_eq!(
            targets(4000, &[0, 0, 0], &[young, old, None], 1000),
            vec![0, 4000, 0]
        );
        // A satisfied demand (usage reached its level) changes nothing.
        let met = demand(1000, 1);
        assert_eq!(
            targets(4000, &[1000, 0], &[met, None], 1000),
            vec![3000, 1000]
        );
        // Usage over the tenant's limit (the limit was lowered): usage only.
        assert_eq!(
            targets(2000, &[2000, 1000], &[None, all], 1000),
            vec![2000, 1000]
        );
        // Any mix of usage and demands: never past the tenant, never below usage.
        for used in [[0, 0, 0], [1000, 0, 3000], [4000, 0, 0]] {
            for demands in [[None, None, None], [all, None, None], [None, three, old]] {
                let t = targets(4000, &used, &demands, 1000);
                let sum: Milli = t.iter().sum();
                assert!(sum <= 4000.max(used.iter().sum()), "{t:?}");
                assert!(t.iter().zip(&used).all(|(t, u)| t >= u), "{t:?}");
            }
        }
    }

    #[test]
    fn a_raise_waits_for_the_others_to_be_lowered_where_admission_reads() {
        // The other namespace's quota was lowered to 0 in its spec, but its
        // status (what admission reads) still says 2: raise only to 2.
        assert_eq!(raise_to(4000, &[2000, 2000], 0, 2000, 4000), 2000);
        // Once its status says 0, all the way.
        assert_eq!(raise_to(4000, &[2000, 0], 0, 2000, 4000), 4000);
        // Never below the current limit.
        assert_eq!(raise_to(4000, &[3000, 3000], 0, 3000, 4000), 3000);
    }

    #[test]
    fn refusals_are_read_from_the_quota_message() {
        let message = "Error creating: pods \"web-6d4cf56db6-\" is forbidden: exceeded quota: aleph-tenant-quota, \
            requested: requests.cpu=500m,requests.nvidia.com/gpu=3, used: requests.cpu=0,requests.nvidia.com/gpu=0, \
            limited: requests.cpu=16,requests.nvidia.com/gpu=2";
        let (requested, used) = parse_refusal(message, "aleph-tenant-quota").expect("parses");
        assert_eq!(requested.get(GPU), Some(&3000));
        assert_eq!(requested.get(CPU), Some(&500));
        assert_eq!(used.get(GPU), Some(&0));
        assert!(parse_refusal(message, "other-quota").is_none());
        assert!(
            parse_refusal(
                "pods \"x\" is forbidden: exceeded quota: aleph-tenant-quota",
                "aleph-tenant-quota"
            )
            .is_none()
        );
    }

    #[test]
    fn plans_have_documented_defaults_and_quota_overrides_them() {
        let pro = tenant_hard(TenantPlan::Pro, None).expect("valid");
        assert_eq!(pro[GPU], 4000);
        assert_eq!(pro[CPU], 32000);
        let custom = TenantQuota {
            gpus: Some(8),
            ..TenantQuota::default()
        };
        let hard = tenant_hard(TenantPlan::Pro, Some(&custom)).expect("valid");
        assert_eq!(hard[GPU], 8000);
        assert_eq!(hard[PODS], 200_000);
    }
}
