//! The media server: dashcam video in over JT/T 1078 and RTMP, out as HTTP-FLV, HTTPS-FLV,
//! RTMP and RTMPS, at the ports and URLs of the Jimi hub's media server.
//!
//! - [`hub`]: the node's streams by key; publish and play; limits and on-demand starts.
//! - [`stream`]: `MediaStream`, the actor of one stream (GOP cache, viewers' queues).
//! - [`keys`]: stream keys and the URL conventions they come from.
//! - [`jt1078_ingest`]: the JT/T 1078 ports (TCP and UDP).
//! - [`rtmp`]: RTMP and RTMPS publishing and playing.
//! - [`http_flv`]: HTTP-FLV and HTTPS-FLV viewers.
//! - [`signals`]: 0x9101/0x9102 to the device's session, outside the instruction slot.
//! - [`transcode`]: device audio to AAC for browser players.

pub mod http_flv;
pub mod hub;
pub mod jt1078_ingest;
pub mod keys;
pub mod rtmp;
pub mod signals;
pub mod stream;
pub mod transcode;

use std::net::SocketAddr;
use std::sync::Arc;

use ractor::ActorCell;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::publish::Publisher;
use crate::registry::Registry;
use crate::tls::{ReloadingTls, TlsSettings};
use hub::MediaHub;
use jt1078_ingest::IngestContext;
use signals::DeviceSignals;

/// Describes the media server's metrics for `/metrics`.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "iothub_media_streams",
        "Live streams on this node, by kind (jimi_live, jimi_history, talk, jt_live, jt_playback)"
    );
    describe_gauge!(
        "iothub_media_viewers",
        "HTTP-FLV and RTMP viewers attached to streams"
    );
    describe_gauge!(
        "iothub_media_ingest_connections",
        "Open JT/T 1078 TCP connections"
    );
    describe_gauge!(
        "iothub_media_rtmp_connections",
        "Open RTMP and RTMPS connections"
    );
    describe_counter!(
        "iothub_media_publishes_total",
        "Streams published, by source (jt1078, rtmp)"
    );
    describe_counter!(
        "iothub_media_tags_in_total",
        "FLV tags streams received from their publishers"
    );
    describe_counter!(
        "iothub_media_bytes_in_total",
        "FLV tag bytes streams received from their publishers"
    );
    describe_counter!(
        "iothub_media_bytes_out_total",
        "Bytes sent to viewers, by protocol (http, https, rtmp, rtmps)"
    );
    describe_counter!(
        "iothub_media_ingest_packets_total",
        "JT/T 1078 packets received"
    );
    describe_counter!(
        "iothub_media_ingest_bytes_total",
        "JT/T 1078 bytes received"
    );
    describe_counter!("iothub_media_ingest_errors_total", "JT/T 1078 connections closed or frames dropped, by kind (malformed, bad_sim, unknown_device, refused, reassembly, ...)");
    describe_counter!(
        "iothub_media_ingest_refused_total",
        "JT/T 1078 connections or UDP sources refused at a limit"
    );
    describe_counter!(
        "iothub_media_viewers_started_total",
        "Viewers that got a stream's first tags, by protocol"
    );
    describe_counter!(
        "iothub_media_viewer_tags_dropped_total",
        "Tags a lagging viewer skipped (it goes on from the next key frame)"
    );
    describe_counter!(
        "iothub_media_viewers_dropped_total",
        "Viewers disconnected for staying behind past the lag limit"
    );
    describe_counter!(
        "iothub_media_publisher_tags_dropped_total",
        "Tags dropped because a stream fell behind its publisher"
    );
    describe_counter!(
        "iothub_media_refusals_total",
        "Publishes and plays refused at the node's stream or viewer limit, by reason"
    );
    describe_counter!(
        "iothub_media_on_demand_starts_total",
        "0x9101 sent because a viewer asked for a JT/T live stream that was not flowing"
    );
    describe_counter!(
        "iothub_media_idle_closes_total",
        "0x9102 sent because nobody watched a JT/T live stream for idle_close_secs"
    );
    describe_counter!(
        "iothub_media_start_timeouts_total",
        "Streams nobody published within the start timeout of their first viewer"
    );
    describe_counter!(
        "iothub_media_viewer_redirects_total",
        "Cluster mode: HTTP-FLV viewers redirected to the node their stream is published at"
    );
    describe_counter!(
        "iothub_media_stream_routes_lost_total",
        "Cluster mode: renewals that found a stream of this node routed to another node"
    );
    describe_counter!(
        "iothub_cluster_media_signals_in_total",
        "Cluster mode: 0x9101/0x9102 other nodes asked this node to send to its devices"
    );
    describe_counter!(
        "iothub_media_stream_failures_total",
        "Stream actors that failed (panicked)"
    );
    describe_counter!(
        "iothub_media_transcoded_frames_total",
        "Device audio frames transcoded to AAC"
    );
    describe_counter!(
        "iothub_media_transcode_errors_total",
        "Device audio frames that could not be transcoded"
    );
    describe_counter!(
        "iothub_tls_handshake_failures_total",
        "TLS handshakes that failed, by listener"
    );
    crate::tls::describe_metrics();
}

/// Where the media listeners listen (`None`: off).
#[derive(Debug, Clone, Copy, Default)]
pub struct MediaAddrs {
    pub http_flv: Option<SocketAddr>,
    pub https_flv: Option<SocketAddr>,
    pub rtmp: Option<SocketAddr>,
    pub rtmps: Option<SocketAddr>,
    pub jt1078_live: Option<SocketAddr>,
    pub jt1078_playback: Option<SocketAddr>,
}

/// A running media server.
pub struct MediaServer {
    pub hub: MediaHub,
    pub addrs: MediaAddrs,
    tasks: Vec<JoinHandle<()>>,
    http: Vec<JoinHandle<()>>,
    stop_http: watch::Sender<bool>,
    _tls: Option<Arc<ReloadingTls>>,
}

async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("media {name} listen {addr}: {e}"))
}

impl MediaServer {
    /// Loads the certificate (an unusable one stops start-up, naming the file and why),
    /// binds every configured listener and starts the `Media` supervisor under `parent`.
    pub async fn start(
        config: &Config,
        parent: ActorCell,
        registry: Registry,
        events: Publisher,
    ) -> anyhow::Result<MediaServer> {
        let m = &config.media;
        let tls = match &m.tls_certificate {
            Some(path) => {
                let tls = ReloadingTls::start(TlsSettings {
                    certificate: path.clone(),
                    password: m.tls_password.clone(),
                })
                .map_err(|e| anyhow::anyhow!("media.tls_certificate: {e}"))?;
                Some(tls)
            }
            None => None,
        };
        let mut addrs = MediaAddrs::default();
        let live = match m.jt1078_live_listen {
            Some(a) => Some(bind("jt1078 live", a).await?),
            None => None,
        };
        let playback = match m.jt1078_playback_listen {
            Some(a) => Some(bind("jt1078 playback", a).await?),
            None => None,
        };
        addrs.jt1078_live = live.as_ref().and_then(|l| l.local_addr().ok());
        addrs.jt1078_playback = playback.as_ref().and_then(|l| l.local_addr().ok());
        let public_live_port = match (m.public_live_port, addrs.jt1078_live) {
            (0, Some(a)) => a.port(),
            (port, _) => port,
        };
        let signals = DeviceSignals::new(registry, m.public_host.clone(), public_live_port);
        let hub = MediaHub::start(m.clone(), parent, signals, Some(events)).await?;
        let ingest = Arc::new(IngestContext {
            hub: hub.clone(),
            new_imei_rule: config.gateway.jt808_new_imei_rule,
        });
        let mut tasks = Vec::new();
        for (listener, is_playback) in [(live, false), (playback, true)] {
            let Some(listener) = listener else { continue };
            let addr = listener.local_addr()?;
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("media jt1078 udp listen {addr}: {e}"))?;
            tasks.push(tokio::spawn(jt1078_ingest::serve_tcp(
                listener,
                ingest.clone(),
                is_playback,
            )));
            tasks.push(tokio::spawn(jt1078_ingest::serve_udp(
                udp,
                ingest.clone(),
                is_playback,
            )));
        }
        if let Some(a) = m.rtmp_listen {
            let listener = bind("rtmp", a).await?;
            addrs.rtmp = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(rtmp::serve(listener, hub.clone(), None)));
        }
        if let (Some(a), Some(tls)) = (m.rtmps_listen, &tls) {
            let listener = bind("rtmps", a).await?;
            addrs.rtmps = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(rtmp::serve(
                listener,
                hub.clone(),
                Some(tls.clone()),
            )));
        }
        let (stop_http, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let mut http = Vec::new();
        if let Some(a) = m.http_flv_listen {
            let listener = bind("http-flv", a).await?;
            addrs.http_flv = Some(listener.local_addr()?);
            http.push(crate::http_server::spawn(
                "http_flv",
                listener,
                config.http,
                None,
                http_flv::FlvService {
                    hub: hub.clone(),
                    scheme: "http",
                },
                until_stopped(),
            ));
        }
        if let (Some(a), Some(tls)) = (m.https_flv_listen, &tls) {
            let listener = bind("https-flv", a).await?;
            addrs.https_flv = Some(listener.local_addr()?);
            http.push(crate::http_server::spawn(
                "https_flv",
                listener,
                config.http,
                Some(tls.clone()),
                http_flv::FlvService {
                    hub: hub.clone(),
                    scheme: "https",
                },
                until_stopped(),
            ));
        }
        tracing::info!(
            http_flv = ?addrs.http_flv,
            https_flv = ?addrs.https_flv,
            rtmp = ?addrs.rtmp,
            rtmps = ?addrs.rtmps,
            jt1078_live = ?addrs.jt1078_live,
            jt1078_playback = ?addrs.jt1078_playback,
            "media server listening"
        );
        Ok(MediaServer {
            hub,
            addrs,
            tasks,
            http,
            stop_http,
            _tls: tls,
        })
    }

    /// Stops ingest first, then every stream (viewers' responses end), then the listeners.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.hub.shutdown().await;
        let _ = self.stop_http.send(true);
        for task in self.http {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }
}
