//! `/metrics` for Prometheus: natsmeshd's own state (supervisor, probes,
//! restarts, reloads, the lease) and the broker's figures (connections,
//! messages, bytes, slow consumers, routes, memory), with a fixed set of
//! series. The broker is asked for `/varz` on a pace of its own
//! (`metrics.scrape_every`), never by a scrape, so Prometheus cannot load
//! the broker however often it comes; a scrape encodes what is cached.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natsmesh_broker::monitor::{Monitor, Varz};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::httpd::{read_request, respond};
use crate::supervisor::Status;
use crate::supervisor::state::State;

/// OpenMetrics text, what prometheus-client writes and Prometheus asks for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format.
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where `/metrics` listens and how often the broker is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The listener.
    pub listen: SocketAddr,
    /// The broker's own pace.
    pub scrape_every: Duration,
}

/// A client for the broker's monitoring port, as the probes reach it.
pub fn broker_monitor(settings: &crate::config::Settings) -> Option<Monitor> {
    let addr = settings
        .server
        .monitoring
        .as_ref()
        .and_then(crate::supervisor::probe::local_addr)?;
    let timeout = settings.health.timeout;
    match settings.tls.as_ref().filter(|t| t.monitoring) {
        None => Some(Monitor::new(addr, timeout)),
        Some(t) => match crate::tls::probe::monitoring_client(t) {
            Ok(tls) => Some(Monitor::with_tls(addr, timeout, tls)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the broker's figures over HTTPS for /metrics");
                None
            }
        },
    }
}

/// The broker's last `/varz`, when it answered.
type Cache = Arc<Mutex<Option<Varz>>>;

/// Serves `/metrics` from `listener` until dropped, reading the broker
/// through `broker` every `scrape_every`.
pub async fn serve(
    listener: TcpListener,
    settings: MetricsSettings,
    status: watch::Receiver<Status>,
    broker: Monitor,
) {
    let cache: Cache = Arc::new(Mutex::new(None));
    // Ends with this task (which is aborted at shutdown).
    let _reader = AbortOnDrop(tokio::spawn(read_broker(
        broker,
        settings.scrape_every,
        cache.clone(),
    )));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: back off, keep serving.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let text = render(
            &status.borrow(),
            cache.lock().map(|c| c.clone()).ok().flatten(),
        );
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, text)).await;
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_broker(broker: Monitor, every: Duration, cache: Cache) {
    loop {
        let varz = broker.varz().await.ok();
        // Until the broker answers (starting, restarting), look again soon.
        let pause = if varz.is_some() {
            every
        } else {
            every.min(Duration::from_secs(1))
        };
        if let Ok(mut c) = cache.lock() {
            *c = varz;
        }
        tokio::time::sleep(pause).await;
    }
}

/// One scrape's worth of series.
#[derive(Debug)]
struct Snapshot {
    status: Status,
    varz: Option<Varz>,
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.status;
        let up = |b: bool| ConstGauge::new(i64::from(b));
        family(
            &mut e,
            "natsmesh_state",
            "Supervisor state: 1 for the state natsmeshd is in",
            "state",
            State::ALL.map(|state| (state.as_str(), up(s.state == state.as_str()))),
        )?;
        gauge(
            &mut e,
            "natsmesh_state_since_timestamp_seconds",
            "When the supervisor entered its state",
            s.since_unix_ms as f64 / 1000.0,
        )?;
        family(
            &mut e,
            "natsmesh_probe_ok",
            "Probe outcome: 1 when it passed (alive, serving, jetstream current)",
            "probe",
            [
                ("alive", up(s.alive.starts_with("answered"))),
                ("serving", up(s.serving == "accepting clients")),
                (
                    "jetstream",
                    up(s.jetstream == "JetStream current" || s.jetstream == "JetStream off"),
                ),
            ],
        )?;
        counter(
            &mut e,
            "natsmesh_broker_restarts",
            "Broker restarts, any cause",
            s.restarts,
        )?;
        counter(
            &mut e,
            "natsmesh_broker_crashes",
            "Unexpected broker exits",
            s.crashes,
        )?;
        counter(
            &mut e,
            "natsmesh_broker_hang_kills",
            "Kills of a hung broker",
            s.hang_kills,
        )?;
        family(
            &mut e,
            "natsmesh_reloads",
            "Configuration reloads by outcome",
            "result",
            [
                ("ok", ConstCounter::new(s.reloads_ok)),
                ("refused", ConstCounter::new(s.reloads_failed)),
            ],
        )?;
        gauge(
            &mut e,
            "natsmesh_restart_pending",
            "1 while a change waits for a broker restart",
            f64::from(u8::from(!s.restart_pending.is_empty())),
        )?;
        gauge(
            &mut e,
            "natsmesh_lease_held",
            "1 while this node holds its region's restart lease",
            f64::from(u8::from(s.fleet.contains("holding"))),
        )?;
        gauge(
            &mut e,
            "natsmesh_lease_waiting",
            "1 while this node waits to restart",
            f64::from(u8::from(s.fleet.starts_with("waiting"))),
        )?;
        gauge(
            &mut e,
            "natsmesh_paused",
            "1 while planned restarts are paused",
            f64::from(u8::from(s.paused)),
        )?;
        counter(
            &mut e,
            "natsmesh_log_lines_dropped",
            "Broker log lines dropped because the log was slow",
            s.log_lines_dropped,
        )?;
        if let Some(v) = &self.varz {
            gauge(
                &mut e,
                "natsmesh_broker_connections",
                "Client connections",
                v.connections as f64,
            )?;
            gauge(
                &mut e,
                "natsmesh_broker_route_peers",
                "Route peers",
                v.route_peers() as f64,
            )?;
            gauge(
                &mut e,
                "natsmesh_broker_leafnodes",
                "Leafnode connections",
                v.leafnodes as f64,
            )?;
            counter(
                &mut e,
                "natsmesh_broker_in_messages",
                "Messages received by the broker",
                v.in_msgs,
            )?;
            counter(
                &mut e,
                "natsmesh_broker_out_messages",
                "Messages sent by the broker",
                v.out_msgs,
            )?;
            counter(
                &mut e,
                "natsmesh_broker_in_bytes",
                "Bytes received by the broker",
                v.in_bytes,
            )?;
            counter(
                &mut e,
                "natsmesh_broker_out_bytes",
                "Bytes sent by the broker",
                v.out_bytes,
            )?;
            counter(
                &mut e,
                "natsmesh_broker_slow_consumers",
                "Slow consumers the broker saw",
                v.slow_consumers,
            )?;
            if let Some(js) = &v.jetstream {
                jetstream(&mut e, js)?;
            }
            gauge(
                &mut e,
                "natsmesh_broker_resident_memory_bytes",
                "The broker's resident memory",
                v.mem as f64,
            )?;
        }
        gauge(
            &mut e,
            "natsmesh_broker_up",
            "1 when the broker's last /varz answered",
            f64::from(u8::from(self.varz.is_some())),
        )?;
        Ok(())
    }
}

fn jetstream(
    e: &mut DescriptorEncoder,
    js: &natsmesh_broker::monitor::VarzJetStream,
) -> Result<(), std::fmt::Error> {
    let bytes = |n: i64| n.max(0) as f64;
    gauge(
        e,
        "natsmesh_jetstream_memory_bytes",
        "JetStream memory store used",
        js.stats.memory as f64,
    )?;
    gauge(
        e,
        "natsmesh_jetstream_storage_bytes",
        "JetStream file store used",
        js.stats.storage as f64,
    )?;
    gauge(
        e,
        "natsmesh_jetstream_max_memory_bytes",
        "JetStream memory store limit",
        bytes(js.config.max_memory),
    )?;
    gauge(
        e,
        "natsmesh_jetstream_max_storage_bytes",
        "JetStream file store limit",
        bytes(js.config.max_storage),
    )?;
    counter(
        e,
        "natsmesh_jetstream_api_requests",
        "JetStream API requests",
        js.stats.api.total,
    )?;
    counter(
        e,
        "natsmesh_jetstream_api_errors",
        "JetStream API requests answered with an error",
        js.stats.api.errors,
    )?;
    if let Some(meta) = &js.meta {
        let known = meta.leader.as_deref().is_some_and(|l| !l.is_empty());
        gauge(
            e,
            "natsmesh_jetstream_meta_leader_known",
            "1 while the JetStream meta group has a leader",
            f64::from(u8::from(known)),
        )?;
        gauge(
            e,
            "natsmesh_jetstream_meta_cluster_size",
            "Servers in the JetStream meta group",
            meta.cluster_size as f64,
        )?;
    }
    Ok(())
}

/// One labelled family: a descriptor, then a sample per `(value, metric)`
/// of the label `key`.
fn family<M: EncodeMetric + TypedMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &str,
    samples: impl IntoIterator<Item = (&'static str, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, M::TYPE)?;
    for (value, metric) in samples {
        metric.encode(m.encode_family(&[(key, value)])?)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// OpenMetrics text in the classic format: a counter family's HELP and
/// TYPE name its `_total` samples, and there is no `# EOF` (nor `# UNIT`).
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The exposition text for one scrape.
pub fn render(status: &Status, varz: Option<Varz>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        status: status.clone(),
        varz,
    }));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

async fn answer(mut stream: TcpStream, body: String) -> std::io::Result<()> {
    let Some(req) = read_request(&mut stream).await? else {
        return Ok(());
    };
    match (req.method.as_str(), req.path.as_str()) {
        // Prometheus asks for OpenMetrics; anything else (curl, promtool's
        // input) gets the classic text format.
        ("GET", "/metrics") if req.accept.contains("application/openmetrics-text") => {
            respond(&mut stream, 200, OPENMETRICS, &body).await
        }
        ("GET", "/metrics") => respond(&mut stream, 200, CLASSIC, &classic(&body)).await,
        ("GET", _) => respond(&mut stream, 404, "text/plain", "not found\n").await,
        _ => respond(&mut stream, 405, "text/plain", "method not allowed\n").await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples_in_the_classic_format() {
        let open = "# HELP a_total_x Restarts\n# TYPE a_total_x counter\n# UNIT a_total_x seconds\na_total_x_total 3\n# HELP g Gauge\n# TYPE g gauge\ng 1.0\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP a_total_x_total Restarts\n# TYPE a_total_x_total counter\na_total_x_total 3\n# HELP g Gauge\n# TYPE g gauge\ng 1.0\n"
        );
    }

    #[test]
    fn a_scrape_without_the_broker_says_so() {
        let text = render(
            &Status {
                state: "restarting".into(),
                ..Status::default()
            },
            None,
        );
        assert!(
            text.contains("natsmesh_state{state=\"restarting\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("natsmesh_broker_up 0.0\n"), "{text}");
        assert!(!text.contains("natsmesh_broker_connections"), "{text}");
    }
}
