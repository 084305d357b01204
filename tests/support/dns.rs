//! dnsmasq from the system as a real DNS server on loopback: it answers only from a hosts
//! file of its own (TTL 0, so each answer is asked again), which a test rewrites and makes
//! it re-read with SIGHUP; killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use super::upstream::{Behaviour, Upstream};
use super::{closed_port, temp_dir};

pub struct Dnsmasq {
    child: Option<Child>,
    pub port: u16,
    hosts: PathBuf,
    dir: PathBuf,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Dnsmasq {
    /// dnsmasq answering `records` (`(name, ip)`) and nothing else.
    pub fn start(records: &[(&str, &str)]) -> Dnsmasq {
        let dir = temp_dir("dnsmasq");
        let hosts = dir.join("hosts");
        let mut d = Dnsmasq {
            child: None,
            port: closed_port(),
            hosts,
            dir,
        };
        d.write(records);
        d.spawn();
        d
    }

    /// `ip:port`, as `resolver.nameservers` wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn write(&self, records: &[(&str, &str)]) {
        let text: String = records
            .iter()
            .map(|(name, ip)| format!("{ip} {name}\n"))
            .collect();
        std::fs::write(&self.hosts, text).expect("write hosts");
    }

    fn spawn(&mut self) {
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--pid-file=",
                "--user=root",
                "--local-ttl=0",
                &format!("--port={}", self.port),
                &format!("--addn-hosts={}", self.hosts.display()),
                &format!("--log-facility={}", self.dir.join("log").display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq must be installed (apt-get install dnsmasq-base)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Answers `records` from now on.
    pub fn set(&self, records: &[(&str, &str)]) {
        self.write(records);
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args(["-HUP", &c.id().to_string()])
                .status()
                .expect("run kill");
            assert!(ok.success(), "kill -HUP dnsmasq failed");
        }
    }

    /// Stops answering (the server is gone).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Upstreams named `names` on 127.0.0.1, 127.0.0.2, ... at one port (a headless Service's
/// pods, or Services that differ only in their address).
pub async fn same_port(names: &[&str]) -> (u16, Vec<Upstream>) {
    for _ in 0..20 {
        let first = Upstream::start(names[0]).await;
        let port = first.addr.port();
        let mut all = vec![first];
        for (i, name) in names.iter().enumerate().skip(1) {
            let addr: SocketAddr = format!("127.0.0.{}:{port}", i + 1).parse().expect("addr");
            match Upstream::start_at(name, Behaviour::Normal, addr).await {
                Some(u) => all.push(u),
                None => break,
            }
        }
        if all.len() == names.len() {
            return (port, all);
        }
    }
    panic!("no port free on every loopback address");
}
