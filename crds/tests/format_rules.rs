//! Values whose format the schema alone cannot check (quantities, CIDRs) carry
//! a CEL rule, so a bad one is refused at `kubectl apply` rather than failing
//! in the reconcile. A new field of one of these kinds without its rule fails
//! here.

use serde_json::Value;

/// Every schema node under `node`, with its path from the version's root.
fn walk<'a>(path: String, node: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), node));
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(format!("{path}.{name}"), child, out);
        }
    }
    if let Some(items) = node.get("items") {
        walk(format!("{path}[]"), items, out);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(format!("{path}{{}}"), values, out);
    }
}

fn rules(node: &Value) -> Vec<&str> {
    node.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| r.get("rule").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// (CRD file, path, schema node) for every node of every CRD.
fn every_node(crds: &[Value]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for crd in crds {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or("?");
        for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
            walk(
                kind.to_string(),
                &version["schema"]["openAPIV3Schema"],
                &mut out,
            );
        }
    }
    out
}

fn crds() -> Vec<Value> {
    aleph_crds::all_crds()
        .into_iter()
        .map(|(_, crd)| serde_json::to_value(crd).expect("a CRD serializes"))
        .collect()
}

#[test]
fn every_quantity_field_is_checked_by_cel_and_bounded() {
    let crds = crds();
    let mut missing = Vec::new();
    let mut seen = 0;
    for (path, node) in every_node(&crds) {
        if node.get("x-kubernetes-int-or-string") != Some(&Value::Bool(true)) {
            continue;
        }
        seen += 1;
        if !rules(node).iter().any(|r| r.contains("isQuantity(self)")) {
            missing.push(format!("{path}: no isQuantity rule"));
        }
        // Without maxLength the API server estimates an int-or-string value at
        // the size of a whole request, and a rule in a list goes over budget.
        if node.get("maxLength").and_then(Value::as_u64).is_none() {
            missing.push(format!("{path}: no maxLength"));
        }
    }
    assert!(
        seen >= 18,
        "only {seen} quantity fields found: the walk is broken"
    );
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn every_cidr_field_is_checked_by_cel() {
    let crds = crds();
    let cidrs: Vec<_> = every_node(&crds)
        .into_iter()
        .filter(|(path, _)| path.ends_with(".cidr"))
        .collect();
    assert_eq!(cidrs.len(), 2, "Tenant and Plugin allowedEgress: {cidrs:?}");
    for (path, node) in cidrs {
        assert!(
            rules(node).contains(&"isCIDR(self)"),
            "{path} has no isCIDR rule"
        );
        assert!(node.get("maxLength").is_some(), "{path} has no maxLength");
    }
}
