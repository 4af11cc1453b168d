use super::*;

fn clients(region: Option<&str>) -> RegionalClients {
    let mut conf = aws_sdk_sagemaker::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:9");
    if let Some(region) = region {
        conf = conf.region(Region::new(region.to_string()));
    }
    RegionalClients::new(AwsSageMaker::from_client(
        Client::from_conf(conf.build()),
        Family::default(),
    ))
}

#[test]
fn a_resource_region_works_without_the_operators() {
    let clients = clients(None);
    let error = clients.get(None).expect_err("no region anywhere");
    assert!(
        error.is_terminal() && error.message().contains("region"),
        "{error}"
    );
    let eu = clients.get(Some("eu-west-1")).expect("a region");
    assert_eq!(eu.region(), Some("eu-west-1"));
    assert!(Arc::ptr_eq(
        &eu,
        &clients.get(Some("eu-west-1")).expect("a region")
    ));
}

#[test]
fn an_empty_region_is_none() {
    let clients = clients(Some(""));
    assert!(clients.get(None).is_err());
    assert!(clients.get(Some("")).is_err());
    assert_eq!(
        clients.get(Some("eu-west-1")).expect("a region").region(),
        Some("eu-west-1")
    );
}

#[test]
fn the_operators_region_is_the_default() {
    let clients = clients(Some("us-east-1"));
    assert_eq!(
        clients.get(None).expect("a region").region(),
        Some("us-east-1")
    );
    assert_eq!(
        clients.get(Some("us-east-1")).expect("a region").region(),
        Some("us-east-1")
    );
    assert_eq!(
        clients.get(Some("ap-south-1")).expect("a region").region(),
        Some("ap-south-1")
    );
}
