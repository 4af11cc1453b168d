//! The CEL the tenant's admission policies are written in: string and list
//! literals, the rules on a pod spec (a pod's or a workload's template), the
//! bounds of a NetworkPolicy, the owners' rules on the tenant's namespaces and
//! who is exempt from the owners' policy. The admission module puts them into
//! ValidatingAdmissionPolicies.

use std::collections::{BTreeMap, BTreeSet};

use aleph_crds::keys::{GPU_PRODUCT_LABEL, TENANT_LABEL};
use aleph_crds::tenant::Tenant;
use k8s_openapi::api::admissionregistration::v1::{MatchCondition, Validation};
use kube::ResourceExt;

use super::build::{egress_restricted, forbid, forbid_saying};

/// The tenant's namespaces as its owners' policy sees them: those
/// `spec.namespaces` declares, how many count against the limit (declared and
/// owner-created), and the limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceRoom {
    pub declared: Vec<String>,
    pub count: usize,
    pub limit: usize,
}

/// A CEL string literal.
pub(super) fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
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
        format!(
            "({s}.containers + (has({s}.initContainers) ? {s}.initContainers : []))\
             .exists(c, has(c.resources) && ({} || {}))",
            asks("requests"),
            asks("limits")
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
/// carries such a spec). `what` names the object in messages (it goes inside
/// a CEL string literal: no quotes).
/// `operator_images` (the images the operator itself runs in tenant
/// namespaces, such as the model cache's downloader) pass the registry rule.
pub(super) fn pod_rules(
    tenant: &Tenant,
    cel: &PodSpecCel,
    guard: &str,
    what: &str,
    operator_images: &[String],
) -> Vec<Validation> {
    let t = tenant.name_any();
    let a = &tenant.spec.admission;
    let mut rules = Vec::new();
    if !a.allowed_registries.is_empty() {
        let list = cel_list(&a.allowed_registries);
        let own = cel_list(operator_images);
        let new_images = cel.new_images();
        rules.push(forbid_saying(
            format!("!({guard}) || {new_images}.all(i, i in {own} || {list}.exists(r, i.startsWith(r)))"),
            format!(
                "{} + {new_images}.filter(i, !(i in {own}) && !{list}.exists(r, i.startsWith(r)))[0] + {}",
                lit(&format!("tenant {t} (rule: allowedRegistries): {what} image ")),
                lit(&format!(" is not from an allowed registry ({})", a.allowed_registries.join(", ")))
            ),
        ));
    }
    if !a.allowed_runtime_classes.is_empty() {
        let list = cel_list(&a.allowed_runtime_classes);
        let s = cel.s;
        rules.push(forbid(
            format!(
                "!({guard}) || !has({s}.runtimeClassName) || {s}.runtimeClassName in {list} || {}",
                cel.unchanged("runtimeClassName")
            ),
            format!(
                "tenant {t} (rule: allowedRuntimeClasses): {what} runtimeClassName must be one of {}",
                a.allowed_runtime_classes.join(", ")
            ),
        ));
    }
    if !a.allowed_gpu_products.is_empty() {
        let list = cel_list(&a.allowed_gpu_products);
        let allowed = a.allowed_gpu_products.join(", ");
        let unchanged = cel.scheduling_unchanged();
        rules.push(forbid(
            format!("!({guard}) || !{} || {unchanged}", cel.names_other_product(&list)),
            format!(
                "tenant {t} (rule: allowedGpuProducts): {what} selects a GPU product (nvidia.com/gpu.product) other than {allowed}"
            ),
        ));
        rules.push(forbid(
            format!("!({guard}) || !{} || {} || {unchanged}", cel.requests_gpus(), cel.pinned(&list)),
            format!(
                "tenant {t} (rule: allowedGpuProducts): {what} requests nvidia.com/gpu but is not pinned to an allowed GPU product: \
                 set nodeSelector nvidia.com/gpu.product to one of {allowed}, or a required node affinity \
                 (every nodeSelectorTerm with nvidia.com/gpu.product In values among {allowed})"
            ),
        ));
    }
    rules
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
/// the namespace count, without the operator's labels; only those not in
/// `spec.namespaces` may be deleted.
pub(super) fn owner_namespace_rules(t: &str, room: &NamespaceRoom) -> Vec<Validation> {
    let creating = "request.resource.resource != 'namespaces' || request.operation != 'CREATE'";
    let reserved = format!(
        "object.metadata.labels.all(k, !(k.startsWith('pod-security.kubernetes.io/') || k == {} \
         || (k.startsWith('aleph.dev/') && k != {})))",
        lit(crate::apply::MANAGED_BY),
        lit(TENANT_LABEL)
    );
    vec![
        forbid(
            format!(
                "{creating} || object.metadata.name.startsWith({})",
                lit(&format!("{t}-"))
            ),
            format!("tenant {t}: a namespace its owners create must be named {t}-<name>"),
        ),
        forbid(
            format!("{creating} || {} < {}", room.count, room.limit),
            format!(
                "tenant {t} has {} of its {} namespaces (spec.quota.namespaces): delete one of those its owners created, or ask the platform team for more",
                room.count, room.limit
            ),
        ),
        forbid(
            format!("{creating} || {reserved}"),
            format!(
                "tenant {t}: labels under aleph.dev/ (but aleph.dev/tenant), pod-security.kubernetes.io/ and {} are set by the operator, not on creation",
                crate::apply::MANAGED_BY
            ),
        ),
        forbid_saying(
            format!(
                "request.resource.resource != 'namespaces' || request.operation != 'DELETE' || !(oldObject.metadata.name in {})",
                cel_list(&room.declared)
            ),
            format!(
                "'namespace ' + oldObject.metadata.name + {}",
                lit(&format!(
                    " is in the Tenant {t}'s spec.namespaces: the platform team removes it there"
                ))
            ),
        ),
    ]
}

/// CEL: the NetworkPolicy in `object` allows nothing beyond what the tenant's
/// own isolation policy allows.
pub(super) fn network_policy_within(tenant: &Tenant) -> String {
    let t = tenant.name_any();
    let tenant_ns = format!(
        "(has(p.namespaceSelector) && has(p.namespaceSelector.matchLabels) && {} in p.namespaceSelector.matchLabels && p.namespaceSelector.matchLabels[{}] == {})",
        lit(TENANT_LABEL),
        lit(TENANT_LABEL),
        lit(&t)
    );
    let same_ns = "(has(p.podSelector) && !has(p.namespaceSelector) && !has(p.ipBlock))";
    let platform = &tenant.spec.network.platform_namespace_labels;
    let platform_ns = if platform.is_empty() {
        "false".to_string()
    } else {
        let all: Vec<String> = platform
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} in p.namespaceSelector.matchLabels && p.namespaceSelector.matchLabels[{}] == {}",
                    lit(k),
                    lit(k),
                    lit(v)
                )
            })
            .collect();
        format!(
            "(has(p.namespaceSelector) && has(p.namespaceSelector.matchLabels) && {})",
            all.join(" && ")
        )
    };
    // Each allowed block with its TCP ports (None: every port). A block listed
    // twice allows the union of its entries.
    let mut blocks: BTreeMap<String, Option<BTreeSet<i32>>> = BTreeMap::new();
    if egress_restricted(tenant) {
        for d in &tenant.spec.network.allowed_egress {
            let ports = blocks
                .entry(d.cidr.clone())
                .or_insert_with(|| Some(BTreeSet::new()));
            match (ports.as_mut(), d.ports.is_empty()) {
                (_, true) => *ports = None,
                (Some(set), false) => set.extend(d.ports.iter().map(|p| p.0)),
                (None, false) => {}
            }
        }
    }
    let cidrs: Vec<String> = blocks.keys().cloned().collect();
    let allowed_block = format!(
        "(has(p.ipBlock) && !has(p.namespaceSelector) && !has(p.podSelector) && p.ipBlock.cidr in {})",
        cel_list(&cidrs)
    );
    // A rule that reaches a block with listed ports opens only those: TCP,
    // by number, no ranges.
    let port_checks: Vec<String> = blocks
        .iter()
        .filter_map(|(cidr, ports)| {
            let ports: Vec<String> = ports.as_ref()?.iter().map(i32::to_string).collect();
            Some(format!(
                "(p.ipBlock.cidr != {} || (has(r.ports) && size(r.ports) > 0 && r.ports.all(x, has(x.port) && !has(x.endPort) \
                 && (!has(x.protocol) || x.protocol == 'TCP') && string(x.port) in {})))",
                lit(cidr),
                cel_list(&ports)
            ))
        })
        .collect();
    let block_ports = if port_checks.is_empty() {
        String::new()
    } else {
        format!(
            " && r.to.all(p, !has(p.ipBlock) || ({}))",
            port_checks.join(" && ")
        )
    };
    let ingress_ok = format!(
        "has(r.from) && size(r.from) > 0 && r.from.all(p, {same_ns} || {tenant_ns} || {platform_ns})"
    );
    let dns_only = "(has(r.ports) && size(r.ports) > 0 && r.ports.all(x, has(x.port) && string(x.port) == '53'))";
    let egress_ok = format!(
        "(has(r.to) && size(r.to) > 0 && r.to.all(p, {same_ns} || {tenant_ns} || {allowed_block}){block_ports}) || ((!has(r.to) || size(r.to) == 0) && {dns_only})"
    );
    format!(
        "(!has(object.spec.ingress) || object.spec.ingress.all(r, {ingress_ok})) && (!has(object.spec.egress) || object.spec.egress.all(r, {egress_ok}))"
    )
}
