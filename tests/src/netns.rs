//! Test hosts on a private LAN: network namespaces on a bridge (recipe in
//! shared/reference/test-hosts.md), and relays that make a service of the
//! test process appear on a host's own loopback.
//!
//! Everything is named `natsmesh-…` (`nm…` for links, which have 15
//! characters) and removed on drop, also when the test fails; leftovers of
//! a killed run are removed before a LAN of the same index is made.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;

/// Fails the test unless this process may make namespaces and links.
pub fn require_netns() {
    assert!(crate::is_root(), "network namespaces need root");
    crate::require_tools(&["ip"], "iproute2");
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("ip")
}

fn must(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge `10.251.<index>.0/24` with the test process's leg at `.254` and
/// `hosts` namespaces at `.1`, `.2`, …
pub struct Lan {
    index: u8,
    hosts: Vec<String>,
}

impl Lan {
    /// Makes the bridge and `hosts` namespaces (`index` tells LANs of one
    /// test apart).
    pub fn new(index: u8, hosts: u8) -> Self {
        require_netns();
        let lan = Self {
            index,
            hosts: (1..=hosts)
                .map(|h| format!("natsmesh-{index}-h{h}"))
                .collect(),
        };
        lan.remove();
        let bridge = lan.bridge();
        must(&["link", "add", &bridge, "type", "bridge"]);
        must(&[
            "addr",
            "add",
            &format!("{}/24", lan.gateway()),
            "dev",
            &bridge,
        ]);
        must(&["link", "set", &bridge, "up"]);
        for (i, ns) in lan.hosts.iter().enumerate() {
            let h = u8::try_from(i + 1).expect("host count");
            let leg = format!("nm{index}h{h}");
            must(&["netns", "add", ns]);
            must(&[
                "link", "add", &leg, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            must(&["link", "set", &leg, "master", &bridge, "up"]);
            let addr = format!("{}/24", lan.host(h));
            must(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]);
            must(&["-n", ns, "link", "set", "eth0", "up"]);
            must(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    fn bridge(&self) -> String {
        format!("nmbr{}", self.index)
    }

    /// The test process's address on the LAN.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.index, 254)
    }

    /// Host `h`'s address (1-based).
    pub fn host(&self, h: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.index, h)
    }

    /// Host `h`'s namespace, for `systemd-nspawn --network-namespace-path`
    /// and [`Relay::start`].
    pub fn netns(&self, h: u8) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.hosts[usize::from(h) - 1])
    }

    /// Host `h`'s namespace's name, for `ip netns exec`.
    pub fn name(&self, h: u8) -> &str {
        &self.hosts[usize::from(h) - 1]
    }

    /// Gives the test process one more address on the LAN (`a.b.c.d`), for
    /// a service of its own that must look like a host of the LAN.
    pub fn add_own(&self, addr: Ipv4Addr) {
        must(&["addr", "add", &format!("{addr}/32"), "dev", &self.bridge()]);
    }

    /// Puts one more network on the LAN, `a.b.c.0/24` for `net` =
    /// `[a, b, c]`: each host gets `a.b.c.<h>` beside its own address and
    /// the test process `a.b.c.254` (a provider's private range the LAN's
    /// own 10.251 addresses are not in, e.g. Linode's 192.168.128.0/17).
    /// Gone with the LAN.
    pub fn add_network(&self, net: [u8; 3]) {
        let [a, b, c] = net;
        must(&[
            "addr",
            "add",
            &format!("{a}.{b}.{c}.254/24"),
            "dev",
            &self.bridge(),
        ]);
        for (i, ns) in self.hosts.iter().enumerate() {
            let h = i + 1;
            must(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a}.{b}.{c}.{h}/24"),
                "dev",
                "eth0",
            ]);
        }
    }

    /// Loads an nftables ruleset (`nft -f`) in host `h`'s namespace.
    pub fn nft(&self, h: u8, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.name(h), "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ip netns exec nft");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("nft stdin");
            stdin.write_all(ruleset.as_bytes()).expect("nft ruleset");
        }
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft in {}: {}
{ruleset}",
            self.name(h),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `args` in host `h`'s namespace.
    pub fn exec(&self, h: u8, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[usize::from(h) - 1]])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Adds `addr` (`a.b.c.d/32`) to host `h`'s loopback, e.g. a metadata
    /// service's link-local address.
    pub fn add_local(&self, h: u8, addr: &str) {
        must(&[
            "-n",
            &self.hosts[usize::from(h) - 1],
            "addr",
            "add",
            addr,
            "dev",
            "lo",
        ]);
    }

    fn remove(&self) {
        for (i, ns) in self.hosts.iter().enumerate() {
            let _ = ip(&["netns", "del", ns]);
            // A namespace outlives its name while anything holds it (a
            // closing socket): its veth pair would stay. Deleting our leg
            // deletes both.
            let leg = format!("nm{}h{}", self.index, i + 1);
            let _ = ip(&["link", "del", &leg]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A TCP relay: listens at `listen` inside a network namespace and
/// connects to `target` from the test process's own, so a fake served on
/// the test's loopback is on a test host's loopback too (natsmeshd speaks
/// plain HTTP to loopback only). Stops when dropped.
pub struct Relay {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays `listen` in the namespace at `netns` to `target`.
    pub fn start(netns: PathBuf, listen: SocketAddr, target: SocketAddr) -> Self {
        // A socket stays in the namespace it was made in: bind it from a
        // thread that moved there, relay from one that did not.
        let listener = std::thread::spawn(move || {
            let file = std::fs::File::open(&netns).expect("open netns");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = std::net::TcpListener::bind(listen)
                .unwrap_or_else(|e| panic!("relay bind {listen} in {}: {e}", netns.display()));
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .join()
        .expect("relay bind thread");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("relay runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            tokio::spawn(async move {
                                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            });
                        }
                    }
                }
            });
        });
        Self {
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
