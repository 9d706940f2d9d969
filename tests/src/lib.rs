//! Test harness shared by natsmesh's integration tests: the pinned
//! nats-server matrix, scratch directories, and real broker processes that
//! are always cleaned up.
//!
//! Brokers come from `scripts/install-brokers` (the README's test command
//! runs it). A missing broker fails the test that wants it: a skipped test
//! asserts nothing.
#![forbid(unsafe_code)]
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod bind;
pub mod container;
pub mod delay;
pub mod dns;
pub mod fakes;
pub mod flood;
pub mod netns;
pub mod packages;
pub mod provenance;
pub mod volatile;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Debian 12's nats-server, the oldest supported release.
pub const DEBIAN_12: &str = "2.9.10";
/// The pinned current release.
pub const CURRENT: &str = "2.15.1";
/// Every release the tests run against, oldest first.
pub const MATRIX: &[&str] = &["2.9.10", "2.10.26", "2.11.11", "2.12.8", "2.14.6", "2.15.1"];
/// The two releases that every behavioural test covers.
pub const OLDEST_AND_CURRENT: &[&str] = &[DEBIAN_12, CURRENT];

/// Fails the test unless every tool is on PATH (or in /usr/sbin); `hint`
/// says which Debian packages bring them.
pub fn require_tools(tools: &[&str], hint: &str) {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("PATH=$PATH:/usr/sbin command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} is missing: apt-get install {hint}");
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Where `scripts/install-brokers` puts the binaries.
pub fn brokers_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NATSMESH_BROKERS") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("natsmesh/brokers")
}

/// The binary of a pinned release; fails the test when it is not installed.
pub fn broker_binary(version: &str) -> PathBuf {
    let path = brokers_dir().join(version).join("nats-server");
    assert!(
        path.is_file(),
        "nats-server {version} is not installed at {}; run scripts/install-brokers",
        path.display()
    );
    path
}

/// The release as a semver value.
pub fn semver(version: &str) -> semver::Version {
    semver::Version::parse(version).unwrap()
}

/// A scratch directory named with the project prefix, removed on drop.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("natsmesh-test-")
        .tempdir()
        .unwrap()
}

/// Runs `nats-server -t -c file`; returns success and stderr.
pub fn check(binary: &Path, file: &Path) -> (bool, String) {
    let out = Command::new(binary)
        .args(["-t", "-c"])
        .arg(file)
        .env_clear()
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running nats-server, killed on drop. Its log is collected in memory.
pub struct Broker {
    child: Child,
    log: Arc<Mutex<String>>,
    ports: serde_json::Value,
}

impl Broker {
    /// Starts `binary -c config`; the config must set `ports_file_dir` to
    /// `ports_dir` so the ports it took can be read back.
    pub fn start(binary: &Path, config: &Path, ports_dir: &Path) -> Self {
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(config)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let pid = child.id();
        let ports_file = ports_dir.join(format!(
            "{}_{pid}.ports",
            binary.file_name().unwrap().to_string_lossy()
        ));
        let mut broker = Self {
            child,
            log,
            ports: serde_json::Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                broker.ports = v;
                break;
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!(
                    "nats-server exited with {status} at start:\n{}",
                    broker.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server wrote no ports file within 10s:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        broker
    }

    /// Everything the broker logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first URL of a listener kind from the ports file
    /// (`nats`, `monitoring`, `cluster`, ...).
    pub fn url(&self, kind: &str) -> String {
        self.ports[kind][0]
            .as_str()
            .unwrap_or_else(|| panic!("no {kind} port in {}", self.ports))
            .to_owned()
    }

    /// GET a monitoring endpoint and parse the JSON body (any status).
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let url = format!("{}{path}", self.url("monitoring"));
        let mut resp = ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = resp.body_mut().read_to_string().unwrap();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
    }

    /// `/varz`.
    pub fn varz(&self) -> serde_json::Value {
        self.monitor("/varz")
    }

    /// Sends a signal with kill(1) (the harness holds no unsafe code).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    /// Waits until the log contains `needle`, up to `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary -c config` and waits up to `timeout` for it to exit.
/// Returns the exit status and stderr when it exited (refused to start), or
/// `None` when it was still running (it was killed then).
pub fn start_refused(
    binary: &Path,
    config: &Path,
    timeout: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(config)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Some((status, err));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free for TCP and UDP a moment ago on 127.0.0.1.
///
/// Picked at random below the kernel's ephemeral range (32768-60999 on
/// Linux): a port the kernel hands out as port 0 is also the source port of
/// some other test's outgoing connection a moment later, which then takes
/// the port before the broker binds it. Ports here are only ever taken by a
/// listener, and never twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1000 {
        let port = 20_000 + u16::try_from(random() % 12_000).unwrap_or(0);
        if given.contains(&port) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in 20000-31999 after 1000 tries");
}

/// A random number from the clock and the process id (no dependency for
/// a port pick).
fn random() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    u32::try_from(h.finish() & 0xffff_ffff).unwrap_or(0)
}
