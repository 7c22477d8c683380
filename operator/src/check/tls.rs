//! Whether the injection webhook's certificate is one the API server accepts: the
//! MutatingWebhookConfiguration's `caBundle` must verify the serving certificate for the
//! Service's name `<service>.<namespace>.svc`, now. Checked with rustls's WebPKI verifier (with
//! ring, as the webhook itself), the same rules as the API server's TLS client: chain to one of
//! the bundle's CAs, validity at `now`, the name among the certificate's DNS names, server-auth
//! usage.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why the certificate would be refused; `Ok` when the API server would accept it.
pub fn verify(
    ca_bundle_pem: &[u8],
    serving_pem: &[u8],
    dns_name: &str,
    now: SystemTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle_pem) {
        let cert = cert.map_err(|e| format!("the caBundle is no PEM certificate list: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("the caBundle holds a certificate that is no CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the caBundle holds no certificate".to_owned());
    }
    let chain: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(serving_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the serving certificate is no PEM: {e}"))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("no serving certificate".to_owned());
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(dns_name.to_owned())
        .map_err(|e| format!("{dns_name:?} is no DNS name: {e}"))?;
    let at = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], at)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::certs::{self, Plan};
    use std::time::Duration;

    const NAME: &str = "weir-operator-webhook.weir-system.svc";

    fn bundle(now: SystemTime, names: &[&str]) -> certs::Bundle {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        certs::issue(&Plan::Ca("test".into()), None, now, &names).unwrap()
    }

    #[test]
    fn the_ca_the_name_and_the_time_must_all_fit() {
        let now = SystemTime::now();
        let good = bundle(now, &[NAME]);
        let (ca, tls) = (good.ca_crt.as_bytes(), good.tls_crt.as_bytes());
        assert_eq!(verify(ca, tls, NAME, now), Ok(()));
        let other = bundle(now, &[NAME]);
        let wrong_ca = verify(other.ca_crt.as_bytes(), tls, NAME, now).unwrap_err();
        // Another CA of the same name: found as the issuer, but its key did not sign it.
        assert!(
            wrong_ca.contains("BadSignature") || wrong_ca.contains("UnknownIssuer"),
            "{wrong_ca}"
        );
        let wrong_name = verify(ca, tls, "other.weir-system.svc", now).unwrap_err();
        assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
        let expired = verify(ca, tls, NAME, now + Duration::from_secs(400 * 24 * 3600));
        let expired = expired.unwrap_err();
        assert!(expired.contains("expired"), "{expired}");
        assert!(verify(b"", tls, NAME, now).is_err());
        assert!(verify(b"garbage", tls, NAME, now).is_err());
        assert!(verify(ca, b"", NAME, now).is_err());
    }
}
