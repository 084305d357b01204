//! The client side of TLS to a version's endpoints: the server verified against `ca`
//! (or the Mozilla roots) and `serverName` (or the endpoint's host), an optional client
//! certificate for mTLS, ALPN `h2` for HTTP/2 versions and `http/1.1` otherwise.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::material::{File, Material, Reload, TlsError};
use super::settings::UpstreamTls as UpstreamTlsConfig;
use super::{pem, provider};

/// A version's upstream TLS: reloadable client config and the name to verify.
pub(crate) struct UpstreamTls {
    material: Material<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

fn server_name(name: &str, field: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string())
        .map_err(|_| TlsError::new(field, format!("{name:?} is not a DNS name or IP address")))
}

impl UpstreamTls {
    /// Reads and checks the files of `cfg` (`name` says whose they are in the log).
    pub(crate) fn load(
        name: String,
        cfg: &UpstreamTlsConfig,
        http2: bool,
    ) -> Result<Arc<UpstreamTls>, TlsError> {
        let server_name = cfg
            .server_name
            .as_deref()
            .map(|n| server_name(n, "serverName"))
            .transpose()?;
        let mut files = Vec::new();
        let mut add = |field: &str, path: &Option<String>| {
            path.as_ref().map(|p| {
                files.push(File::new(field, p));
                files.len() - 1
            })
        };
        let ca = add("ca", &cfg.ca);
        let client = match (add("cert", &cfg.cert), add("key", &cfg.key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(TlsError::new("key", "cert needs its key")),
            (None, Some(_)) => return Err(TlsError::new("cert", "key needs its cert")),
        };
        let fields: Vec<String> = files.iter().map(|f| f.field.clone()).collect();
        let alpn: &[u8] = if http2 { b"h2" } else { b"http/1.1" };
        let build = move |contents: &[Vec<u8>]| -> Result<ClientConfig, TlsError> {
            let roots = match ca {
                Some(i) => pem::roots(&contents[i], &fields[i])?,
                None => Arc::new(RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                }),
            };
            let builder = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| TlsError::new("ca", e.to_string()))?
                .with_root_certificates(roots);
            let mut config = match client {
                Some((c, k)) => {
                    let key =
                        pem::certified_key((&contents[c], &fields[c]), (&contents[k], &fields[k]))?;
                    let der = pem::private_key(&contents[k], &fields[k])?;
                    builder
                        .with_client_auth_cert(key.cert, der)
                        .map_err(|e| TlsError::new(&fields[k], e.to_string()))?
                }
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(config)
        };
        let material = Material::load(name, files, build)?;
        Ok(Arc::new(UpstreamTls {
            material,
            server_name,
        }))
    }

    /// The name an endpoint's certificate must carry: `serverName`, else its host.
    pub(crate) fn name_for(&self, address: &str) -> Result<ServerName<'static>, String> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        server_name(host, "serverName").map_err(|e| e.message)
    }

    /// The TLS handshake over a connected socket.
    pub(crate) async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        TlsConnector::from(self.material.get())
            .connect(name, tcp)
            .await
    }

    /// Re-reads the files (see [`Reload`]).
    pub(crate) fn reload(&self, again: bool) -> Reload {
        self.material.reload(again)
    }

    pub(crate) fn name(&self) -> &str {
        &self.material.name
    }
}
