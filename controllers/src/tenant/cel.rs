//! The CEL the tenants' admission policies are written in. The policies are
//! shared by every tenant and take the Tenant as their parameter (`params`):
//! what a tenant allows is read from its spec (and its namespace room from its
//! status) when a request is admitted. Here: string and list literals, the
//! variables that read the Tenant, the rules on a pod spec (a pod's or a
//! workload's template), the bounds of a NetworkPolicy, the owners' rules on
//! the tenant's namespaces and who is exempt from the owners' policy. The
//! admission module puts them into ValidatingAdmissionPolicies.

use aleph_crds::keys::{GPU_PRODUCT_LABEL, TENANT_LABEL};
use aleph_crds::tenant::TenantNetwork;
use k8s_openapi::api::admissionregistration::v1::{MatchCondition, Validation, Variable};

use super::build::forbid_saying;

/// CEL: `'tenant <name>'`, the start of every message.
pub(super) const TENANT: &str = "'tenant ' + params.metadata.name";

/// A CEL string literal.
pub(super) fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// CEL: the Tenant's field at `path` (below `params`), or `default` where the
/// field or one of its parents is unset.
pub(super) fn param_or(path: &[&str], default: &str) -> String {
    let mut guards = Vec::new();
    let mut at = "params".to_string();
    for field in path {
        at = format!("{at}.{field}");
        guards.push(format!("has({at})"));
    }
    format!("({} ? {at} : {default})", guards.join(" && "))
}

/// A policy variable: `variables.<name>` in the rules.
pub(super) fn variable(name: &str, expression: &str) -> Variable {
    Variable {
        name: name.to_string(),
        expression: expression.to_string(),
    }
}

/// The variables that read the Tenant's admission rules, for the rules on pod
/// specs and storage classes (both policies use them).
pub(super) fn admission_variables() -> Vec<Variable> {
    let list = |field: &str| param_or(&["spec", "admission", field], "[]");
    vec![
        variable("cordoned", &param_or(&["spec", "cordoned"], "false")),
        variable("compliance", &param_or(&["spec", "compliance"], "'none'")),
        variable("registries", &list("allowedRegistries")),
        variable("runtimeClasses", &list("allowedRuntimeClasses")),
        variable("storageClasses", &list("allowedStorageClasses")),
        variable("gpuProducts", &list("allowedGpuProducts")),
    ]
}

/// The variables that read the Tenant's network rules (after
/// [`admission_variables`], whose `compliance` they use): whether its
/// NetworkPolicies are locked, the platform's namespace labels and the
/// egress blocks allowed (none unless egress is restricted).
pub(super) fn network_variables() -> Vec<Variable> {
    let platform_default: Vec<String> = TenantNetwork::default()
        .platform_namespace_labels
        .iter()
        .map(|(k, v)| format!("{}: {}", lit(k), lit(v)))
        .collect();
    let restricted = format!(
        "({} == 'Restricted' || variables.compliance != 'none')",
        param_or(&["spec", "network", "egress"], "'Allow'")
    );
    vec![
        variable(
            "locked",
            &format!(
                "{} || variables.compliance != 'none'",
                param_or(&["spec", "network", "lockPolicies"], "false")
            ),
        ),
        variable(
            "platformLabels",
            &param_or(
                &["spec", "network", "platformNamespaceLabels"],
                &format!("{{{}}}", platform_default.join(", ")),
            ),
        ),
        variable(
            "egressBlocks",
            &format!(
                "{restricted} ? {} : []",
                param_or(&["spec", "network", "allowedEgress"], "[]")
            ),
        ),
    ]
}

/// The variable of the tenant's namespace room (its status), null until the
/// operator has counted.
pub(super) fn room_variable() -> Variable {
    variable(
        "room",
        "has(params.status) && has(params.status.namespaceRoom) ? params.status.namespaceRoom : null",
    )
}

/// A validation that refuses the request (reason `Forbidden`) when
/// `expression` is false, saying what the CEL `message_expression` computes
/// (or `fallback`, should it fail).
pub(super) fn rule(expression: String, message_expression: String, fallback: &str) -> Validation {
    Validation {
        message: Some(fallback.to_string()),
        ..forbid_saying(expression, message_expression)
    }
}

/// A CEL list of string literals.
pub(super) fn cel_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| lit(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// CEL over one pod spec (`s`) and, on UPDATE, the spec it replaces (`old`).
pub(super) struct PodSpecCel {
    pub(super) s: &'static str,
    pub(super) old: &'static str,
}

impl PodSpecCel {
    /// Every image of the spec: containers, init containers, ephemeral containers.
    fn images(spec: &str) -> String {
        format!(
            "({spec}.containers.map(c, c.image) \
             + (has({spec}.initContainers) ? {spec}.initContainers.map(c, c.image) : []) \
             + (has({spec}.ephemeralContainers) ? {spec}.ephemeralContainers.map(c, c.image) : []))"
        )
    }

    /// The images an UPDATE adds (all of them on CREATE).
    fn new_images(&self) -> String {
        format!(
            "{}.filter(i, request.operation != 'UPDATE' || !({}.exists(o, o == i)))",
            Self::images(self.s),
            Self::images(self.old)
        )
    }

    /// Whether an UPDATE leaves `field` of the spec as it was.
    fn unchanged(&self, field: &str) -> String {
        let (s, old) = (self.s, self.old);
        format!(
            "(request.operation == 'UPDATE' && has({old}.{field}) == has({s}.{field}) \
             && (!has({s}.{field}) || {old}.{field} == {s}.{field}))"
        )
    }

    fn scheduling_unchanged(&self) -> String {
        format!(
            "({} && {})",
            self.unchanged("nodeSelector"),
            self.unchanged("affinity")
        )
    }

    /// Whether a container or init container asks for GPUs.
    fn requests_gpus(&self) -> String {
        let s = self.s;
        let asks = |field: &str| {
            format!(
                "(has(c.resources.{field}) && 'nvidia.com/gpu' in c.resources.{field} \
                 && string(c.resources.{field}['nvidia.com/gpu']) != '0')"
            )
        };
        // Each list on its own: containers and init containers are distinct
        // types to the API server's type check, which refuses to add them.
        let any = |list: &str| {
            format!(
                "{list}.exists(c, has(c.resources) && ({} || {}))",
                asks("requests"),
                asks("limits")
            )
        };
        format!(
            "({} || (has({s}.initContainers) && {}))",
            any(&format!("{s}.containers")),
            any(&format!("{s}.initContainers"))
        )
    }

    /// The spec's required node affinity (the path; it may be absent).
    fn required_node_affinity(&self) -> String {
        format!(
            "{}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution",
            self.s
        )
    }

    /// Whether the spec can only land on nodes of the listed products.
    fn pinned(&self, products: &str) -> String {
        let s = self.s;
        let p = lit(GPU_PRODUCT_LABEL);
        let required = self.required_node_affinity();
        format!(
            "((has({s}.nodeSelector) && {p} in {s}.nodeSelector && {s}.nodeSelector[{p}] in {products}) \
             || (has({s}.affinity) && has({s}.affinity.nodeAffinity) && has({required}) \
                 && size({required}.nodeSelectorTerms) > 0 \
                 && {required}.nodeSelectorTerms.all(t, has(t.matchExpressions) \
                    && t.matchExpressions.exists(e, e.key == {p} && e.operator == 'In' \
                       && has(e.values) && size(e.values) > 0 && e.values.all(v, v in {products})))))"
        )
    }

    /// Whether the spec names a product outside the list (by selector or affinity).
    fn names_other_product(&self, products: &str) -> String {
        let s = self.s;
        let p = lit(GPU_PRODUCT_LABEL);
        let required = self.required_node_affinity();
        format!(
            "((has({s}.nodeSelector) && {p} in {s}.nodeSelector && !({s}.nodeSelector[{p}] in {products})) \
             || (has({s}.affinity) && has({s}.affinity.nodeAffinity) && has({required}) \
                 && {required}.nodeSelectorTerms.exists(t, has(t.matchExpressions) \
                    && t.matchExpressions.exists(e, e.key == {p} && e.operator == 'In' \
                       && has(e.values) && e.values.exists(v, !(v in {products}))))))"
        )
    }
}

/// The rules on one pod spec, each guarded by `guard` (which says the request
/// carries such a spec) and applying only where the Tenant sets the rule.
/// `what` names the object in messages (it goes inside a CEL string literal).
/// `operator_images` (the images the operator itself runs in tenant
/// namespaces, such as the model cache's downloader) pass the registry rule.
pub(super) fn pod_rules(
    cel: &PodSpecCel,
    guard: &str,
    what: &str,
    operator_images: &[String],
) -> Vec<Validation> {
    let own = cel_list(operator_images);
    let new_images = cel.new_images();
    let s = cel.s;
    let products = "variables.gpuProducts";
    let unchanged = cel.scheduling_unchanged();
    vec![
        rule(
            format!(
                "!({guard}) || size(variables.registries) == 0 \
                 || {new_images}.all(i, i in {own} || variables.registries.exists(r, i.startsWith(r)))"
            ),
            format!(
                "{TENANT} + {} + {new_images}.filter(i, !(i in {own}) && !variables.registries.exists(r, i.startsWith(r)))[0] \
                 + ' is not from an allowed registry (' + variables.registries.join(', ') + ')'",
                lit(&format!(" (rule: allowedRegistries): {what} image "))
            ),
            "an image is not from an allowed registry of the tenant (rule: allowedRegistries)",
        ),
        rule(
            format!(
                "!({guard}) || size(variables.runtimeClasses) == 0 || !has({s}.runtimeClassName) \
                 || {s}.runtimeClassName in variables.runtimeClasses || {}",
                cel.unchanged("runtimeClassName")
            ),
            format!(
                "{TENANT} + {} + variables.runtimeClasses.join(', ')",
                lit(&format!(
                    " (rule: allowedRuntimeClasses): {what} runtimeClassName must be one of "
                ))
            ),
            "the runtimeClassName is not one the tenant allows (rule: allowedRuntimeClasses)",
        ),
        rule(
            format!(
                "!({guard}) || size({products}) == 0 || !{} || {unchanged}",
                cel.names_other_product(products)
            ),
            format!(
                "{TENANT} + {} + {products}.join(', ')",
                lit(&format!(
                    " (rule: allowedGpuProducts): {what} selects a GPU product (nvidia.com/gpu.product) other than "
                ))
            ),
            "a GPU product the tenant does not allow is selected (rule: allowedGpuProducts)",
        ),
        rule(
            format!(
                "!({guard}) || size({products}) == 0 || !{} || {} || {unchanged}",
                cel.requests_gpus(),
                cel.pinned(products)
            ),
            format!(
                "{TENANT} + {} + {products}.join(', ') + {} + {products}.join(', ') + ')'",
                lit(&format!(
                    " (rule: allowedGpuProducts): {what} requests nvidia.com/gpu but is not pinned to an allowed GPU product: \
                     set nodeSelector nvidia.com/gpu.product to one of "
                )),
                lit(
                    ", or a required node affinity (every nodeSelectorTerm with nvidia.com/gpu.product In values among "
                )
            ),
            "nvidia.com/gpu is requested without pinning to a GPU product the tenant allows (rule: allowedGpuProducts)",
        ),
    ]
}

/// Whether `host` (a CEL expression) is one of the allowed domains or under one.
pub(super) fn host_allowed(host: &str, domains: &str) -> String {
    format!("{domains}.exists(d, {host} == d || {host}.endsWith('.' + d))")
}

/// Who is exempt from the owners' policy: the operator itself, cluster
/// admins, and kube-system's controllers.
pub(super) fn exemptions(operator: &str) -> Vec<MatchCondition> {
    vec![
        not_the_operator(operator),
        condition(
            "not-a-cluster-admin",
            "!has(request.userInfo.groups) || !('system:masters' in request.userInfo.groups)",
        ),
        condition(
            "not-a-kube-system-controller",
            "!request.userInfo.username.startsWith('system:serviceaccount:kube-system:') && request.userInfo.username != 'system:kube-controller-manager'",
        ),
    ]
}

/// A policy's match condition `name`: the policy applies where `expression` holds.
pub(super) fn condition(name: &str, expression: &str) -> MatchCondition {
    MatchCondition {
        name: name.to_string(),
        expression: expression.to_string(),
    }
}

/// The match condition that exempts the operator, whose user name is `operator`.
pub(super) fn not_the_operator(operator: &str) -> MatchCondition {
    condition(
        "not-the-operator",
        &format!("request.userInfo.username != {}", lit(operator)),
    )
}

/// The owners' rules on the tenant's namespaces themselves (the binding
/// selects namespaces labelled with the tenant, so these see the namespaces
/// an owner creates for the tenant): named with the tenant's prefix, within
/// the namespace room the Tenant's status counts (`variables.room`), without
/// the operator's labels; only those not in `spec.namespaces` may be deleted.
pub(super) fn owner_namespace_rules() -> Vec<Validation> {
    let creating = "request.resource.resource != 'namespaces' || request.operation != 'CREATE'";
    let reserved = format!(
        "object.metadata.labels.all(k, !(k.startsWith('pod-security.kubernetes.io/') || k == {} \
         || (k.startsWith('aleph.dev/') && k != {})))",
        lit(crate::apply::MANAGED_BY),
        lit(TENANT_LABEL)
    );
    let declared = format!(
        "{}.map(n, params.metadata.name + '-' + n)",
        param_or(&["spec", "namespaces"], "[]")
    );
    vec![
        rule(
            format!("{creating} || object.metadata.name.startsWith(params.metadata.name + '-')"),
            format!(
                "{TENANT} + ': a namespace its owners create must be named ' + params.metadata.name + '-<name>'"
            ),
            "a namespace a tenant's owners create must be named <tenant>-<name>",
        ),
        rule(
            format!(
                "{creating} || (variables.room != null && variables.room.count < variables.room.limit)"
            ),
            format!(
                "variables.room == null ? {TENANT} + ': the operator has not counted its namespaces yet: retry in a few seconds' \
                 : {TENANT} + ' has ' + string(variables.room.count) + ' of its ' + string(variables.room.limit) \
                 + ' namespaces (spec.quota.namespaces): delete one of those its owners created, or ask the platform team for more'"
            ),
            "the tenant has no room for another namespace (spec.quota.namespaces)",
        ),
        rule(
            format!("{creating} || {reserved}"),
            format!(
                "{TENANT} + {}",
                lit(&format!(
                    ": labels under aleph.dev/ (but aleph.dev/tenant), pod-security.kubernetes.io/ and {} are set by the operator, not on creation",
                    crate::apply::MANAGED_BY
                ))
            ),
            "labels under aleph.dev/ (but aleph.dev/tenant) and pod-security.kubernetes.io/ are set by the operator",
        ),
        rule(
            format!(
                "request.resource.resource != 'namespaces' || request.operation != 'DELETE' || !(oldObject.metadata.name in {declared})"
            ),
            format!(
                "'namespace ' + oldObject.metadata.name + ' is in the Tenant ' + params.metadata.name + {}",
                lit("'s spec.namespaces: the platform team removes it there")
            ),
            "the namespace is in the Tenant's spec.namespaces: the platform team removes it there",
        ),
    ]
}

/// CEL: the NetworkPolicy in `object` allows nothing beyond what the tenant's
/// own isolation policy allows (read from [`network_variables`]).
pub(super) fn network_policy_within() -> String {
    let tenant_ns = format!(
        "(has(p.namespaceSelector) && has(p.namespaceSelector.matchLabels) && {} in p.namespaceSelector.matchLabels && p.namespaceSelector.matchLabels[{}] == params.metadata.name)",
        lit(TENANT_LABEL),
        lit(TENANT_LABEL),
    );
    let same_ns = "(has(p.podSelector) && !has(p.namespaceSelector) && !has(p.ipBlock))";
    let platform_ns = "(size(variables.platformLabels) > 0 && has(p.namespaceSelector) && has(p.namespaceSelector.matchLabels) \
         && variables.platformLabels.all(k, k in p.namespaceSelector.matchLabels && p.namespaceSelector.matchLabels[k] == variables.platformLabels[k]))";
    let allowed_block = "(has(p.ipBlock) && !has(p.namespaceSelector) && !has(p.podSelector) \
         && variables.egressBlocks.exists(d, d.cidr == p.ipBlock.cidr))";
    // A rule that reaches a block opens only the ports listed for it (TCP, by
    // number, no ranges), unless an entry of that block lists none. A block
    // listed twice allows the union of its entries.
    let block_ports = "r.to.all(p, !has(p.ipBlock) \
         || variables.egressBlocks.exists(d, d.cidr == p.ipBlock.cidr && (!has(d.ports) || size(d.ports) == 0)) \
         || (has(r.ports) && size(r.ports) > 0 && r.ports.all(x, has(x.port) && !has(x.endPort) \
             && (!has(x.protocol) || x.protocol == 'TCP') \
             && variables.egressBlocks.exists(d, d.cidr == p.ipBlock.cidr && has(d.ports) && d.ports.exists(q, string(q) == string(x.port))))))";
    let ingress_ok = format!(
        "has(r.from) && size(r.from) > 0 && r.from.all(p, {same_ns} || {tenant_ns} || {platform_ns})"
    );
    let dns_only = "(has(r.ports) && size(r.ports) > 0 && r.ports.all(x, has(x.port) && string(x.port) == '53'))";
    let egress_ok = format!(
        "(has(r.to) && size(r.to) > 0 && r.to.all(p, {same_ns} || {tenant_ns} || {allowed_block}) && {block_ports}) || ((!has(r.to) || size(r.to) == 0) && {dns_only})"
    );
    format!(
        "(!has(object.spec.ingress) || object.spec.ingress.all(r, {ingress_ok})) && (!has(object.spec.egress) || object.spec.egress.all(r, {egress_ok}))"
    )
}
