//! A real authoritative DNS server on loopback: BIND 9 (Debian's `named`)
//! with one primary zone that takes RFC 2136 updates signed with a TSIG
//! key made for the test (`tsig-keygen`). `dig` reads it back and `nsupdate`
//! writes to it (what the provider fakes do). Killed on drop; everything
//! lives in a temporary directory.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the test unless BIND and its tools are installed.
pub fn require_bind() {
    crate::require_tools(
        &["named", "tsig-keygen", "dig", "nsupdate"],
        "bind9 bind9-dnsutils",
    );
}

/// The TSIG key's name.
pub const KEY_NAME: &str = "natsmesh-test";

/// A running `named`.
pub struct Bind {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    zone: String,
    child: Option<Child>,
}

impl Bind {
    /// Serves an empty `zone` (SOA and NS only) on a free loopback port,
    /// updatable with the test key.
    pub fn start(zone: &str) -> Self {
        Self::start_on(zone, std::net::Ipv4Addr::LOCALHOST)
    }

    /// As [`Bind::start`], listening on `ip` (e.g. a [`crate::netns::Lan`]'s
    /// host address, for test hosts in their own network namespaces).
    pub fn start_on(zone: &str, ip: std::net::Ipv4Addr) -> Self {
        Self::start_at(zone, ip, None)
    }

    /// As [`Bind::start_on`], on port 53, so that a `resolv.conf` (which
    /// names no port) can point at it: for nats-server's own lookups.
    /// named listens only on addresses an interface holds (on loopback:
    /// 127.0.0.1, not the rest of 127/8).
    pub fn start_on_port_53(zone: &str, ip: std::net::Ipv4Addr) -> Self {
        Self::start_at(zone, ip, Some(53))
    }

    fn start_at(zone: &str, ip: std::net::Ipv4Addr, port: Option<u16>) -> Self {
        require_bind();
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-bind-")
            .tempdir()
            .expect("tempdir");
        let key = Command::new("tsig-keygen")
            .args(["-a", "hmac-sha256", KEY_NAME])
            .output()
            .expect("tsig-keygen");
        assert!(key.status.success(), "tsig-keygen failed");
        let key_file = dir.path().join("tsig.key");
        write_private(&key_file, &String::from_utf8_lossy(&key.stdout));
        std::fs::write(
            dir.path().join("zone.db"),
            format!(
                "$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 1\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        )
        .expect("zone file");
        let mut last = String::new();
        for _ in 0..10 {
            let addr = SocketAddr::from((ip, port.unwrap_or_else(crate::free_port)));
            let conf = format!(
                r#"include "{key}";
options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    listen-on port {port} {{ {ip}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
}};
zone "{zone}" {{
    type primary;
    file "{dir}/zone.db";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"#,
                key = key_file.display(),
                dir = dir.path().display(),
                port = addr.port(),
            );
            std::fs::write(dir.path().join("named.conf"), conf).expect("named.conf");
            let mut cmd = Command::new("named");
            cmd.arg("-g").arg("-c").arg(dir.path().join("named.conf"));
            if crate::is_root() {
                cmd.args(["-u", "root"]);
            }
            let log = std::fs::File::create(dir.path().join("named.log")).expect("log");
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn named");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    // Most likely the port was taken after the pick.
                    break;
                }
                if !dig(addr, zone, "SOA").is_empty() {
                    return Self {
                        dir,
                        addr,
                        zone: zone.to_owned(),
                        child: Some(child),
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last = std::fs::read_to_string(dir.path().join("named.log")).unwrap_or_default();
        }
        panic!("named did not start:\n{last}");
    }

    /// `<ip>:<port>`, UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zone.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The key clause (`key "natsmesh-test" { algorithm …; secret "…"; };`),
    /// as a file natsmeshd may read.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("tsig.key")
    }

    /// named's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// The records of `kind` at `name`, as `dig +short` prints them.
    pub fn dig(&self, name: &str, kind: &str) -> Vec<String> {
        dig(self.addr, name, kind)
    }

    /// Sends one signed update (`nsupdate` lines such as
    /// `update add x.example.net 30 A 10.0.0.1`); the error text on failure.
    pub fn update(&self, lines: &[String]) -> Result<(), String> {
        self.writer().update(lines)
    }

    /// What a fake provider API needs to write into this server.
    pub fn writer(&self) -> BindWriter {
        BindWriter {
            addr: self.addr,
            zone: self.zone.clone(),
            key_file: self.key_file(),
        }
    }
}

/// What a fake provider API needs to mirror its records into this server.
#[derive(Debug, Clone)]
pub struct BindWriter {
    /// The server, UDP and TCP.
    pub addr: SocketAddr,
    /// The zone it serves.
    pub zone: String,
    /// The TSIG key clause `nsupdate -k` reads.
    pub key_file: PathBuf,
}

impl BindWriter {
    /// One nsupdate transaction (lines like
    /// `update add x.example.net 30 A 10.0.0.1`); the error text on failure.
    /// Blocking: call it from `spawn_blocking` in async code.
    pub fn update(&self, lines: &[String]) -> Result<(), String> {
        let mut script = format!(
            "server {} {}\nzone {}\n",
            self.addr.ip(),
            self.addr.port(),
            self.zone
        );
        for l in lines {
            script.push_str(l);
            script.push('\n');
        }
        script.push_str("send\n");
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(&self.key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nsupdate: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("nsupdate stdin: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("nsupdate: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nsupdate failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The records of `kind` at `name` on the server at `addr`.
fn dig(addr: SocketAddr, name: &str, kind: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args([
            "+short",
            "+tries=1",
            "+time=1",
            "-p",
            &addr.port().to_string(),
            &format!("@{}", addr.ip()),
            name,
            kind,
        ])
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("private file");
    f.write_all(text.as_bytes()).expect("write");
}
