//! Kinds the tests have no Rust type for, read and written as `DynamicObject`s.

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;

/// The resource `plural` of kind `kind` in `group` (empty for the core group)
/// at `version`.
pub fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version,
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// One of Aleph's kinds (`aleph.dev/v1alpha1`).
pub fn aleph_resource(kind: &str, plural: &str) -> ApiResource {
    api_resource("aleph.dev", "v1alpha1", kind, plural)
}

/// The Gateway API's HTTPRoutes in `namespace`.
pub fn http_routes(client: Client, namespace: &str) -> Api<DynamicObject> {
    let resource = api_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes");
    Api::namespaced_with(client, namespace, &resource)
}
