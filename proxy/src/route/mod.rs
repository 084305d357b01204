//! Routing: the route table (host -> service -> first matching rule -> version), its
//! matchers, and how a service of it is built.

mod build;
mod list;
pub(crate) mod matcher;
mod table;

pub(crate) use build::service as build_service;
pub(crate) use list::ServiceList;
pub(crate) use matcher::RequestView;
pub(crate) use table::{Decision, HostIndex, RouteTable, Service};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{HeaderMap, HeaderName, HeaderValue, Method};

    use super::*;
    use crate::backends::Backends;
    use crate::config::ProxyConfig;

    fn table(yaml: &str) -> RouteTable {
        let cfg = ProxyConfig::parse(yaml).expect("valid test config");
        let backends = Backends::default();
        let services: Vec<Arc<Service>> = cfg
            .services
            .iter()
            .map(|s| {
                let routing = Arc::new(crate::routing::ServiceRouting::from_config(s));
                Arc::new(build_service(&routing, &backends).expect("builds"))
            })
            .collect();
        RouteTable::new(services, &[])
    }
    fn pick(
        t: &RouteTable,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let view = RequestView {
            method: &method,
            path,
            headers: &map,
        };
        t.route(Some(host), &view)
            .map(|d| format!("{}/{}", d.service.name, d.version.name))
    }

    const RULES: &str = r#"
services:
  - name: shop
    hosts: [shop.example.com, "*.shop.example.com"]
    versions:
      primary: { endpoints: ["127.0.0.1:1"] }
      canary: { endpoints: ["127.0.0.1:2"] }
    routes:
      - match: { headers: { x-canary: { exact: always } } }
        to: canary
      - match: { cookies: { flavour: { regex: "choc.*" } } }
        to: canary
      - match: { path: { prefix: /api/v2 }, method: [POST, PUT] }
        to: canary
      - match: { path: { regex: "/items/[0-9]+" }, headers: { x-beta: { present: true } } }
        to: canary
      - match: { headers: { user-agent: { suffix: Firefox, invert: true }, x-region: { prefix: eu- } } }
        to: canary
      - to: primary
  - name: fallback
    hosts: ["*"]
    versions:
      v1: { endpoints: ["127.0.0.1:3"] }
"#;

    #[test]
    fn header_cookie_path_and_method_rules_first_match_wins() {
        let t = table(RULES);
        let h = "shop.example.com";
        assert_eq!(
            pick(&t, h, "GET", "/", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/", &[("x-canary", "always")]).as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/", &[("x-canary", "never")]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/", &[("cookie", "a=1; flavour=chocolate")]).as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/", &[("cookie", "flavour=vanilla")]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "POST", "/api/v2/x", &[]).as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/api/v2/x", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/items/42", &[("x-beta", "")]).as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/items/42x", &[("x-beta", "1")]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/items/42", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(
                &t,
                h,
                "GET",
                "/",
                &[("user-agent", "Chrome"), ("x-region", "eu-west")]
            )
            .as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(
                &t,
                h,
                "GET",
                "/",
                &[("user-agent", "Mozilla Firefox"), ("x-region", "eu-west")]
            )
            .as_deref(),
            Some("shop/primary")
        );
    }

    #[test]
    fn hosts_select_services_with_wildcards_ports_case_and_default() {
        let t = table(RULES);
        assert_eq!(
            pick(&t, "SHOP.example.com:8080", "GET", "/", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, "eu.shop.example.com", "GET", "/", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, "other.example.com", "GET", "/", &[]).as_deref(),
            Some("fallback/v1")
        );
        assert_eq!(
            pick(&t, "[::1]:80", "GET", "/", &[]).as_deref(),
            Some("fallback/v1")
        );
    }

    #[test]
    fn no_default_and_no_matching_rule_route_nowhere() {
        let t = table(
            r#"
services:
  - name: a
    hosts: [a]
    versions: { v1: { endpoints: ["127.0.0.1:1"] } }
    routes: [ { match: { path: { exact: /only } }, to: v1 } ]
  - name: b
    hosts: [b]
    versions: { v1: { endpoints: ["127.0.0.1:1"] } }
"#,
        );
        assert_eq!(pick(&t, "nowhere", "GET", "/", &[]), None);
        assert_eq!(pick(&t, "a", "GET", "/other", &[]), None);
        assert_eq!(pick(&t, "a", "GET", "/only", &[]).as_deref(), Some("a/v1"));
        assert_eq!(
            pick(&t, "b", "GET", "/anything", &[]).as_deref(),
            Some("b/v1")
        );
    }

    #[test]
    fn sticky_cookie_keeps_a_user_on_one_version() {
        let t = table(
            r#"
services:
  - name: a
    versions: { primary: { endpoints: ["127.0.0.1:1"] }, canary: { endpoints: ["127.0.0.1:2"] } }
    routes: [ { split: { primary: 50, canary: 50 } } ]
    sticky: { cookie: user }
"#,
        );
        for user in 0..200 {
            let cookie = format!("user={user}");
            let first = pick(&t, "a", "GET", "/", &[("cookie", &cookie)]);
            for _ in 0..5 {
                assert_eq!(pick(&t, "a", "GET", "/", &[("cookie", &cookie)]), first);
            }
        }
    }

    #[test]
    fn weights_are_published_per_version() {
        let t = table(
            r#"
services:
  - name: a
    versions: { primary: { endpoints: ["127.0.0.1:1"] }, canary: { endpoints: ["127.0.0.1:2"] } }
    routes: [ { match: { headers: { x: {} } }, to: canary }, { split: { primary: 999, canary: 1 } } ]
"#,
        );
        assert_eq!(
            t.services.get(0).expect("one service").weights(),
            vec![999, 1]
        );
    }

    #[test]
    fn replacing_one_service_shares_every_other_chunk() {
        let mut yaml = String::from("services:\n");
        for i in 0..70 {
            yaml.push_str(&format!(
                "  - name: s{i}\n    hosts: [s{i}]\n    versions: {{ v1: {{ endpoints: [\"127.0.0.1:1\"] }} }}\n"
            ));
        }
        let t = table(&yaml);
        let by_name = |list: &ServiceList, name: &str| {
            list.get(list.position(name).expect("known service"))
                .expect("in range")
                .clone()
        };
        let replacement = by_name(&t.services, "s0");
        let next = t.services.with(40, replacement.clone());
        assert!(Arc::ptr_eq(next.get(40).expect("in range"), &replacement));
        assert_eq!(next.position("s40"), Some(40));
        for i in (0..70).filter(|i| *i != 40) {
            let (a, b) = (t.services.get(i), next.get(i));
            assert!(
                a.zip(b).is_some_and(|(a, b)| Arc::ptr_eq(a, b)),
                "service {i}"
            );
        }
        assert_eq!(next.iter().count(), 70);
        assert_eq!(by_name(&next, "s69").name, "s69");
        assert!(next.get(70).is_none());
    }
}
