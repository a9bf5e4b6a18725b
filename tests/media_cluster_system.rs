//! The media server in cluster mode, end to end: two real iothubd nodes sharing one real
//! Redis, a simulated JT/T 808 dashcam logged in to node A, and a viewer (ffprobe, curl)
//! at whichever node the test picks. The 0x9101 goes out through the node that holds the
//! dashcam's session, the media connection lands where the 0x9101 points, that node writes
//! the stream's route to Redis, and a viewer at the other node is redirected (302) there;
//! once nobody watches, the 0x9102 reaches the dashcam through its session's node and the
//! route is gone.
//!
//! No balancer is needed: a node's 0x9101 names its `media.public_host` and
//! `public_live_port`, which each test points at the JT/T 1078 listener it wants the media
//! connection to land on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub::imei::Imei;
use iothub::media::jt1078::Layout;
use iothub_loadgen::dvr_stream::{DvrMedia, DvrMediaConfig, MediaSource, StreamEnd};
use iothub_loadgen::jt808_terminal::{Jt808Version, SimTerminal, SimTerminalConfig};
use iothub_system_tests::cluster::RedisServer;
use iothub_system_tests::{free_port, metric_value, Hub};
use serde_json::Value;

/// Route lease of the nodes: short, so a route left behind would show within the test.
const LEASE_SECS: &str = "6";

/// How long ffprobe keeps retrying a URL.
const WAIT: Duration = Duration::from_secs(40);

/// One pair of nodes at a time: each test runs two hubs, Redis and FFmpeg on two cores.
static ONE_PAIR_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn require(tool: &str, package: &str) {
    let found = Command::new(tool)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{tool} is needed by the media cluster tests: apt-get install {package}"
    );
}

/// A node of the cluster on `redis`, its media listeners on ports of its own; `extra` adds
/// variables (where its 0x9101 points).
fn node(redis: &RedisServer, prefix: &str, gate_id: &str, extra: &[(&str, String)]) -> Hub {
    let internal = format!("127.0.0.1:{}", free_port());
    let mut env: Vec<(&str, String)> = vec![
        ("gateId", gate_id.to_string()),
        ("redisHost", redis.addr.ip().to_string()),
        ("redisPort", redis.addr.port().to_string()),
        ("IOTHUB_REDIS_PREFIX", prefix.to_string()),
        ("IOTHUB_REDIS_LEASE", LEASE_SECS.to_string()),
        ("IOTHUB_INTERNAL_LISTEN", internal),
        ("IOTHUB_MEDIA_IDLE_CLOSE", "2".to_string()),
    ];
    env.extend(extra.iter().cloned());
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    tokio::task::block_in_place(|| Hub::start(&refs))
}

/// An H.264 test pattern (352x288, 15 fps, a key frame a second) and a G.711A tone.
fn media_files(dir: &Path) -> (PathBuf, PathBuf) {
    let video = dir.join("v.264");
    let audio = dir.join("a.g711a");
    let run = |args: &str, out: &Path| {
        let result = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(args.split_whitespace())
            .arg(out)
            .output()
            .expect("run ffmpeg");
        assert!(
            result.status.success(),
            "ffmpeg {args} {}: {}",
            out.display(),
            String::from_utf8_lossy(&result.stderr)
        );
    };
    run(
        "-f lavfi -i testsrc=size=352x288:rate=15 -t 10 -c:v libx264 -profile:v baseline \
         -pix_fmt yuv420p -g 15 -bsf:v h264_mp4toannexb -f h264",
        &video,
    );
    run(
        "-f lavfi -i sine=f=440:sample_rate=8000 -t 10 -ac 1 -c:a pcm_alaw -f alaw",
        &audio,
    );
    (video, audio)
}

struct Dashcam {
    dvr: DvrMedia,
    imei: String,
    _dir: tempfile::TempDir,
    _run: tokio::task::JoinHandle<()>,
}

/// A JT/T 808 (2013) dashcam logged in to `hub` that streams the test files when asked.
async fn dashcam(hub: &Hub, imei: &str) -> Dashcam {
    require("ffmpeg", "ffmpeg");
    require("ffprobe", "ffmpeg");
    require("curl", "curl");
    let dir = tempfile::tempdir().expect("temp dir");
    let (video, audio) = media_files(dir.path());
    let source = MediaSource::load(&video, Some(&audio), false).expect("media source");
    let mut config = DvrMediaConfig::new(Layout::Sim6);
    config.max_body = 950;
    config.duration = Duration::from_secs(90);
    let dvr = DvrMedia::new(config, Arc::new(source)).expect("dvr media");
    let mut terminal_config =
        SimTerminalConfig::new(Imei::parse(imei).expect("test IMEI"), Jt808Version::V2013);
    terminal_config.live_media = Some(Arc::new(dvr.clone()));
    let mut terminal = SimTerminal::connect_and_login(hub.jt808, terminal_config)
        .await
        .expect("the dashcam registers and authenticates at node A");
    let run = tokio::spawn(async move {
        let _ = terminal
            .run_until(tokio::time::Instant::now() + Duration::from_secs(150))
            .await;
    });
    Dashcam {
        dvr,
        imei: imei.to_string(),
        _dir: dir,
        _run: run,
    }
}

fn closed_by_platform(dvr: &DvrMedia) -> u64 {
    dvr.report()
        .ends
        .iter()
        .find(|(end, _)| *end == StreamEnd::ClosedByPlatform)
        .map_or(0, |(_, n)| *n)
}

/// ffprobe's streams of `url` (following redirects, as ffprobe does), retried until it
/// finds one or `WAIT` has passed.
async fn probe(url: String) -> Value {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new("ffprobe")
                .args(["-v", "error", "-rw_timeout", "10000000"])
                .args([
                    "-show_entries",
                    "stream=codec_type,codec_name,width,height",
                    "-of",
                    "json",
                    &url,
                ])
                .output()
                .expect("run ffprobe");
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
                if v["streams"].as_array().is_some_and(|s| !s.is_empty()) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "ffprobe {url} found no stream within {WAIT:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    })
    .await
    .expect("ffprobe task")
}

fn video_of(probed: &Value) -> &Value {
    probed["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == "video"))
        .unwrap_or_else(|| panic!("no video stream in {probed}"))
}

/// curl without following redirects: the status and the `Location` it was sent to.
async fn first_answer(url: String) -> (String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "40"])
            .args(["-w", "%{http_code} %{redirect_url}", &url])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (status, location) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        (status.to_string(), location.to_string())
    })
    .await
    .expect("curl task")
}

/// The stream route `{prefix}:media:{stream}` as (gate, url), polled until `accept` holds
/// or `within` passes; the last one read.
async fn stream_route(
    redis: &RedisServer,
    key: &str,
    within: Duration,
    accept: impl Fn(&Option<(String, String)>) -> bool,
) -> Option<(String, String)> {
    let mut conn = redis.connection().await.expect("test connection to Redis");
    let deadline = Instant::now() + within;
    loop {
        let (gate, url): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(key)
            .arg("gate")
            .arg("url")
            .query_async(&mut conn)
            .await
            .expect("HMGET");
        let route = gate.zip(url);
        if accept(&route) || Instant::now() >= deadline {
            return route;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which node the dashcam's media connection is sent to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MediaLandsAt {
    /// Node A, the node of its signalling session; the viewer asks node B.
    SessionNode,
    /// Node B; the viewer asks node A.
    OtherNode,
}

async fn a_viewer_at_the_node_without_the_stream_is_redirected(lands: MediaLandsAt, imei: &str) {
    let _one = ONE_PAIR_AT_A_TIME.lock().await;
    let redis = RedisServer::start();
    let prefix = format!("media-cluster-{imei}");
    let b = node(&redis, &prefix, "node-b", &[]);
    let a_extra = match lands {
        MediaLandsAt::SessionNode => vec![],
        MediaLandsAt::OtherNode => vec![
            ("IOTHUB_MEDIA_PUBLIC_HOST", "127.0.0.1".to_string()),
            (
                "IOTHUB_MEDIA_PUBLIC_LIVE_PORT",
                b.media.jt1078_live.port().to_string(),
            ),
        ],
    };
    let a = node(&redis, &prefix, "node-a", &a_extra);
    let cam = dashcam(&a, imei).await;
    let (viewer_node, stream_node, stream_gate, session_node_is_viewer) = match lands {
        MediaLandsAt::SessionNode => (&b, &a, "node-a", false),
        MediaLandsAt::OtherNode => (&a, &b, "node-b", true),
    };
    let path = format!("/1/{}.flv", cam.imei);
    let viewer_url = format!("http://{}{path}", viewer_node.media.http_flv);
    let stream_base = format!("http://{}", stream_node.media.http_flv);
    let route_key = format!("{prefix}:media:1/{}", cam.imei);

    let probing = tokio::spawn(probe(viewer_url.clone()));
    let route = stream_route(&redis, &route_key, Duration::from_secs(30), Option::is_some).await;
    assert_eq!(
        route,
        Some((stream_gate.to_string(), stream_base.clone())),
        "the stream's route names the node its media connection reached"
    );
    let probed = probing.await.expect("ffprobe task");
    let video = video_of(&probed);
    assert_eq!(video["codec_name"], "h264", "{probed}");
    assert_eq!(video["width"], 352, "{probed}");
    assert_eq!(video["height"], 288, "{probed}");
    assert_eq!(
        cam.dvr.report().requests,
        1,
        "one 0x9101 reached the dashcam"
    );

    let (status, location) = first_answer(format!("{viewer_url}?viewer=7")).await;
    assert_eq!(status, "302", "the viewer's node redirects");
    assert_eq!(
        location,
        format!("{stream_base}{path}?viewer=7"),
        "the redirect keeps the path and the query"
    );

    until(
        "0x9102 at the dashcam after the last viewer left",
        Duration::from_secs(20),
        || closed_by_platform(&cam.dvr) >= 1,
    )
    .await;
    let route = stream_route(&redis, &route_key, Duration::from_secs(10), Option::is_none).await;
    assert_eq!(route, None, "the ended stream's route is released");

    // One of the two signals crossed nodes: the 0x9101 (viewer at B, session at A) or the
    // 0x9102 (stream at B, session at A). Node A sent it to its session.
    let crossed = metric_value(
        &a.metrics_text().await,
        "iothub_cluster_media_signals_in_total",
        &[],
    );
    assert!(
        crossed >= 1.0,
        "node A took no media signal from node B (viewer at A: {session_node_is_viewer})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_at_the_session_s_node_is_started_from_the_other_node_and_redirected_to() {
    a_viewer_at_the_node_without_the_stream_is_redirected(
        MediaLandsAt::SessionNode,
        "869247060002711",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_landing_on_the_other_node_is_redirected_to_and_closed_from_there() {
    a_viewer_at_the_node_without_the_stream_is_redirected(
        MediaLandsAt::OtherNode,
        "869247060002729",
    )
    .await;
}
