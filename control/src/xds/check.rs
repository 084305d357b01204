//! What weir.yaml can say that an Envoy node cannot do: refused by `weir check` (and at
//! start) when the file serves Envoy nodes (`envoy:`), each naming its field and why, so
//! no one learns it from a node that routes differently from weir's replicas.

use weir_proxy::config::{ConfigError, Limits, MirrorConfig, ProxyConfig, VersionConfig};

use super::UPGRADES;

/// Every field of `cfg` an Envoy node would not honour.
pub fn untranslatable(cfg: &ProxyConfig) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut no = |field: String, why: &str| errors.push(ConfigError::new(field, why));
    if !cfg.listeners.is_empty() {
        no(
            "listeners".into(),
            "an Envoy node gets one listener (its bootstrap's --listen); serve more on weir replicas",
        );
    }
    if !cfg.trusted_proxies.is_empty() {
        no(
            "trustedProxies".into(),
            "Envoy trusts a number of proxy hops in X-Forwarded-For, not addresses; remove it for Envoy nodes",
        );
    }
    let defaults = Limits::default();
    if cfg.limits.upload_min_rate != defaults.upload_min_rate && cfg.limits.upload_min_rate != 0 {
        no(
            "limits.uploadMinRate".into(),
            "Envoy has no minimum upload rate (its request timeout is limits.requestTimeout)",
        );
    }
    let version_default = VersionConfig::at(Vec::new());
    let mirror_default = MirrorConfig::to("", 0.0);
    for (i, svc) in cfg.services.iter().enumerate() {
        let p = format!("services[{i}]");
        if svc.sticky.is_some() {
            no(
                format!("{p}.sticky"),
                "Envoy picks a weighted cluster at random, not by a hash of a header or cookie",
            );
        }
        for (name, v) in &svc.versions {
            if v.max_idle_per_endpoint != version_default.max_idle_per_endpoint {
                no(
                    format!("{p}.versions.{name}.maxIdlePerEndpoint"),
                    "Envoy has no per-endpoint cap on idle connections",
                );
            }
        }
        for (r, route) in svc.routes.iter().enumerate() {
            let rp = format!("{p}.routes[{r}]");
            if let Some(m) = &route.mirror {
                if m.compare {
                    no(
                        format!("{rp}.mirror.compare"),
                        "Envoy mirrors fire and forget: it cannot compare the shadow's answer",
                    );
                }
                for (field, differs) in [
                    (
                        "maxBodyBytes",
                        m.max_body_bytes != mirror_default.max_body_bytes,
                    ),
                    (
                        "maxInFlight",
                        m.max_in_flight != mirror_default.max_in_flight,
                    ),
                    ("timeout", m.timeout != mirror_default.timeout),
                ] {
                    if differs {
                        no(
                            format!("{rp}.mirror.{field}"),
                            "Envoy's mirrors have no such bound",
                        );
                    }
                }
            }
            for (u, upgrade) in route.upgrades.iter().flatten().enumerate() {
                if !UPGRADES.iter().any(|k| k.eq_ignore_ascii_case(upgrade)) {
                    no(
                        format!("{rp}.upgrades[{u}]"),
                        "Envoy nodes are given websocket and connect-udp upgrades only",
                    );
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_envoy_cannot_do_is_named_by_its_field() {
        let cfg = ProxyConfig::parse(
            r#"
trustedProxies: ["10.0.0.0/8"]
services:
  - name: a
    sticky: { cookie: user }
    versions:
      primary: { endpoints: ["127.0.0.1:1"], maxIdlePerEndpoint: 4 }
      canary: { endpoints: ["127.0.0.1:2"] }
    routes:
      - split: { primary: 90, canary: 10 }
        mirror: { version: canary, percent: 10, compare: true, maxInFlight: 5 }
        upgrades: [websocket, spdy]
"#,
        )
        .expect("valid for weir");
        let got: Vec<String> = untranslatable(&cfg)
            .iter()
            .map(|e| e.path.clone())
            .collect();
        assert_eq!(
            got,
            [
                "trustedProxies",
                "services[0].sticky",
                "services[0].versions.primary.maxIdlePerEndpoint",
                "services[0].routes[0].mirror.compare",
                "services[0].routes[0].mirror.maxInFlight",
                "services[0].routes[0].upgrades[1]",
            ]
        );
        let plain = ProxyConfig::parse(
            "services:\n  - name: a\n    versions: { primary: { endpoints: [\"127.0.0.1:1\"] } }\n",
        )
        .expect("valid");
        assert!(untranslatable(&plain).is_empty());
    }
}
