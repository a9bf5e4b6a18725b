//! The monitoring iothub ships (deploy/monitor, deploy/docker-compose.monitoring*.yml), checked
//! with the real servers: Debian's `promtool` and `amtool` on the shipped files, the alert
//! rules' unit tests, every compose file through `docker-compose config`, the Grafana
//! dashboard against what Grafana's provisioning needs, then a real Prometheus scraping live
//! iothubd nodes (one on the embedded log, one in cluster mode on Redis and Kafka) that
//! simulated devices talk to, where every selector of the dashboard and of the alert rules
//! must find a series, and a real Alertmanager delivering the node-down alert of a stopped
//! iothubd to a webhook, then its resolution once iothubd is back.
//!
//! The tools come from the Debian packages `prometheus`, `prometheus-alertmanager` and
//! `docker-compose` (scripts/test.sh installs them); a missing one fails the test by name.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iothub::imei::Imei;
use iothub_loadgen::fleet::{self, FleetConfig, Verifiers};
use iothub_loadgen::instruct::InstructConfig;
use iothub_loadgen::receiver::PushReceiver;
use iothub_loadgen::tracker::{SimTracker, SimTrackerConfig};
use iothub_system_tests::cluster::{ClusterSettings, RedisServer};
use iothub_system_tests::{free_port, Hub, Tansu, TOKEN};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// --- Files and tools ---------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn monitor_dir() -> PathBuf {
    repo_root().join("deploy/monitor")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A tool of a Debian package: on `PATH`, else in /usr/bin or /usr/sbin; fails naming the
/// package when it is not installed.
fn tool(name: &str, package: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| {
            ["/usr/bin", "/usr/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: install the Debian package {package} \
                 (apt-get install {package}; scripts/test.sh does)"
            )
        })
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies a directory's files (not its subdirectories) into `to`.
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().expect("file name")))
                .unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
        }
    }
}

/// The names of the alerts of alert.yml.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// The PromQL expressions of alert.yml: `expr: ...` on one line, or `expr: |` and the lines
/// indented below it.
fn alert_exprs(rules: &str) -> Vec<String> {
    let lines: Vec<&str> = rules.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = line.trim().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" {
                let mut block = String::new();
                i += 1;
                while i < lines.len() {
                    let next = lines[i];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push(' ');
                    i += 1;
                }
                exprs.push(block);
                continue;
            }
            exprs.push(rest.to_string());
        }
        i += 1;
    }
    exprs
}

/// Every PromQL expression of the dashboard: the panels' targets and the variables' queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in all_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = target["expr"].as_str() {
                exprs.push(e.to_string());
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = var["query"]["query"].as_str().or(var["query"].as_str()) {
            exprs.push(q.to_string());
        }
    }
    exprs
}

/// Top-level panels and the panels inside rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        for inner in panel["panels"].as_array().into_iter().flatten() {
            out.push(inner);
        }
    }
    out
}

/// The vector selectors of PromQL expressions (metric name and label matchers), with the
/// dashboard's `$node` variable set to "all nodes".
fn selectors(exprs: &[String]) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b((?:iothub|process)_[a-z0-9_]+|up)\b(\{[^}]*\})?")
        .expect("selector pattern");
    exprs
        .iter()
        .flat_map(|e| {
            re.captures_iter(e)
                .map(|c| {
                    let name = &c[1];
                    let labels = c.get(2).map_or("", |m| m.as_str());
                    format!("{name}{labels}").replace("$node", ".*")
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn dashboard() -> Value {
    let path = monitor_dir().join("grafana/dashboards/iothub_monitor.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

// --- Static checks of the shipped files ---------------------------------------------------------

#[test]
fn shipped_prometheus_config_passes_promtool_for_one_node_and_for_the_cluster() {
    let promtool = tool("promtool", "prometheus");
    let dir = monitor_dir().join("prometheus");
    for layout in ["single-node", "cluster"] {
        // The layout of the container: the configuration, its rules, and the compose's
        // target directory at targets/.
        let tmp = tempfile::tempdir().expect("temp dir");
        copy_files(&dir, tmp.path());
        copy_files(
            &dir.join("targets").join(layout),
            &tmp.path().join("targets"),
        );
        let out = run(Command::new(&promtool)
            .arg("check")
            .arg("config")
            .arg(tmp.path().join("prometheus.yml")));
        assert_success(&format!("promtool check config ({layout})"), &out);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains(
                "targets/iothub.yml\" for file_sd in scrape job \"iothub\" does not exist"
            ),
            "{layout}: the iothub targets file is missing:\n{text}"
        );
    }
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    let promtool = tool("promtool", "prometheus");
    let out = run(Command::new(promtool)
        .args(["check", "rules"])
        .arg(monitor_dir().join("prometheus/alert.yml")));
    assert_success("promtool check rules alert.yml", &out);
}

#[test]
fn every_alert_fires_under_its_fault_and_stays_quiet_otherwise_in_promtool_unit_tests() {
    let promtool = tool("promtool", "prometheus");
    let tests = monitor_dir().join("prometheus/tests/alert_test.yml");
    let out = run(Command::new(promtool).args(["test", "rules"]).arg(&tests));
    assert_success("promtool test rules tests/alert_test.yml", &out);

    // Each alert has a case where it fires and one where it does not.
    let text = read(&tests);
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let Some(name) = &current {
            if line == "exp_alerts: []" {
                quiet.insert(name.clone());
            } else if line.starts_with("- exp_labels:") {
                fires.insert(name.clone());
            }
        }
    }
    let names = alert_names(&read(&monitor_dir().join("prometheus/alert.yml")));
    assert!(names.len() >= 15, "alert.yml has only {names:?}");
    for name in &names {
        assert!(fires.contains(name), "no unit test where {name} fires");
        assert!(
            quiet.contains(name),
            "no unit test where {name} stays quiet"
        );
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_a_runbook() {
    let rules = read(&monitor_dir().join("prometheus/alert.yml"));
    let blocks: Vec<&str> = rules.split("- alert:").skip(1).collect();
    assert_eq!(blocks.len(), alert_names(&rules).len());
    for block in blocks {
        let name = block.lines().next().unwrap_or("").trim();
        for key in ["severity:", "summary:", "description:", "runbook:"] {
            assert!(block.contains(key), "alert {name} has no {key}");
        }
    }
}

#[test]
fn shipped_alertmanager_config_passes_amtool() {
    let amtool = tool("amtool", "prometheus-alertmanager");
    let config = monitor_dir().join("alertmanager/alertmanager.yml");
    let out = run(Command::new(amtool).arg("check-config").arg(&config));
    assert_success("amtool check-config alertmanager.yml", &out);
    let text = read(&config);
    assert!(text.contains("webhook_configs:"), "no webhook receiver");
    assert!(text.contains("email_configs:"), "no email example");
    assert!(
        text.contains("source_matchers: ['alertname=\"IothubNodeDown\"']")
            && text.contains("equal: [\"instance\"]"),
        "node down does not inhibit the node's other alerts"
    );
}

#[test]
fn every_compose_file_passes_docker_compose_config() {
    let compose = tool("docker-compose", "docker-compose");
    let deploy = repo_root().join("deploy");
    let combinations: [&[&str]; 4] = [
        &["docker-compose.yml"],
        &["docker-compose.cluster.yml"],
        &["docker-compose.yml", "docker-compose.monitoring.yml"],
        &[
            "docker-compose.cluster.yml",
            "docker-compose.monitoring.yml",
            "docker-compose.monitoring-cluster.yml",
        ],
    ];
    for files in combinations {
        let mut cmd = Command::new(&compose);
        cmd.current_dir(&deploy)
            // The required settings of deploy/.env, which a checkout does not have.
            .env("apiToken", "compose-check")
            .env("REDIS_PASSWORD", "compose-check")
            .args(["-p", "iothub"]);
        for f in files {
            cmd.args(["-f", f]);
        }
        cmd.arg("config");
        let out = run(&mut cmd);
        assert_success(&format!("docker-compose {files:?} config"), &out);
        let config = String::from_utf8_lossy(&out.stdout).to_string();
        if files.contains(&"docker-compose.monitoring-cluster.yml") {
            // The cluster overlay replaces the single node's targets, it does not add to them.
            assert!(
                config.contains("/monitor/prometheus/targets/cluster:/etc/prometheus/targets:ro"),
                "{config}"
            );
            assert!(
                !config.contains("targets/single-node"),
                "the single node's targets are still mounted:\n{config}"
            );
            assert!(config.contains("redis-exporter:") && config.contains("kafka-exporter:"));
        } else if files.contains(&"docker-compose.monitoring.yml") {
            assert!(
                config
                    .contains("/monitor/prometheus/targets/single-node:/etc/prometheus/targets:ro"),
                "{config}"
            );
        }
    }
}

#[test]
fn dashboard_is_valid_for_grafana_provisioning() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {} (Grafana provisions 36 and later without migrating datasource references)",
        dashboard["schemaVersion"]
    );
    assert!(dashboard["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    // A provisioned dashboard must not carry a database id.
    assert!(dashboard.get("id").is_none_or(Value::is_null));

    // The data source the provisioning declares, by uid.
    let datasources = read(&monitor_dir().join("grafana/provisioning/datasources/prometheus.yml"));
    assert!(
        datasources.contains("url: http://prometheus:9090"),
        "{datasources}"
    );
    let uid = datasources
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid:"))
        .map(|u| u.trim().to_string())
        .expect("the provisioned data source has a uid");

    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for panel in all_panels(&dashboard) {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24) && grid["h"].as_u64().is_some(),
            "panel {id}: gridPos {grid}"
        );
        if panel["type"] == "row" {
            titles.insert(panel["title"].as_str().unwrap_or("").to_string());
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"],
            uid.as_str(),
            "panel {id} data source"
        );
        assert_eq!(
            panel["datasource"]["type"], "prometheus",
            "panel {id} data source"
        );
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "panel {id}: refId twice"
            );
            assert_eq!(
                target["datasource"]["uid"],
                uid.as_str(),
                "panel {id} query data source"
            );
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
    for row in [
        "Fleet",
        "Ingest",
        "Pipeline",
        "Instructions",
        "Cluster",
        "Process",
    ] {
        assert!(titles.contains(row), "no {row} row; rows: {titles:?}");
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating list")
    {
        assert_eq!(
            var["datasource"]["uid"],
            uid.as_str(),
            "variable {}",
            var["name"]
        );
    }

    // The provider reads the directory the compose overlay mounts the dashboards at.
    let provider = read(&monitor_dir().join("grafana/provisioning/dashboards/iothub.yml"));
    let overlay = read(&repo_root().join("deploy/docker-compose.monitoring.yml"));
    assert!(
        provider.contains("path: /etc/grafana/dashboards"),
        "{provider}"
    );
    assert!(overlay.contains("./monitor/grafana/dashboards:/etc/grafana/dashboards:ro"));
    assert!(overlay.contains("./monitor/grafana/provisioning:/etc/grafana/provisioning:ro"));
}

#[test]
fn grafana_refuses_the_guides_default_password() {
    let overlay = read(&repo_root().join("deploy/docker-compose.monitoring.yml"));
    let entry = overlay
        .split("entrypoint:")
        .nth(1)
        .and_then(|s| s.split("volumes:").next())
        .expect("grafana entrypoint");
    // The check the container runs: the compose file's `$$` is a literal `$`.
    let script = entry
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("- >-"))
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
        .replace("$$", "$");
    for (password, refused) in [("123456", true), ("", true), ("a-long-real-one", false)] {
        let out = run(Command::new("sh")
            .arg("-c")
            .arg(script.replace("exec /run.sh", "exit 0"))
            .env("GF_SECURITY_ADMIN_PASSWORD", password));
        assert_eq!(
            !out.status.success(),
            refused,
            "password {password:?}: {out:?}"
        );
        if refused {
            assert!(String::from_utf8_lossy(&out.stderr).contains("config.monitoring"));
        }
    }
}

// --- Real servers ---------------------------------------------------------------------------

/// A server process of the test, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Waits until `GET /-/ready` answers 200; panics after 30 s or if the process exits.
    async fn wait_ready(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{}/-/ready", self.addr);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{name} exited with {status} before it was ready");
            }
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{name} not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn server_log() -> Stdio {
    if std::env::var_os("IOTHUB_TEST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// The shipped Prometheus configuration and rules, run as they are but for: 1 s scrape and
/// evaluation intervals, `for:` of every rule shortened to `alert_for`, Alertmanager at
/// `alertmanager`, and the iothub targets given (address, node name).
async fn start_prometheus(
    nodes: &[(SocketAddr, &str)],
    alertmanager: Option<SocketAddr>,
    alert_for: &str,
) -> Server {
    let prometheus = tool("prometheus", "prometheus");
    let dir = tempfile::tempdir().expect("temp dir");
    let shipped = monitor_dir().join("prometheus");
    let am = alertmanager.map_or_else(|| "127.0.0.1:9".to_string(), |a| a.to_string());
    let config = read(&shipped.join("prometheus.yml"))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("alertmanager:9093", &am);
    assert!(config.contains("scrape_interval: 1s") && config.contains(&am));
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
    let for_re = regex::Regex::new(r"(?m)^(\s+for:) \S+$").expect("for pattern");
    let rules = read(&shipped.join("alert.yml"));
    let rules = for_re.replace_all(&rules, format!("$1 {alert_for}").as_str());
    std::fs::write(dir.path().join("alert.yml"), rules.as_ref()).expect("write alert.yml");
    let targets: String = nodes
        .iter()
        .map(|(addr, node)| format!("- targets: [\"{addr}\"]\n  labels:\n    node: {node}\n"))
        .collect();
    std::fs::create_dir_all(dir.path().join("targets")).expect("targets dir");
    std::fs::write(dir.path().join("targets/iothub.yml"), targets).expect("write targets");

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(server_log())
        .stderr(server_log())
        .spawn()
        .expect("start prometheus");
    let mut server = Server {
        child,
        addr,
        _dir: dir,
    };
    server.wait_ready("prometheus").await;
    server
}

/// The shipped Alertmanager configuration with its webhook pointed at `webhook` and its
/// grouping waits shortened to a second.
async fn start_alertmanager(webhook: &str) -> Server {
    let alertmanager = tool("prometheus-alertmanager", "prometheus-alertmanager");
    let dir = tempfile::tempdir().expect("temp dir");
    let shipped = read(&monitor_dir().join("alertmanager/alertmanager.yml"));
    let config = shipped
        .replace(
            "http://alert-webhook.example.invalid:8080/iothub-alerts",
            webhook,
        )
        .replace("group_wait: 30s", "group_wait: 1s")
        .replace("group_interval: 5m", "group_interval: 1s");
    assert!(config.contains(webhook) && config.contains("group_wait: 1s"));
    std::fs::write(dir.path().join("alertmanager.yml"), config).expect("write alertmanager.yml");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(alertmanager)
        .arg(format!(
            "--config.file={}",
            dir.path().join("alertmanager.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        // No high-availability peers: no cluster listener.
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(server_log())
        .stderr(server_log())
        .spawn()
        .expect("start alertmanager");
    let mut server = Server {
        child,
        addr,
        _dir: dir,
    };
    server.wait_ready("alertmanager").await;
    server
}

/// Series Prometheus returns for an instant query.
async fn query(prometheus: SocketAddr, promql: &str) -> Vec<Value> {
    let answer: Value = reqwest::Client::new()
        .get(format!("http://{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .expect("query prometheus")
        .json()
        .await
        .expect("prometheus answer");
    assert_eq!(answer["status"], "success", "query {promql}: {answer}");
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A webhook receiver for Alertmanager: keeps every notification it is posted.
struct Webhook {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    async fn start() -> Webhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook");
        let url = format!(
            "http://{}/alerts",
            listener.local_addr().expect("webhook address")
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    if let Some(body) = read_http_body(&mut stream).await {
                        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                            store.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                        }
                    }
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Webhook { url, received }
    }

    /// Waits for a notification with `status` ("firing", "resolved") for `alertname` on
    /// `node`; panics naming what arrived after `within`.
    async fn wait_for(&self, status: &str, alertname: &str, node: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .received
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
                .find(|a| {
                    a["status"] == status
                        && a["labels"]["alertname"] == alertname
                        && a["labels"]["node"] == node
                });
            if let Some(alert) = found {
                return alert;
            }
            if Instant::now() >= deadline {
                let got = self
                    .received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                panic!("no {status} {alertname} for {node} within {within:?}; the webhook got: {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body; returns the body.
async fn read_http_body(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    if length > 1024 * 1024 {
        return None;
    }
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf[header_end..header_end + length].to_vec())
}

/// A short run of simulated trackers and dashcams, with instructions, against `hub`.
async fn drive_fleet(hub: &Hub, receiver: &PushReceiver, trackers: u32, dvrs: u32) {
    let mut config = FleetConfig::new(hub.gt06, trackers);
    config.gps_interval = Duration::from_secs(1);
    config.heartbeat_interval = Duration::from_secs(2);
    config.alarm_interval = Duration::from_secs(2);
    config.dvrs = dvrs;
    config.dvr_target = hub.jt808;
    config.dvr_location_interval = Duration::from_secs(1);
    config.dvr_heartbeat_interval = Duration::from_secs(2);
    config.duration = Duration::from_secs(4);
    // Pushes through Kafka wait for the consumer group to form first.
    config.drain_timeout = Duration::from_secs(60);
    config.progress = false;
    let mut instruct = InstructConfig::new(format!("http://{}", hub.api), TOKEN, 5.0);
    instruct.settle = Duration::from_secs(1);
    instruct.window = Duration::from_secs(2);
    config.instruct = Some(instruct);
    let report = fleet::run(config, Verifiers::push(receiver))
        .await
        .expect("load run");
    assert_eq!(report.lost(), 0, "{}", report.table());
}

/// From a logged-in GT06 tracker: bytes that are no frame, a heartbeat with a wrong CRC
/// (counted, and taken under the default CRC policy `warn`), then a frame without its stop
/// bytes (a decode error that closes the connection).
async fn send_malformed_bytes(hub: &Hub) {
    let imei = Imei::parse("864717003299001").expect("IMEI");
    let mut tracker = SimTracker::connect_and_login(hub.gt06, SimTrackerConfig::new(imei))
        .await
        .expect("tracker logs in");
    let mut bytes = b"not a frame".to_vec();
    bytes.extend_from_slice(&[0x78, 0x78, 0x05, 0x13, 0x00, 0x01, 0x00, 0x00, 0x0d, 0x0a]);
    bytes.extend_from_slice(&[0x78, 0x78, 0x05, 0x13, 0x00, 0x02, 0x00, 0x00, 0xff, 0xff]);
    tracker
        .send_raw(&bytes)
        .await
        .expect("send malformed bytes");
    // The hub closes the connection at the decode error.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while tracker.next_command(Duration::from_secs(1)).await.is_ok() {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the hub kept a connection that sent a frame without stop bytes"
    );
}

// --- End to end ------------------------------------------------------------------------------

/// Every selector of the dashboard and of the alert rules finds a series in a real
/// Prometheus scraping two live nodes: one on the embedded log and one in cluster mode on a
/// real Redis and a real Kafka-protocol broker (tansu), each with simulated devices, pushes
/// (some refused, so retries exist) and instructions. A misspelt metric or label fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_selector_finds_a_series_in_prometheus() {
    let exprs: Vec<String> = dashboard_exprs(&dashboard())
        .into_iter()
        .chain(alert_exprs(&read(
            &monitor_dir().join("prometheus/alert.yml"),
        )))
        .collect();
    let wanted = selectors(&exprs);
    assert!(wanted.len() >= 40, "too few selectors found: {wanted:?}");

    // A node on its embedded log.
    let receiver = PushReceiver::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("start push receiver");
    let url = receiver.url();
    let single = Hub::start(&[("pushURL", url.as_str()), ("gateId", "single")]);

    // A node in cluster mode, on Redis and Kafka.
    let cluster_receiver = PushReceiver::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("start push receiver");
    let (redis, kafka) = tokio::task::block_in_place(|| (RedisServer::start(), Tansu::start()));
    let settings = ClusterSettings {
        redis: redis.addr,
        kafka: kafka.addr,
        push_url: cluster_receiver.url(),
        key_prefix: format!("systest-monitoring-{}", std::process::id()),
        topic_prefix: "systest-monitoring".to_string(),
        lease: Duration::from_secs(6),
    };
    let node = settings.start_node("monitoring-gw1");

    let prometheus = start_prometheus(
        &[
            (single.metrics, "single"),
            (node.hub.metrics, "monitoring-gw1"),
        ],
        None,
        "1m",
    )
    .await;

    // The customer refuses the first seconds of pushes (retries, failed outcomes), then
    // takes everything.
    send_malformed_bytes(&single).await;
    receiver.set_failing(true);
    tokio::join!(drive_fleet(&single, &receiver, 20, 5), async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        receiver.set_failing(false);
    });
    drive_fleet(&node.hub, &cluster_receiver, 10, 0).await;

    // Each selector once Prometheus has scraped the nodes after all that.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        for selector in &wanted {
            if query(prometheus.addr, selector).await.is_empty() {
                missing.push(selector.clone());
            }
        }
        if missing.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        missing.is_empty(),
        "selectors of the dashboard or alert.yml with no series in Prometheus after 60 s: {missing:#?}"
    );
    drop(node);
    drop(kafka);
    drop(redis);
}

/// Node down, end to end: Prometheus (shipped rules, `for:` shortened) sees iothubd stopped,
/// fires IothubNodeDown, Alertmanager (shipped routing) delivers it to a webhook; restarting
/// iothubd resolves it and Alertmanager says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_alert_reaches_the_webhook_and_resolves_when_the_node_returns() {
    let webhook = Webhook::start().await;
    let alertmanager = start_alertmanager(&webhook.url).await;
    let mut hub = Hub::start(&[("gateId", "alerting")]);
    let prometheus =
        start_prometheus(&[(hub.metrics, "alerting")], Some(alertmanager.addr), "3s").await;

    // Prometheus scrapes the node and has found Alertmanager before the fault.
    let deadline = Instant::now() + Duration::from_secs(30);
    while query(prometheus.addr, "up{job=\"iothub\",node=\"alerting\"} == 1")
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape iothubd within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        query(prometheus.addr, "ALERTS{alertname=\"IothubNodeDown\"}")
            .await
            .is_empty(),
        "IothubNodeDown before the node was stopped"
    );

    hub.stop();
    let firing = webhook
        .wait_for(
            "firing",
            "IothubNodeDown",
            "alerting",
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(firing["labels"]["severity"], "critical", "{firing}");
    assert_eq!(
        firing["labels"]["instance"],
        hub.metrics.to_string(),
        "{firing}"
    );
    for key in ["summary", "description", "runbook"] {
        assert!(
            firing["annotations"][key]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "no {key}: {firing}"
        );
    }

    hub.restart();
    webhook
        .wait_for(
            "resolved",
            "IothubNodeDown",
            "alerting",
            Duration::from_secs(60),
        )
        .await;
    drop(prometheus);
    drop(alertmanager);
}

#[test]
fn selectors_are_found_in_promql() {
    let found = selectors(&[
        "sum by (node) (rate(iothub_frames_total{node=~\"$node\"}[$__rate_interval]))".into(),
        "up{job=\"iothub\"} == 0".into(),
        "process_open_fds{job=\"iothub\"} / iothub_open_files_limit > 0.9".into(),
    ]);
    let expected: BTreeSet<String> = [
        "iothub_frames_total{node=~\".*\"}",
        "up{job=\"iothub\"}",
        "process_open_fds{job=\"iothub\"}",
        "iothub_open_files_limit",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(found, expected);
}
