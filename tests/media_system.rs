//! System tests of the media server: the real iothubd binary, FFmpeg as the independent
//! publisher and player (Debian's ffmpeg package), openssl making certificates exactly as
//! the operator's guide does, and simulated JT/T 808 dashcams from loadgen streaming JT/T
//! 1078.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use iothub::imei::Imei;
use iothub_loadgen::tracker::{SimTracker, SimTrackerConfig};
use iothub_system_tests::{free_port, iothubd_bin, metric_value, Hub, MediaPorts, TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn require(tool: &str, package: &str) {
    let found = Command::new(tool)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{tool} is needed by the media tests: apt-get install {package}"
    );
}

fn require_ffmpeg() {
    require("ffmpeg", "ffmpeg");
    require("ffprobe", "ffmpeg");
}

/// FFmpeg publishing a 640x360 H.264 + AAC test pattern to `url` for `seconds`.
fn publish(url: &str, seconds: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=640x360:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-sc_threshold",
            "0",
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-t", &seconds.to_string()])
        .args(["-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ffmpeg")
}

/// ffprobe's streams of `url`, retried until the stream is there (the publisher needs a
/// moment) or `WAIT` has passed.
fn probe(url: &str, extra: &[&str]) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-rw_timeout", "10000000"])
            .args(extra)
            .args([
                "-show_entries",
                "stream=codec_type,codec_name,width,height,sample_rate,channels",
                "-of",
                "json",
                url,
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
}

fn stream_of<'a>(probe: &'a Value, kind: &str) -> &'a Value {
    probe["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} stream in {probe}"))
}

/// FFmpeg decoding 50 video frames of `url`: the exit status and what it printed.
fn decode(url: &str, extra: &[&str]) -> Output {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-rw_timeout", "10000000"])
        .args(extra)
        .args(["-i", url, "-frames:v", "50", "-f", "null", "-"])
        .output()
        .expect("run ffmpeg")
}

/// A GT06 tracker logged in as `imei`: JIMI dashcams publish only while online.
async fn online(hub: &Hub, imei: &str) -> SimTracker {
    SimTracker::connect_and_login(hub.gt06, SimTrackerConfig::new(Imei::parse(imei).unwrap()))
        .await
        .expect("tracker logs in")
}

fn ended(mut child: Child, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("child output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().expect("child output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_publish_plays_as_http_flv_and_rtmp() {
    require_ffmpeg();
    let hub = Hub::start(&[]);
    let imei = "868120303960873";
    let _tracker = online(&hub, imei).await;
    let publisher = publish(&format!("rtmp://{}/live/1/{imei}", hub.media.rtmp), 20);

    let flv = format!("http://{}/live/1/{imei}.flv", hub.media.http_flv);
    let probed = tokio::task::spawn_blocking({
        let flv = flv.clone();
        move || probe(&flv, &[])
    })
    .await
    .unwrap();
    let video = stream_of(&probed, "video");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["width"], 640);
    assert_eq!(video["height"], 360);
    assert_eq!(stream_of(&probed, "audio")["codec_name"], "aac");

    let decoded = tokio::task::spawn_blocking({
        let flv = flv.clone();
        move || decode(&flv, &[])
    })
    .await
    .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "ffmpeg could not decode {flv}: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );

    let rtmp = format!("rtmp://{}/live/1/{imei}", hub.media.rtmp);
    let played = tokio::task::spawn_blocking(move || decode(&rtmp, &[]))
        .await
        .unwrap();
    assert!(
        played.status.success(),
        "ffmpeg could not play RTMP: {}",
        String::from_utf8_lossy(&played.stderr)
    );
    let out = ended(publisher, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "the publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_publish_for_a_device_that_is_not_online() {
    require_ffmpeg();
    let hub = Hub::start(&[]);
    let publisher = publish(
        &format!("rtmp://{}/live/1/868120303960873", hub.media.rtmp),
        5,
    );
    let out = tokio::task::spawn_blocking(move || ended(publisher, Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "publishing for an offline device was accepted"
    );
    let metrics = hub.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "iothub_media_publishes_total",
            &["source=\"rtmp\""]
        ),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_stream_is_answered_404_naming_the_reason() {
    let hub = Hub::start(&[]);
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .arg(format!(
            "http://{}/live/1/868120303960873.flv",
            hub.media.http_flv
        ))
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.ends_with("\n404"), "{text}");
    assert!(text.contains("not online"), "{text}");
    let bad = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/etc/passwd", hub.media.http_flv))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&bad.stdout), "404");
}

// ---- TLS: certificates made as the operator's guide (§2.1.1) makes them ----

struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed by the TLS tests: apt-get install openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// server.key, server.crt (CN=localhost, SAN 127.0.0.1), ssl.pem = crt + key, ssl.p12.
fn make_certs() -> Certs {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    openssl(d, &["genrsa", "-out", "server.key", "2048"]);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-days",
            "3650",
            "-in",
            "server.csr",
            "-signkey",
            "server.key",
            "-out",
            "server.crt",
            "-extfile",
            "san.ext",
        ],
    );
    let crt = std::fs::read(d.join("server.crt")).unwrap();
    let key = std::fs::read(d.join("server.key")).unwrap();
    std::fs::write(d.join("ssl.pem"), [crt.clone(), key.clone()].concat()).unwrap();
    std::fs::write(d.join("key-first.pem"), [key, crt].concat()).unwrap();
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-in",
            "server.crt",
            "-inkey",
            "server.key",
            "-out",
            "ssl.p12",
            "-passout",
            "pass:s3cret",
        ],
    );
    Certs { dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_publish_plays_as_https_flv_with_a_pkcs12_certificate() {
    require_ffmpeg();
    let certs = make_certs();
    // Mounted under the name the guide uses, whatever its kind.
    let p12 = certs.path("ssl.p12");
    let hub = Hub::start(&[
        ("IOTHUB_MEDIA_TLS_CERTIFICATE", p12.to_str().unwrap()),
        ("IOTHUB_MEDIA_TLS_PASSWORD", "s3cret"),
    ]);
    let imei = "868120303960874";
    let _tracker = online(&hub, imei).await;
    let publisher = publish(&format!("rtmps://{}/live/0/{imei}", hub.media.rtmps), 20);
    let ca = certs.path("server.crt");
    let https = format!("https://{}/live/0/{imei}.flv", hub.media.https_flv);
    let probed = tokio::task::spawn_blocking({
        let (https, ca) = (https.clone(), ca.clone());
        move || {
            probe(
                &https,
                &["-tls_verify", "1", "-ca_file", ca.to_str().unwrap()],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(stream_of(&probed, "video")["codec_name"], "h264");
    assert_eq!(stream_of(&probed, "audio")["codec_name"], "aac");
    let rtmps = format!("rtmps://{}/live/0/{imei}", hub.media.rtmps);
    let played = tokio::task::spawn_blocking(move || decode(&rtmps, &[]))
        .await
        .unwrap();
    assert!(
        played.status.success(),
        "ffmpeg could not play RTMPS: {}",
        String::from_utf8_lossy(&played.stderr)
    );
    let metrics = hub.metrics_text().await;
    assert!(
        metric_value(
            &metrics,
            "iothub_tls_certificate_expiry_timestamp_seconds",
            &[]
        ) > 1.0e9,
        "{metrics}"
    );
    drop(ended(publisher, Duration::from_secs(30)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_flv_serves_with_a_pem_whose_key_comes_first() {
    let certs = make_certs();
    let pem = certs.path("key-first.pem");
    let hub = Hub::start(&[("IOTHUB_MEDIA_TLS_CERTIFICATE", pem.to_str().unwrap())]);
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(certs.path("server.crt"))
        .arg(format!(
            "https://{}/live/1/868120303960873.flv",
            hub.media.https_flv
        ))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "404",
        "the TLS handshake with the PEM certificate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// iothubd with this certificate setting: it must exit, and what it printed.
fn start_refused(env: &[(&str, &str)]) -> String {
    let tmp = tempfile::tempdir().expect("temp dir");
    let port = || format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(iothubd_bin());
    cmd.env("IOTHUB_GT06_LISTEN", port())
        .env("IOTHUB_JT808_LISTEN", port())
        .env("IOTHUB_API_LISTEN", port())
        .env("IOTHUB_METRICS_LISTEN", port())
        .envs(MediaPorts::new().env())
        .env("IOTHUB_DATA_DIR", tmp.path())
        .env("apiToken", TOKEN)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start iothubd");
    let out = ended(child, Duration::from_secs(20));
    assert!(
        !out.status.success(),
        "iothubd started with {env:?}; it must refuse"
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_wrong_pkcs12_password_stops_start_up_naming_the_file() {
    let certs = make_certs();
    let p12 = certs.path("ssl.p12");
    let log = start_refused(&[
        ("IOTHUB_MEDIA_TLS_CERTIFICATE", p12.to_str().unwrap()),
        ("IOTHUB_MEDIA_TLS_PASSWORD", "wrong"),
    ]);
    assert!(log.contains(p12.to_str().unwrap()), "{log}");
    assert!(log.to_lowercase().contains("password"), "{log}");
}

#[test]
fn a_missing_certificate_stops_start_up_naming_the_file() {
    let log = start_refused(&[("IOTHUB_MEDIA_TLS_CERTIFICATE", "/nonexistent/ssl.p12")]);
    assert!(log.contains("/nonexistent/ssl.p12"), "{log}");
}

// ---- JT/T 1078: simulated dashcams streaming on the hub's request ----

mod jt1078 {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use iothub::imei::Imei;
    use iothub::media::jt1078::Layout;
    use iothub_loadgen::dvr_stream::{DvrMedia, DvrMediaConfig, MediaSource, StreamEnd};
    use iothub_loadgen::jt808_terminal::{Jt808Version, SimTerminal, SimTerminalConfig};
    use iothub_system_tests::{metric_value, Hub, TOKEN};
    use serde_json::Value;
    use std::process::Command;

    use super::{decode, probe, require_ffmpeg, stream_of};

    /// An H.264 test pattern (352x288, 15 fps, a key frame a second; `noisy`: covered in
    /// noise, about 2 Mbit/s) and a 440 Hz G.711A tone, made by FFmpeg.
    fn media_files(dir: &std::path::Path, noisy: bool) -> (std::path::PathBuf, std::path::PathBuf) {
        let video = dir.join("v.264");
        let audio = dir.join("a.g711a");
        let run = |args: &[&str]| {
            let out = Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-y"])
                .args(args)
                .output()
                .expect("run ffmpeg");
            assert!(
                out.status.success(),
                "ffmpeg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let filter = if noisy {
            "noise=alls=60:allf=t"
        } else {
            "null"
        };
        run(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=352x288:rate=15",
            "-t",
            "10",
            "-vf",
            filter,
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "15",
            "-bsf:v",
            "h264_mp4toannexb",
            "-f",
            "h264",
            video.to_str().unwrap(),
        ]);
        run(&[
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:sample_rate=8000",
            "-t",
            "10",
            "-ac",
            "1",
            "-c:a",
            "pcm_alaw",
            "-f",
            "alaw",
            audio.to_str().unwrap(),
        ]);
        (video, audio)
    }

    struct Dashcam {
        dvr: DvrMedia,
        imei: String,
        _dir: tempfile::TempDir,
        _run: tokio::task::JoinHandle<()>,
    }

    /// A JT/T 808 dashcam logged in to `hub` that streams the test files when asked.
    async fn dashcam(
        hub: &Hub,
        imei: &str,
        version: Jt808Version,
        layout: Layout,
        max_body: usize,
        hisilicon: bool,
        noisy: bool,
    ) -> Dashcam {
        require_ffmpeg();
        let dir = tempfile::tempdir().expect("temp dir");
        let (video, audio) = media_files(dir.path(), noisy);
        let source = MediaSource::load(&video, Some(&audio), hisilicon).expect("media source");
        let mut config = DvrMediaConfig::new(layout);
        config.max_body = max_body;
        config.duration = Duration::from_secs(90);
        let dvr = DvrMedia::new(config, Arc::new(source)).expect("dvr media");
        let mut terminal_config = SimTerminalConfig::new(Imei::parse(imei).unwrap(), version);
        terminal_config.live_media = Some(Arc::new(dvr.clone()));
        let mut terminal = SimTerminal::connect_and_login(hub.jt808, terminal_config)
            .await
            .expect("register and authenticate");
        let run = tokio::spawn(async move {
            let _ = terminal
                .run_until(tokio::time::Instant::now() + Duration::from_secs(120))
                .await;
        });
        Dashcam {
            dvr,
            imei: imei.to_string(),
            _dir: dir,
            _run: run,
        }
    }

    async fn probe_async(url: String) -> Value {
        tokio::task::spawn_blocking(move || probe(&url, &[]))
            .await
            .unwrap()
    }

    async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !check() {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn closed_by_platform(dvr: &DvrMedia) -> u64 {
        dvr.report()
            .ends
            .iter()
            .find(|(end, _)| *end == StreamEnd::ClosedByPlatform)
            .map_or(0, |(_, n)| *n)
    }

    /// A viewer's URL makes the hub ask the dashcam (0x9101); the stream it sends in
    /// subpackages plays; the hub closes it (0x9102) once nobody watches.
    async fn on_demand_stream_plays_and_closes(version: Jt808Version, layout: Layout, imei: &str) {
        let hub = Hub::start(&[("IOTHUB_MEDIA_IDLE_CLOSE", "2")]);
        let cam = dashcam(&hub, imei, version, layout, 400, false, false).await;
        let url = format!("http://{}/1/{}.flv", hub.media.http_flv, cam.imei);
        let probed = probe_async(url.clone()).await;
        let video = stream_of(&probed, "video");
        assert_eq!(video["codec_name"], "h264");
        assert_eq!(video["width"], 352);
        assert_eq!(video["height"], 288);
        assert_eq!(
            cam.dvr.report().requests,
            1,
            "one 0x9101 reached the dashcam"
        );
        assert!(cam.dvr.report().packets > 0);
        let decoded = tokio::task::spawn_blocking(move || decode(&url, &[]))
            .await
            .unwrap();
        assert!(
            decoded.status.success(),
            "ffmpeg could not decode the JT/T 1078 stream: {}",
            String::from_utf8_lossy(&decoded.stderr)
        );
        until(
            "0x9102 at the dashcam after the last viewer left",
            Duration::from_secs(15),
            || closed_by_platform(&cam.dvr) == 1,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_2013_dashcam_streams_on_demand_in_the_2016_layout() {
        on_demand_stream_plays_and_closes(Jt808Version::V2013, Layout::Sim6, "869247060001762")
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_2019_dashcam_streams_on_demand_in_the_2019_layout() {
        on_demand_stream_plays_and_closes(Jt808Version::V2019, Layout::Sim10, "869247060001770")
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn device_g711a_reaches_the_flv_viewer_as_aac() {
        let hub = Hub::start(&[]);
        let cam = dashcam(
            &hub,
            "869247060001788",
            Jt808Version::V2013,
            Layout::Sim6,
            950,
            true,
            false,
        )
        .await;
        let probed = probe_async(format!("http://{}/2/{}.flv", hub.media.http_flv, cam.imei)).await;
        let audio = stream_of(&probed, "audio");
        assert_eq!(audio["codec_name"], "aac", "{probed}");
        assert_eq!(stream_of(&probed, "video")["codec_name"], "h264");
        let metrics = hub.metrics_text().await;
        assert!(
            metric_value(&metrics, "iothub_media_transcoded_frames_total", &[]) > 0.0,
            "{metrics}"
        );
    }

    /// The media server's 0x9101 does not take the instruction slot: a customer's
    /// instruction sent while the stream starts is answered, not refused as busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn media_signals_never_make_send_instruct_busy() {
        let hub = Hub::start(&[]);
        let cam = dashcam(
            &hub,
            "869247060001796",
            Jt808Version::V2013,
            Layout::Sim6,
            950,
            false,
            false,
        )
        .await;
        let url = format!("http://{}/1/{}.flv", hub.media.http_flv, cam.imei);
        let viewer = tokio::spawn(probe_async(url));
        let mut codes = Vec::new();
        for flag in 1..=5u32 {
            let answer = send_instruct(&hub, &cam.imei, 33028, flag).await;
            codes.push(answer["data"]["_code"].as_str().unwrap_or("").to_string());
        }
        assert_eq!(
            codes,
            vec!["100"; 5],
            "sendInstruct answers while media starts"
        );
        let probed = viewer.await.unwrap();
        assert_eq!(stream_of(&probed, "video")["codec_name"], "h264");
    }

    async fn send_instruct(hub: &Hub, imei: &str, pro_no: u32, flag: u32) -> Value {
        let url = hub.instruct_url();
        let form = format!(
            "imei={imei}&proNo={pro_no}&serverFlagId={flag}&token={TOKEN}&timeOut=15&cmdContent={{}}"
        );
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "--max-time", "40", "-d", &form, &url])
                .output()
                .expect("curl must be installed (apt-get install curl)")
        })
        .await
        .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sendInstruct answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// One viewer that stops reading is disconnected; fifty others keep receiving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_viewer_does_not_slow_fifty_others() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let hub = Hub::start(&[
            ("IOTHUB_MEDIA_VIEWER_QUEUE_TAGS", "32"),
            ("IOTHUB_MEDIA_VIEWER_LAG_LIMIT", "2"),
            ("IOTHUB_HTTP_IDLE_TIMEOUT", "3"),
        ]);
        let cam = dashcam(
            &hub,
            "869247060001804",
            Jt808Version::V2013,
            Layout::Sim6,
            950,
            false,
            true,
        )
        .await;
        let addr = hub.media.http_flv;
        let path = format!("/1/{}.flv", cam.imei);
        // The first viewer starts the stream.
        probe_async(format!("http://{addr}{path}")).await;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        // The stalled viewer: a tiny receive buffer, and it never reads.
        let stalled = tokio::net::TcpSocket::new_v4().unwrap();
        stalled.set_recv_buffer_size(4096).unwrap();
        let mut stalled = stalled.connect(addr).await.unwrap();
        stalled.write_all(request.as_bytes()).await.unwrap();
        let counts: Vec<_> = (0..50)
            .map(|_| {
                let request = request.clone();
                tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    s.write_all(request.as_bytes()).await.unwrap();
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total = Vec::new();
                    let mut bytes = 0usize;
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_secs(12) {
                        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(n)) => bytes += n,
                            Err(_) => {}
                        }
                        if total.len() < (start.elapsed().as_secs() as usize) {
                            total.push(bytes);
                        }
                    }
                    total
                })
            })
            .collect();
        let mut all = Vec::new();
        for c in counts {
            all.push(c.await.unwrap());
        }
        for (i, seconds) in all.iter().enumerate() {
            assert!(seconds.len() >= 10, "viewer {i} ended early: {seconds:?}");
            assert!(
                seconds[9] > seconds[4] && seconds[4] > seconds[0],
                "viewer {i} stopped receiving: {seconds:?}"
            );
        }
        // The stalled viewer was disconnected: reading what the kernel still holds for it
        // ends in an end of stream.
        let mut buf = vec![0u8; 64 * 1024];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stalled.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the stalled viewer is still connected");
        let metrics = hub.metrics_text().await;
        let lagging = metric_value(
            &metrics,
            "iothub_media_viewers_dropped_total",
            &["reason=\"lagging\""],
        );
        let write_stalled = metric_value(
            &metrics,
            "iothub_http_timeouts_total",
            &["listener=\"http_flv\"", "phase=\"write\""],
        );
        assert!(lagging + write_stalled >= 1.0, "{metrics}");
        drop(stalled);
    }
}

// ---- A real browser: headless Chromium playing HTTP-FLV with mpegts.js ----

/// mpegts.js and playwright-core, installed from npm once per build directory.
fn browser_packages() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-packages");
    let ready = dir.join("node_modules/mpegts.js/dist/mpegts.js");
    if !ready.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .args(["mpegts.js@1.8.2", "playwright-core@1"])
            .output()
            .expect("npm is needed by the browser test: install Node.js and npm");
        assert!(
            out.status.success(),
            "npm install mpegts.js playwright-core failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Serves the player page and mpegts.js on a port of its own (another origin than the
/// FLV), until the test ends.
async fn serve_player_page(packages: &Path) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let script =
        std::fs::read(packages.join("node_modules/mpegts.js/dist/mpegts.js")).expect("mpegts.js");
    let page = b"<!doctype html><html><head><script src=\"/mpegts.js\"></script></head><body></body></html>".to_vec();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (script, page) = (script.clone(), page.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let (body, kind) = if head.starts_with("GET /mpegts.js") {
                    (script, "application/javascript")
                } else {
                    (page, "text/html")
                };
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(header.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_the_http_flv_url_with_mpegts_js() {
    require_ffmpeg();
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "the browser test needs Chromium: apt-get install chromium (or set CHROMIUM)"
    );
    let packages = tokio::task::spawn_blocking(browser_packages).await.unwrap();
    let page = serve_player_page(&packages).await;
    let hub = Hub::start(&[]);
    let imei = "868120303960881";
    let _tracker = online(&hub, imei).await;
    let publisher = publish(&format!("rtmp://{}/live/1/{imei}", hub.media.rtmp), 40);
    let flv = format!("http://{}/live/1/{imei}.flv", hub.media.http_flv);
    tokio::task::spawn_blocking({
        let flv = flv.clone();
        move || probe(&flv, &[])
    })
    .await
    .unwrap();
    // Beside its node_modules: ES modules resolve packages from the script's folder.
    let script = packages.join("play-flv.mjs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/play-flv.mjs"),
        &script,
    )
    .expect("copy the player script");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(format!("http://{page}/"))
            .arg(&flv)
            .arg("20")
            .current_dir(&packages)
            .output()
            .expect("node is needed by the browser test")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("browser: {stdout}");
    assert!(
        out.status.success(),
        "the browser run failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("browser output is not JSON ({e}): {stdout}"));
    let played = result["currentTime"].as_f64().unwrap_or(0.0);
    assert!(played >= 2.0, "playback did not advance: {result}");
    if result["support"]["h264"] == true {
        assert_eq!(result["videoWidth"], 640, "{result}");
    } else {
        println!("this Chromium cannot decode H.264 (MediaSource.isTypeSupported): played the audio track");
    }
    drop(ended(publisher, Duration::from_secs(60)));
}
