//! `/metrics` against a real natsmeshd and nats-server: the series follow
//! the broker being killed, a reload and a drain; the classic text passes
//! `promtool check metrics` (Debian's prometheus package), and Prometheus'
//! own request gets OpenMetrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Options};
use natsmesh_harness::CURRENT;

fn scrape(d: &Daemon, accept: Option<&str>) -> (String, String) {
    let mut req = ureq::get(&format!("http://127.0.0.1:{}/metrics", d.metrics_port))
        .config()
        .timeout_global(Some(Duration::from_secs(5)))
        .build();
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let mut resp = req.call().unwrap();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ctype, resp.body_mut().read_to_string().unwrap())
}

/// The value of the sample named exactly `series` (with its labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_for(d: &Daemon, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = scrape(d, None);
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_follow_the_broker_and_pass_promtool() {
    let mut d = Daemon::start(CURRENT, Options::default());
    d.wait_ready();
    let text = wait_for(&d, "ready with the broker's figures", |t| {
        value(t, "natsmesh_state{state=\"ready\"}") == Some(1.0)
            && value(t, "natsmesh_broker_up") == Some(1.0)
    });
    assert_eq!(
        value(&text, "natsmesh_probe_ok{probe=\"serving\"}"),
        Some(1.0)
    );
    assert_eq!(value(&text, "natsmesh_broker_restarts_total"), Some(0.0));
    assert!(value(&text, "natsmesh_broker_resident_memory_bytes").unwrap() > 0.0);
    // The harness's JetStream limits, as the broker reports them.
    assert_eq!(
        value(&text, "natsmesh_jetstream_max_storage_bytes"),
        Some(256.0 * 1024.0 * 1024.0)
    );
    assert_eq!(value(&text, "natsmesh_jetstream_storage_bytes"), Some(0.0));

    // Traffic shows in the broker's counters.
    let before = value(&text, "natsmesh_broker_in_messages_total").unwrap();
    let mut c = std::net::TcpStream::connect(d.client_addr()).unwrap();
    use std::io::Write as _;
    c.write_all(b"CONNECT {\"verbose\":false}\r\nPUB natsmesh.metrics 2\r\nhi\r\nPING\r\n")
        .unwrap();
    wait_for(&d, "a message counted", |t| {
        value(t, "natsmesh_broker_in_messages_total").is_some_and(|v| v > before)
    });
    drop(c);

    // The broker killed: a crash and a restart, back to ready.
    let broker = d.status().unwrap().broker_pid.unwrap();
    common::signal(broker, "KILL");
    d.wait_status(
        "restarted",
        |s| s.state == "ready" && s.crashes == 1,
        Duration::from_secs(20),
    );
    wait_for(&d, "the crash counted", |t| {
        value(t, "natsmesh_broker_crashes_total") == Some(1.0)
            && value(t, "natsmesh_broker_restarts_total") == Some(1.0)
            && value(t, "natsmesh_state{state=\"ready\"}") == Some(1.0)
    });

    // A reload (of a change the broker reloads) counted.
    std::fs::write(
        d.dir.path().join("natsmesh.d/60-debug.toml"),
        "[broker]\ndebug = true\n",
    )
    .unwrap();
    assert!(d.cli(&["reload", "--wait"]).status.success());
    wait_for(&d, "the reload counted", |t| {
        value(t, "natsmesh_reloads_total{result=\"ok\"}") == Some(1.0)
    });

    // The classic format passes promtool; Prometheus gets OpenMetrics.
    let (ctype, classic) = scrape(&d, None);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    promtool(&classic);
    let (ctype, open) = scrape(
        &d,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(open.ends_with("# EOF\n"), "{open}");

    // Drained: out of service, the broker gone.
    assert!(d.cli(&["drain"]).status.success());
    wait_for(&d, "stopped after the drain", |t| {
        value(t, "natsmesh_state{state=\"stopped\"}") == Some(1.0)
            && value(t, "natsmesh_broker_up") == Some(0.0)
    });
}

fn promtool(text: &str) {
    use std::io::Write as _;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        panic!("promtool is missing (apt-get install prometheus)");
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn per_stream_series_when_asked_for_streams_this_server_leads() {
    let mut d = Daemon::start(
        CURRENT,
        Options {
            extra: "[metrics]\nstreams = true\n".into(),
            ..Options::default()
        },
    );
    d.wait_ready();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nc = async_nats::connect(d.client_addr()).await.unwrap();
        let js = async_nats::jetstream::new(nc);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..3 {
            js.publish(format!("orders.{i}"), "x".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    let series = "natsmesh_stream_messages{account=\"$G\",stream=\"ORDERS\"}";
    d.wait_metric(series, Duration::from_secs(10), |n| n == 3.0);
    let text = scrape(&d, None).1;
    assert_eq!(
        value(
            &text,
            "natsmesh_stream_replicas_behind{account=\"$G\",stream=\"ORDERS\"}"
        ),
        Some(0.0),
        "{text}"
    );
    promtool(&text);
}
