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
mod tests;
