//! A replica's file: weir.yaml's `listen`, `listeners`, `tls`, `admin`, `metrics`,
//! `trustedProxies` and `limits`, plus `controller: { address, tls, tokenFile }`. Its
//! services come from the controller, so a `services:` list here is an error.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_proxy::config::{decode, parse_document, ConfigError, ConfigErrors};
use weir_proxy::ProxyConfig;

use crate::link::Access;

/// How a replica reaches its controller.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerLink {
    /// `host:port`, `http://host:port` or `https://host:port` of the control API.
    pub address: String,
    /// TLS to the control API: the CA that signed its certificate, and a client
    /// certificate for mTLS.
    #[serde(default)]
    pub tls: Option<LinkTls>,
    /// A file holding the replica's bearer token (a `name token replica` line of the
    /// controller's `control.tokenFile`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `controller.tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkTls {
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// A replica's whole file.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Listeners, admin, limits, TLS; no services.
    pub proxy: ProxyConfig,
    /// `controller:`, when the file has it.
    pub controller: Option<ControllerLink>,
}

impl ReplicaConfig {
    /// Reads and validates a replica's file.
    pub fn load(path: &Path) -> Result<ReplicaConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
        ReplicaConfig::from_value(parse_document(&text)?)
    }

    /// Decodes and validates a document, reporting every error.
    pub fn from_value(mut value: serde_json::Value) -> Result<ReplicaConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let object = value.as_object_mut();
        let link = object
            .as_ref()
            .and_then(|o| o.get("controller").cloned())
            .unwrap_or(serde_json::Value::Null);
        if let Some(o) = object {
            o.remove("controller");
            if o.get("services").is_some_and(|s| !s.is_null()) {
                errors.push(ConfigError::new(
                    "services",
                    "a replica takes its services from the controller (`weir control`); remove them here",
                ));
                o.remove("services");
            }
        }
        let controller: Option<ControllerLink> = match link {
            serde_json::Value::Null => None,
            v => decode(v, "controller", &mut errors),
        };
        if let Some(c) = &controller {
            errors.extend(check_link(c));
        }
        let proxy = ProxyConfig::decode(value, &mut errors);
        match proxy {
            Some(proxy) if errors.is_empty() => Ok(ReplicaConfig { proxy, controller }),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// How to reach the controller: `--controller` overrides the file's address.
    pub fn access(&self, address: Option<&str>) -> Option<Access> {
        let link = self.controller.as_ref();
        let control = address
            .map(str::to_string)
            .or_else(|| link.map(|l| l.address.clone()))?;
        let tls = link.and_then(|l| l.tls.clone()).unwrap_or_default();
        Some(Access {
            control,
            token_file: link.and_then(|l| l.token_file.clone()),
            ca: tls.ca,
            cert: tls.cert,
            key: tls.key,
        })
    }
}

/// The files of `controller:` must be readable; a certificate needs its key.
fn check_link(c: &ControllerLink) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if c.address.trim().is_empty() {
        errors.push(ConfigError::new(
            "controller.address",
            "the control API's address is required",
        ));
    }
    let tls = c.tls.clone().unwrap_or_default();
    if tls.cert.is_some() != tls.key.is_some() {
        errors.push(ConfigError::new(
            "controller.tls",
            "cert and key go together",
        ));
    }
    let files = [
        ("controller.tls.ca", &tls.ca),
        ("controller.tls.cert", &tls.cert),
        ("controller.tls.key", &tls.key),
        ("controller.tokenFile", &c.token_file),
    ];
    for (path, file) in files {
        if let Some(f) = file {
            if let Err(e) = std::fs::metadata(f) {
                errors.push(ConfigError::new(
                    path,
                    format!("cannot read {}: {e}", f.display()),
                ));
            }
        }
    }
    errors
}

/// True when the file at `path` is a replica's (it has `controller:`).
pub fn is_replica_file(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| parse_document(&text).ok())
        .is_some_and(|doc| doc.get("controller").is_some())
}

/// The replica's name: `--name`, else `$POD_NAME`, else the host name.
pub fn replica_name(flag: Option<&str>) -> Option<String> {
    let pod = std::env::var("POD_NAME").ok();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok());
    flag.map(str::to_string)
        .or(pod)
        .or(host)
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ReplicaConfig, ConfigErrors> {
        ReplicaConfig::from_value(parse_document(text)?)
    }

    #[test]
    fn a_replica_file_names_its_controller_and_no_services() {
        let cfg =
            parse("listen: 127.0.0.1:0\ncontroller: { address: 127.0.0.1:9090 }\n").expect("valid");
        let access = cfg.access(None).expect("controller");
        assert_eq!(access.control, "127.0.0.1:9090");
        assert_eq!(
            cfg.access(Some("https://c:1")).map(|a| a.control),
            Some("https://c:1".to_string())
        );
        let e = parse("services: [{name: a, versions: {v1: {endpoints: [\"127.0.0.1:1\"]}}}]\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("services") && e.contains("controller"), "{e}");
        let e = parse("controller: { address: a:1, tls: { cert: /x.pem }, tokenFile: /nope }\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("controller.tls: cert and key go together"),
            "{e}"
        );
        assert!(e.contains("controller.tokenFile: cannot read /nope"), "{e}");
        let e = parse("controller: { adress: a:1 }\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("controller"), "{e}");
    }
}
