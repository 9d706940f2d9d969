//! A real natsmeshd under test: its own scratch directory, ports, control
//! socket and NOTIFY_SOCKET; killed (with its broker) when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod cloud;
pub mod fleet;
pub mod mesh;
pub mod pki;
pub mod power;
pub mod terraform;

use natsmesh::supervisor::Status;
use natsmesh_harness::{broker_binary, free_port, scratch};

pub const NATSMESHD: &str = env!("CARGO_BIN_EXE_natsmeshd");

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub version: String,
    pub client_port: u16,
    pub monitor_port: u16,
    pub metrics_port: u16,
    /// Where the client, monitoring and metrics ports listen.
    pub host: IpAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    notes: Arc<Mutex<Vec<(Instant, String)>>>,
    last_broker_pid: Option<u32>,
    /// Set when natsmeshd's stderr reached its end (all of it is in `log`).
    log_done: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
pub struct Options {
    pub extra: String,
    pub binary: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub log_level: Option<String>,
    /// Run in a private mount namespace whose `/etc/resolv.conf` is this
    /// file, so the daemon's and nats-server's system resolver ask the
    /// test's DNS server (needs root).
    pub resolv_conf: Option<PathBuf>,
    /// The identity comes from a provider (`extra` sets `node.provider`):
    /// the base file names no server.
    pub cloud: bool,
    /// natsmeshd's own binary (default: the one cargo built).
    pub natsmeshd: Option<PathBuf>,
    /// Run in this network namespace (`ip netns exec`; needs root).
    pub netns: Option<String>,
    /// The address the client, monitoring and metrics ports listen on
    /// (default 127.0.0.1; in a namespace, its LAN address).
    pub host: Option<IpAddr>,
    /// The client port (default: a free one), e.g. the one a balancer
    /// forwards to on every node.
    pub client_port: Option<u16>,
    /// natsmeshd's options before `run` (e.g. `--broker-user`).
    pub args: Vec<String>,
    /// Leave the product's defaults where the tests speed things up
    /// (lame duck, probes, restart backoff, metrics scrape): for drills
    /// that must hold at defaults.
    pub defaults: bool,
}

impl Daemon {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("natsmesh.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Writes the config: fast probes, 30 s lame duck with a 1 s grace
    /// (with `defaults`, the product's own for those).
    pub fn write_config(
        &self,
        client_port: u16,
        extra: &str,
        binary: &Path,
        cloud: bool,
        defaults: bool,
    ) {
        let speed = |text: &str| {
            if defaults {
                String::new()
            } else {
                text.to_owned()
            }
        };
        std::fs::write(
            self.config_path(),
            format!(
                r#"
[node]
region = "fra1"
{name}

[broker]
binary = "{binary}"
state_dir = "{state}"
{lame_duck}
[broker.client]
bind = "{host}"
port = {client_port}

[broker.monitoring]
bind = "{host}"
port = {monitor}

[broker.jetstream]
max_memory_store = "64MiB"
max_file_store = "256MiB"

{speed}
[control]
socket = "{socket}"

[auth]
mode = "none"

[metrics]
bind = "{host}"
port = {metrics}
{scrape}"#,
                binary = binary.display(),
                state = self.dir.path().join("state").display(),
                monitor = self.monitor_port,
                metrics = self.metrics_port,
                socket = self.socket().display(),
                host = self.host,
                name = if cloud { "" } else { "name = \"n1\"" },
                lame_duck = speed("lame_duck_duration = \"30s\"\nlame_duck_grace_period = \"1s\"\n"),
                speed = speed(
                    "[health]\nprofile = \"fast\"\n\n[restart]\nbackoff_initial = \"200ms\"\nbackoff_max = \"1s\"\n"
                ),
                scrape = speed("scrape_every = \"1s\"\n"),
            ),
        )
        .unwrap();
        // Test-specific settings arrive as a drop-in, merged over the above.
        let dropins = self.dir.path().join("natsmesh.d");
        std::fs::create_dir_all(&dropins).unwrap();
        std::fs::write(dropins.join("50-test.toml"), extra).unwrap();
    }

    pub fn start(version: &str, opts: Options) -> Self {
        Self::start_in(scratch(), version, opts)
    }

    /// Starts in a given directory (a state directory may already be there).
    pub fn start_in(dir: tempfile::TempDir, version: &str, opts: Options) -> Self {
        let mut d = Self {
            dir,
            version: version.into(),
            client_port: opts.client_port.unwrap_or_else(free_port),
            monitor_port: free_port(),
            metrics_port: free_port(),
            host: opts.host.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            notes: Arc::new(Mutex::new(Vec::new())),
            last_broker_pid: None,
            log_done: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let binary = opts
            .binary
            .clone()
            .unwrap_or_else(|| broker_binary(version));
        d.write_config(
            d.client_port,
            &opts.extra,
            &binary,
            opts.cloud,
            opts.defaults,
        );

        let notify_path = d.dir.path().join("notify.sock");
        // A directory reused after a kill still has the old socket.
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let notes = d.notes.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                notes.lock().unwrap().push((Instant::now(), text));
            }
        });

        let natsmeshd = opts
            .natsmeshd
            .clone()
            .unwrap_or_else(|| PathBuf::from(NATSMESHD));
        // Every wrapper execs the next, so the child's pid is natsmeshd's
        // and drop kills it.
        let mut cmd = match &opts.netns {
            None => Command::new("env"),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "env"]);
                c
            }
        };
        match &opts.resolv_conf {
            None => {
                cmd.arg(&natsmeshd);
            }
            Some(resolv) => {
                cmd.args([
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    "-c",
                ])
                .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
                .arg(resolv)
                .arg(&natsmeshd);
            }
        }
        cmd.args(&opts.args)
            .args(["run", "--config"])
            .arg(d.config_path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("NOTIFY_SOCKET", &notify_path)
            .env(
                "NATSMESH_LOG",
                opts.log_level
                    .as_deref()
                    .unwrap_or("debug,natsmesh::supervisor=trace"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = d.log.clone();
        let done = d.log_done.clone();
        // Also on disk beside the config, for a person looking at a test
        // that hangs (or was killed before it could print the log).
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.dir.path().join("natsmeshd.log"))
            .ok();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(f, "{line}");
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        d.child = Some(child);
        d
    }

    /// GET a monitoring endpoint of the broker, parsed.
    pub fn monitor(&self, path: &str) -> Option<serde_json::Value> {
        let url = format!("http://{}:{}{path}", self.host, self.monitor_port);
        let mut resp = ureq::get(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .call()
            .ok()?;
        serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()
    }

    /// Writes a drop-in whose change only a broker restart applies (a
    /// smaller JetStream file limit), then `natsmeshd reload`.
    pub fn change_needing_restart(&self) {
        std::fs::write(
            self.dir.path().join("natsmesh.d/60-change.toml"),
            "[broker.jetstream]\nmax_file_store = \"200MiB\"\n",
        )
        .unwrap();
        let out = self.cli(&["reload"]);
        assert!(out.status.success(), "{out:?}");
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// One scrape of `/metrics` (classic text), if it answered.
    pub fn metrics(&self) -> Option<String> {
        let url = format!("http://{}:{}/metrics", self.host, self.metrics_port);
        let mut resp = ureq::get(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .call()
            .ok()?;
        resp.body_mut().read_to_string().ok()
    }

    /// Scrapes until `series` (exactly, with its labels) satisfies `pred`,
    /// within `timeout`; returns its value.
    pub fn wait_metric(&self, series: &str, timeout: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics().unwrap_or_default();
            if let Some(v) = metric(&text, series).filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never as wanted:\n{text}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every sd_notify datagram so far, in order.
    pub fn notes(&self) -> Vec<String> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Every sd_notify datagram with the time it arrived.
    pub fn notes_timed(&self) -> Vec<(Instant, String)> {
        self.notes.lock().unwrap().clone()
    }

    /// Waits for a datagram containing `line` that arrived after `after`;
    /// returns its arrival time.
    pub fn wait_note_after(
        &self,
        line: &str,
        after: Instant,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((t, _)) = self
                .notes_timed()
                .into_iter()
                .find(|(t, n)| *t >= after && n.lines().any(|l| l == line))
            {
                return Some(t);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// Every sd_notify assignment so far, flattened, in order.
    pub fn note_lines(&self) -> Vec<String> {
        self.notes()
            .iter()
            .flat_map(|n| n.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    pub fn wait_note(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.note_lines().iter().any(|l| pred(l)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(NATSMESHD)
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .arg("--config")
            .arg(self.config_path())
            .env_clear()
            .output()
            .unwrap()
    }

    pub fn status(&mut self) -> Option<Status> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        let s: Status = serde_json::from_slice(&out.stdout).ok()?;
        if let Some(pid) = s.broker_pid {
            self.last_broker_pid = Some(pid);
        }
        Some(s)
    }

    /// Waits until `pred` holds for the status.
    pub fn wait_status(
        &mut self,
        what: &str,
        pred: impl Fn(&Status) -> bool,
        timeout: Duration,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} {what}: not within {timeout:?}; last status {last:#?}\nlog:\n{}",
            self.version,
            self.log()
        );
    }

    pub fn wait_ready(&mut self) -> Status {
        self.wait_status("ready", |s| s.state == "ready", Duration::from_secs(20))
    }

    /// Sends `req` on the control socket directly (no CLI process), for
    /// measurements.
    pub fn request(&self, req: &natsmesh::control::Request) -> natsmesh::control::Reply {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(natsmesh::control::request(&self.socket(), req))
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Waits for natsmeshd to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                // Its last words (the reason it exited) are read by another
                // thread: wait for the end of its output, briefly.
                let deadline = Instant::now() + Duration::from_secs(3);
                while !self.log_done.load(std::sync::atomic::Ordering::SeqCst)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "natsmeshd did not exit within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn client_addr(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

pub fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.split(") ")
                .nth(1)
                .is_some_and(|rest| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.last_broker_pid
            && alive(pid)
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Subscribes and waits until the server holds the subscription:
/// async-nats' `flush` only writes the buffer, so a message published
/// right after by another connection can arrive before the SUB does. A
/// warm-up message on the same connection comes back only once it has.
pub async fn subscribed(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    use futures_util::StreamExt as _;
    let mut sub = client.subscribe(subject.to_owned()).await.unwrap();
    client
        .publish(subject.to_owned(), "natsmesh-warm-up".into())
        .await
        .unwrap();
    let warm = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the warm-up message came back")
        .unwrap();
    assert_eq!(&warm.payload[..], b"natsmesh-warm-up");
    sub
}

/// The value of the sample named exactly `series` (with its labels) in a
/// scrape.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Now, as a metric's timestamp (Unix seconds).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A test directory in which a broker of another user (`--broker-user`;
/// natsmeshd as root) can work: the directory and its `state/` 0711, as
/// the unit's StateDirectoryMode= makes the state directory, and a copy of
/// the current broker there (the cached one is under root's home, the
/// package's in /usr). `None` when not root.
pub fn broker_user_dir() -> Option<(tempfile::TempDir, PathBuf)> {
    use std::os::unix::fs::PermissionsExt as _;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: natsmeshd needs root to run the broker as another user");
        return None;
    }
    let dir = scratch();
    let open = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    open(dir.path(), 0o711);
    std::fs::create_dir(dir.path().join("state")).unwrap();
    open(&dir.path().join("state"), 0o711);
    let binary = dir.path().join("nats-server");
    std::fs::copy(broker_binary(natsmesh_harness::CURRENT), &binary).unwrap();
    open(&binary, 0o755);
    Some((dir, binary))
}
