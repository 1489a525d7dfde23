//! The monitoring files in `deploy/` hold together: the alert rules and the Prometheus
//! configuration are well-formed YAML of the shape Prometheus reads, the dashboard is a Grafana
//! dashboard on the provisioned data source, the compose file mounts them and opens the ports
//! they scrape, and every metric they name is one Heimdex exports (the catalogue). With
//! `promtool` on the PATH, it checks the rules too.

#![allow(clippy::unwrap_used)]

use heimdex_telemetry::metrics::{CATALOGUE, Kind};
use yaml_rust2::{Yaml, YamlLoader};

const ALERTS: &str = include_str!("../../../deploy/prometheus/alerts.yml");
const PROMETHEUS: &str = include_str!("../../../deploy/prometheus/prometheus.yml");
const DASHBOARD: &str = include_str!("../../../deploy/grafana/dashboards/heimdex.json");
const DATASOURCE: &str =
    include_str!("../../../deploy/grafana/provisioning/datasources/prometheus.yml");
const DASHBOARDS: &str =
    include_str!("../../../deploy/grafana/provisioning/dashboards/heimdex.yml");
const COMPOSE: &str = include_str!("../../../deploy/docker-compose.yml");

fn yaml(text: &str) -> Yaml {
    YamlLoader::load_from_str(text)
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
}

/// Every `heimdex_…` name in `text`.
fn metric_names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("heimdex_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

/// Whether `name` is a series Heimdex exports: a catalogue name, or a histogram's
/// `_bucket`/`_sum`/`_count`.
fn exported(name: &str) -> bool {
    CATALOGUE.iter().any(|def| {
        def.name == name
            || (def.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(def.name)))
    })
}

fn str_of<'a>(node: &'a Yaml, key: &str) -> &'a str {
    node[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is a string in {node:?}"))
}

#[test]
fn the_alert_rules_cover_the_issue_and_name_real_metrics() {
    let doc = yaml(ALERTS);
    let groups = doc["groups"].as_vec().expect("groups");
    let mut alerts = Vec::new();
    for group in groups {
        assert!(!str_of(group, "name").is_empty());
        for rule in group["rules"].as_vec().expect("rules") {
            let alert = str_of(rule, "alert");
            let expr = str_of(rule, "expr");
            assert!(
                matches!(str_of(&rule["labels"], "severity"), "warning" | "critical"),
                "{alert}"
            );
            assert!(
                !str_of(&rule["annotations"], "summary").is_empty(),
                "{alert}"
            );
            let hold = str_of(rule, "for");
            assert!(
                hold.ends_with('m') && hold[..hold.len() - 1].parse::<u32>().is_ok(),
                "{alert}: for {hold}"
            );
            for name in metric_names(expr) {
                assert!(
                    exported(name),
                    "{alert} names {name}, which Heimdex does not export"
                );
            }
            alerts.push((alert, expr));
        }
    }
    for (wanted, metric) in [
        ("HeimdexBacklogGrowing", "heimdex_worker_backlog_jobs"),
        ("HeimdexJobFailureRate", "heimdex_jobs_failed_total"),
        ("HeimdexNatsUnreachable", "heimdex_nats_up"),
        ("HeimdexVectorStoreUnreachable", "heimdex_vector_store_up"),
    ] {
        let (_, expr) = alerts
            .iter()
            .find(|(alert, _)| *alert == wanted)
            .unwrap_or_else(|| panic!("no {wanted} alert"));
        assert!(expr.contains(metric), "{wanted}: {expr}");
    }
}

/// `promtool check rules` and `promtool test rules` (alerts.test.yml: synthetic series, the
/// alerts that must fire), where Prometheus' own tool is installed (Debian's `prometheus`
/// package has it); the structural test above runs everywhere.
#[test]
fn promtool_accepts_and_fires_the_rules_when_installed() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        match std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("promtool is not installed: skipped");
                return;
            }
            Err(err) => panic!("promtool: {err}"),
        }
    }
}

#[test]
fn prometheus_scrapes_every_role_where_it_serves_metrics() {
    let doc = yaml(PROMETHEUS);
    let rule_files: Vec<&str> = doc["rule_files"]
        .as_vec()
        .expect("rule_files")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(rule_files, ["/etc/prometheus/alerts.yml"]);
    let metrics_port = i64::from(heimdex::metrics::DEFAULT_METRICS_ADDR.port());
    let mut jobs = Vec::new();
    for job in doc["scrape_configs"].as_vec().expect("scrape_configs") {
        let sd = &job["dns_sd_configs"][0];
        let service = sd["names"][0].as_str().expect("a service name");
        let port = sd["port"].as_i64().expect("port");
        let want = if service == "api" { 8000 } else { metrics_port };
        assert_eq!(port, want, "{service}");
        jobs.push(str_of(job, "job_name"));
    }
    assert_eq!(
        jobs,
        ["heimdex-api", "heimdex-worker", "heimdex-projector"],
        "the alert HeimdexDown matches these jobs"
    );

    let compose = yaml(COMPOSE);
    let services = &compose["services"];
    assert_eq!(
        str_of(&services["api"]["environment"], "HEIMDEX_API_ADDR"),
        "0.0.0.0:8000"
    );
    for role in ["worker", "projector"] {
        assert_eq!(
            str_of(&services[role]["environment"], "HEIMDEX_METRICS_ADDR"),
            format!("0.0.0.0:{metrics_port}"),
            "{role}"
        );
    }
    let mounts = |service: &str| -> Vec<String> {
        services[service]["volumes"]
            .as_vec()
            .unwrap_or_else(|| panic!("{service} has volumes"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let prometheus = mounts("prometheus");
    for file in ["prometheus.yml", "alerts.yml"] {
        assert!(
            prometheus.contains(&format!("./prometheus/{file}:/etc/prometheus/{file}:ro")),
            "{prometheus:?}"
        );
    }
    let grafana = mounts("grafana");
    assert!(grafana.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro".to_owned()));
    assert!(grafana.contains(&"./grafana/dashboards:/var/lib/grafana/dashboards:ro".to_owned()));
    assert_eq!(
        str_of(&yaml(DASHBOARDS)["providers"][0]["options"], "path"),
        "/var/lib/grafana/dashboards"
    );
}

#[test]
fn the_dashboard_shows_what_the_issue_asks_on_the_provisioned_source() {
    let source = yaml(DATASOURCE);
    let uid = str_of(&source["datasources"][0], "uid");
    assert_eq!(
        str_of(&source["datasources"][0], "url"),
        "http://prometheus:9090"
    );

    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    assert_eq!(dashboard["uid"], "heimdex");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids: Vec<i64> = panels
        .iter()
        .map(|p| p["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let mut exprs = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                assert!(exported(name), "{}: {name} is not exported", panel["title"]);
            }
            exprs.push(expr);
        }
    }
    for (what, metric) in [
        ("ingest rate", "rate(heimdex_jobs_accepted_total"),
        ("job latency", "heimdex_job_duration_seconds_bucket"),
        ("backlog", "heimdex_worker_backlog_jobs"),
        ("failures", "rate(heimdex_jobs_failed_total"),
        ("search latency", "heimdex_search_duration_seconds_bucket"),
    ] {
        assert!(exprs.iter().any(|e| e.contains(metric)), "no {what} panel");
    }
}
