use super::*;
use crate::incremental::Source as _;
use crate::translate::Ports;
use std::path::Path;

const SERVICE: &str = "apiVersion: weir.dev/v1alpha1\nkind: LocalService\n\
    metadata: {name: orders, namespace: shop}\n\
    spec:\n  endpoints:\n    - {address: 127.0.0.1:9101, admin: ADMIN}\n";

#[test]
fn an_endpoint_admin_must_be_an_address() {
    let good = parse_file("s.yaml", &SERVICE.replace("ADMIN", "127.0.0.1:15020")).unwrap();
    assert_eq!(
        good.local_services[0].spec.endpoints[0].admin.as_deref(),
        Some("127.0.0.1:15020")
    );
    assert!(services_and_endpoints(&good.local_services).is_ok());
    let bad = parse_file("s.yaml", &SERVICE.replace("ADMIN", "sidecar:15020")).unwrap();
    let error = services_and_endpoints(&bad.local_services).unwrap_err();
    assert!(
        error.contains("spec.endpoints[0].admin") && error.contains("sidecar:15020"),
        "{error}"
    );
}

#[test]
fn a_local_service_is_routed_as_one_or_per_port() {
    let local = |spec: &str| {
        let text = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: LocalService\n\
             metadata: {{name: payments, namespace: shop}}\nspec:\n{spec}"
        );
        let parsed = parse_file("s.yaml", &text).map_err(|e| e.to_string())?;
        services_and_endpoints(&parsed.local_services)
    };
    // Today's files: one route, the declared port only names it.
    let (services, endpoints) =
        local("  port: 8080\n  endpoints:\n    - {address: 127.0.0.1:9101}\n").unwrap();
    assert_eq!(services[0].ports, Ports::One { port: Some(8080) });
    assert_eq!(endpoints[0].port, None);
    // Per port, each with its endpoints.
    let (services, endpoints) = local(
        "  ports:\n    - {name: http, port: 80, endpoints: [{address: 127.0.0.1:9101}]}\n\
         \x20   - {port: 81, endpoints: [{address: 127.0.0.1:9201}, {address: 127.0.0.1:9202}]}\n",
    )
    .unwrap();
    let Ports::Each(ports) = &services[0].ports else {
        panic!("{services:?}");
    };
    assert_eq!(
        ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect::<Vec<_>>(),
        [("http", 80), ("", 81)]
    );
    assert_eq!(
        endpoints
            .iter()
            .map(|e| (e.port, e.address.port()))
            .collect::<Vec<_>>(),
        [(Some(80), 9101), (Some(81), 9201), (Some(81), 9202)]
    );
    // Refused, naming the field.
    for (spec, field) in [
        (
            "  port: 80\n  ports:\n    - {port: 80, endpoints: []}\n",
            "spec.port",
        ),
        (
            "  endpoints: [{address: 127.0.0.1:1}]\n  ports:\n    - {port: 80, endpoints: []}\n",
            "spec.endpoints",
        ),
        (
            "  ports:\n    - {port: 80, endpoints: []}\n    - {port: 80, endpoints: []}\n",
            "spec.ports[1]",
        ),
        (
            "  ports:\n    - {port: 0, endpoints: []}\n",
            "spec.ports[0].port",
        ),
        (
            "  ports:\n    - {port: 80, endpoints: [{address: nowhere}]}\n",
            "spec.ports[0].endpoints[0].address",
        ),
        (
            "  ports:\n    - {port: 80, endpoint: []}\n",
            "spec.ports[0]",
        ),
    ] {
        let error = local(spec).unwrap_err();
        assert!(error.contains(&format!("`{field}")), "{spec}: {error}");
    }
}

#[test]
fn the_autoscaler_gets_only_what_it_targets() {
    let text = format!(
        "{}---\n{}---\n{}",
        SERVICE.replace("ADMIN", "127.0.0.1:15020"),
        SERVICE
            .replace("ADMIN", "127.0.0.1:15021")
            .replace("name: orders", "name: payments"),
        "apiVersion: weir.dev/v1alpha1\nkind: Autoscaler\n\
         metadata: {name: orders, namespace: shop}\n\
         spec:\n  targetRef: {apiVersion: apps/v1, kind: Deployment, name: orders}\n  \
         minReplicas: 1\n  maxReplicas: 3\n  metrics: [{type: Concurrency, target: 5}]\n"
    );
    let all = parse_file("all.yaml", &text).unwrap();
    assert_eq!(all.local_services.len(), 2);
    let slim = autoscaling_inputs(all.autoscalers.iter(), all.local_services.iter());
    assert_eq!(slim.autoscalers.len(), 1);
    let names: Vec<_> = slim
        .local_services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["orders"]);
}

fn service_file(names: &[&str], port: u16) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "apiVersion: weir.dev/v1alpha1\nkind: LocalService\n\
                 metadata: {{name: {name}, namespace: shop}}\n\
                 spec:\n  endpoints:\n    - {{address: 127.0.0.1:{port}, labels: {{version: v1}}}}\n---\n\
                 apiVersion: weir.dev/v1alpha1\nkind: TrafficSplit\n\
                 metadata: {{name: {name}, namespace: shop}}\n\
                 spec:\n  service: {name}\n  backends:\n    - {{subset: v1, selector: {{version: v1}}, weight: 1}}\n---\n"
            )
        })
        .collect()
}

/// The inputs as comparable text (the translation's input types are not all `PartialEq`).
fn inputs_text(folder: &Folder) -> String {
    let inputs = folder.inputs();
    format!(
        "{}\n{}\n{:?}\n{:?}",
        serde_json::to_string(inputs.splits).unwrap(),
        serde_json::to_string(inputs.policies).unwrap(),
        inputs.services,
        folder.endpoints()
    )
}

#[test]
fn edits_keep_the_stored_inputs_equal_to_a_fresh_read() {
    let dir = std::env::temp_dir().join(format!("weir-local-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.yaml"), service_file(&["a1", "a2"], 9001)).unwrap();
    std::fs::write(dir.join("b.yaml"), service_file(&["b1"], 9002)).unwrap();
    std::fs::write(
        dir.join("sub/c.yaml"),
        service_file(&["c1", "c2", "c3"], 9003),
    )
    .unwrap();
    let mut folder = Folder::default();
    assert!(folder.refresh(&dir));
    let fresh = |dir: &Path| {
        let mut folder = Folder::default();
        folder.refresh(dir);
        inputs_text(&folder)
    };
    assert_eq!(inputs_text(&folder), fresh(&dir));
    assert_eq!(folder.endpoints().len(), 6);
    // The labels live in the endpoints only.
    assert!(
        folder
            .endpoints()
            .iter()
            .all(|e| e.labels.get("version").map(String::as_str) == Some("v1"))
    );
    assert!(
        folder
            .resources()
            .local_services
            .iter()
            .flat_map(|s| &s.spec.endpoints)
            .all(|e| e.labels.is_empty())
    );

    // The middle file grows, the first shrinks, a new one comes before them, the last goes.
    std::fs::write(dir.join("b.yaml"), service_file(&["b1", "b2", "b3"], 9012)).unwrap();
    std::fs::write(dir.join("a.yaml"), service_file(&["a2"], 9011)).unwrap();
    std::fs::write(dir.join("0.yaml"), service_file(&["z1"], 9010)).unwrap();
    std::fs::remove_file(dir.join("sub/c.yaml")).unwrap();
    assert!(folder.refresh(&dir));
    assert_eq!(inputs_text(&folder), fresh(&dir));
    let names: Vec<&str> = folder
        .inputs()
        .splits
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["z1", "a2", "b1", "b2", "b3"]);

    // Rewritten with the same resources: nothing to translate.
    let text = std::fs::read_to_string(dir.join("b.yaml")).unwrap();
    std::fs::write(dir.join("b.yaml"), format!("# touched\n{text}")).unwrap();
    assert!(!folder.refresh(&dir));

    // A LocalService that does not parse as addresses refuses its file only: its last good
    // resources stay, the other files' edits apply.
    std::fs::write(
        dir.join("b.yaml"),
        service_file(&["b1"], 9012).replace("127.0.0.1:9012", "nowhere"),
    )
    .unwrap();
    std::fs::write(dir.join("0.yaml"), service_file(&["z1", "z2"], 9010)).unwrap();
    assert!(folder.refresh(&dir));
    assert_eq!(folder.inputs().splits.len(), 6);
    assert!(folder.endpoints().iter().any(|e| e.address.port() == 9012));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_linked_file_that_is_deleted_takes_its_resources_with_it() {
    let dir = std::env::temp_dir().join(format!("weir-local-links-{}", std::process::id()));
    let (source, run) = (dir.join("source"), dir.join("run"));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let file = source.join("orders.yaml");
    std::fs::write(&file, SERVICE.replace("ADMIN", "127.0.0.1:15020")).unwrap();
    std::os::unix::fs::symlink(&file, run.join("orders.yaml")).unwrap();
    let mut folder = Folder::default();
    assert!(folder.refresh(&run));
    assert_eq!(folder.resources().local_services.len(), 1);
    std::fs::remove_file(&file).unwrap();
    assert!(
        folder.refresh(&run),
        "the dangling link counts as a removal"
    );
    assert!(folder.resources().local_services.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refusals_count_every_document_and_name_the_files_line() {
    let policy = "apiVersion: weir.dev/v1alpha1\nkind: ResiliencePolicy\n\
        metadata: {name: p, namespace: shop}\n\
        spec: {targetRef: {kind: Service, name: orders}, retries: {attempts: 2}}\n";
    let split = |weight: &str| {
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: TrafficSplit\n\
             metadata: {{name: s, namespace: shop}}\n\
             spec:\n  service: orders\n  backends:\n    - {{subset: v1, selector: {{version: v1}}, weight: {weight}}}\n"
        )
    };
    // (file, the document refused, its field, what its message holds), each case by name.
    let cases = [
        (
            "an empty document counts",
            format!("# leading comment\n---\n{policy}---\n---\n{}", split("ten")),
            3,
            "field `spec.backends[0].weight`: ",
            "",
        ),
        (
            "a node on the marker's line",
            format!("{policy}--- {{apiVersion: weir.dev/v1alpha1, kind: Nope}}\n"),
            2,
            "field `kind`: ",
            "\"Nope\"",
        ),
        (
            "a syntax error names the file's line",
            format!("{policy}---\n{policy}---\nkind: [unclosed\n"),
            3,
            "",
            "at line 11, column 7",
        ),
    ];
    for (name, text, document, field, message) in cases {
        let error = parse_file("f.yaml", &text).expect_err(name);
        assert_eq!(
            (error.document, error.field.as_str()),
            (document, field),
            "{name}: {error}"
        );
        assert!(error.message.contains(message), "{name}: {error}");
        assert!(!error.message.contains('\n'), "{name}: one line: {error}");
    }
    // A trailing marker, blank documents and comments parse to what the file holds.
    let text = format!("---\n{policy}---\n# nothing\n---\n{}---\n", split("1"));
    let parsed = parse_file("f.yaml", &text).unwrap();
    assert_eq!((parsed.policies.len(), parsed.splits.len()), (1, 1));
}
