//! The instruction API over real HTTP: the real server on 127.0.0.1:0, a real registry actor,
//! the real offline store in a temporary directory, and fake device sessions that answer the
//! way a live session does.

use std::sync::Arc;
use std::time::Duration;

use iothub::command::{InstructCode, Instruction, InstructionReply};
use iothub::imei::Imei;
use iothub_actors::api::{self, ApiDeps, ApiServer, MSG_CONVERTED};
use iothub_actors::config::Config;
use iothub_actors::gateway::control::{NotAnswered, SessionControl, SessionRef};
use iothub_actors::health::Health;
use iothub_actors::offline::OfflineCommands;
use iothub_actors::registry::{Registry, RegistryActor};
use iothub_actors::storage::Storage;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;
use tokio::sync::{oneshot, Mutex};

const TOKEN: &str = "t0ken-for-tests";
const IMEI: &str = "862798050240873";
const GATE: &str = "gate-test-1";

struct Hub {
    base: String,
    registry: Registry,
    offline: OfflineCommands,
    health: Health,
    server: ApiServer,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start_hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let env = |k: &str| match k {
        "apiToken" => Some(TOKEN.to_string()),
        "gateId" => Some(GATE.to_string()),
        "IOTHUB_API_LISTEN" => Some("127.0.0.1:0".to_string()),
        _ => None,
    };
    let mut config = Config::from_toml_str("", &env).unwrap();
    config.storage.data_dir = dir.path().to_path_buf();
    let (registry_ref, _) = Actor::spawn(None, RegistryActor, None).await.unwrap();
    let registry = Registry {
        actor: registry_ref,
        cluster: None,
    };
    let offline = OfflineCommands::open(Storage::open(&config.storage).unwrap());
    let health = Health::default();
    let server = api::start(
        &config,
        ApiDeps {
            registry: registry.clone(),
            offline: offline.clone(),
            gate_id: config.gate_id.clone(),
            health: health.clone(),
        },
    )
    .await
    .unwrap();
    Hub {
        base: format!("http://{}", server.local_addr()),
        registry,
        offline,
        health,
        server,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        _dir: dir,
    }
}

impl Hub {
    fn url(&self) -> String {
        format!("{}/api/device/sendInstruct", self.base)
    }

    /// Posts a form body; returns the HTTP status and the JSON answer.
    async fn form(&self, fields: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .client
            .post(self.url())
            .form(fields)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    async fn json(&self, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// Registers a fake session for `imei` that behaves as `behaviour`.
    async fn device(&self, imei: &str, behaviour: Behaviour) -> FakeDevice {
        let received = Arc::new(Mutex::new(Vec::new()));
        let (actor, _) = Actor::spawn(None, FakeSession, (behaviour, received.clone()))
            .await
            .unwrap();
        let session = SessionRef {
            id: actor.get_id(),
            control: actor.get_derived(),
        };
        self.registry
            .register(Imei::parse(imei).unwrap(), session)
            .await
            .unwrap();
        FakeDevice {
            _actor: actor,
            received,
        }
    }
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

fn request<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        ("imei", IMEI),
        ("cmdContent", "STATUS#"),
        ("serverFlagId", "7"),
        ("proNo", "128"),
        ("platform", "web"),
        ("requestId", "6"),
        ("cmdType", "normallns"),
        ("token", TOKEN),
    ];
    for (k, v) in extra {
        fields.retain(|(name, _)| name != k);
        fields.push((k, v));
    }
    fields
}

fn data(v: &Value) -> &Value {
    &v["data"]
}

// ---------------------------------------------------------------------------------------
// Fake device sessions.

#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers like a device that replied to the instruction.
    Reply,
    /// Answers 302: a previous instruction is still pending.
    Busy,
    /// Answers 600 when the instruction's timeout passes, as a live session does.
    Silent,
    /// Keeps the reply sender and never answers (a wedged session).
    Wedged,
    /// Drops the reply sender (a session that died holding the instruction).
    Dies,
}

struct FakeSession;

struct FakeState {
    behaviour: Behaviour,
    received: Arc<Mutex<Vec<Instruction>>>,
    held: Vec<oneshot::Sender<Result<InstructionReply, NotAnswered>>>,
}

struct FakeDevice {
    _actor: ActorRef<SessionControl>,
    received: Arc<Mutex<Vec<Instruction>>>,
}

impl Actor for FakeSession {
    type Msg = SessionControl;
    type State = FakeState;
    type Arguments = (Behaviour, Arc<Mutex<Vec<Instruction>>>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (behaviour, received): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(FakeState {
            behaviour,
            received,
            held: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SessionControl::Instruct {
            instruction,
            timeout,
            reply,
        } = msg
        else {
            return Ok(());
        };
        state.received.lock().await.push(instruction.clone());
        match state.behaviour {
            Behaviour::Reply => {
                let _ = reply.send(Ok(InstructionReply {
                    server_flag_id: instruction.server_flag_id,
                    pro_no: 128,
                    content: format!("reply to {}", instruction.content),
                }));
            }
            Behaviour::Busy => {
                let _ = reply.send(Err(InstructCode::Busy.into()));
            }
            Behaviour::Silent => {
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let _ = reply.send(Err(InstructCode::Timeout.into()));
                });
            }
            Behaviour::Wedged => state.held.push(reply),
            Behaviour::Dies => drop(reply),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Online devices.

#[tokio::test]
async fn online_device_reply_in_the_envelope() {
    let hub = start_hub().await;
    let device = hub.device(IMEI, Behaviour::Reply).await;
    let (status, v) = hub.form(&request(&[])).await;
    assert_eq!(status, 200);
    assert_eq!(v["code"], 0);
    assert_eq!(v["msg"], "success");
    assert_eq!(data(&v)["_code"], "100");
    assert_eq!(
        data(&v)["_msg"],
        "Command communication successful response"
    );
    assert_eq!(data(&v)["_imei"], IMEI);
    assert_eq!(data(&v)["_proNo"], 128);
    assert_eq!(data(&v)["_content"], "reply to STATUS#");
    assert_eq!(data(&v)["_serverFlagId"], 7);
    assert_eq!(data(&v)["_type"], "normallns");
    assert_eq!(data(&v)["_gateId"], GATE);
    let client_time = data(&v)["_route_client_time"].as_i64().unwrap();
    let server_time = data(&v)["_route_server_time"].as_i64().unwrap();
    assert!(client_time > 1_600_000_000_000, "{client_time}");
    assert!(server_time >= client_time);
    let received = device.received.lock().await.clone();
    assert_eq!(
        received,
        vec![Instruction {
            pro_no: 128,
            content: "STATUS#".into(),
            server_flag_id: 7
        }]
    );
}

#[tokio::test]
async fn json_body_with_device_imei_and_quoted_numbers() {
    let hub = start_hub().await;
    let _device = hub.device(IMEI, Behaviour::Reply).await;
    let body = format!(
        r#"{{"deviceImei":"{IMEI}","cmdContent":"VERSION#","serverFlagId":"3","proNo":"128","platform":"web","requestId":"12345","cmdType":"normallns","offlineFlag":"0","timeOut":"4","token":"{TOKEN}"}}"#
    );
    let (status, v) = hub.json(&body).await;
    assert_eq!(status, 200);
    assert_eq!(data(&v)["_code"], "100");
    assert_eq!(data(&v)["_content"], "reply to VERSION#");
    assert_eq!(data(&v)["_serverFlagId"], 3);
    assert_eq!(data(&v)["_imei"], IMEI);
}

#[tokio::test]
async fn json_body_with_numbers_and_device_imei_in_a_form() {
    let hub = start_hub().await;
    let _device = hub.device(IMEI, Behaviour::Reply).await;
    let body = format!(r#"{{"imei":{IMEI},"proNo":128,"cmdContent":"X","token":"{TOKEN}"}}"#);
    let (_, v) = hub.json(&body).await;
    assert_eq!(data(&v)["_code"], "100");

    let mut fields = request(&[("deviceImei", IMEI)]);
    fields.retain(|(k, _)| *k != "imei");
    let (_, v) = hub.form(&fields).await;
    assert_eq!(data(&v)["_code"], "100");
    assert_eq!(data(&v)["_imei"], IMEI);
}

#[tokio::test]
async fn busy_device_is_302() {
    let hub = start_hub().await;
    let _device = hub.device(IMEI, Behaviour::Busy).await;
    let (status, v) = hub.form(&request(&[])).await;
    assert_eq!(status, 200);
    assert_eq!(data(&v)["_code"], "302");
    assert_eq!(
        data(&v)["_msg"],
        "Device busy (previous command has not returned)"
    );
}

#[tokio::test]
async fn silent_device_is_600_after_the_timeout() {
    let hub = start_hub().await;
    let _device = hub.device(IMEI, Behaviour::Silent).await;
    let started = std::time::Instant::now();
    let (_, v) = hub.form(&request(&[("timeOut", "1")])).await;
    assert_eq!(data(&v)["_code"], "600");
    assert_eq!(data(&v)["_msg"], "request timeout");
    assert_ne!(v["msg"], MSG_CONVERTED, "nothing was stored");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn silent_device_with_offline_flag_is_600_and_queued() {
    let hub = start_hub().await;
    let _device = hub.device(IMEI, Behaviour::Silent).await;
    let (_, v) = hub
        .form(&request(&[("timeOut", "1"), ("offLineFlag", "1")]))
        .await;
    assert_eq!(data(&v)["_code"], "600");
    assert_eq!(v["msg"], MSG_CONVERTED);
    let pending = hub
        .offline
        .pending(Imei::parse(IMEI).unwrap())
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
}

#[tokio::test]
async fn wedged_session_is_cut_by_the_api_deadline() {
    let hub = start_hub().await;
    let _device = hub.device(IMEI, Behaviour::Wedged).await;
    let started = std::time::Instant::now();
    let (_, v) = hub.form(&request(&[("timeOut", "1")])).await;
    assert_eq!(data(&v)["_code"], "600");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

#[tokio::test]
async fn session_dying_with_the_instruction_is_300() {
    let hub = start_hub().await;
    let _device = hub.device(IMEI, Behaviour::Dies).await;
    let (_, v) = hub.form(&request(&[])).await;
    assert_eq!(data(&v)["_code"], "300");
    assert_eq!(data(&v)["_msg"], "Device not online");
}

// ---------------------------------------------------------------------------------------
// Offline devices.

#[tokio::test]
async fn offline_device_without_flag_is_300_and_not_stored() {
    let hub = start_hub().await;
    let (status, v) = hub.form(&request(&[])).await;
    assert_eq!(status, 200);
    assert_eq!(v["code"], 0);
    assert_eq!(data(&v)["_code"], "300");
    assert_eq!(data(&v)["_msg"], "Device not online");
    assert_eq!(data(&v)["_proNo"], 128);
    assert_eq!(data(&v)["_content"], "");
    assert_ne!(v["msg"], MSG_CONVERTED);
    let pending = hub
        .offline
        .pending(Imei::parse(IMEI).unwrap())
        .await
        .unwrap();
    assert!(pending.is_empty());
}

#[tokio::test]
async fn offline_device_with_offline_flag_is_queued() {
    let hub = start_hub().await;
    let (_, v) = hub.form(&request(&[("offlineFlag", "1")])).await;
    assert_eq!(data(&v)["_code"], "300");
    assert_eq!(v["msg"], MSG_CONVERTED);
    let pending = hub
        .offline
        .pending(Imei::parse(IMEI).unwrap())
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].instruction,
        Instruction {
            pro_no: 128,
            content: "STATUS#".into(),
            server_flag_id: 7
        }
    );
}

#[tokio::test]
async fn offline_flag_spelled_off_line_flag_true() {
    let hub = start_hub().await;
    let (_, v) = hub.form(&request(&[("offLineFlag", "true")])).await;
    assert_eq!(v["msg"], MSG_CONVERTED);
    let pending = hub
        .offline
        .pending(Imei::parse(IMEI).unwrap())
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Refusals.

#[tokio::test]
async fn wrong_token_is_401() {
    let hub = start_hub().await;
    let (status, v) = hub.form(&request(&[("token", "123456")])).await;
    assert_eq!(status, 401);
    assert_eq!(
        v,
        serde_json::json!({"code": 401, "msg": "token: invalid or missing"})
    );
}

#[tokio::test]
async fn missing_token_is_401() {
    let hub = start_hub().await;
    let mut fields = request(&[]);
    fields.retain(|(k, _)| *k != "token");
    let (status, _) = hub.form(&fields).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn missing_pro_no_names_the_field() {
    let hub = start_hub().await;
    let mut fields = request(&[]);
    fields.retain(|(k, _)| *k != "proNo");
    let (status, v) = hub.form(&fields).await;
    assert_eq!(status, 200);
    assert_eq!(data(&v)["_code"], "200");
    assert_eq!(data(&v)["_msg"], "proNo: missing");
}

#[tokio::test]
async fn bad_imei_names_the_field() {
    let hub = start_hub().await;
    let (_, v) = hub.form(&request(&[("imei", "86279805024087X")])).await;
    assert_eq!(data(&v)["_code"], "200");
    assert_eq!(data(&v)["_msg"], "imei: must be 1-20 digits");
}

#[tokio::test]
async fn bad_timeout_names_the_field() {
    let hub = start_hub().await;
    let (_, v) = hub.form(&request(&[("timeOut", "121")])).await;
    assert_eq!(data(&v)["_code"], "200");
    assert_eq!(data(&v)["_msg"], "timeOut: must be 1..=120 seconds");
    let (_, v) = hub.form(&request(&[("timeOut", "0")])).await;
    assert_eq!(data(&v)["_msg"], "timeOut: must be 1..=120 seconds");
}

#[tokio::test]
async fn malformed_json_is_200_naming_the_body() {
    let hub = start_hub().await;
    let (status, v) = hub.json("{\"imei\": ").await;
    assert_eq!(status, 200);
    assert_eq!(data(&v)["_code"], "200");
    assert!(
        data(&v)["_msg"].as_str().unwrap().starts_with("body: "),
        "{v}"
    );
}

#[tokio::test]
async fn body_over_64_kib_is_413() {
    let hub = start_hub().await;
    let content = "A".repeat(70 * 1024);
    let (status, v) = hub.form(&request(&[("cmdContent", &content)])).await;
    assert_eq!(status, 413);
    assert_eq!(v["code"], 413);
}

#[tokio::test]
async fn get_on_send_instruct_is_405() {
    let hub = start_hub().await;
    let response = hub.client.get(hub.url()).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
}

#[tokio::test]
async fn unknown_path_is_404() {
    let hub = start_hub().await;
    let response = hub
        .client
        .get(format!("{}/api/device/status", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
}

// ---------------------------------------------------------------------------------------
// Health, readiness, metrics, shutdown.

#[tokio::test]
async fn health_is_ok() {
    let hub = start_hub().await;
    let response = hub
        .client
        .get(format!("{}/health", hub.base))
        .send()
        .await
        .unwrap();
    let (status, v) = read(response).await;
    assert_eq!(status, 200);
    assert_eq!(v, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn ready_follows_the_registry() {
    let hub = start_hub().await;
    let response = hub
        .client
        .get(format!("{}/ready", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    hub.registry.actor.stop(None);
    // Stopping is asynchronous; the registry is gone once a call to it fails.
    for _ in 0..100 {
        if hub.registry.count().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = hub
        .client
        .get(format!("{}/ready", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
}

#[tokio::test]
async fn ready_is_503_naming_a_part_that_is_down() {
    let hub = start_hub().await;
    hub.health.set_down("storage", true);
    let response = hub
        .client
        .get(format!("{}/ready", hub.base))
        .send()
        .await
        .unwrap();
    let (status, v) = read(response).await;
    assert_eq!(status, 503);
    assert_eq!(v["failing"], serde_json::json!(["storage"]));
}

#[tokio::test]
async fn ready_is_200_again_once_the_part_is_back_up() {
    let hub = start_hub().await;
    hub.health.set_down("storage", true);
    hub.health.set_down("storage", false);
    let response = hub
        .client
        .get(format!("{}/ready", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn registry_down_is_500() {
    let hub = start_hub().await;
    hub.registry.actor.stop(None);
    for _ in 0..100 {
        if hub.registry.count().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, v) = hub.form(&request(&[])).await;
    assert_eq!(data(&v)["_code"], "500");
}

#[tokio::test]
async fn metrics_count_answers_by_code() {
    let defaults =
        Config::from_toml_str("", &|k: &str| (k == "apiToken").then(|| TOKEN.to_string())).unwrap();
    let metrics_addr =
        iothub_actors::telemetry::start_metrics("127.0.0.1:0".parse().unwrap(), defaults.http)
            .await
            .unwrap();
    let hub = start_hub().await;
    let (_, v) = hub.form(&request(&[])).await;
    assert_eq!(data(&v)["_code"], "300");
    let text = hub
        .client
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("iothub_api_requests_total{code=\"300\"}"),
        "{text}"
    );
    assert!(text.contains("# HELP iothub_api_requests_total"), "{text}");
    assert!(
        text.contains("iothub_api_request_duration_seconds_bucket{code=\"300\",le="),
        "{text}"
    );
}

#[tokio::test]
async fn shutdown_closes_the_listener() {
    let hub = start_hub().await;
    let addr = hub.server.local_addr();
    hub.server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
