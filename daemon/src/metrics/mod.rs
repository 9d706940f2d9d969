//! `/metrics` for Prometheus: natsmeshd's own state (supervisor, probes,
//! restarts, reloads, the lease) and the broker's figures (connections,
//! messages, bytes, slow consumers, routes, memory), with a fixed set of
//! series. The broker is asked for `/varz` on a pace of its own
//! (`metrics.scrape_every`), never by a scrape, so Prometheus cannot load
//! the broker however often it comes; a scrape encodes what is cached.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use natsmesh_broker::monitor::{Monitor, Varz};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::health::{Health, State};
use crate::httpd::{read_request, respond};

pub mod node;

pub use crate::config::settings::metrics::{MetricsSettings, MetricsTls};

/// OpenMetrics text, what prometheus-client writes and Prometheus asks for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format.
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why `/metrics` cannot serve HTTPS now.
#[derive(Debug, thiserror::Error)]
enum AcceptorError {
    /// A PEM file could not be read.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: pki_types::pem::Error,
    },
    /// rustls refused the set-up or the pair.
    #[error("{0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
}

impl MetricsTls {
    /// An acceptor with the certificate as it is now on disk, so a renewed
    /// one serves from the next scrape on.
    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, AcceptorError> {
        use pki_types::pem::PemObject as _;
        let pem = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| AcceptorError::Pem { path, source }
        };
        let chain: Vec<pki_types::CertificateDer<'static>> =
            pki_types::CertificateDer::pem_file_iter(&self.cert_file)
                .and_then(|i| i.collect())
                .map_err(pem(&self.cert_file))?;
        let key =
            pki_types::PrivateKeyDer::from_pem_file(&self.key_file).map_err(pem(&self.key_file))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// A client for the broker's monitoring port, as the probes reach it.
pub fn broker_monitor(settings: &crate::config::Settings) -> Option<Monitor> {
    let addr = settings
        .server
        .monitoring
        .as_ref()
        .and_then(crate::addr::local_addr)?;
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

/// What the broker last said, when it answered.
#[derive(Debug, Clone, Default)]
pub struct BrokerFigures {
    /// `/varz`.
    pub varz: Option<Varz>,
    /// `/jsz` with streams, when per-stream series are asked for.
    pub jsz: Option<Arc<crate::fleet::view::Jsz>>,
}

type Cache = Arc<Mutex<BrokerFigures>>;

/// Where a scrape's figures come from.
pub struct Sources {
    /// The supervisor's health.
    pub status: watch::Receiver<Health>,
    /// The broker's monitoring port.
    pub broker: Monitor,
    /// Discovery, when it follows DNS.
    pub discovery: Option<Arc<crate::discovery::Health>>,
    /// Other regions the gateway block names (with gateways on).
    pub gateways_configured: Option<u64>,
}

/// Serves `/metrics` from `listener` until dropped, reading the broker
/// every `scrape_every`.
#[tracing::instrument(name = "metrics", skip_all)]
pub async fn serve(listener: TcpListener, settings: MetricsSettings, sources: Sources) {
    let cache: Cache = Arc::new(Mutex::new(BrokerFigures::default()));
    // Ends with this task (which is aborted at shutdown).
    let _reader = AbortOnDrop(tokio::spawn(read_broker(
        sources.broker,
        settings.streams,
        settings.scrape_every,
        cache.clone(),
    )));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: back off, keep serving.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let snapshot = Snapshot {
            health: sources.status.borrow().clone(),
            broker: cache.lock().map(|c| c.clone()).unwrap_or_default(),
            node: node::Figures::now(sources.discovery.as_deref(), sources.gateways_configured),
        };
        let text = render(snapshot);
        let tls = match &settings.tls {
            None => None,
            Some(t) => match t.acceptor() {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot serve /metrics over HTTPS; connection refused");
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async move {
                match tls {
                    None => answer(stream, text).await,
                    Some(acceptor) => answer(acceptor.accept(stream).await?, text).await,
                }
            })
            .await;
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The most of a `/jsz` with every stream kept (some 500 bytes a stream).
const MAX_JSZ: usize = 64 << 20;

/// Reads `/varz` (and, for per-stream series, `/jsz`) every `every`.
async fn read_broker(broker: Monitor, streams: bool, every: Duration, cache: Cache) {
    loop {
        let varz = broker.varz().await.ok();
        let jsz = if streams && varz.is_some() {
            broker
                .json_up_to("/jsz?accounts=true&streams=true", MAX_JSZ)
                .await
                .ok()
                .map(Arc::new)
        } else {
            None
        };
        // Until the broker answers (starting, restarting), look again soon.
        let pause = if varz.is_some() {
            every
        } else {
            every.min(Duration::from_secs(1))
        };
        if let Ok(mut c) = cache.lock() {
            *c = BrokerFigures { varz, jsz };
        }
        tokio::time::sleep(pause).await;
    }
}

/// One scrape's worth of series.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The supervisor's health.
    pub health: Health,
    /// The broker's figures.
    pub broker: BrokerFigures,
    /// The node's own: discovery, clock, provider APIs.
    pub node: node::Figures,
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        node::encode(&mut e, &self.health, &self.node)?;
        let s = &self.health;
        let up = |b: bool| ConstGauge::new(i64::from(b));
        family(
            &mut e,
            "natsmesh_state",
            "Supervisor state: 1 for the state natsmeshd is in",
            "state",
            State::ALL.map(|state| (state.as_str(), up(s.state == state))),
        )?;
        gauge(
            &mut e,
            "natsmesh_state_since_timestamp_seconds",
            "When the supervisor entered its state",
            crate::unix_ms(s.since) as f64 / 1000.0,
        )?;
        family(
            &mut e,
            "natsmesh_probe_ok",
            "Probe outcome: 1 when it passed (alive, serving, jetstream current)",
            "probe",
            [
                ("alive", up(s.alive.as_ref().is_some_and(|a| a.answered))),
                ("serving", up(s.serving())),
                (
                    "jetstream",
                    up(s.jetstream.as_ref().is_some_and(|j| j.settled())),
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
            f64::from(u8::from(s.fleet.holds_lease())),
        )?;
        gauge(
            &mut e,
            "natsmesh_lease_waiting",
            "1 while this node waits to restart",
            f64::from(u8::from(s.fleet.waits())),
        )?;
        gauge(
            &mut e,
            "natsmesh_paused",
            "1 while planned restarts are paused",
            f64::from(u8::from(s.paused || s.fleet_paused.is_some())),
        )?;
        counter(
            &mut e,
            "natsmesh_log_lines_dropped",
            "Broker log lines dropped because the log was slow",
            s.log_lines_dropped,
        )?;
        if let Some(jsz) = &self.broker.jsz {
            node::streams(&mut e, jsz, self.broker.varz.as_ref())?;
        }
        // From the supervisor's probe, which reads /gatewayz with /varz.
        if let Some(g) = &s.gateways {
            gauge(
                &mut e,
                "natsmesh_broker_gateway_regions_connected",
                "Regions this broker has an outbound gateway connection to",
                g.len() as f64,
            )?;
        }
        if let Some(v) = &self.broker.varz {
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
            f64::from(u8::from(self.broker.varz.is_some())),
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
pub(super) fn family<M: EncodeMetric + TypedMetric>(
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

pub(super) fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

pub(super) fn counter(
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
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

async fn answer<S>(mut stream: S, body: String) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
    fn the_probes_and_the_state_are_read_from_the_typed_health() {
        use natsmesh_broker::monitor::ClientPort;

        use crate::health::{Alive, Announced, JetStream};
        let scrape = |health: Health| {
            render(Snapshot {
                health,
                ..Snapshot::default()
            })
        };
        let serving = Health {
            state: State::Ready,
            alive: Some(Alive {
                answered: true,
                detail: "answered 200".into(),
            }),
            client_port: Some(ClientPort::Serving),
            jetstream: Some(JetStream::Disabled),
            ..Health::default()
        };
        let text = scrape(serving.clone());
        for line in [
            "natsmesh_state{state=\"ready\"} 1\n",
            "natsmesh_state{state=\"syncing\"} 0\n",
            "natsmesh_probe_ok{probe=\"alive\"} 1\n",
            "natsmesh_probe_ok{probe=\"serving\"} 1\n",
            "natsmesh_probe_ok{probe=\"jetstream\"} 1\n",
            "natsmesh_degraded 0.0\n",
        ] {
            assert!(text.contains(line), "{line}{text}");
        }
        let text = scrape(Health {
            state: State::Draining,
            alive: Some(Alive {
                answered: false,
                detail: "no answer within 2s".into(),
            }),
            client_port: Some(ClientPort::LameDuck),
            jetstream: Some(JetStream::Catching("s".into())),
            ..serving.clone()
        });
        for line in [
            "natsmesh_state{state=\"draining\"} 1\n",
            "natsmesh_state{state=\"ready\"} 0\n",
            "natsmesh_probe_ok{probe=\"alive\"} 0\n",
            "natsmesh_probe_ok{probe=\"serving\"} 0\n",
            "natsmesh_probe_ok{probe=\"jetstream\"} 0\n",
        ] {
            assert!(text.contains(line), "{line}{text}");
        }
        // Serving with a pointer in trouble: degraded.
        let text = scrape(Health {
            dns: Some(Announced {
                problem: Some("publication failing".into()),
                ..Announced::default()
            }),
            ..serving
        });
        assert!(text.contains("natsmesh_degraded 1.0\n"), "{text}");
    }

    #[test]
    fn the_lease_gauges_follow_the_typed_coordination_not_its_words() {
        use crate::health::Coordinating;
        let scrape = |fleet: Coordinating| {
            render(Snapshot {
                health: Health {
                    fleet,
                    ..Health::default()
                },
                ..Snapshot::default()
            })
        };
        let cases = [
            (Coordinating::Idle, 0, 0),
            (
                // Its reason names a holder; this node holds nothing.
                Coordinating::Waiting {
                    why: "n2 is holding the region's restart lease".into(),
                },
                0,
                1,
            ),
            (
                Coordinating::Asking {
                    why: "a new broker binary".into(),
                    scope: "region",
                },
                0,
                1,
            ),
            (
                Coordinating::Holding {
                    why: "a new broker binary".into(),
                    scope: "region",
                },
                1,
                0,
            ),
            (
                Coordinating::Paused {
                    then: "waiting for nothing, holding nothing".into(),
                },
                0,
                0,
            ),
        ];
        for (fleet, held, waiting) in cases {
            let text = scrape(fleet.clone());
            for line in [
                format!("natsmesh_lease_held {held}.0\n"),
                format!("natsmesh_lease_waiting {waiting}.0\n"),
            ] {
                assert!(text.contains(&line), "{fleet:?}: {line}{text}");
            }
        }
    }

    #[test]
    fn a_scrape_without_the_broker_says_so() {
        let text = render(Snapshot {
            health: Health {
                state: State::Restarting,
                ..Health::default()
            },
            ..Snapshot::default()
        });
        assert!(
            text.contains("natsmesh_state{state=\"restarting\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("natsmesh_broker_up 0.0\n"), "{text}");
        assert!(!text.contains("natsmesh_broker_connections"), "{text}");
    }
}
