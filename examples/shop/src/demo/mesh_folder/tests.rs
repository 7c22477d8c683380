use super::*;
use crate::demo::topology::orders_replica;
use std::sync::LazyLock;
use weir_testkit::local_service;

/// gateway (no port) and orders on the demo's table of loopback ports, after a comment and
/// before an empty last document.
static SERVICES: LazyLock<String> = LazyLock::new(|| {
    let gateway = local_service(
        "shop",
        "gateway",
        None,
        [r#"address: "127.0.0.1:18100", labels: {app: gateway, version: v1}"#],
    );
    let orders = local_service(
        "shop",
        "orders",
        Some(8080),
        [
            r#"address: "127.0.0.1:18101", admin: "127.0.0.1:18301", labels: {app: orders, version: v1}"#,
        ],
    );
    format!("# a comment\n{gateway}---\n{orders}---\n")
});

fn parse(text: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).unwrap();
    documents.into_iter().filter(|v| !v.is_null()).collect()
}

#[test]
fn a_moved_port_base_moves_the_table_addresses_only() {
    let mut docs = parse(&SERVICES);
    let mut other: Value = serde_saphyr::from_str(
        "kind: LocalService\nspec:\n  endpoints:\n    \
         - {address: \"10.0.0.1:18100\", admin: \"127.0.0.1:9000\"}\n",
    )
    .unwrap();
    move_ports(&mut docs[0], 21000);
    move_ports(&mut docs[1], 21000);
    move_ports(&mut other, 21000);
    assert_eq!(
        docs[0]["spec"]["endpoints"][0]["address"],
        "127.0.0.1:21100"
    );
    assert_eq!(
        docs[1]["spec"]["endpoints"][0]["address"],
        "127.0.0.1:21101"
    );
    assert_eq!(docs[1]["spec"]["endpoints"][0]["admin"], "127.0.0.1:21301");
    assert_eq!(docs[1]["spec"]["endpoints"][0]["labels"]["app"], "orders");
    // Not loopback, not in the table: left alone.
    assert_eq!(other["spec"]["endpoints"][0]["address"], "10.0.0.1:18100");
    assert_eq!(other["spec"]["endpoints"][0]["admin"], "127.0.0.1:9000");
}

#[test]
fn orders_endpoints_follow_the_instances() {
    let three = [
        ORDERS,
        orders_replica(2).unwrap(),
        orders_replica(3).unwrap(),
    ];
    let out = with_orders_endpoints(&SERVICES, &three).unwrap().unwrap();
    let docs = parse(&out);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0], parse(&SERVICES)[0], "other documents are kept");
    let orders = &docs[1];
    assert_eq!(orders["spec"]["port"], 8080);
    let endpoints = orders["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints[2]["address"], "127.0.0.1:18123");
    assert_eq!(endpoints[2]["admin"], "127.0.0.1:18323");
    assert_eq!(endpoints[2]["labels"]["version"], "v1");
    // And it is still a LocalService the CRD types accept.
    let typed: weir_crds::LocalService = serde_json::from_value(orders.clone()).unwrap();
    assert_eq!(typed.spec.endpoints.len(), 3);
}

#[test]
fn files_without_orders_are_left_alone() {
    let text = "apiVersion: weir.dev/v1alpha1\nkind: LocalService\nmetadata: {name: gateway}\nspec: {endpoints: []}\n";
    assert_eq!(with_orders_endpoints(text, &[ORDERS]).unwrap(), None);
    assert!(with_orders_endpoints("a: [", &[ORDERS]).is_err());
}

#[test]
fn the_run_mesh_links_the_source_and_writes_the_orders_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("services.yaml"), &*SERVICES).unwrap();
    std::fs::write(source.join("split.yaml"), "# split\n").unwrap();
    std::fs::write(source.join(AUTOSCALER_FILE), "# autoscaler\n").unwrap();
    std::fs::write(source.join("notes.txt"), "not yaml").unwrap();

    let (from, to) = prepare_mesh(&source, &run, MeshFiles::Link)
        .unwrap()
        .unwrap();
    assert_eq!(from, source.join("services.yaml"));
    assert_eq!(to, run.join("services.yaml"));
    assert!(
        std::fs::symlink_metadata(run.join("split.yaml"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(run.join(AUTOSCALER_FILE).exists());
    assert!(!run.join("notes.txt").exists());
    let written = std::fs::read_to_string(&to).unwrap();
    assert_eq!(
        parse(&written)[1]["spec"]["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Added and deleted while a plain run goes on.
    std::fs::write(source.join("late.yaml"), "# late\n").unwrap();
    std::fs::remove_file(source.join("split.yaml")).unwrap();
    sync_links(&source, &run, Some(&from)).unwrap();
    assert!(run.join("late.yaml").exists());
    assert!(std::fs::symlink_metadata(run.join("split.yaml")).is_err());
    assert_eq!(
        std::fs::read_to_string(&to).unwrap(),
        written,
        "its own file untouched"
    );
    std::fs::write(source.join("split.yaml"), "# split\n").unwrap();

    prepare_mesh(&source, &run, MeshFiles::Copy { autoscale: false }).unwrap();
    assert!(!run.join(AUTOSCALER_FILE).exists());
    assert!(
        !std::fs::symlink_metadata(run.join("split.yaml"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    prepare_mesh(&source, &run, MeshFiles::Copy { autoscale: true }).unwrap();
    assert!(run.join(AUTOSCALER_FILE).exists());
}
