//! The webhook's own CA and serving certificate, when cert-manager does not provide them:
//! what to issue ([`plan`], a pure function of the time and what the Secret holds) and the
//! issuing itself ([`issue`], rcgen with ring).
//!
//! # Lifetimes and rotation
//!
//! The CA is valid 10 years, the serving certificate 1 year; each is renewed at two thirds of
//! its life (so a serving certificate about 4 months before it expires), and at once when it
//! is missing, unreadable, not the pair of its key, not issued by the current CA or not naming
//! every DNS name of the Service. Both start an hour in the past, so an API server whose clock
//! is a little behind still accepts them.
//!
//! The CA bundle (`ca.crt`, what the MutatingWebhookConfiguration's `caBundle` holds) lists the
//! current CA first and, after a CA rotation, the previous CA while it is still valid: replicas
//! that still serve a certificate issued by the old CA stay trusted until they read the new
//! Secret. Only the current CA's key is kept (`ca.key`).
//!
//! Keys are ECDSA P-256 (rcgen's default), which every API server accepts.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// How long a serving certificate is valid.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before they are made (clock skew).
const BACKDATE: Duration = Duration::from_secs(3600);
const CA_COMMON_NAME: &str = "weir-webhook-ca";

/// The Secret's keys.
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// What the Secret holds, PEM text each.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The CA bundle: the current CA first, maybe the previous one after it.
    pub ca_crt: String,
    /// The current CA's private key.
    pub ca_key: String,
    /// The serving certificate.
    pub tls_crt: String,
    /// The serving certificate's private key.
    pub tls_key: String,
}

impl fmt::Debug for Bundle {
    /// Never prints the keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_crt", &self.ca_crt)
            .field("tls_crt", &self.tls_crt)
            .finish_non_exhaustive()
    }
}

/// What to do with what the Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// It is good until `until` (the moment the first of the two is due for renewal).
    Keep { until: SystemTime },
    /// A new serving certificate from the current CA, because of `.0`.
    Serving(String),
    /// A new CA and a new serving certificate, because of `.0`.
    Ca(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the stored CA cannot issue: {0}")]
    StoredCa(String),
}

/// When a certificate valid from `not_before` to `not_after` is due for renewal: at 2/3 of its
/// life.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life * 2 / 3
}

/// One certificate, as much as the plan needs.
#[derive(Debug, Clone)]
struct Info {
    not_before: SystemTime,
    not_after: SystemTime,
    dns_names: Vec<String>,
    is_ca: bool,
    spki: Vec<u8>,
    der: Vec<u8>,
}

/// The certificates of a PEM text: each block's text and its DER.
fn pem_blocks(pem: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(begin) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[begin..].find(END) else {
            return Err("bad PEM: a certificate block does not end".to_owned());
        };
        let block = format!("{}\n", &rest[begin..begin + end + END.len()]);
        let der = match Pem::iter_from_buffer(block.as_bytes()).next() {
            Some(Ok(pem)) => pem.contents,
            Some(Err(e)) => return Err(format!("bad PEM: {e}")),
            None => return Err("bad PEM".to_owned()),
        };
        out.push((block, der));
        rest = &rest[begin + end + END.len()..];
    }
    if out.is_empty() {
        return Err("no certificate in it".to_owned());
    }
    Ok(out)
}

fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    Ok(pem_blocks(pem)?.into_iter().map(|(_, der)| der).collect())
}

fn info(der: &[u8]) -> Result<Info, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("bad certificate: {e}"))?;
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let validity = cert.validity();
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some((*name).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Info {
        not_before: time(validity.not_before.timestamp()),
        not_after: time(validity.not_after.timestamp()),
        dns_names,
        is_ca: cert.is_ca(),
        spki: cert.public_key().raw.to_vec(),
        der: der.to_vec(),
    })
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c)
}

fn key_spki(pem: &str) -> Result<Vec<u8>, String> {
    KeyPair::from_pem(pem)
        .map(|k| k.subject_public_key_info())
        .map_err(|e| format!("bad private key: {e}"))
}

/// Decides from what the Secret holds (`None`: no Secret yet) what to issue at `now` for a
/// serving certificate naming `dns_names`.
pub fn plan(now: SystemTime, stored: Option<&Bundle>, dns_names: &[String]) -> Plan {
    let Some(stored) = stored else {
        return Plan::Ca("no certificates stored yet".to_owned());
    };
    let ca = match pem_certs(&stored.ca_crt).and_then(|certs| info(&certs[0])) {
        Ok(ca) => ca,
        Err(e) => return Plan::Ca(format!("{CA_CRT}: {e}")),
    };
    if !ca.is_ca {
        return Plan::Ca(format!("{CA_CRT}: the first certificate is not a CA"));
    }
    match key_spki(&stored.ca_key) {
        Ok(spki) if spki == ca.spki => {}
        Ok(_) => return Plan::Ca(format!("{CA_KEY} is not the key of the CA in {CA_CRT}")),
        Err(e) => return Plan::Ca(format!("{CA_KEY}: {e}")),
    }
    let ca_renewal = renew_at(ca.not_before, ca.not_after);
    if now >= ca_renewal {
        return Plan::Ca("the CA is due for renewal (2/3 of its life)".to_owned());
    }
    let serving = match pem_certs(&stored.tls_crt).and_then(|certs| info(&certs[0])) {
        Ok(serving) => serving,
        Err(e) => return Plan::Serving(format!("{TLS_CRT}: {e}")),
    };
    match key_spki(&stored.tls_key) {
        Ok(spki) if spki == serving.spki => {}
        Ok(_) => {
            return Plan::Serving(format!(
                "{TLS_KEY} is not the key of the certificate in {TLS_CRT}"
            ));
        }
        Err(e) => return Plan::Serving(format!("{TLS_KEY}: {e}")),
    }
    let signed_by_ca = match (parse(&serving.der), parse(&ca.der)) {
        (Some(serving), Some(ca)) => serving.verify_signature(Some(ca.public_key())).is_ok(),
        _ => false,
    };
    if !signed_by_ca {
        return Plan::Serving("the serving certificate is not issued by the current CA".to_owned());
    }
    if let Some(missing) = dns_names.iter().find(|n| !serving.dns_names.contains(n)) {
        return Plan::Serving(format!("the serving certificate does not name {missing}"));
    }
    if now < serving.not_before {
        return Plan::Serving("the serving certificate is not valid yet".to_owned());
    }
    let serving_renewal = renew_at(serving.not_before, serving.not_after);
    if now >= serving_renewal {
        return Plan::Serving(
            "the serving certificate is due for renewal (2/3 of its life)".to_owned(),
        );
    }
    Plan::Keep {
        until: serving_renewal.min(ca_renewal),
    }
}

/// Carries out `plan` (anything but `Keep`) at `now`.
pub fn issue(
    plan: &Plan,
    stored: Option<&Bundle>,
    now: SystemTime,
    dns_names: &[String],
) -> Result<Bundle, CertError> {
    let (ca_crt, ca_key) = match (plan, stored) {
        (Plan::Serving(_), Some(stored)) | (Plan::Keep { .. }, Some(stored)) => {
            (prune(&stored.ca_crt, now), stored.ca_key.clone())
        }
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params(now)?.self_signed(&key)?;
            let mut bundle = cert.pem();
            // The previous CA stays trusted while it is valid (module doc).
            if let Some(previous) = stored.and_then(|s| current_ca_pem(&s.ca_crt))
                && pem_certs(&previous)
                    .ok()
                    .and_then(|c| info(&c[0]).ok())
                    .is_some_and(|i| i.is_ca && i.not_after > now)
            {
                bundle.push_str(&previous);
            }
            (bundle, key.serialize_pem())
        }
    };
    let ca_pem = current_ca_pem(&ca_crt)
        .ok_or_else(|| CertError::StoredCa(format!("{CA_CRT} holds no certificate")))?;
    let ca_key_pair =
        KeyPair::from_pem(&ca_key).map_err(|e| CertError::StoredCa(format!("{CA_KEY}: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key_pair)
        .map_err(|e| CertError::StoredCa(format!("{CA_CRT}: {e}")))?;
    let key = KeyPair::generate()?;
    let cert = serving_params(now, dns_names)?.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_crt,
        ca_key,
        tls_crt: cert.pem(),
        tls_key: key.serialize_pem(),
    })
}

fn ca_params(now: SystemTime) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_VALIDITY).into();
    Ok(params)
}

fn serving_params(
    now: SystemTime,
    dns_names: &[String],
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        dns_names
            .first()
            .map(String::as_str)
            .unwrap_or("weir-webhook"),
    );
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + SERVING_VALIDITY).into();
    Ok(params)
}

/// The first certificate of a bundle, as PEM.
fn current_ca_pem(bundle: &str) -> Option<String> {
    pem_blocks(bundle)
        .ok()?
        .into_iter()
        .next()
        .map(|(text, _)| text)
}

/// The bundle without the certificates that expired by `now` (the current CA always stays).
fn prune(bundle: &str, now: SystemTime) -> String {
    let Ok(blocks) = pem_blocks(bundle) else {
        return bundle.to_owned();
    };
    blocks
        .into_iter()
        .enumerate()
        .filter(|(i, (_, der))| *i == 0 || info(der).is_ok_and(|c| c.not_after > now))
        .map(|(_, (text, _))| text)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn names() -> Vec<String> {
        vec![
            "weir-operator-webhook.weir-system.svc".to_owned(),
            "weir-operator-webhook.weir-system.svc.cluster.local".to_owned(),
        ]
    }

    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn nothing_stored_makes_a_ca_and_then_keeps_it() {
        let now = start();
        let plan = plan(now, None, &names());
        assert!(matches!(plan, Plan::Ca(_)), "{plan:?}");
        let bundle = issue(&plan, None, now, &names()).unwrap();
        let Plan::Keep { until } = super::plan(now, Some(&bundle), &names()) else {
            panic!("a fresh bundle is kept");
        };
        // The serving certificate is due first, at 2/3 of a year.
        let expected = now - BACKDATE + (SERVING_VALIDITY + BACKDATE) * 2 / 3;
        let diff = until
            .duration_since(expected)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(2), "{until:?} vs {expected:?}");
    }

    #[test]
    fn the_serving_certificate_is_renewed_at_two_thirds_under_the_same_ca() {
        let now = start();
        let first = issue(&Plan::Ca("test".into()), None, now, &names()).unwrap();
        assert!(matches!(
            plan(now + 200 * DAY, Some(&first), &names()),
            Plan::Keep { .. }
        ));
        let later = now + 250 * DAY;
        let due = plan(later, Some(&first), &names());
        assert!(
            matches!(due, Plan::Serving(ref why) if why.contains("renewal")),
            "{due:?}"
        );
        let second = issue(&due, Some(&first), later, &names()).unwrap();
        assert_eq!(second.ca_crt, first.ca_crt, "same CA");
        assert_eq!(second.ca_key, first.ca_key);
        assert_ne!(second.tls_crt, first.tls_crt);
        assert!(matches!(
            plan(later, Some(&second), &names()),
            Plan::Keep { .. }
        ));
    }

    #[test]
    fn the_ca_is_renewed_at_two_thirds_and_the_old_one_stays_in_the_bundle() {
        let now = start();
        let first = issue(&Plan::Ca("test".into()), None, now, &names()).unwrap();
        let later = now + 2500 * DAY; // past 2/3 of 10 years
        let due = plan(later, Some(&first), &names());
        assert!(
            matches!(due, Plan::Ca(ref why) if why.contains("CA")),
            "{due:?}"
        );
        let second = issue(&due, Some(&first), later, &names()).unwrap();
        assert_ne!(second.ca_key, first.ca_key);
        let certs = pem_certs(&second.ca_crt).unwrap();
        assert_eq!(certs.len(), 2, "new CA first, then the previous one");
        assert_eq!(certs[1], pem_certs(&first.ca_crt).unwrap()[0]);
        assert!(matches!(
            plan(later, Some(&second), &names()),
            Plan::Keep { .. }
        ));
        // Once the old CA expired it is dropped at the next issue.
        let much_later = now + 3700 * DAY;
        let third = issue(
            &Plan::Serving("test".into()),
            Some(&second),
            much_later,
            &names(),
        )
        .unwrap();
        assert_eq!(pem_certs(&third.ca_crt).unwrap().len(), 1);
    }

    #[test]
    fn wrong_names_keys_or_issuers_are_replaced() {
        let now = start();
        let good = issue(&Plan::Ca("test".into()), None, now, &names()).unwrap();
        let mut other_names = names();
        other_names.push("weir-webhook.other.svc".to_owned());
        let other = issue(&Plan::Ca("test".into()), None, now, &names()).unwrap();
        /// What the plan must be: a new serving certificate for a reason naming this, or a new CA.
        enum Expected {
            Serving(&'static str),
            Ca,
        }
        #[rustfmt::skip]
        let cases = [
            ("another name", good.clone(), other_names, Expected::Serving("other.svc")),
            ("another certificate's key", Bundle { tls_key: other.tls_key.clone(), ..good.clone() }, names(), Expected::Serving("key")),
            ("another CA's certificate", Bundle { tls_crt: other.tls_crt.clone(), tls_key: other.tls_key.clone(), ..good.clone() }, names(), Expected::Serving("not issued")),
            ("another CA's key", Bundle { ca_key: other.ca_key.clone(), ..good.clone() }, names(), Expected::Ca),
            ("a CA that does not parse", Bundle { ca_crt: "nonsense".to_owned(), ..good.clone() }, names(), Expected::Ca),
            ("no serving certificate", Bundle { tls_crt: String::new(), ..good }, names(), Expected::Serving("")),
        ];
        for (case, bundle, names, expected) in cases {
            let plan = plan(now, Some(&bundle), &names);
            let fits = match (&plan, expected) {
                (Plan::Serving(why), Expected::Serving(part)) => why.contains(part),
                (Plan::Ca(_), Expected::Ca) => true,
                _ => false,
            };
            assert!(fits, "{case}: {plan:?}");
        }
    }
}
