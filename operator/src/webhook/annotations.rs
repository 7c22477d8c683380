//! The pod annotations that tune an injected proxy, and the checks each value must pass.
//!
//! Every check here mirrors what the consumer of the value accepts — the API server for
//! resource quantities, `weir-sidecar` for threads and ports, `weir-sidecar init` for the
//! excluded networks (IPv4 only, no host bits) — so that a pod this webhook admits never
//! fails later, at scheduling or in its init container, over something we could have named at
//! admission.

/// Opt a pod in (`enabled`) or out (`disabled`); also the namespace and pod label.
pub const INJECT: &str = "weir.dev/inject";
/// Set on every pod this webhook injected: the mark that makes injection idempotent.
pub const INJECTED: &str = "weir.dev/injected";
/// The proxy's CPU request (a Kubernetes quantity).
pub const PROXY_CPU: &str = "weir.dev/proxy-cpu";
/// The proxy's memory request.
pub const PROXY_MEMORY: &str = "weir.dev/proxy-memory";
/// The proxy's CPU limit.
pub const PROXY_CPU_LIMIT: &str = "weir.dev/proxy-cpu-limit";
/// The proxy's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "weir.dev/proxy-memory-limit";
/// The proxy's log filter (`WEIR_LOG`, tracing syntax).
pub const PROXY_LOG_LEVEL: &str = "weir.dev/proxy-log-level";
/// The proxy's worker threads (1 to 64).
pub const PROXY_THREADS: &str = "weir.dev/proxy-threads";
/// Outbound destination ports that bypass the proxy.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "weir.dev/exclude-outbound-ports";
/// Inbound ports that reach the app directly.
pub const EXCLUDE_INBOUND_PORTS: &str = "weir.dev/exclude-inbound-ports";
/// Outbound destination networks (IPv4 CIDRs) that bypass the proxy.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "weir.dev/exclude-outbound-cidrs";
/// The port the app listens on (default: the pod's first declared container port).
pub const APP_PORT: &str = "weir.dev/app-port";
/// The service name the proxy reports (default: from the pod's labels or owner).
pub const SERVICE: &str = "weir.dev/service";

/// Every annotation the webhook reads; a `weir.dev/proxy-*` or `weir.dev/exclude-*`
/// annotation outside this list is most likely a typo and earns a warning.
pub const KNOWN: &[&str] = &[
    INJECT,
    INJECTED,
    PROXY_CPU,
    PROXY_MEMORY,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    PROXY_LOG_LEVEL,
    PROXY_THREADS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_CIDRS,
    APP_PORT,
    SERVICE,
];

/// The value of the inject annotation or label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inject {
    Enabled,
    Disabled,
}

pub fn inject(value: &str) -> Result<Inject, String> {
    match value.trim() {
        "enabled" => Ok(Inject::Enabled),
        "disabled" => Ok(Inject::Disabled),
        _ => Err("must be \"enabled\" or \"disabled\"".to_owned()),
    }
}

/// A Kubernetes resource quantity (`250m`, `0.5`, `64Mi`, `1e3`), non-negative; returns its
/// value in base units (cores or bytes), good enough to compare a request with a limit.
///
/// The grammar is the API server's (`k8s.io/apimachinery/pkg/api/resource`):
/// `<number><suffix>` where the number is digits with at most one decimal point and the
/// suffix a binary SI (`Ki` … `Ei`), decimal SI (`n u m k M G T P E` or none) or exponent
/// (`e3`, `E-2`).
pub fn quantity(value: &str) -> Result<f64, String> {
    const HINT: &str = "is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)";
    let s = value.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err("must not be negative".to_owned());
    }
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 || number.len() > 32 {
        return Err(HINT.to_owned());
    }
    let base: f64 = number.parse().map_err(|_| HINT.to_owned())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let digits = &exponent[1..];
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty()
                || unsigned.len() > 3
                || !unsigned.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(HINT.to_owned());
            }
            let exponent: i32 = digits.parse().map_err(|_| HINT.to_owned())?;
            10f64.powi(exponent)
        }
        _ => return Err(HINT.to_owned()),
    };
    Ok(base * multiplier)
}

/// A comma-separated list of TCP ports (1–65535), e.g. `5432,6379`; spaces are allowed.
pub fn ports(value: &str) -> Result<Vec<u16>, String> {
    list(value)
        .map(|item| {
            item.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{item:?} is not a port (1-65535); expected e.g. 5432,6379"))
        })
        .collect()
}

/// One TCP port, 1–65535.
pub fn port(value: &str) -> Result<u16, String> {
    value
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| "is not a port (1-65535)".to_owned())
}

/// A comma-separated list of IPv4 networks (`10.0.0.0/8`, a bare address meaning `/32`),
/// normalised to `addr/prefix`. Only IPv4 is intercepted, and host bits are refused, exactly
/// as `weir-sidecar init` does.
pub fn ipv4_cidrs(value: &str) -> Result<Vec<String>, String> {
    list(value)
        .map(|item| {
            item.parse::<weir_proxy_api::Ipv4Network>()
                .map(|network| network.to_string())
        })
        .collect()
}

/// Worker threads of the proxy: 1 to 64, as `weir-sidecar --threads` accepts.
pub fn threads(value: &str) -> Result<u16, String> {
    value
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|t| (1..=64).contains(t))
        .ok_or_else(|| "must be a whole number of threads from 1 to 64".to_owned())
}

/// A log filter in tracing's `EnvFilter` syntax (`info`, `weir_sidecar=debug,warn`).
pub fn log_level(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_whitespace) {
        return Err(
            "must be a log filter such as info, debug or weir_sidecar=debug,warn".to_owned(),
        );
    }
    tracing_subscriber::EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("is not a log filter ({e}); e.g. info, debug or weir_sidecar=debug"))
}

/// A service name: a DNS-1035 label, as Service names are.
pub fn service(value: &str) -> Result<String, String> {
    let value = value.trim();
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err("must be a Service name (lowercase letters, digits and '-', at most 63)".to_owned())
    }
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_the_api_server_grammar() {
        for (text, value) in [
            ("100m", 0.1),
            ("0.5", 0.5),
            ("2", 2.0),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("1Gi", 1024f64.powi(3)),
            ("128M", 128e6),
            ("1e3", 1000.0),
            ("1E-3", 0.001),
            ("+5", 5.0),
            (".5", 0.5),
            ("5.", 5.0),
        ] {
            let parsed = quantity(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!((parsed - value).abs() < 1e-9 * value.max(1.0), "{text}");
        }
        for bad in [
            "", "lots", "64mb", "1.2.3", "-1", "Mi", "1 Gi", "1e", "1e1000", "0x10", ".", "1ki",
        ] {
            assert!(quantity(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ports_and_networks() {
        assert_eq!(ports("5432, 6379,").unwrap(), vec![5432, 6379]);
        assert!(ports("0").is_err());
        assert!(ports("70000").is_err());
        assert!(ports("http").is_err());
        assert_eq!(port(" 8080 ").unwrap(), 8080);
        assert_eq!(
            ipv4_cidrs("10.0.0.0/8,169.254.169.254").unwrap(),
            vec!["10.0.0.0/8", "169.254.169.254/32"]
        );
        assert!(ipv4_cidrs("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(ipv4_cidrs("fd00::/8").unwrap_err().contains("IPv4"));
        assert!(ipv4_cidrs("10.0.0.0/33").is_err());
        assert!(ipv4_cidrs("ten").is_err());
    }

    #[test]
    fn threads_levels_and_names() {
        assert_eq!(threads("4").unwrap(), 4);
        assert!(threads("0").is_err() && threads("65").is_err() && threads("two").is_err());
        assert_eq!(
            log_level("weir_sidecar=debug,warn").unwrap(),
            "weir_sidecar=debug,warn"
        );
        assert!(log_level("info debug").is_err());
        assert!(log_level("").is_err());
        assert_eq!(service("payments").unwrap(), "payments");
        assert!(service("Payments").is_err() && service("-x").is_err());
        assert_eq!(inject("enabled").unwrap(), Inject::Enabled);
        assert!(inject("yes").is_err());
    }
}
