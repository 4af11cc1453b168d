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
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
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

    #[test]
    fn quantities_parse_to_thousandths() {
        assert_eq!(parse_quantity("250m"), Ok(250));
        assert_eq!(parse_quantity("2"), Ok(2000));
        assert_eq!(parse_quantity("1.5"), Ok(1500));
        assert_eq!(parse_quantity("1Ki"), Ok(1024 * 1000));
        assert_eq!(parse_quantity("64Gi"), Ok(64 * (1 << 30) * 1000));
        assert_eq!(parse_quantity("1e3"), Ok(1_000_000));
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
