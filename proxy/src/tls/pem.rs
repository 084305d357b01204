//! PEM contents to rustls types, each error naming the field and the problem.

use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::material::TlsError;

fn pem_problem(e: pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "no PEM section of the expected kind in the file".into(),
        other => format!("not valid PEM: {other}"),
    }
}

/// The certificates of a PEM file, in order.
pub(crate) fn certificates(
    bytes: &[u8],
    field: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(field, pem_problem(e)))?;
    if certs.is_empty() {
        return Err(TlsError::new(
            field,
            "no certificate (-----BEGIN CERTIFICATE-----) in the file",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(bytes: &[u8], field: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::new(
            field,
            "no private key (-----BEGIN PRIVATE KEY-----) in the file",
        ),
        other => TlsError::new(field, pem_problem(other)),
    })
}

/// Trust anchors from a PEM file of CA certificates.
pub(crate) fn roots(bytes: &[u8], field: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for (i, cert) in certificates(bytes, field)?.into_iter().enumerate() {
        store.add(cert).map_err(|e| {
            TlsError::new(
                field,
                format!("certificate {} is not a usable CA: {e}", i + 1),
            )
        })?;
    }
    Ok(Arc::new(store))
}

/// A certificate chain and its key, checked to belong together.
pub(crate) fn certified_key(
    cert: (&[u8], &str),
    key: (&[u8], &str),
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert.0, cert.1)?;
    let der = private_key(key.0, key.1)?;
    CertifiedKey::from_der(chain, der, &super::provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::new(
            key.1,
            format!("the key does not belong to the certificate in {}", cert.1),
        ),
        other => TlsError::new(key.1, format!("unusable private key: {other}")),
    })
}
