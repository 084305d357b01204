//! Test certificates (rcgen): a CA and the leaves it signs, written as PEM files, and
//! rustls clients that trust the CA.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ClientConfig;

use super::temp_dir;

/// A certificate authority writing its leaves under one directory.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let dir = temp_dir(tag);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("weir test CA {tag}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, issuer.pem()).expect("write CA");
        Pki { dir, ca, issuer }
    }

    /// A leaf named `name` (its CN) for `sans` (DNS names or IP addresses), usable by
    /// servers and clients, written as `<file>.crt` and `<file>.key`.
    pub fn issue(&self, file: &str, name: &str, sans: &[&str]) -> Leaf {
        let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("SANs");
        self.sign(file, name, params)
    }

    /// A client leaf whose only SAN is the URI `uri`.
    pub fn issue_uri(&self, file: &str, uri: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("URI SAN"))];
        self.sign(file, uri, params)
    }

    fn sign(&self, file: &str, name: &str, mut params: CertificateParams) -> Leaf {
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        leaf.write_to(&leaf.cert, &leaf.key);
        leaf
    }

    /// A rustls client trusting this CA, offering `alpn`, with a client certificate.
    pub fn client(&self, alpn: &[&[u8]], identity: Option<&Leaf>) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(&std::fs::read(&self.ca).expect("CA")) {
            roots.add(c).expect("CA cert");
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
        let mut cfg = match identity {
            Some(leaf) => {
                use rustls_pki_types::pem::PemObject;
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
                    .expect("key");
                builder
                    .with_client_auth_cert(pem_certs(leaf.cert_pem.as_bytes()), key)
                    .expect("client cert")
            }
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

impl Leaf {
    /// Writes this certificate and key to the given files (atomically each, as a
    /// secret mount or cert-manager would).
    pub fn write_to(&self, cert: &PathBuf, key: &PathBuf) {
        for (path, pem) in [(key, &self.key_pem), (cert, &self.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).expect("write PEM");
            std::fs::rename(&tmp, path).expect("rename PEM");
        }
    }
}

pub fn pem_certs(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

/// An HTTP/1.1 connection over TLS, kept alive across requests.
pub struct TlsConn {
    sender: hyper::client::conn::http1::SendRequest<super::TestBody>,
    /// The server's leaf certificate (DER).
    pub leaf: Vec<u8>,
}

impl TlsConn {
    /// Connects to `addr` sending `name` as SNI.
    pub async fn open(
        addr: std::net::SocketAddr,
        name: &str,
        cfg: Arc<ClientConfig>,
    ) -> Result<TlsConn, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let server = rustls_pki_types::ServerName::try_from(name.to_string())
            .map_err(|e| format!("name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(server, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let leaf = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(TlsConn { sender, leaf })
    }

    /// GET `path` with `Host: host`: status and body.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<(u16, String), String> {
        use http_body_util::BodyExt;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("not ready: {e}"))?;
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(super::full(""))
            .map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
