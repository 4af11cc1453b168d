//! What the Tenant's spec must satisfy before anything of the tenant is
//! written: its quota, the plan's defaults overridden by `spec.quota`. No client.

use std::collections::BTreeMap;

use aleph_crds::tenant::Tenant;

use super::quota::{self, Milli};
use crate::error::{Error, Result};

/// The tenant-wide hard limits, or the spec error that refuses them.
pub(super) fn tenant_hard(tenant: &Tenant) -> Result<BTreeMap<&'static str, Milli>> {
    quota::tenant_hard(tenant.spec.plan, tenant.spec.quota.as_ref()).map_err(Error::InvalidSpec)
}
