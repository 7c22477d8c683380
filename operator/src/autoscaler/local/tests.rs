use super::*;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

fn autoscaler(name: &str, target: &str, spec: Value) -> Autoscaler {
    let mut spec_json = json!({
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "minReplicas": 1, "maxReplicas": 5,
        "metrics": [{"type": "Concurrency", "target": 10}],
    });
    if let (Some(base), Some(extra)) = (spec_json.as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "Autoscaler",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec_json,
    }))
    .unwrap()
}

/// `endpoints`: (address, admin).
fn service(name: &str, endpoints: &[(&str, Option<&str>)]) -> LocalService {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(address, admin)| match admin {
            Some(admin) => json!({"address": address, "admin": admin}),
            None => json!({"address": address}),
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "LocalService",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"endpoints": endpoints},
    }))
    .unwrap()
}

fn resources(autoscalers: Vec<Autoscaler>, services: Vec<LocalService>) -> Resources {
    Resources {
        autoscalers,
        local_services: services,
        ..Resources::default()
    }
}

/// The Autoscaler `orders` of the LocalService `orders`, `spec` over the defaults, beside
/// `services`.
fn orders_with(spec: Value, services: Vec<LocalService>) -> Resources {
    resources(vec![autoscaler("orders", "orders", spec)], services)
}

/// The Autoscaler most tests scale: `orders`, defaults only.
fn orders() -> Autoscaler {
    autoscaler("orders", "orders", json!({}))
}

/// The LocalService `orders` with one endpoint, `A`, whose admin listener answers.
fn orders_service() -> LocalService {
    service("orders", &[(A, Some("127.0.0.1:15001"))])
}

/// `orders` over the design's LocalService: two endpoints, addresses only (no `admin`).
fn addresses_only() -> Resources {
    resources(
        vec![orders()],
        vec![service("orders", &[(A, None), (B, None)])],
    )
}

/// The autoscalers as `weir-operator local` runs them, evaluated every second.
fn every_second() -> Autoscalers {
    Autoscalers::new(Duration::from_secs(1))
}

fn text(in_flight: f64) -> String {
    format!(
        "# TYPE weir_in_flight_requests gauge\n\
         weir_in_flight_requests{{direction=\"inbound\",service=\"orders\"}} {in_flight}\n\
         weir_in_flight_requests{{direction=\"outbound\",service=\"payments\"}} 99\n"
    )
}

fn key(name: &str) -> Key {
    ("shop".to_owned(), name.to_owned())
}

/// Sidecar answers for the Autoscaler `name`: (pod, in-flight).
fn answers(name: &str, pods: &[(&str, f64)]) -> Answers {
    let mut answers = Answers::new();
    answers.insert(
        key(name),
        pods.iter()
            .map(|(pod, in_flight)| ((*pod).to_owned(), text(*in_flight)))
            .collect(),
    );
    answers
}

fn wall(seconds: u64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + seconds as i64).unwrap())
}

/// One tick of the loop without the I/O (no sidecar known on the config connection).
fn tick(
    autoscalers: &mut Autoscalers,
    resources: &Resources,
    answers: &Answers,
    seconds: u64,
) -> Vec<Evaluation> {
    tick_found(autoscalers, resources, answers, &Discovered::new(), seconds)
}

/// One tick with the admin listeners found on the config connection.
fn tick_found(
    autoscalers: &mut Autoscalers,
    resources: &Resources,
    answers: &Answers,
    discovered: &Discovered,
    seconds: u64,
) -> Vec<Evaluation> {
    autoscalers.sync(resources);
    autoscalers.evaluate(
        resources,
        answers,
        discovered,
        Duration::from_secs(seconds),
        &wall(seconds),
    )
}

fn condition<'a>(
    view: &'a AutoscalerView,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    view.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {:#?}", view.status.conditions))
}

fn desired_notes(evaluation: &Evaluation) -> Vec<(Option<i32>, i32)> {
    evaluation
        .notes
        .iter()
        .filter_map(|n| match n {
            Note::Desired { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

const A: &str = "127.0.0.1:9001";
const B: &str = "127.0.0.1:9002";
const C: &str = "127.0.0.1:9003";
const D: &str = "127.0.0.1:9004";

#[test]
fn a_busy_endpoint_asks_for_more_and_the_ask_holds_while_the_launcher_catches_up() {
    let mut autoscalers = every_second();
    let one = resources(vec![orders()], vec![orders_service()]);
    // ceil(1 × 35 / 10) = 4, at once: 35 is past 2× the target (panic mode).
    let first = tick(&mut autoscalers, &one, &answers("orders", &[(A, 35.0)]), 10);
    let view = &first[0].view;
    assert_eq!(view.status.desired_replicas, Some(4));
    assert_eq!(view.status.current_replicas, Some(1));
    assert_eq!(view.status.last_scale_time, Some(wall(10)));
    assert_eq!(view.status.current_metrics[0].current, "35.0");
    assert_eq!(condition(view, "ScalingActive").reason, "Panic");
    assert_eq!(desired_notes(&first[0]), vec![(None, 4)]);
    match &first[0].notes[0] {
        Note::Desired { metric, .. } => assert!(metric.starts_with("Concurrency 35.0"), "{metric}"),
        other => panic!("{other:?}"),
    }
    // The launcher has not started anything yet: still 4, and nothing new to log.
    for t in [12, 14] {
        let again = tick(&mut autoscalers, &one, &answers("orders", &[(A, 35.0)]), t);
        assert_eq!(again[0].view.status.desired_replicas, Some(4));
        assert_eq!(again[0].view.status.last_scale_time, Some(wall(10)));
        assert!(desired_notes(&again[0]).is_empty());
    }
    // The launcher lists three more instances; their sidecars answer and the load spreads.
    let four = resources(
        vec![orders()],
        vec![service(
            "orders",
            &[
                (A, Some("127.0.0.1:15001")),
                (B, Some("127.0.0.1:15002")),
                (C, Some("127.0.0.1:15003")),
                (D, Some("127.0.0.1:15004")),
            ],
        )],
    );
    for t in [16, 18, 20, 22, 24, 26, 28, 30, 40, 50] {
        let spread = answers("orders", &[(A, 9.0), (B, 9.0), (C, 9.0), (D, 9.0)]);
        let steady = tick(&mut autoscalers, &four, &spread, t);
        assert_eq!(steady[0].view.status.desired_replicas, Some(4), "at {t}s");
        assert_eq!(steady[0].view.status.current_replicas, Some(4));
        assert!(desired_notes(&steady[0]).is_empty());
    }
}

#[test]
fn a_scale_down_not_carried_out_yet_does_not_flap_back() {
    // Starting from the endpoint count, the scale-down hold would turn "4 listed, 1 published"
    // into "back to 4" two seconds later; starting from what was asked, it stays 1.
    let quick = json!({"behavior": {"scaleDown": {"stabilizationWindow": "0s", "maxChangePercent": 100, "period": "15s"}}});
    let mut autoscalers = every_second();
    let endpoints = [
        (A, Some("127.0.0.1:15001")),
        (B, Some("127.0.0.1:15002")),
        (C, Some("127.0.0.1:15003")),
        (D, Some("127.0.0.1:15004")),
    ];
    let four = orders_with(quick.clone(), vec![service("orders", &endpoints)]);
    let idle = answers("orders", &[(A, 2.0), (B, 2.0), (C, 2.0), (D, 2.0)]);
    let first = tick(&mut autoscalers, &four, &idle, 10);
    assert_eq!(first[0].view.status.desired_replicas, Some(1));
    assert_eq!(desired_notes(&first[0]), vec![(None, 1)]);
    for t in [12, 14, 16, 18] {
        let later = tick(&mut autoscalers, &four, &idle, t);
        assert_eq!(later[0].view.status.desired_replicas, Some(1), "at {t}s");
        assert_eq!(later[0].view.status.current_replicas, Some(4));
        assert!(desired_notes(&later[0]).is_empty(), "at {t}s");
    }
    let one = orders_with(quick, vec![service("orders", &endpoints[..1])]);
    let done = tick(&mut autoscalers, &one, &answers("orders", &[(A, 8.0)]), 20);
    assert_eq!(done[0].view.status.desired_replicas, Some(1));
    assert_eq!(done[0].view.status.current_replicas, Some(1));
}

#[test]
fn pods_are_ready_from_their_first_answer_and_starting_before() {
    let mut seen = Pods::new(Duration::from_secs(1));
    let admin: Option<SocketAddr> = Some("127.0.0.1:15001".parse().unwrap());
    let endpoints = vec![
        (A.to_owned(), admin),
        (B.to_owned(), admin),
        (C.to_owned(), None),
    ];
    let wanted = [MetricType::Concurrency];
    let s = Duration::from_secs;
    let only_a = answers("orders", &[(A, 3.0)]);
    let (pods, samples) = seen.observe(&endpoints, only_a.get(&key("orders")), &wanted, s(4));
    assert_eq!(
        pods,
        vec![
            Pod::ready(A, s(4)),
            Pod::starting(B, s(4)),
            Pod::ready(C, s(4))
        ]
    );
    assert_eq!(samples.len(), 1);
    assert_eq!((samples[0].pod.as_str(), samples[0].value), (A, 3.0));
    // B answers at 6 s; at 8 s neither answers: both stay Ready since their first answer.
    let both = answers("orders", &[(A, 3.0), (B, 5.0)]);
    let (pods, samples) = seen.observe(&endpoints, both.get(&key("orders")), &wanted, s(6));
    assert_eq!(pods[1], Pod::ready(B, s(6)));
    assert_eq!(samples.len(), 2);
    let (pods, samples) = seen.observe(&endpoints, None, &wanted, s(8));
    assert_eq!(pods[..2], [Pod::ready(A, s(4)), Pod::ready(B, s(6))]);
    assert!(samples.is_empty());
    // B leaves and comes back: a new pod.
    seen.observe(&endpoints[..1], None, &wanted, s(10));
    let (pods, _) = seen.observe(&endpoints[..2], None, &wanted, s(12));
    assert_eq!(pods[1], Pod::starting(B, s(12)));
}

#[test]
fn endpoints_without_admin_have_no_metrics() {
    let mut autoscalers = every_second();
    let plain = addresses_only();
    assert!(autoscalers.probes(&plain, &Discovered::new()).is_empty());
    let evaluation = tick(&mut autoscalers, &plain, &Answers::new(), 10);
    let view = &evaluation[0].view;
    assert_eq!(view.status.desired_replicas, Some(2));
    assert_eq!(condition(view, "ScalingActive").status, "False");
    assert_eq!(condition(view, "ScalingActive").reason, "FailedGetMetrics");
}

#[test]
fn a_missing_local_service_is_target_not_found_said_once() {
    let mut autoscalers = every_second();
    let ghost = resources(
        vec![autoscaler("ghost", "nowhere", json!({}))],
        vec![orders_service()],
    );
    assert!(autoscalers.probes(&ghost, &Discovered::new()).is_empty());
    let first = tick(&mut autoscalers, &ghost, &Answers::new(), 10);
    let view = &first[0].view;
    assert_eq!(view.target, "nowhere");
    for type_ in ["Accepted", "AbleToScale"] {
        assert_eq!(condition(view, type_).status, "False");
        assert_eq!(condition(view, type_).reason, "TargetNotFound");
    }
    assert!(condition(view, "Accepted").message.contains("shop/nowhere"));
    assert_eq!(view.status.desired_replicas, None);
    assert_eq!(
        first[0].notes,
        vec![Note::TargetNotFound {
            target: "nowhere".into()
        }]
    );
    let second = tick(&mut autoscalers, &ghost, &Answers::new(), 12);
    assert!(second[0].notes.is_empty());
    assert_eq!(second[0].view.status.conditions, view.status.conditions);
    // The LocalService appears.
    let found = resources(
        ghost.autoscalers.clone(),
        vec![service("nowhere", &[(A, Some("127.0.0.1:15001"))])],
    );
    let third = tick(
        &mut autoscalers,
        &found,
        &answers("ghost", &[(A, 10.0)]),
        14,
    );
    assert_eq!(
        third[0].notes[0],
        Note::TargetFound {
            target: "nowhere".into()
        }
    );
    assert_eq!(condition(&third[0].view, "Accepted").status, "True");
    assert_eq!(third[0].view.status.desired_replicas, Some(1));
}

#[test]
fn a_refused_spec_is_said_once_per_change_and_the_last_good_one_stays() {
    let mut autoscalers = every_second();
    let services = vec![orders_service()];
    let good = resources(vec![orders()], services.clone());
    let busy = answers("orders", &[(A, 35.0)]);
    assert_eq!(
        tick(&mut autoscalers, &good, &busy, 10)[0]
            .view
            .status
            .desired_replicas,
        Some(4)
    );
    let bad = orders_with(json!({"maxReplicas": 0}), services.clone());
    let refused = tick(&mut autoscalers, &bad, &busy, 12);
    let view = &refused[0].view;
    assert!(matches!(
        &refused[0].notes[..],
        [Note::Refused { error, kept: true }] if error.contains("spec.maxReplicas")
    ));
    let accepted = condition(view, "Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        accepted.message.contains("spec.maxReplicas") && accepted.message.contains("last good")
    );
    // The last good spec is still evaluated.
    assert_eq!(view.status.desired_replicas, Some(4));
    assert_eq!(condition(view, "ScalingActive").status, "True");
    assert!(tick(&mut autoscalers, &bad, &busy, 14)[0].notes.is_empty());
    // A different bad spec is a change: said again.
    let worse = orders_with(json!({"minReplicas": 0}), services.clone());
    assert!(matches!(
        &tick(&mut autoscalers, &worse, &busy, 16)[0].notes[..],
        [Note::Refused { error, .. }] if error.contains("spec.minReplicas")
    ));
    let fixed = tick(&mut autoscalers, &good, &busy, 18);
    assert_eq!(fixed[0].notes, vec![Note::Accepted]);
    assert_eq!(condition(&fixed[0].view, "Accepted").status, "True");

    // Bad from the start: nothing to evaluate.
    let new_bad = resources(
        vec![autoscaler("payments", "orders", json!({"metrics": []}))],
        services,
    );
    let evaluation = tick(&mut autoscalers, &new_bad, &Answers::new(), 20);
    assert!(matches!(
        &evaluation[0].notes[..],
        [Note::Refused { error, kept: false }] if error.contains("spec.metrics")
    ));
    let view = &evaluation[0].view;
    assert_eq!(view.status.desired_replicas, None);
    assert_eq!(view.status.conditions.len(), 1);
    assert!(!condition(view, "Accepted").message.contains("last good"));
}

#[test]
fn a_local_service_without_endpoints_asks_for_min_replicas() {
    let mut autoscalers = every_second();
    let empty = orders_with(
        json!({"minReplicas": 2, "behavior": {"scaleUp": {"maxChangePercent": 100, "period": "15s"}}}),
        vec![service("orders", &[])],
    );
    let evaluation = tick(&mut autoscalers, &empty, &Answers::new(), 10);
    let view = &evaluation[0].view;
    assert_eq!(view.status.desired_replicas, Some(2));
    assert_eq!(view.status.current_replicas, Some(0));
    let active = condition(view, "ScalingActive");
    assert_eq!(
        (active.status.as_str(), active.reason.as_str()),
        ("False", "NoEndpoints")
    );
    assert!(active.message.contains("minReplicas (2)"));
    assert_eq!(condition(view, "ScalingLimited").reason, "TooFewReplicas");
    assert_eq!(desired_notes(&evaluation[0]), vec![(None, 2)]);
    // Not a scale: no lastScaleTime, and the rate limits are untouched — counting 0 → 2 as a
    // scale-up would leave "+100 % of 0" for the next 15 s; 2 → 3 is allowed at once.
    assert_eq!(view.status.last_scale_time, None);
    let two = resources(
        empty.autoscalers.clone(),
        vec![service(
            "orders",
            &[(A, Some("127.0.0.1:15001")), (B, Some("127.0.0.1:15002"))],
        )],
    );
    let busy = tick(
        &mut autoscalers,
        &two,
        &answers("orders", &[(A, 15.0), (B, 15.0)]),
        12,
    );
    assert_eq!(busy[0].view.status.desired_replicas, Some(3));
}

#[test]
fn cpu_is_explained_as_unknown_in_local_mode() {
    let mut autoscalers = every_second();
    let both = orders_with(
        json!({"metrics": [{"type": "Concurrency", "target": 10}, {"type": "Cpu", "target": 70}]}),
        vec![orders_service()],
    );
    let busy = answers("orders", &[(A, 12.0)]);
    let evaluation = tick(&mut autoscalers, &both, &busy, 10);
    let active = condition(&evaluation[0].view, "ScalingActive");
    assert!(
        active.message.contains("local mode has no CPU source"),
        "{}",
        active.message
    );
    let cpu_only = orders_with(
        json!({"metrics": [{"type": "Cpu", "target": 70}]}),
        both.local_services.clone(),
    );
    let evaluation = tick(&mut autoscalers, &cpu_only, &busy, 12);
    let active = condition(&evaluation[0].view, "ScalingActive");
    assert_eq!(active.reason, "FailedGetMetrics");
    assert!(active.message.contains("Cpu") && active.message.contains("local mode"));
}

#[test]
fn probes_removals_and_duplicates() {
    let mut autoscalers = every_second();
    let both = resources(
        vec![
            orders(),
            autoscaler("orders", "orders", json!({"maxReplicas": 2})),
            autoscaler("payments", "payments", json!({})),
        ],
        vec![
            service("orders", &[(A, Some("127.0.0.1:15001")), (B, None)]),
            service("payments", &[(C, Some("127.0.0.1:15003"))]),
        ],
    );
    assert!(autoscalers.sync(&both).is_empty());
    let probes = autoscalers.probes(&both, &Discovered::new());
    assert_eq!(
        probes,
        vec![
            Probe {
                autoscaler: key("orders"),
                pod: A.into(),
                admin: "127.0.0.1:15001".parse().unwrap()
            },
            Probe {
                autoscaler: key("payments"),
                pod: C.into(),
                admin: "127.0.0.1:15003".parse().unwrap()
            },
        ]
    );
    let evaluations = tick(&mut autoscalers, &both, &Answers::new(), 10);
    assert_eq!(evaluations.len(), 2);
    assert!(evaluations[0].notes.contains(&Note::Duplicate));
    assert!(
        !tick(&mut autoscalers, &both, &Answers::new(), 12)[0]
            .notes
            .contains(&Note::Duplicate)
    );
    let fewer = resources(both.autoscalers[2..].to_vec(), both.local_services.clone());
    assert_eq!(autoscalers.sync(&fewer), vec![key("orders")]);
    assert_eq!(tick(&mut autoscalers, &fewer, &Answers::new(), 14).len(), 1);
}

/// A config API that knows the sidecars listening on these inbound addresses of shop/orders:
/// (inbound, admin).
fn connected(sidecars: &[(&str, &str)]) -> impl Fn(&str, &str, SocketAddr) -> Option<SocketAddr> {
    let sidecars: Vec<(SocketAddr, SocketAddr)> = sidecars
        .iter()
        .map(|(inbound, admin)| (inbound.parse().unwrap(), admin.parse().unwrap()))
        .collect();
    move |namespace, service, address| {
        if (namespace, service) != ("shop", "orders") {
            return None;
        }
        sidecars
            .iter()
            .find(|(inbound, _)| *inbound == address)
            .map(|(_, admin)| *admin)
    }
}

#[test]
fn endpoints_without_admin_are_looked_up_by_address_and_an_explicit_admin_wins() {
    let mut autoscalers = every_second();
    let mixed = resources(
        vec![orders(), autoscaler("ghost", "nowhere", json!({}))],
        vec![service(
            "orders",
            &[
                (A, None),
                (B, Some("127.0.0.1:15002")),
                (C, None),
                ("not-an-address", None),
            ],
        )],
    );
    autoscalers.sync(&mixed);
    let asked = parking_lot::Mutex::new(Vec::new());
    let lookup = connected(&[(A, "127.0.0.1:15001"), (B, "127.0.0.1:15092")]);
    let discovered = autoscalers.discover(&mixed, |namespace, service, address| {
        asked
            .lock()
            .push((namespace.to_owned(), service.to_owned(), address));
        lookup(namespace, service, address)
    });
    // Only the endpoints without `admin` that are addresses are looked up, as the target's.
    assert_eq!(
        asked.into_inner(),
        vec![
            ("shop".to_owned(), "orders".to_owned(), A.parse().unwrap()),
            ("shop".to_owned(), "orders".to_owned(), C.parse().unwrap()),
        ]
    );
    assert_eq!(
        discovered,
        Discovered::from([(
            key("orders"),
            BTreeMap::from([(A.to_owned(), "127.0.0.1:15001".parse().unwrap())])
        )])
    );
    let probe = |pod: &str, admin: &str| Probe {
        autoscaler: key("orders"),
        pod: pod.to_owned(),
        admin: admin.parse().unwrap(),
    };
    assert_eq!(
        autoscalers.probes(&mixed, &discovered),
        vec![probe(A, "127.0.0.1:15001"), probe(B, "127.0.0.1:15002")]
    );
    // Even when the config API knows another admin for B, B's own `admin` is the one scraped.
    let contrary = Discovered::from([(
        key("orders"),
        BTreeMap::from([(B.to_owned(), "127.0.0.1:15092".parse().unwrap())]),
    )]);
    assert_eq!(
        autoscalers.probes(&mixed, &contrary),
        vec![probe(B, "127.0.0.1:15002")]
    );
}

#[test]
fn a_sidecar_found_by_address_is_scraped_like_one_named_by_admin() {
    let mut autoscalers = every_second();
    let plain = addresses_only();
    autoscalers.sync(&plain);
    let discovered = autoscalers.discover(
        &plain,
        connected(&[(A, "127.0.0.1:15001"), (B, "127.0.0.1:15002")]),
    );
    assert_eq!(autoscalers.probes(&plain, &discovered).len(), 2);
    // 2 × 35 in flight, target 10: ceil(70 / 10) = 7, capped at maxReplicas 5.
    let busy = answers("orders", &[(A, 35.0), (B, 35.0)]);
    let evaluation = tick_found(&mut autoscalers, &plain, &busy, &discovered, 10);
    let view = &evaluation[0].view;
    assert_eq!(view.status.desired_replicas, Some(5), "{view:#?}");
    assert_eq!(view.status.current_metrics[0].current, "35.0");
    assert_eq!(condition(view, "ScalingActive").status, "True");

    // Not found (yet, or no longer): a Ready pod without samples, as without `admin`.
    let mut fresh = every_second();
    let nobody = fresh.discover(&plain, connected(&[]));
    assert!(nobody.is_empty());
    assert!(fresh.probes(&plain, &nobody).is_empty());
    let evaluation = tick_found(&mut fresh, &plain, &busy, &nobody, 10);
    let view = &evaluation[0].view;
    assert_eq!(view.status.desired_replicas, Some(2));
    assert_eq!(condition(view, "ScalingActive").reason, "FailedGetMetrics");
}
