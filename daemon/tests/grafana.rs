//! packaging/grafana: the alert rules pass `promtool check rules` and their
//! unit tests (`promtool test rules`), and the dashboard's and the rules'
//! queries parse and name only series natsmeshd exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use natsmesh::health::{Announced, Certificate, Health};
use natsmesh::metrics::node::{DiscoveryFigures, Figures};
use natsmesh::metrics::{BrokerFigures, Snapshot, render};
use natsmesh::provider::rest::{Flavor, Purpose};
use natsmesh_broker::monitor::{JetStreamMeta, Varz, VarzJetStream};

fn grafana() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    natsmesh_harness::require_tools(&["promtool"], "prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let said = promtool(&["check", "rules", "natsmesh-alerts.yml"], &grafana());
    assert!(said.contains("SUCCESS: 16 rules found"), "{said}");
    let said = promtool(&["test", "rules", "natsmesh-alerts.test.yml"], &grafana());
    assert!(said.contains("SUCCESS"), "{said}");
}

fn at(secs: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// Every series name one scrape can hold: a snapshot with every optional
/// part present.
fn exported() -> BTreeSet<String> {
    let varz = Varz {
        jetstream: Some(VarzJetStream {
            meta: Some(JetStreamMeta::default()),
            ..VarzJetStream::default()
        }),
        ..Varz::default()
    };
    let text = render(Snapshot {
        health: Health {
            certificate: Some(Certificate {
                serial: "01".into(),
                not_after: at(1),
                renew_at: at(1),
                intermediate_not_after: Some(at(2)),
                root_not_after: Some(at(3)),
            }),
            dns: Some(Announced {
                up: true,
                ..Announced::default()
            }),
            load_balancer: Some(Announced {
                member: Some(true),
                ..Announced::default()
            }),
            gateways: Some(vec!["nyc3".into()]),
            clock_synchronized: Some(true),
            ..Health::default()
        },
        broker: BrokerFigures {
            varz: Some(varz),
            jsz: Some(std::sync::Arc::new(
                serde_json::from_value(serde_json::json!({
                    "account_details": [{"name": "APP", "stream_detail": [{"name": "ORDERS"}]}]
                }))
                .unwrap(),
            )),
        },
        node: Figures {
            discovery: Some(DiscoveryFigures::default()),
            gateways_expected: Some(1),
            api_errors: vec![(
                (Purpose::LoadBalancer, Flavor::DigitalOcean, "429".into()),
                1,
            )],
        },
    });
    natsmesh::metrics::classic(&text)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

fn names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("natsmesh_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_and_the_rules_query_only_exported_series_in_valid_promql() {
    let exported = exported();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(grafana().join("natsmesh-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let rules = std::fs::read_to_string(grafana().join("natsmesh-alerts.yml")).unwrap();
    let alert_exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(alert_exprs.len(), 16);

    for expr in exprs.iter().chain(&alert_exprs) {
        for name in names_in(expr) {
            assert!(
                exported.contains(&name),
                "{name} (in {expr}) is not a series natsmeshd exports: {exported:?}"
            );
        }
    }
    // Grafana's variables as Prometheus would see them after substitution;
    // then every query as a recording rule, which promtool parses.
    exprs = exprs
        .iter()
        .map(|e| e.replace("$region", ".*").replace("$instance", ".*"))
        .collect();
    let scratch = natsmesh_harness::scratch();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        file.push_str(&format!(
            "      - record: natsmesh:dashboard_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    std::fs::write(scratch.path().join("dashboard.yml"), file).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], scratch.path());
}
