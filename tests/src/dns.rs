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
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "supercluster tests need root (a mount namespace per node, DNS on port 53)"
    );
    for tool in ["unshare", "mount", "dnsmasq"] {
        let found = Command::new("sh")
            .args(["-c", &format!("PATH=$PATH:/usr/sbin command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing: apt-get install util-linux mount dnsmasq-base"
        );
    }
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
    pub fn start(ip: IpAddr, records: &Records) -> Self {
        let port = UdpSocket::bind((ip, 0))
            .expect("udp")
            .local_addr()
            .expect("addr")
            .port();
        Self::start_on(SocketAddr::new(ip, port), records)
    }

    /// Starts on `addr` (port 53 for a resolv.conf nameserver; needs
    /// root) serving `records`.
    pub fn start_on(addr: SocketAddr, records: &Records) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-dns-")
            .tempdir()
            .expect("dns dir");
        let mut d = Self {
            dir,
            addr,
            child: None,
        };
        d.set(records);
        d
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
        self.stop();
        let mut conf = format!(
            "port={}\nlisten-address={}\nbind-interfaces\nno-resolv\nno-hosts\nlocal-ttl=1\nneg-ttl=1\n",
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
        let child = Command::new(if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
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
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (apt-get install dnsmasq-base)");
        self.child = Some(child);
        // Ready once it answers on TCP as well.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(10));
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
