//! Real media files for the tests, made once per test process by FFmpeg from its test
//! sources, and facts about them from ffprobe: the tests compare what iothub-loadgen reads
//! with what an independent implementation reports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A directory of this test process for generated files.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("iothub-loadgen-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    })
}

/// Runs `tool` with `args` and returns its standard output; panics with what to install
/// when the tool is missing, and with its standard error when it fails.
pub fn run_tool(tool: &str, args: &[&str]) -> String {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} is needed by this test (Debian: apt-get install ffmpeg openssl): {e}")
    });
    assert!(
        output.status.success(),
        "{tool} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Makes `name` in the scratch directory with ffmpeg once; returns its path.
fn made_once(cell: &'static OnceLock<PathBuf>, name: &str, args: &[&str]) -> &'static Path {
    cell.get_or_init(|| {
        let path = scratch().join(name);
        let path_str = path.to_str().expect("temporary directory path is UTF-8");
        let mut all = vec!["-v", "error", "-y"];
        all.extend_from_slice(args);
        all.push(path_str);
        run_tool("ffmpeg", &all);
        path
    })
}

/// Two seconds of 352x288 H.264 at 15 fps with a key frame every 15 frames, in FLV.
pub fn flv_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    made_once(
        &FILE,
        "x.flv",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=352x288:rate=15",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-g",
            "15",
            "-f",
            "flv",
        ],
    )
}

/// Ten seconds of 352x288 baseline H.264 at 15 fps, GOP 15, as an Annex-B elementary stream.
pub fn h264_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    made_once(
        &FILE,
        "v.264",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=352x288:rate=15",
            "-t",
            "10",
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
        ],
    )
}

/// The same picture with an access unit delimiter (NAL type 9) before every frame.
pub fn h264_aud_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    made_once(
        &FILE,
        "v-aud.264",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=352x288:rate=15",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "15",
            "-x264-params",
            "aud=1",
            "-bsf:v",
            "h264_mp4toannexb",
            "-f",
            "h264",
        ],
    )
}

/// Five seconds of a 440 Hz tone as raw 8 kHz mono G.711 A-law.
pub fn alaw_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    made_once(
        &FILE,
        "a.g711a",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:sample_rate=8000",
            "-t",
            "5",
            "-ac",
            "1",
            "-c:a",
            "pcm_alaw",
            "-f",
            "alaw",
        ],
    )
}

/// The number of video frames ffprobe decodes from `file`.
pub fn ffprobe_frames(file: &Path) -> u64 {
    let out = run_tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
            file.to_str().expect("UTF-8 path"),
        ],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("ffprobe frame count {out:?}: {e}"))
}

/// The video packets ffprobe finds in `file`, and how many of them are key frames.
pub fn ffprobe_packets(file: &Path) -> (u64, u64) {
    let out = run_tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=flags",
            "-of",
            "csv=p=0",
            file.to_str().expect("UTF-8 path"),
        ],
    );
    let packets = out.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    let keys = out.lines().filter(|l| l.starts_with('K')).count() as u64;
    (packets, keys)
}

/// A test certificate authority, a server certificate it signed for `localhost` and
/// 127.0.0.1 (with its key), and a second authority that signed nothing here.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// Makes [`TlsFiles`] once with openssl.
pub fn tls_files() -> &'static TlsFiles {
    static FILES: OnceLock<TlsFiles> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = scratch();
        let p = |name: &str| dir.join(name);
        let s = |path: &Path| path.to_str().expect("UTF-8 path").to_owned();
        let ca = |name: &str| {
            run_tool(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &s(&p(&format!("{name}.key"))),
                    "-out",
                    &s(&p(&format!("{name}.pem"))),
                ],
            );
        };
        ca("test-ca");
        ca("other-ca");
        run_tool(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &s(&p("server.key")),
                "-out",
                &s(&p("server.csr")),
            ],
        );
        std::fs::write(
            p("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write the extensions file");
        run_tool(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &s(&p("server.csr")),
                "-CA",
                &s(&p("test-ca.pem")),
                "-CAkey",
                &s(&p("test-ca.key")),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&p("server.ext")),
                "-out",
                &s(&p("server.pem")),
            ],
        );
        TlsFiles {
            ca: p("test-ca.pem"),
            other_ca: p("other-ca.pem"),
            chain: p("server.pem"),
            key: p("server.key"),
        }
    })
}
