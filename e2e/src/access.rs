//! Asking the API server what a client, or a user, may do.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// `verb` on `resource` of API `group` (`None`: the core group) in `namespace`.
fn attributes(
    verb: &str,
    resource: &str,
    group: Option<&str>,
    namespace: &str,
) -> Option<ResourceAttributes> {
    Some(ResourceAttributes {
        verb: Some(verb.into()),
        resource: Some(resource.into()),
        group: group.map(Into::into),
        namespace: Some(namespace.into()),
        ..Default::default()
    })
}

/// Whether `client` may `verb` the `resource` of API `group` in `namespace`
/// (a SelfSubjectAccessReview).
pub async fn can_i(
    client: kube::Client,
    verb: &str,
    resource: &str,
    group: &str,
    namespace: &str,
) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: attributes(verb, resource, Some(group), namespace),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client)
        .create(&PostParams::default(), &review)
        .await
        .expect("access review")
        .status
        .is_some_and(|s| s.allowed)
}

/// Whether `user` may `verb` the core group's `resource` in `namespace`, as
/// `client` (which may review others' access) asks it (a SubjectAccessReview).
pub async fn user_can(
    client: &kube::Client,
    user: &str,
    verb: &str,
    resource: &str,
    namespace: &str,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            resource_attributes: attributes(verb, resource, None, namespace),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("access review")
        .status
        .is_some_and(|s| s.allowed)
}
