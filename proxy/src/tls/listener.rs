//! The server side of TLS (the proxy's listeners, and the control API): certificates
//! chosen by SNI against their DNS names, optional client certificates, ALPN, TLS 1.2
//! and 1.3, and session resumption (tickets and the session cache outlive reloads).

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::material::{File, Material, Reload, TlsError};
use super::settings::ListenerTls;
use super::{pem, provider};

/// Whether clients must present a certificate when `clientCa` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every client must present one that chains to `clientCa` (downstream mTLS).
    Required,
    /// A client may present one; whoever serves decides what it may do without.
    Optional,
}

/// A listener's TLS: what it serves now, reloadable.
pub struct ServerTls {
    material: Material<ServerConfig>,
}

/// Certificates by name.
#[derive(Debug)]
struct ByName {
    /// Each certificate with its DNS names (lower case; `*.x` for wildcards).
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ByName {
    fn find(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        let exact = self.certs.iter().find(|(names, _)| names.contains(&sni));
        let wildcard = || {
            let (_, parent) = sni.split_once('.')?;
            self.certs.iter().find(|(names, _)| {
                names
                    .iter()
                    .any(|n| n.strip_prefix("*.").is_some_and(|rest| rest == parent))
            })
        };
        exact.or_else(wildcard).map(|(_, key)| key.clone())
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|sni| self.find(sni))
            .or_else(|| self.certs.first().map(|(_, key)| key.clone()))
    }
}

/// The DNS names a certificate is valid for.
fn dns_names(key: &CertifiedKey, field: &str) -> Result<Vec<String>, TlsError> {
    let leaf = key
        .end_entity_cert()
        .map_err(|e| TlsError::new(field, e.to_string()))?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| TlsError::new(field, format!("not a usable certificate: {e}")))?;
    Ok(cert
        .valid_dns_names()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect())
}

/// The DNS names the leaf (first) certificate of a PEM chain is valid for: the names a
/// client's SNI chooses it by.
pub fn dns_names_of_pem(bytes: &[u8]) -> Result<Vec<String>, String> {
    let certs = pem::certificates(bytes, "cert").map_err(|e| e.message)?;
    let leaf = certs.first().ok_or("no certificate in the file")?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("not a usable certificate: {e}"))?;
    Ok(cert
        .valid_dns_names()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect())
}

impl ServerTls {
    /// Reads and checks the files; `alpn` lists the protocols offered, most preferred first.
    pub fn load(
        name: &str,
        cfg: &ListenerTls,
        client_certs: ClientCerts,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerTls>, TlsError> {
        if cfg.certificates.is_empty() {
            return Err(TlsError::new(
                "certificates",
                "list at least one certificate (cert and key)",
            ));
        }
        let mut files = Vec::new();
        for (i, c) in cfg.certificates.iter().enumerate() {
            files.push(File::new(format!("certificates[{i}].cert"), &c.cert));
            files.push(File::new(format!("certificates[{i}].key"), &c.key));
        }
        let client_ca = cfg.client_ca.as_ref().map(|ca| {
            files.push(File::new("clientCa", ca));
            files.len() - 1
        });
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let tickets = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::new("certificates", format!("session tickets: {e}")))?;
        let sessions = rustls::server::ServerSessionMemoryCache::new(4096);
        let fields: Vec<String> = files.iter().map(|f| f.field.clone()).collect();
        let build = move |contents: &[Vec<u8>]| -> Result<ServerConfig, TlsError> {
            let mut certs = Vec::new();
            for pair in (0..contents.len() - usize::from(client_ca.is_some())).step_by(2) {
                let key = pem::certified_key(
                    (&contents[pair], &fields[pair]),
                    (&contents[pair + 1], &fields[pair + 1]),
                )?;
                certs.push((dns_names(&key, &fields[pair])?, Arc::new(key)));
            }
            let builder = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| TlsError::new("certificates", e.to_string()))?;
            let builder = match client_ca {
                Some(i) => {
                    let roots = pem::roots(&contents[i], &fields[i])?;
                    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                    let verifier = match client_certs {
                        ClientCerts::Required => verifier,
                        ClientCerts::Optional => verifier.allow_unauthenticated(),
                    };
                    let verifier = verifier
                        .build()
                        .map_err(|e| TlsError::new(&fields[i], e.to_string()))?;
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_cert_resolver(Arc::new(ByName { certs }));
            config.alpn_protocols = alpn.clone();
            config.ticketer = tickets.clone();
            config.session_storage = sessions.clone();
            Ok(config)
        };
        let material = Material::load(name.to_string(), files, build)?;
        Ok(Arc::new(ServerTls { material }))
    }

    /// An acceptor with the config serving now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.material.get())
    }

    /// Re-reads the files (see [`Reload`]).
    pub fn reload(&self, again: bool) -> Reload {
        self.material.reload(again)
    }

    /// Who uses it, for the log.
    pub fn name(&self) -> &str {
        &self.material.name
    }
}
