//! A real DNS server on loopback: dnsmasq (Debian's dnsmasq-base) serving
//! the SRV, A and TXT records a test sets, with a one-second TTL. Changing
//! the records restarts it; stopping it simulates an outage. Killed on drop.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the test unless this machine can give a daemon its own
/// `/etc/resolv.conf` (root, unshare, mount) and serve DNS on port 53.
pub fn require_root() {
    assert!(
        crate::is_root(),
        "supercluster tests need root (a mount namespace per node, DNS on port 53)"
    );
    crate::require_tools(
        &["unshare", "mount", "dnsmasq"],
        "util-linux mount dnsmasq-base",
    );
}

/// The records served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// (SRV name, target, port)
    pub srv: Vec<(String, String, u16)>,
    /// (name, address)
    pub hosts: Vec<(String, IpAddr)>,
    /// (name, text)
    pub txt: Vec<(String, String)>,
}

/// A running dnsmasq.
pub struct Dns {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Dns {
    /// Starts on `ip` (a free UDP port there) serving `records`.
    /// Another process may take the port (UDP or TCP) between the pick and
    /// dnsmasq's bind: then it tries another.
    pub fn start(ip: IpAddr, records: &Records) -> Self {
        let mut last = String::new();
        for _ in 0..10 {
            let port = UdpSocket::bind((ip, 0))
                .expect("udp")
                .local_addr()
                .expect("addr")
                .port();
            let mut d = Self::new(SocketAddr::new(ip, port));
            match d.try_set(records) {
                Ok(()) => return d,
                Err(e) => last = e,
            }
        }
        panic!("dnsmasq did not start: {last}");
    }

    /// Starts on `addr` (port 53 for a resolv.conf nameserver; needs
    /// root) serving `records`.
    pub fn start_on(addr: SocketAddr, records: &Records) -> Self {
        let mut d = Self::new(addr);
        d.set(records);
        d
    }

    fn new(addr: SocketAddr) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-dns-")
            .tempdir()
            .expect("dns dir");
        Self {
            dir,
            addr,
            child: None,
        }
    }

    /// `ip:port` to give resolvers.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.conf")
    }

    /// Serves `records` from now on (restarting dnsmasq).
    pub fn set(&mut self, records: &Records) {
        if let Err(e) = self.try_set(records) {
            panic!("dnsmasq did not start on {}: {e}", self.addr);
        }
    }

    fn try_set(&mut self, records: &Records) -> Result<(), String> {
        self.stop();
        // `local=/test/`: names it does not know get NXDOMAIN, as from a
        // real zone's server, not REFUSED.
        let mut conf = format!(
            "port={}\nlisten-address={}\nbind-interfaces\nno-resolv\nno-hosts\nlocal=/test/\nlocal-ttl=1\nneg-ttl=1\n",
            self.addr.port(),
            self.addr.ip()
        );
        for (name, target, port) in &records.srv {
            conf.push_str(&format!("srv-host={name},{target},{port},0,10\n"));
        }
        for (name, ip) in &records.hosts {
            conf.push_str(&format!("host-record={name},{ip}\n"));
        }
        for (name, text) in &records.txt {
            conf.push_str(&format!("txt-record={name},\"{text}\"\n"));
        }
        std::fs::write(self.conf(), conf).expect("dnsmasq.conf");
        let mut child = Command::new(if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq"
        } else {
            "dnsmasq"
        })
        .arg("--keep-in-foreground")
        .arg(format!("--conf-file={}", self.conf().display()))
        .arg(format!(
            "--pid-file={}",
            self.dir.path().join("pid").display()
        ))
        .arg("--user=root")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dnsmasq (apt-get install dnsmasq-base)");
        // Ready once it answers a query; an early exit (port taken) fails.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(format!("{status}: {}", err.trim()));
            }
            if answers(self.addr) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no answer within 5s".into());
            }
        }
    }

    /// Stops answering (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a DNS server answers at `addr`: one query for an A record
/// (any reply, NXDOMAIN included, will do), a 100 ms wait.
fn answers(addr: SocketAddr) -> bool {
    let bind: SocketAddr = if addr.is_ipv4() {
        "127.0.0.1:0".parse().expect("addr")
    } else {
        "[::1]:0".parse().expect("addr")
    };
    let Ok(sock) = UdpSocket::bind(bind) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    // Header: id 0x4e4d, recursion desired, one question.
    let mut q = vec![0x4e, 0x4d, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["natsmesh-ready", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    if sock.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv_from(&mut buf), Ok((n, from)) if n >= 12 && from == addr && buf[..2] == [0x4e, 0x4d])
}
