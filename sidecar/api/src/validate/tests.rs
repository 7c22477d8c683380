use super::*;

fn service_json(subsets: &str) -> String {
    format!(r#"{{"services":[{{"name":"payments","namespace":"shop","subsets":{subsets}}}]}}"#)
}

/// One service `p.s` with one subset and `policy`.
fn policy_json(policy: &str) -> String {
    format!(
        r#"{{"services":[{{"name":"p","namespace":"s","subsets":[{{"name":"a","weight":1}}],
            "policy":{policy}}}]}}"#
    )
}

/// The field `json` is refused at, with the case in the panic message when it is accepted.
fn refused(json: &str) -> InvalidConfig {
    match ProxyConfig::from_json(json.as_bytes()) {
        Ok(_) => panic!("accepted: {json}"),
        Err(err) => err,
    }
}

#[test]
fn each_refusal_names_its_field() {
    for (json, field, says) in [
        (
            service_json(r#"[{"name":"v1","weight":-5,"endpoints":[]}]"#),
            "services[0].subsets[0].weight",
            "-5",
        ),
        (
            policy_json(r#"{"retries":{"attempts":2,"retryOnn":["5xx"]}}"#),
            "services[0].policy.retries.retryOnn",
            "unknown field `retryOnn`",
        ),
        (
            service_json(r#"[{"name":"v1","weight":0},{"name":"v2","weight":0}]"#),
            "services[0].subsets",
            "",
        ),
        (
            r#"{"services":[{"name":"p","namespace":"s","subsets":[{"name":"a","weight":1}],
                "rules":[{"match":{"pathPrefix":"/x"},"subset":"b"}]}]}"#
                .to_owned(),
            "services[0].rules[0].subset",
            "",
        ),
        (
            policy_json(r#"{"timeouts":{"request":"1s","perTry":"2s"}}"#),
            "services[0].policy.timeouts.perTry",
            "",
        ),
        (
            r#"{"inbound":{"rateLimit":{"requestsPerSecond":10,"burst":5,"key":"cookie"}}}"#
                .to_owned(),
            "inbound.rateLimit.key",
            "",
        ),
        (
            r#"{"inbound":{"timeouts":{"request":"ten"}}}"#.to_owned(),
            "inbound.timeouts.request",
            "",
        ),
    ] {
        let err = refused(&json);
        assert_eq!(err.field, field, "{json}: {err}");
        assert!(err.message.contains(says), "{json}: {err}");
    }
}

#[test]
fn breaker_triggers_faults_and_new_retry_classes_are_bounded() {
    for (policy, field) in [
        (
            r#"{"circuitBreaker":{"openDuration":"1s"}}"#,
            "circuitBreaker",
        ),
        (
            r#"{"circuitBreaker":{"failureRate":1.5}}"#,
            "circuitBreaker.failureRate",
        ),
        (
            r#"{"circuitBreaker":{"failureRate":0.5,"minRequests":0}}"#,
            "circuitBreaker.minRequests",
        ),
        (
            r#"{"circuitBreaker":{"failureRate":0.5,"window":"999ms"}}"#,
            "circuitBreaker.window",
        ),
        (
            r#"{"faults":{"delay":{"percent":100.5,"duration":"1s"}}}"#,
            "faults.delay.percent",
        ),
        (
            r#"{"faults":{"delay":{"percent":10,"duration":"25h"}}}"#,
            "faults.delay.duration",
        ),
        (
            r#"{"faults":{"abort":{"percent":-1,"status":503}}}"#,
            "faults.abort.percent",
        ),
        (
            r#"{"faults":{"abort":{"percent":5,"status":102}}}"#,
            "faults.abort.status",
        ),
        (
            r#"{"retries":{"attempts":1,"retryOn":["420"]}}"#,
            "retries.retryOn[0]",
        ),
    ] {
        let err = refused(&policy_json(policy));
        assert_eq!(
            err.field,
            format!("services[0].policy.{field}"),
            "{policy}: {err}"
        );
    }
    let ok = ProxyConfig::from_json(
        br#"{"services":[{"name":"p","namespace":"s","subsets":[{"name":"a","weight":1}],
            "policy":{"circuitBreaker":{"failureRate":0.5,"window":"1s","dryRun":true},
              "retries":{"attempts":2,"retryOn":["429","cancelled","deadline-exceeded",
                "resource-exhausted","unavailable"]},
              "faults":{"delay":{"percent":0.1,"duration":"200ms"},
                "abort":{"percent":100,"status":503}}}}]}"#,
    )
    .unwrap();
    let policy = &ok.services[0].policy;
    assert!(policy.circuit_breaker.as_ref().unwrap().dry_run);
    assert_eq!(policy.retries.as_ref().unwrap().retry_on.len(), 5);
}

#[test]
fn addresses_are_checked() {
    let with = |a: &str, b: &str| {
        format!(
            r#"{{"services":[
            {{"name":"p","namespace":"s","addresses":{a},"subsets":[{{"name":"a","weight":1}}]}},
            {{"name":"q","namespace":"s","addresses":{b},"subsets":[{{"name":"a","weight":1}}]}}]}}"#
        )
    };
    let ok = ProxyConfig::from_json(with(r#"["10.96.0.1:80"]"#, r#"["10.96.0.2:80"]"#).as_bytes())
        .unwrap();
    assert_eq!(ok.services[0].addresses, ["10.96.0.1:80".parse().unwrap()]);
    for (a, b, field) in [
        (r#"["0.0.0.0:80"]"#, "[]", "services[0].addresses[0]"),
        (r#"["10.96.0.1:0"]"#, "[]", "services[0].addresses[0]"),
        (
            r#"["10.96.0.1:80","10.96.0.1:80"]"#,
            "[]",
            "services[0].addresses[1]",
        ),
        (
            r#"["10.96.0.1:80"]"#,
            r#"["10.96.0.1:80"]"#,
            "services[1].addresses[0]",
        ),
        (r#"["10.96.0.1"]"#, "[]", "services[0].addresses[0]"),
    ] {
        let err = refused(&with(a, b));
        assert_eq!(err.field, field, "{a} {b}: {err}");
    }
    // Absent means none, and none is not written out.
    let none = ProxyConfig::from_json(with("[]", "[]").as_bytes()).unwrap();
    assert!(!serde_json::to_string(&none).unwrap().contains("addresses"));
}

#[test]
fn a_service_is_routed_per_port_or_as_one_never_both() {
    let port = |n: u16, endpoint: &str| {
        format!(
            r#"{{"port":{n},"name":"p{n}","addresses":["10.96.0.1:{n}"],
                "subsets":[{{"name":"a","weight":1,"endpoints":["{endpoint}"]}}]}}"#
        )
    };
    let with = |ports: &str, extra: &str| {
        format!(r#"{{"services":[{{"name":"p","namespace":"s","ports":[{ports}]{extra}}}]}}"#)
    };
    let two = format!(
        "{},{}",
        port(80, "127.0.0.1:9101"),
        port(81, "127.0.0.1:9201")
    );
    let config = ProxyConfig::from_json(with(&two, "").as_bytes()).unwrap();
    let routes = config.services[0].routes();
    assert_eq!(
        routes.iter().map(|r| r.port).collect::<Vec<_>>(),
        [Some(80), Some(81)]
    );
    assert_eq!(
        routes[1].subsets[0].endpoints,
        ["127.0.0.1:9201".parse().unwrap()]
    );
    // Written back without the whole-service fields, and read again the same.
    let text = serde_json::to_string(&config).unwrap();
    assert!(!text.contains(r#""addresses":[],"#) && !text.contains(r#""subsets":[]"#));
    assert_eq!(ProxyConfig::from_json(text.as_bytes()).unwrap(), config);

    for (ports, extra, field) in [
        (
            two.clone(),
            r#","subsets":[{"name":"a","weight":1}]"#,
            "services[0].subsets",
        ),
        (
            two.clone(),
            r#","addresses":["10.96.0.9:80"]"#,
            "services[0].addresses",
        ),
        (
            format!("{},{}", port(80, "127.0.0.1:1"), port(80, "127.0.0.1:2")),
            "",
            "services[0].ports[1].port",
        ),
        (port(0, "127.0.0.1:1"), "", "services[0].ports[0].port"),
        (
            two.replace(
                r#""weight":1,"endpoints":["127.0.0.1:9201"]"#,
                r#""weight":0"#,
            ),
            "",
            "services[0].ports[1].subsets",
        ),
        (
            two.replace(r#""p81""#, r#""p80""#),
            "",
            "services[0].ports[1].name",
        ),
        (
            two.replace("10.96.0.1:81", "10.96.0.1:80"),
            "",
            "services[0].ports[1].addresses[0]",
        ),
    ] {
        let err = refused(&with(&ports, extra));
        assert_eq!(err.field, field, "{err}");
    }
    // Neither shape: a route is still required.
    let err =
        ProxyConfig::from_json(br#"{"services":[{"name":"p","namespace":"s"}]}"#).unwrap_err();
    assert_eq!(err.field, "services[0].subsets");
    // Another service's port address is taken too.
    let err = ProxyConfig::from_json(
        format!(
            r#"{{"services":[{{"name":"p","namespace":"s","ports":[{two}]}},
            {{"name":"q","namespace":"s","addresses":["10.96.0.1:81"],"subsets":[{{"name":"a","weight":1}}]}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(err.field, "services[1].addresses[0]");
    assert!(err.message.contains("service p.s"), "{err}");
}

#[test]
fn a_single_route_config_of_before_ports_still_loads() {
    let config = ProxyConfig::from_json(
        br#"{"services":[{"name":"p","namespace":"s","addresses":["10.96.0.1:80"],
            "subsets":[{"name":"a","weight":1,"endpoints":["127.0.0.1:9101"]}]}]}"#,
    )
    .unwrap();
    let routes = config.services[0].routes();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].port, None);
    assert_eq!(routes[0].addresses, ["10.96.0.1:80".parse().unwrap()]);
    assert!(!serde_json::to_string(&config).unwrap().contains("ports"));
}

#[test]
fn a_full_config_round_trips() {
    let text = br#"{
      "version": 7,
      "inbound": {"rateLimit": {"requestsPerSecond": 100, "burst": 20, "key": "header:x-user"},
                  "bulkhead": {"maxConcurrent": 10, "maxQueued": 100, "queueTimeout": "1s"},
                  "timeouts": {"request": "10s"}},
      "services": [{
        "name": "payments", "namespace": "shop", "addresses": ["10.96.0.12:8080"],
        "subsets": [{"name": "v1", "weight": 90, "endpoints": ["127.0.0.1:9101"]},
                    {"name": "v2", "weight": 10, "endpoints": ["127.0.0.1:9102"]}],
        "rules": [{"match": {"headers": {"x-canary": "true"}, "pathPrefix": "/api"}, "subset": "v2"}],
        "policy": {
          "timeouts": {"request": "10s", "perTry": "2s", "connect": "1s", "idle": "60s"},
          "retries": {"attempts": 3, "retryOn": ["5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx"],
                      "backoff": {"base": "100ms", "max": "5s", "multiplier": 2, "jitter": "full"},
                      "budget": {"ratio": 0.2, "minPerSecond": 10}},
          "circuitBreaker": {"failureThreshold": 5, "successThreshold": 2, "openDuration": "60s"},
          "outlierDetection": {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 3, "interval": "30s",
                               "baseEjectionTime": "30s", "maxEjectionPercent": 50},
          "loadBalancer": {"policy": "ewma"},
          "fallback": {"status": 200, "body": "{\"items\":[]}", "contentType": "application/json"}
        }
      }]
    }"#;
    let config = ProxyConfig::from_json(text).unwrap();
    let again = ProxyConfig::from_json(&serde_json::to_vec(&config).unwrap()).unwrap();
    assert_eq!(config, again);
    assert_eq!(
        config.inbound.rate_limit.unwrap().key,
        RateLimitKey::Header("x-user".into())
    );
}
