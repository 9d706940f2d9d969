//! Where, when and from what a drill or a benchmark ran: the tree's git
//! revision and whether it was clean, the UTC date, the host (name, cores,
//! memory), its load average at the start and the nats-server versions.
//! Every result file under `bench/results/` carries one line of it, written
//! here, so that a number can be told apart from one taken on another tree
//! or machine. Reads git, `/proc` and the clock only; writes nothing.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

/// A git revision and whether the tree differed from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revision {
    /// `git rev-parse HEAD`; `unknown` without git or outside a repository.
    #[serde(rename = "revision")]
    pub full: String,
    /// The same, abbreviated as git abbreviates it (`git rev-parse --short`).
    #[serde(rename = "revision_short")]
    pub short: String,
    /// Whether tracked files differed from that revision, outside
    /// `bench/results/` (which the drills and benchmarks themselves
    /// rewrite, so a run would otherwise always call itself dirty); `None`
    /// without git.
    pub dirty: Option<bool>,
}

impl Revision {
    /// The revision of the git work tree at `root`.
    pub fn of(root: &Path) -> Self {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(root)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        let full = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let short = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)bench/results",
        ])
        .map(|s| !s.is_empty());
        Self { full, short, dirty }
    }

    /// The revision of this workspace (the tree the drill or benchmark was
    /// built from).
    pub fn this_tree() -> Self {
        Self::of(&workspace_root())
    }

    /// `clean`, `with uncommitted changes` or `tree state unknown`.
    pub fn state(&self) -> &'static str {
        match self.dirty {
            Some(true) => "with uncommitted changes",
            Some(false) => "clean",
            None => "tree state unknown",
        }
    }
}

/// The workspace's root: the harness crate lives in `tests/` beneath it.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The machine a drill or benchmark ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub hostname: String,
    pub cores: usize,
    pub memory_mib: Option<u64>,
}

impl Host {
    /// This machine, from `/proc` and the scheduler's view of its cores.
    pub fn this() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "unknown".to_owned(), |h| h.trim().to_owned());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_total_mib(&m));
        Self {
            hostname,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_mib,
        }
    }
}

/// `MemTotal` of `/proc/meminfo`, in MiB.
pub fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` prints them
/// (kept as text so that a result file shows exactly what the kernel said).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadAverage {
    pub one: String,
    pub five: String,
    pub fifteen: String,
}

impl LoadAverage {
    /// The machine's load average now; `None` where `/proc/loadavg` cannot
    /// be read or parsed.
    pub fn now() -> Option<Self> {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| Self::parse(&l))
    }

    /// The first three fields of `/proc/loadavg` text, each a number.
    pub fn parse(loadavg: &str) -> Option<Self> {
        let mut fields = loadavg.split_whitespace().map(|f| {
            f.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|_| f.to_owned())
        });
        Some(Self {
            one: fields.next()??,
            five: fields.next()??,
            fifteen: fields.next()??,
        })
    }
}

/// Where, when and from what a run started.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    #[serde(flatten)]
    pub revision: Revision,
    /// When the run started (UTC, RFC 3339 to the second).
    pub date_utc: String,
    pub host: Host,
    /// The load average when the run started: the other work its numbers
    /// shared the cores with.
    pub load_average: Option<LoadAverage>,
    /// The nats-server versions the run used; empty where the caller
    /// records them itself (the drills: at the start and at the end).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<String>,
}

impl Provenance {
    /// This tree, this machine, now; `brokers` as the run names them.
    pub fn now(brokers: Vec<String>) -> Self {
        Self {
            revision: Revision::this_tree(),
            date_utc: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            host: Host::this(),
            load_average: LoadAverage::now(),
            brokers,
        }
    }

    /// This tree, this machine, now, for a run of the pinned releases
    /// `versions`: each recorded as its binary reports itself
    /// (`nats-server --version`), so the line says what actually ran.
    pub fn for_brokers(versions: &[&str]) -> Self {
        Self::now(versions.iter().map(|v| reported_version(v)).collect())
    }

    /// `# <title>` and the provenance line: how every benchmark's result
    /// file begins.
    pub fn heading(&self, title: &str) -> String {
        format!("# {title}\n\n{}\n\n", self.line())
    }

    /// `Ran at <rev> (clean|with uncommitted changes), <date> UTC, on
    /// <host> (<cores> cores, <MiB> MiB)`: the part every result file
    /// shares; the drills go on with the brokers at the start and end.
    pub fn ran_at(&self) -> String {
        format!(
            "Ran at {} ({}), {} UTC, on {} ({} cores, {} MiB)",
            self.revision.full,
            self.revision.state(),
            self.date_utc,
            self.host.hostname,
            self.host.cores,
            self.host
                .memory_mib
                .map_or("?".to_owned(), |m| m.to_string()),
        )
    }

    /// The benchmarks' line: [`Self::ran_at`], the load average at the
    /// start and the nats-server versions.
    pub fn line(&self) -> String {
        let load = self.load_average.as_ref().map_or_else(
            || "unknown".to_owned(),
            |l| format!("{} {} {}", l.one, l.five, l.fifteen),
        );
        let brokers = if self.brokers.is_empty() {
            "not recorded".to_owned()
        } else {
            self.brokers.join(", ")
        };
        format!(
            "{}, load average {load} (1, 5, 15 min) at the start; nats-server {brokers}.",
            self.ran_at()
        )
    }
}

/// What the installed binary of pinned release `version` says it is
/// (`nats-server: v2.15.1` → `2.15.1`), or why it could not say.
fn reported_version(version: &str) -> String {
    let path = crate::brokers_dir().join(version).join("nats-server");
    let out = std::process::Command::new(&path).arg("--version").output();
    match out {
        Ok(o) if o.status.success() => parse_version(&String::from_utf8_lossy(&o.stdout))
            .unwrap_or_else(|| format!("{version} (unreadable --version)")),
        _ => format!("{version} (not installed)"),
    }
}

/// The version in `nats-server --version` output.
fn parse_version(out: &str) -> Option<String> {
    let v = out.trim().strip_prefix("nats-server: v")?;
    semver::Version::parse(v).ok().map(|v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }

    /// A repository with one commit of `README` and `bench/results/x.md`.
    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]);
        std::fs::write(dir.path().join("README"), "a\n").unwrap();
        std::fs::create_dir_all(dir.path().join("bench/results")).unwrap();
        std::fs::write(dir.path().join("bench/results/x.md"), "1\n").unwrap();
        git(dir.path(), &["add", "."]);
        git(dir.path(), &["commit", "-q", "-m", "one"]);
        dir
    }

    #[test]
    fn revision_of_a_clean_tree() {
        let dir = repo();
        let r = Revision::of(dir.path());
        assert!(
            r.full.len() == 40 && r.full.chars().all(|c| c.is_ascii_hexdigit()),
            "{r:?}"
        );
        assert!(r.short.len() >= 4 && r.full.starts_with(&r.short), "{r:?}");
        assert_eq!(r.dirty, Some(false));
        assert_eq!(r.state(), "clean");
        // Untracked files and rewritten results leave it clean: the runs
        // write those themselves.
        std::fs::write(dir.path().join("new"), "x\n").unwrap();
        std::fs::write(dir.path().join("bench/results/x.md"), "2\n").unwrap();
        assert_eq!(Revision::of(dir.path()).dirty, Some(false));
    }

    #[test]
    fn revision_of_a_dirty_tree() {
        let dir = repo();
        std::fs::write(dir.path().join("README"), "b\n").unwrap();
        let r = Revision::of(dir.path());
        assert_eq!(r.dirty, Some(true));
        assert_eq!(r.state(), "with uncommitted changes");
    }

    #[test]
    fn revision_outside_git_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let r = Revision::of(dir.path());
        assert_eq!((r.full.as_str(), r.dirty), ("unknown", None));
        assert_eq!(r.state(), "tree state unknown");
    }

    #[test]
    fn memory_from_meminfo() {
        assert_eq!(
            mem_total_mib("MemTotal:       24731400 kB\nMemFree: 1 kB\n"),
            Some(24151)
        );
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_mib("MemTotal: many kB\n"), None);
    }

    #[test]
    fn load_average_from_loadavg() {
        let l = LoadAverage::parse("0.52 1.07 2.00 3/1210 48213\n").unwrap();
        assert_eq!((&*l.one, &*l.five, &*l.fifteen), ("0.52", "1.07", "2.00"));
        assert_eq!(LoadAverage::parse("0.52 1.07\n"), None);
        assert_eq!(LoadAverage::parse("0.52 x 2.00 1/1 1\n"), None);
        assert_eq!(LoadAverage::parse(""), None);
    }

    fn fixed(dirty: Option<bool>) -> Provenance {
        Provenance {
            revision: Revision {
                full: "0123456789abcdef0123456789abcdef01234567".into(),
                short: "0123456".into(),
                dirty,
            },
            date_utc: "2026-01-01T00:00:00Z".into(),
            host: Host {
                hostname: "bench-1".into(),
                cores: 2,
                memory_mib: Some(3914),
            },
            load_average: Some(LoadAverage {
                one: "0.52".into(),
                five: "1.07".into(),
                fifteen: "2.00".into(),
            }),
            brokers: vec!["2.14.6".into(), "2.15.1".into()],
        }
    }

    #[test]
    fn the_line_every_result_file_carries() {
        assert_eq!(
            fixed(Some(false)).line(),
            "Ran at 0123456789abcdef0123456789abcdef01234567 (clean), 2026-01-01T00:00:00Z UTC, on bench-1 (2 cores, 3914 MiB), load average 0.52 1.07 2.00 (1, 5, 15 min) at the start; nats-server 2.14.6, 2.15.1."
        );
        let mut p = fixed(Some(true));
        p.host.memory_mib = None;
        p.load_average = None;
        p.brokers.clear();
        assert_eq!(
            p.line(),
            "Ran at 0123456789abcdef0123456789abcdef01234567 (with uncommitted changes), 2026-01-01T00:00:00Z UTC, on bench-1 (2 cores, ? MiB), load average unknown (1, 5, 15 min) at the start; nats-server not recorded."
        );
    }

    #[test]
    fn the_fields_in_json() {
        let v = serde_json::to_value(fixed(Some(true))).unwrap();
        assert_eq!(v["revision"], "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(v["revision_short"], "0123456");
        assert_eq!(v["dirty"], true);
        assert_eq!(v["date_utc"], "2026-01-01T00:00:00Z");
        assert_eq!(v["host"]["hostname"], "bench-1");
        assert_eq!(v["host"]["cores"], 2);
        assert_eq!(v["host"]["memory_mib"], 3914);
        assert_eq!(v["load_average"]["fifteen"], "2.00");
        assert_eq!(v["brokers"][1], "2.15.1");
        let mut p = fixed(None);
        p.brokers.clear();
        let v = serde_json::to_value(p).unwrap();
        assert!(v.get("brokers").is_none(), "{v}");
        assert!(v["dirty"].is_null(), "{v}");
    }

    #[test]
    fn heading_starts_every_result_file() {
        let h = fixed(Some(false)).heading("Supervisor benchmark");
        assert!(h.starts_with("# Supervisor benchmark\n\nRan at 0123456789abcdef0123456789abcdef01234567 (clean), 2026-01-01T00:00:00Z UTC, on bench-1 (2 cores, 3914 MiB), load average 0.52 1.07 2.00"), "{h}");
        assert!(h.ends_with("nats-server 2.14.6, 2.15.1.\n\n"), "{h}");
    }

    #[test]
    fn broker_versions_as_the_binaries_report_them() {
        assert_eq!(
            parse_version("nats-server: v2.15.1\n").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(parse_version("v2.15.1"), None);
        assert_eq!(parse_version("nats-server: vlatest"), None);
        // The pinned current release answers for itself.
        assert_eq!(reported_version(crate::CURRENT), crate::CURRENT);
        assert_eq!(reported_version("0.0.0-none"), "0.0.0-none (not installed)");
        assert_eq!(
            Provenance::for_brokers(&[crate::CURRENT]).brokers,
            [crate::CURRENT]
        );
    }

    /// This tree and this machine: the values a run records are real.
    #[test]
    fn now_reads_this_tree_and_machine() {
        let p = Provenance::now(vec!["2.15.1".into()]);
        assert!(p.host.cores >= 1, "{p:?}");
        assert!(p.host.memory_mib.is_some_and(|m| m > 0), "{p:?}");
        assert!(p.load_average.is_some(), "{p:?}");
        assert!(
            humantime::parse_rfc3339(&p.date_utc).is_ok() && p.date_utc.ends_with('Z'),
            "{p:?}"
        );
        assert!(p.line().starts_with("Ran at "), "{}", p.line());
    }
}
