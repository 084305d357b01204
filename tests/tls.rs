//! TLS end to end with real clients and servers: curl and openssl s_client against weir's
//! HTTPS listener (SNI, ALPN h2 and http/1.1, TLS 1.2 and 1.3, client certificates),
//! certificate rotation under load with no failed request and resumption across it, a bad
//! new certificate that keeps the old one, and nginx as a TLS upstream that demands
//! weir's client certificate.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::nginx::Nginx;
use support::pki::{Leaf, Pki, TlsConn};
use support::*;

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `openssl s_client` with SNI `name` and ALPN `alpn`: its whole output.
fn s_client(port: u16, name: &str, alpn: &str, ca: &Path, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", name, "-verify_hostname", name, "-alpn", alpn])
        .args(["-CAfile", &path(ca)])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `curl` over HTTPS to `host` resolved to 127.0.0.1: exit code and stdout.
fn curl(port: u16, host: &str, ca: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert", &path(ca)])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(args)
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("curl must be installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn service(up: &Upstream) -> String {
    format!(
        "services:\n  - name: web\n    versions:\n      v1: {{ endpoints: [\"{}\"] }}\n",
        up.endpoint()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_picks_certificates_by_sni_and_protocols_by_alpn() {
    let pki = Pki::new("sni");
    let a = pki.issue("a", "a.example", &["a.example"]);
    let b = pki.issue("b", "*.b.example", &["*.b.example"]);
    let up = Upstream::start("v1").await;
    let weir = Weir::start_mode(
        "proxy",
        &format!(
            "listen: 127.0.0.1:0\ntls:\n  certificates:\n    - {{ cert: {}, key: {} }}\n    - {{ cert: {}, key: {} }}\nlisteners:\n  - address: 127.0.0.1:0\n{}",
            path(&a.cert),
            path(&a.key),
            path(&b.cert),
            path(&b.key),
            service(&up)
        ),
    );
    let (https, plain) = (weir.proxies[0].port(), weir.proxies[1]);

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, out) = curl(
            https,
            "a.example",
            &pki.ca,
            &[flag, "-w", "\n%{http_version}"],
        );
        assert_eq!(code, 0, "curl {flag}: {out}");
        assert_eq!(out, format!("v1\n{version}"), "curl {flag}");
        assert_eq!(up.last_seen().headers["x-forwarded-proto"], "https");
    }

    let wildcard = s_client(https, "x.b.example", "h2,http/1.1", &pki.ca, &[]);
    assert!(wildcard.contains("CN = *.b.example"), "{wildcard}");
    assert!(wildcard.contains("ALPN protocol: h2"), "{wildcard}");
    assert!(
        wildcard.contains("Verify return code: 0 (ok)"),
        "{wildcard}"
    );
    let exact = s_client(https, "a.example", "http/1.1", &pki.ca, &["-tls1_2"]);
    assert!(exact.contains("CN = a.example"), "{exact}");
    assert!(exact.contains("ALPN protocol: http/1.1"), "{exact}");
    assert!(exact.contains("TLSv1.2"), "{exact}");
    assert!(exact.contains("Verify return code: 0 (ok)"), "{exact}");
    // No SNI match: the first certificate, which does not verify for that name.
    let other = s_client(https, "c.example", "h2", &pki.ca, &["-tls1_3"]);
    assert!(other.contains("CN = a.example"), "{other}");
    assert!(other.contains("TLSv1.3"), "{other}");
    assert!(!other.contains("Verify return code: 0 (ok)"), "{other}");

    // The plaintext listener serves beside it, and says so upstream.
    let got = get(
        &format!("http://{plain}/"),
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(got.text(), "v1");
    assert_eq!(up.last_seen().headers["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_makes_client_certificates_mandatory() {
    let pki = Pki::new("mtls-in");
    let server = pki.issue("server", "app.example", &["app.example"]);
    let client = pki.issue("client", "curl-client", &["curl-client"]);
    let stranger = Pki::new("stranger").issue("client", "stranger", &["stranger"]);
    let up = Upstream::start("v1").await;
    let weir = Weir::start_mode(
        "proxy",
        &format!(
            "tls:\n  certificates: [{{ cert: {}, key: {} }}]\n  clientCa: {}\n{}",
            path(&server.cert),
            path(&server.key),
            path(&pki.ca),
            service(&up)
        ),
    );
    let port = weir.proxy.port();
    let (code, _) = curl(port, "app.example", &pki.ca, &[]);
    assert_ne!(code, 0, "no client certificate: refused");
    let (code, _) = curl(
        port,
        "app.example",
        &pki.ca,
        &[
            "--cert",
            &path(&stranger.cert),
            "--key",
            &path(&stranger.key),
        ],
    );
    assert_ne!(code, 0, "a certificate from another CA: refused");
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let (code, out) = curl(
        port,
        "app.example",
        &pki.ca,
        &["--cert", &path(&client.cert), "--key", &path(&client.key)],
    );
    assert_eq!((code, out.as_str()), (0, "v1"));
    let failures = weir.metric("weir_tls_handshake_failures_total", &[]).await;
    assert!(failures >= 2.0, "handshake failures counted: {failures}");
}

/// A certificate directory swapped in whole through a symlink, as Kubernetes updates a
/// mounted Secret.
fn install(dir: &Path, generation: usize, leaf: &Leaf) {
    let target = dir.join(format!("gen-{generation}"));
    std::fs::create_dir_all(&target).expect("mkdir");
    leaf.write_to(&target.join("tls.crt"), &target.join("tls.key"));
    let link = dir.join("live.tmp");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    std::fs::rename(&link, dir.join("live")).expect("swap");
}

/// Waits until a new connection is served `leaf`.
async fn wait_served(addr: std::net::SocketAddr, pki: &Pki, leaf: &Leaf, what: &str) {
    let want = support::pki::pem_certs(leaf.cert_pem.as_bytes())[0].to_vec();
    wait_for(what, Duration::from_secs(30), || {
        let cfg = pki.client(&[b"http/1.1"], None);
        let want = want.clone();
        async move {
            match TlsConn::open(addr, "app.example", cfg).await {
                Ok(c) => c.leaf == want,
                Err(_) => false,
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_with_no_failed_request() {
    let pki = Pki::new("rotate");
    let certs: PathBuf = pki.dir.join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    install(
        &certs,
        1,
        &pki.issue("one", "app.example", &["app.example"]),
    );
    let up = Upstream::start("v1").await;
    let weir = Weir::start_mode(
        "proxy",
        &format!(
            "tls:\n  certificates: [{{ cert: {c}/live/tls.crt, key: {c}/live/tls.key }}]\n{}",
            service(&up),
            c = path(&certs)
        ),
    );
    let addr = weir.proxy;

    // Resumption: a TLS 1.2 session (openssl) and a TLS 1.3 one (rustls) from before.
    let session = pki.dir.join("session.pem");
    let opened = s_client(
        addr.port(),
        "app.example",
        "http/1.1",
        &pki.ca,
        &["-tls1_2", "-sess_out", &path(&session)],
    );
    assert!(opened.contains("New, TLSv1.2"), "{opened}");
    let resuming = pki.client(&[b"http/1.1"], None);
    let mut first = TlsConn::open(addr, "app.example", resuming.clone())
        .await
        .expect("first TLS 1.3 connection");
    // An exchange reads the session tickets that follow the handshake.
    assert_eq!(first.get("app.example", "/").await, Ok((200, "v1".into())));
    drop(first);

    // Load: four clients, each on connections of 20 requests; bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        let cfg = pki.client(&[b"http/1.1"], None);
        let end = tokio::time::Instant::now() + Duration::from_secs(180);
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed)
                && done.load(Ordering::Relaxed) < 2_000_000
                && tokio::time::Instant::now() < end
            {
                let mut conn = match TlsConn::open(addr, "app.example", cfg.clone()).await {
                    Ok(c) => c,
                    Err(e) => {
                        failed.lock().expect("lock").push(e);
                        continue;
                    }
                };
                for _ in 0..20 {
                    match conn.get("app.example", "/").await {
                        Ok((200, body)) if body == "v1" => {}
                        other => failed.lock().expect("lock").push(format!("{other:?}")),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // Rotation by the file watch, then by SIGHUP.
    let two = pki.issue("two", "app.example", &["app.example"]);
    install(&certs, 2, &two);
    wait_served(addr, &pki, &two, "the rotated certificate (file watch)").await;
    let three = pki.issue("three", "app.example", &["app.example"]);
    install(&certs, 3, &three);
    weir.signal("HUP");
    wait_served(addr, &pki, &three, "the rotated certificate (SIGHUP)").await;

    // A bad new certificate keeps the old one and says why.
    let before = weir
        .metric("weir_tls_reloads_total", &[("result", "error")])
        .await;
    let bad = certs.join("gen-4");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(bad.join("tls.crt"), "not a certificate").expect("write");
    std::fs::copy(certs.join("gen-3/tls.key"), bad.join("tls.key")).expect("copy");
    let link = certs.join("live.tmp");
    std::os::unix::fs::symlink(&bad, &link).expect("symlink");
    std::fs::rename(&link, certs.join("live")).expect("swap");
    wait_for(
        "the bad certificate to be rejected",
        Duration::from_secs(30),
        || async {
            weir.metric("weir_tls_reloads_total", &[("result", "error")])
                .await
                > before
        },
    )
    .await;
    wait_served(addr, &pki, &three, "the previous certificate, still").await;
    weir.wait_log("new certificate files rejected");
    weir.wait_log("certificates[0].cert");

    // Let the load see the end state for a moment, then stop it.
    let seen = done.load(Ordering::Relaxed);
    wait_for(
        "more requests after the rotations",
        Duration::from_secs(30),
        || async { done.load(Ordering::Relaxed) >= seen + 200 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("load client");
    }
    let failed = failed.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(done.load(Ordering::Relaxed) >= 400);
    assert!(
        weir.metric("weir_tls_reloads_total", &[("result", "ok")])
            .await
            >= 2.0
    );

    // Sessions from before the rotations resume after them.
    let again = s_client(
        addr.port(),
        "app.example",
        "http/1.1",
        &pki.ca,
        &["-tls1_2", "-sess_in", &path(&session)],
    );
    assert!(again.contains("Reused, TLSv1.2"), "{again}");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("app.example").expect("name");
    let tls = tokio_rustls::TlsConnector::from(resuming)
        .connect(name, tcp)
        .await
        .expect("TLS 1.3 resumption");
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_upstreams_verify_weirs_client_certificate() {
    let pki = Pki::new("mtls-up");
    let server = pki.issue("nginx", "upstream.internal", &["upstream.internal"]);
    let client = pki.issue("weir-client", "weir-client", &["weir-client"]);
    let nginx_tls = format!(
        "ssl_certificate {}; ssl_certificate_key {}; ssl_client_certificate {}; ssl_verify_client on;",
        path(&server.cert),
        path(&server.key),
        path(&pki.ca)
    );
    let h1 = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{port}} ssl; {nginx_tls} location / {{ return 200 \"nginx $ssl_client_s_dn $server_protocol\"; }} }}"
    ));
    let h2 = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{port}} ssl http2; {nginx_tls} location / {{ return 200 \"nginx $server_protocol\"; }} }}"
    ));
    let other_ca = Pki::new("other").ca;
    let tls = |extra: &str| {
        format!(
            "tls: {{ ca: {}, serverName: upstream.internal{extra} }}",
            path(&pki.ca)
        )
    };
    let with_cert = tls(&format!(
        ", cert: {}, key: {}",
        path(&client.cert),
        path(&client.key)
    ));
    let svc = |name: &str, port: u16, extra: &str| {
        format!("  - name: {name}\n    hosts: [{name}]\n    versions:\n      v1: {{ endpoints: [\"127.0.0.1:{port}\"], {extra} }}\n")
    };
    let yaml = format!(
        "services:\n{}{}{}{}",
        svc("secure", h1.port, &with_cert),
        svc("h2", h2.port, &format!("http2: true, {with_cert}")),
        svc("nocert", h1.port, &tls("")),
        svc(
            "wrongca",
            h1.port,
            &format!(
                "tls: {{ ca: {}, serverName: upstream.internal }}",
                path(&other_ca)
            )
        ),
    );
    let weir = Weir::start_mode("proxy", &yaml);
    let got = get(&weir.url("/"), &[("host", "secure")]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(got.text().contains("CN=weir-client"), "{}", got.text());
    assert!(got.text().ends_with("HTTP/1.1"), "{}", got.text());
    let got = get(&weir.url("/"), &[("host", "h2")]).await;
    assert_eq!(got.text(), "nginx HTTP/2.0");
    let got = get(&weir.url("/"), &[("host", "nocert")]).await;
    assert_eq!(
        got.status, 400,
        "nginx refuses a client without a certificate"
    );
    let got = get(&weir.url("/"), &[("host", "wrongca")]).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.headers["x-weir-error"], "tls");
    assert!(
        !got.text().contains("127.0.0.1"),
        "no address in the body: {}",
        got.text()
    );
    assert!(got.text().contains("wrongca"), "{}", got.text());
    let labels = [("service", "wrongca"), ("reason", "tls")];
    assert_eq!(
        weir.metric("weir_upstream_errors_total", &labels).await,
        1.0
    );
    weir.wait_log(&format!("127.0.0.1:{}", h1.port));
}

#[test]
fn bad_tls_files_are_named_by_weir_check() {
    let (code, err) = weir_check(
        "tls:\n  certificates: [{ cert: /nonexistent/a.crt, key: /nonexistent/a.key }]\nservices:\n  - name: a\n    versions:\n      v1: { endpoints: [\"127.0.0.1:1\"], tls: { cert: /nonexistent/c.crt } }\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("tls.certificates[0].cert: cannot read /nonexistent/a.crt"),
        "{err}"
    );
    assert!(
        err.contains("services[0].versions.v1.tls.key: cert needs its key"),
        "{err}"
    );
}
