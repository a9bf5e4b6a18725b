//! HTTP-FLV and HTTPS-FLV egress at the Jimi hub's URLs. Each viewer is one streamed
//! response: the FLV header, then what the stream's GOP cache gives a new viewer
//! (metadata, sequence headers, the frames since the last key frame), then the live tags,
//! with timestamps from 0 for this viewer. The body is fed by the viewer's bounded queue, so
//! a viewer that stops reading only fills its own queue (the stream drops it), and its
//! connection is closed once a write has waited the HTTP idle timeout.
//!
//! In cluster mode a viewer of a stream published at another node is redirected there
//! (302, `Location:` that node's `media.advertise_http` with the same path and query):
//! players (ffplay, flv.js, mpegts.js, browsers) follow redirects, and the video then flows
//! from the node that has it, with no relay hop.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use iothub::media::flv;
use warp::http::{header, HeaderValue, Method, Request, Response, StatusCode};

use super::hub::{MediaHub, Placement, Refusal, StreamViewer, ViewerClock};
use super::keys::StreamKey;
use crate::http_server::TimedBody;

/// Most bytes of queued tags one body frame gathers.
const FRAME_BYTES: usize = 64 * 1024;

/// Once a tag is queued for a viewer, what else comes within this time goes out in the same
/// write (ZLMediaKit's "merge write"): a live stream's 25 video and 40 audio tags a second
/// become about 10 writes, and the viewer's task wakes that often instead of once per tag.
/// Players buffer far more than this, and the first frames go out at once.
const MERGE_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

pub type FlvResponse = Response<Either<Full<Bytes>, FlvBody>>;

/// The tower service of the HTTP-FLV listeners.
#[derive(Clone)]
pub struct FlvService {
    pub hub: MediaHub,
    /// `http` or `https`, for metrics.
    pub scheme: &'static str,
}

impl tower_service::Service<Request<TimedBody>> for FlvService {
    type Response = FlvResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<FlvResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<TimedBody>) -> Self::Future {
        let hub = self.hub.clone();
        let scheme = self.scheme;
        Box::pin(async move { Ok(serve(hub, scheme, request).await) })
    }
}

async fn serve(hub: MediaHub, scheme: &'static str, request: Request<TimedBody>) -> FlvResponse {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = match *request.method() {
        Method::OPTIONS => plain(StatusCode::NO_CONTENT, ""),
        Method::GET => view(&hub, scheme, request.uri()).await,
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "only GET plays a stream\n"),
    };
    let headers = response.headers_mut();
    // Browser players on another origin (flv.js, mpegts.js) read the stream with fetch.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        origin.unwrap_or(HeaderValue::from_static("*")),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("range, origin, accept"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

async fn view(hub: &MediaHub, scheme: &'static str, uri: &warp::http::Uri) -> FlvResponse {
    let Some(key) = StreamKey::from_flv_path(uri.path()) else {
        return plain(
            StatusCode::NOT_FOUND,
            "not a stream URL: /live/<ch>/<imei>.flv, /live/<imei>.flv, /<ch>/<imei>.flv or /<ch>/<imei>.history.flv\n",
        );
    };
    let refused = |refusal: Refusal| {
        let status =
            StatusCode::from_u16(refusal.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        plain(status, &format!("{key}: {refusal}\n"))
    };
    let mut viewer = match hub.locate(key).await {
        Ok(Placement::Here(viewer)) => viewer,
        Ok(Placement::Elsewhere(base)) => return redirect(key, &base, uri),
        Err(refusal) => return refused(refusal),
    };
    let start = match viewer.start(hub.config().start_timeout).await {
        Ok(start) => start,
        Err(refusal) => return refused(refusal),
    };
    metrics::counter!("iothub_media_viewers_started_total", "protocol" => scheme).increment(1);
    let mut clock = ViewerClock::new(&start.tags);
    let mut first = BytesMut::with_capacity(FRAME_BYTES);
    first.extend_from_slice(&flv::file_header(start.has_audio, start.has_video));
    for tag in &start.tags {
        flv::encode_tag(&clock.retime(tag), &mut first);
    }
    let body = FlvBody {
        viewer,
        clock,
        merge: None,
        pending: BytesMut::new(),
        first: Some(first.freeze()),
        bytes_out: metrics::counter!("iothub_media_bytes_out_total", "protocol" => scheme),
    };
    let mut response = Response::new(Either::Right(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("video/x-flv"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    headers.insert(header::EXPIRES, HeaderValue::from_static("-1"));
    response
}

/// 302 to the same path and query at `base`, the node the stream is published at.
fn redirect(key: StreamKey, base: &str, uri: &warp::http::Uri) -> FlvResponse {
    let target = redirect_target(base, uri);
    let Ok(location) = HeaderValue::from_str(&target) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{key}: published at a node whose address is not a URL: {base:?}\n"),
        );
    };
    metrics::counter!("iothub_media_viewer_redirects_total").increment(1);
    let mut response = plain(StatusCode::FOUND, &format!("{key}: published at {base}\n"));
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// `base` (no trailing slash) followed by the path and query of `uri`.
fn redirect_target(base: &str, uri: &warp::http::Uri) -> String {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{}{path_and_query}", base.trim_end_matches('/'))
}

fn plain(status: StatusCode, text: &str) -> FlvResponse {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(text.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// One viewer's FLV byte stream.
pub struct FlvBody {
    viewer: StreamViewer,
    clock: ViewerClock,
    /// The end of the merge window, while one is open.
    merge: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Tags taken from the queue and not yet sent.
    pending: BytesMut,
    first: Option<Bytes>,
    bytes_out: metrics::Counter,
}

impl Body for FlvBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            this.bytes_out.increment(first.len() as u64);
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            if let Some(window) = this.merge.as_mut() {
                std::task::ready!(window.as_mut().poll(cx));
                this.merge = None;
                while this.pending.len() < FRAME_BYTES {
                    let Some(tag) = this.viewer.try_next() else {
                        break;
                    };
                    flv::encode_tag(&this.clock.retime(&tag), &mut this.pending);
                }
                let out = this.pending.split().freeze();
                this.bytes_out.increment(out.len() as u64);
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            let Some(tag) = std::task::ready!(this.viewer.poll_next(cx)) else {
                return Poll::Ready(None);
            };
            flv::encode_tag(&this.clock.retime(&tag), &mut this.pending);
            this.merge = Some(Box::pin(tokio::time::sleep(MERGE_WINDOW)));
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::redirect_target;
    use warp::http::Uri;

    #[test]
    fn a_redirect_keeps_the_path() {
        let uri: Uri = "/1/868120303960873.flv".parse().unwrap();
        assert_eq!(
            redirect_target("http://node-2.example:8880", &uri),
            "http://node-2.example:8880/1/868120303960873.flv"
        );
    }

    #[test]
    fn a_redirect_keeps_the_query() {
        let uri: Uri = "/live/0/868120303960873.flv?token=abc&x=1".parse().unwrap();
        assert_eq!(
            redirect_target("http://10.0.0.7:8880/", &uri),
            "http://10.0.0.7:8880/live/0/868120303960873.flv?token=abc&x=1"
        );
    }
}
