//! Parsing and semantic validation. Every error names the field by its path in the document
//! (`services[0].subsets[1].weight`), because the person reading it has a file open.

use crate::bounds::{self, Bound};
use crate::config::*;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

/// A config that must not be applied, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidConfig {
    /// Where in the document, e.g. `services[0].subsets[1].weight`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "field `{}`: {}", self.field, self.message)
        }
    }
}

/// Refuses a document longer than [`bounds::CONFIG_MAX_BYTES`]; readers call it with the length
/// they are about to read, before reading it.
pub fn check_size(len: usize) -> Checked {
    if len > bounds::CONFIG_MAX_BYTES {
        return Err(InvalidConfig {
            field: String::new(),
            message: format!(
                "the config is {len} bytes long, more than the {} MiB a config may be",
                bounds::CONFIG_MAX_BYTES / (1024 * 1024)
            ),
        });
    }
    Ok(())
}

/// Parses JSON into `T`, naming the failing field's path on error.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, InvalidConfig> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        InvalidConfig {
            field: if path == "." { String::new() } else { path },
            message: strip_position(&inner),
        }
    })
}

/// Converts an already-parsed JSON value into `T` (used for one resource of a config API
/// answer), naming the failing field's path below `prefix`.
pub fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
) -> Result<T, InvalidConfig> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        InvalidConfig {
            field: join(prefix, if path == "." { "" } else { &path }),
            message: strip_position(&e.into_inner()),
        }
    })
}

fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match (e.line(), text.rfind(" at line ")) {
        (line, Some(at)) if line > 0 => {
            format!("{} (line {}, column {})", &text[..at], line, e.column())
        }
        _ => text,
    }
}

fn join(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if field.starts_with('[') => format!("{prefix}{field}"),
        (false, false) => format!("{prefix}.{field}"),
    }
}

/// Collects the first problem found; the walk names fields as it descends.
struct Check {
    path: Vec<String>,
}

impl Check {
    fn fail(&self, field: &str, message: impl Into<String>) -> InvalidConfig {
        let mut path = self.path.join(".");
        path = join(&path, field);
        InvalidConfig {
            field: path,
            message: message.into(),
        }
    }
    fn nested<R>(&mut self, segment: String, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push(segment);
        let r = f(self);
        self.path.pop();
        r
    }
}

type Checked = Result<(), InvalidConfig>;

impl ProxyConfig {
    /// Parses and validates a whole config document (at most [`bounds::CONFIG_MAX_BYTES`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, InvalidConfig> {
        check_size(bytes.len())?;
        let config: Self = parse_json(bytes)?;
        config.validate()?;
        Ok(config)
    }

    /// Semantic rules that the types alone cannot express.
    pub fn validate(&self) -> Checked {
        let mut check = Check { path: Vec::new() };
        if self.services.len() > bounds::MAX_SERVICES {
            return Err(check.fail(
                "services",
                format!(
                    "{} services, more than the {} a proxy config may hold",
                    self.services.len(),
                    bounds::MAX_SERVICES
                ),
            ));
        }
        check.nested("inbound".into(), |c| self.inbound.check(c))?;
        let mut seen = HashSet::new();
        let mut addresses = HashMap::new();
        for (i, service) in self.services.iter().enumerate() {
            check.nested(format!("services[{i}]"), |c| service.check(c))?;
            if !seen.insert((&service.namespace, &service.name)) {
                return Err(check.fail(
                    &format!("services[{i}]"),
                    format!(
                        "service {}.{} appears twice",
                        service.name, service.namespace
                    ),
                ));
            }
            for (field, address) in service.address_fields() {
                if let Some(other) = addresses.insert(address, service) {
                    return Err(check.fail(
                        &format!("services[{i}].{field}"),
                        format!(
                            "{address} is also an address of service {}.{}",
                            other.name, other.namespace
                        ),
                    ));
                }
            }
        }
        if self.limits.retry_buffer_bytes > 64 * 1024 * 1024 {
            return Err(check.fail("limits.retryBufferBytes", "must be at most 64 MiB"));
        }
        Ok(())
    }
}

impl InboundPolicy {
    /// Validates one inbound policy as received on its own from the config API.
    pub fn validate(&self) -> Checked {
        self.check(&mut Check { path: Vec::new() })
    }

    fn check(&self, c: &mut Check) -> Checked {
        if let Some(rl) = &self.rate_limit {
            within_f64(
                c,
                "rateLimit.requestsPerSecond",
                rl.requests_per_second,
                &bounds::REQUESTS_PER_SECOND,
            )?;
            within(c, "rateLimit.burst", rl.burst, &bounds::BURST)?;
        }
        if let Some(b) = &self.bulkhead {
            within(
                c,
                "bulkhead.maxConcurrent",
                b.max_concurrent,
                &bounds::MAX_CONCURRENT,
            )?;
            within(c, "bulkhead.maxQueued", b.max_queued, &bounds::MAX_QUEUED)?;
            duration(c, "bulkhead.queueTimeout", Some(b.queue_timeout))?;
        }
        if let Some(t) = &self.timeouts {
            duration(c, "timeouts.request", t.request)?;
            duration(c, "timeouts.idle", t.idle)?;
        }
        Ok(())
    }
}

/// `value` within `bound`, or a refusal naming `field` and the range.
fn within(c: &Check, field: &str, value: u32, bound: &Bound<u32>) -> Checked {
    if bound.contains(value) {
        Ok(())
    } else {
        Err(c.fail(field, bound.message()))
    }
}

fn within_f64(c: &Check, field: &str, value: f64, bound: &Bound<f64>) -> Checked {
    if bound.contains_f64(value) {
        Ok(())
    } else {
        Err(c.fail(field, bound.message()))
    }
}

/// A duration, when given, within [`bounds::DURATION`]: nothing longer can meet the clock
/// (`Instant + Duration`) and overflow, nothing shorter means anything.
fn duration(c: &Check, field: &str, d: Option<crate::Duration>) -> Checked {
    match d {
        Some(d) if !bounds::DURATION.contains(d.get()) => {
            Err(c.fail(field, bounds::duration_message(&bounds::DURATION)))
        }
        _ => Ok(()),
    }
}

impl ServiceConfig {
    /// Validates one service as received on its own from the config API.
    pub fn validate(&self) -> Checked {
        self.check(&mut Check { path: Vec::new() })
    }

    fn check(&self, c: &mut Check) -> Checked {
        if !dns_label(&self.name) {
            return Err(c.fail(
                "name",
                "must be a DNS label (lower case letters, digits, '-')",
            ));
        }
        if !dns_label(&self.namespace) {
            return Err(c.fail(
                "namespace",
                "must be a DNS label (lower case letters, digits, '-')",
            ));
        }
        if self.ports.is_empty() {
            check_route(c, &self.subsets, &self.rules)?;
        } else {
            // One shape or the other: a route here beside per-port routes would leave unsaid
            // which one a call takes.
            for (field, present) in [
                ("subsets", !self.subsets.is_empty()),
                ("rules", !self.rules.is_empty()),
                ("addresses", !self.addresses.is_empty()),
            ] {
                if present {
                    return Err(c.fail(
                        field,
                        "a service with `ports` is routed per port: give this in each of its ports",
                    ));
                }
            }
            let mut numbers = HashSet::new();
            let mut names = HashSet::new();
            for (i, port) in self.ports.iter().enumerate() {
                if port.port == 0 {
                    return Err(c.fail(&format!("ports[{i}].port"), "must be 1 to 65535"));
                }
                if !numbers.insert(port.port) {
                    return Err(c.fail(
                        &format!("ports[{i}].port"),
                        format!("port {} appears twice", port.port),
                    ));
                }
                if let Some(name) = &port.name
                    && (name.is_empty() || !names.insert(name.as_str()))
                {
                    return Err(c.fail(
                        &format!("ports[{i}].name"),
                        format!("{name:?} is empty or names another port too"),
                    ));
                }
                c.nested(format!("ports[{i}]"), |c| {
                    check_route(c, &port.subsets, &port.rules)
                })?;
            }
        }
        let mut addresses = HashSet::new();
        for (field, address) in self.address_fields() {
            if address.ip().is_unspecified() || address.port() == 0 {
                return Err(c.fail(
                    &field,
                    format!("{address} is not an address callers can dial (need an IP and a port)"),
                ));
            }
            if !addresses.insert(address) {
                return Err(c.fail(&field, format!("{address} appears twice")));
            }
        }
        c.nested("policy".into(), |c| self.policy.check(c))
    }

    /// Every address of the service with its field path (`addresses[0]`, `ports[1].addresses[0]`).
    fn address_fields(&self) -> Vec<(String, SocketAddr)> {
        let mut all: Vec<(String, SocketAddr)> = self
            .addresses
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("addresses[{j}]"), *a))
            .collect();
        for (i, port) in self.ports.iter().enumerate() {
            all.extend(
                port.addresses
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (format!("ports[{i}].addresses[{j}]"), *a)),
            );
        }
        all
    }
}

/// One route's subsets and rules, as a whole service's or one port's.
fn check_route(c: &Check, subsets: &[Subset], rules: &[RouteRule]) -> Checked {
    if subsets.is_empty() {
        return Err(c.fail("subsets", "at least one subset is required"));
    }
    let mut names = HashSet::new();
    for (i, subset) in subsets.iter().enumerate() {
        if subset.name.is_empty() {
            return Err(c.fail(&format!("subsets[{i}].name"), "must not be empty"));
        }
        if !names.insert(subset.name.as_str()) {
            return Err(c.fail(
                &format!("subsets[{i}].name"),
                format!("subset {:?} appears twice", subset.name),
            ));
        }
    }
    for (i, subset) in subsets.iter().enumerate() {
        within(
            c,
            &format!("subsets[{i}].weight"),
            subset.weight,
            &bounds::WEIGHT,
        )?;
    }
    if subsets.iter().all(|s| s.weight == 0) {
        return Err(c.fail("subsets", "at least one weight must be greater than 0"));
    }
    if subsets.iter().map(|s| u64::from(s.weight)).sum::<u64>() > u64::from(u32::MAX) {
        return Err(c.fail("subsets", "the weights add up to more than 4294967295"));
    }
    for (i, rule) in rules.iter().enumerate() {
        if !names.contains(rule.subset.as_str()) {
            return Err(c.fail(
                &format!("rules[{i}].subset"),
                format!("no subset named {:?}", rule.subset),
            ));
        }
        for name in rule.matches.headers.keys() {
            if !is_header_name(name) {
                return Err(c.fail(
                    &format!("rules[{i}].match.headers"),
                    format!("{name:?} is not a valid header name"),
                ));
            }
        }
        if let Some(prefix) = &rule.matches.path_prefix
            && !prefix.starts_with('/')
        {
            return Err(c.fail(
                &format!("rules[{i}].match.pathPrefix"),
                "must start with '/'",
            ));
        }
    }
    Ok(())
}

impl Policy {
    fn check(&self, c: &mut Check) -> Checked {
        if let Some(t) = &self.timeouts {
            duration(c, "timeouts.request", t.request)?;
            duration(c, "timeouts.perTry", t.per_try)?;
            duration(c, "timeouts.connect", t.connect)?;
            duration(c, "timeouts.idle", t.idle)?;
            if let (Some(per_try), Some(request)) = (t.per_try, t.request)
                && per_try > request
            {
                return Err(c.fail(
                    "timeouts.perTry",
                    format!("{per_try} is longer than timeouts.request ({request})"),
                ));
            }
        }
        if let Some(r) = &self.retries {
            within(c, "retries.attempts", r.attempts, &bounds::RETRY_ATTEMPTS)?;
            let b = &r.backoff;
            duration(c, "retries.backoff.base", Some(b.base))?;
            duration(c, "retries.backoff.max", Some(b.max))?;
            if b.max < b.base {
                return Err(c.fail(
                    "retries.backoff.max",
                    format!(
                        "{} is shorter than retries.backoff.base ({})",
                        b.max, b.base
                    ),
                ));
            }
            within_f64(
                c,
                "retries.backoff.multiplier",
                b.multiplier,
                &bounds::BACKOFF_MULTIPLIER,
            )?;
            if let Some(budget) = &r.budget {
                within_f64(c, "retries.budget.ratio", budget.ratio, &bounds::RATIO)?;
                within(
                    c,
                    "retries.budget.minPerSecond",
                    budget.min_per_second,
                    &bounds::MIN_PER_SECOND,
                )?;
            }
        }
        if let Some(cb) = &self.circuit_breaker {
            if cb.failure_threshold.is_none() && cb.failure_rate.is_none() {
                return Err(c.fail(
                    "circuitBreaker",
                    "needs failureThreshold, failureRate or both",
                ));
            }
            if let Some(n) = cb.failure_threshold {
                within(c, "circuitBreaker.failureThreshold", n, &bounds::COUNT)?;
            }
            if let Some(rate) = cb.failure_rate {
                within_f64(c, "circuitBreaker.failureRate", rate, &bounds::RATIO)?;
            }
            within(
                c,
                "circuitBreaker.minRequests",
                cb.min_requests,
                &bounds::COUNT,
            )?;
            if !bounds::BREAKER_WINDOW.contains(cb.window.get()) {
                return Err(c.fail(
                    "circuitBreaker.window",
                    bounds::duration_message(&bounds::BREAKER_WINDOW),
                ));
            }
            within(
                c,
                "circuitBreaker.successThreshold",
                cb.success_threshold,
                &bounds::COUNT,
            )?;
            duration(c, "circuitBreaker.openDuration", Some(cb.open_duration))?;
        }
        if let Some(od) = &self.outlier_detection {
            if let Some(n) = od.consecutive_5xx_errors {
                within(
                    c,
                    "outlierDetection.consecutive5xxErrors",
                    n,
                    &bounds::COUNT,
                )?;
            }
            if let Some(n) = od.consecutive_gateway_errors {
                within(
                    c,
                    "outlierDetection.consecutiveGatewayErrors",
                    n,
                    &bounds::COUNT,
                )?;
            }
            within(
                c,
                "outlierDetection.maxEjectionPercent",
                od.max_ejection_percent,
                &bounds::PERCENT,
            )?;
            duration(c, "outlierDetection.interval", Some(od.interval))?;
            duration(
                c,
                "outlierDetection.baseEjectionTime",
                Some(od.base_ejection_time),
            )?;
        }
        if let Some(f) = &self.faults {
            if let Some(d) = &f.delay {
                within_f64(c, "faults.delay.percent", d.percent, &bounds::FAULT_PERCENT)?;
                duration(c, "faults.delay.duration", Some(d.duration))?;
            }
            if let Some(a) = &f.abort {
                within_f64(c, "faults.abort.percent", a.percent, &bounds::FAULT_PERCENT)?;
                within(
                    c,
                    "faults.abort.status",
                    u32::from(a.status),
                    &bounds::FAULT_ABORT_STATUS,
                )?;
            }
        }
        if let Some(f) = &self.fallback {
            if !(100..=599).contains(&f.status) {
                return Err(c.fail(
                    "fallback.status",
                    "must be an HTTP status between 100 and 599",
                ));
            }
            if f.body.chars().count() > bounds::FALLBACK_BODY_MAX_CHARS {
                return Err(c.fail(
                    "fallback.body",
                    format!(
                        "must be at most {} characters long",
                        bounds::FALLBACK_BODY_MAX_CHARS
                    ),
                ));
            }
            if http_content_type_invalid(&f.content_type) {
                return Err(c.fail("fallback.contentType", "must be a valid header value"));
            }
        }
        Ok(())
    }
}

fn http_content_type_invalid(s: &str) -> bool {
    s.is_empty() || s.bytes().any(|b| b < 0x20 || b == 0x7f)
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_json(subsets: &str) -> String {
        format!(r#"{{"services":[{{"name":"payments","namespace":"shop","subsets":{subsets}}}]}}"#)
    }

    #[test]
    fn negative_weight_names_the_field() {
        let err = ProxyConfig::from_json(
            service_json(r#"[{"name":"v1","weight":-5,"endpoints":[]}]"#).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err.field, "services[0].subsets[0].weight");
        assert!(err.message.contains("-5"), "{err}");
    }

    #[test]
    fn unknown_field_names_the_field() {
        let err = ProxyConfig::from_json(
            br#"{"services":[{"name":"p","namespace":"s","subsets":[{"name":"a","weight":1}],
                "policy":{"retries":{"attempts":2,"retryOnn":["5xx"]}}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "services[0].policy.retries.retryOnn");
        assert!(err.message.contains("unknown field `retryOnn`"), "{err}");
    }

    fn policy_error(policy: &str) -> InvalidConfig {
        let json = format!(
            r#"{{"services":[{{"name":"p","namespace":"s","subsets":[{{"name":"a","weight":1}}],
                "policy":{policy}}}]}}"#
        );
        ProxyConfig::from_json(json.as_bytes()).unwrap_err()
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
            let err = policy_error(policy);
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
    fn all_zero_weights_are_refused() {
        let err = ProxyConfig::from_json(
            service_json(r#"[{"name":"v1","weight":0},{"name":"v2","weight":0}]"#).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err.field, "services[0].subsets");
    }

    #[test]
    fn rule_to_unknown_subset_is_refused() {
        let err = ProxyConfig::from_json(
            br#"{"services":[{"name":"p","namespace":"s","subsets":[{"name":"a","weight":1}],
                "rules":[{"match":{"pathPrefix":"/x"},"subset":"b"}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "services[0].rules[0].subset");
    }

    #[test]
    fn per_try_longer_than_request_is_refused() {
        let err = ProxyConfig::from_json(
            br#"{"services":[{"name":"p","namespace":"s","subsets":[{"name":"a","weight":1}],
                "policy":{"timeouts":{"request":"1s","perTry":"2s"}}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "services[0].policy.timeouts.perTry");
    }

    #[test]
    fn bad_duration_and_key_name_their_fields() {
        let err = ProxyConfig::from_json(
            br#"{"inbound":{"rateLimit":{"requestsPerSecond":10,"burst":5,"key":"cookie"}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "inbound.rateLimit.key");
        let err =
            ProxyConfig::from_json(br#"{"inbound":{"timeouts":{"request":"ten"}}}"#).unwrap_err();
        assert_eq!(err.field, "inbound.timeouts.request");
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
        let ok =
            ProxyConfig::from_json(with(r#"["10.96.0.1:80"]"#, r#"["10.96.0.2:80"]"#).as_bytes())
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
            let err = ProxyConfig::from_json(with(a, b).as_bytes()).unwrap_err();
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
            let err = ProxyConfig::from_json(with(&ports, extra).as_bytes()).unwrap_err();
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
}
