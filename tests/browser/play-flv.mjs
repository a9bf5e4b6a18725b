// Plays an HTTP-FLV URL in headless Chromium with mpegts.js and reports, as one JSON line,
// what the browser supports and how far playback got.
//
//   node play-flv.mjs <page-url> <flv-url> <seconds>
//
// The page (served by the test, from another origin than the FLV) loads mpegts.js; this
// script drives Chromium through playwright-core.
import { chromium } from 'playwright-core';

const [pageUrl, flvUrl, seconds] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
  ],
});
try {
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  await page.goto(pageUrl);
  const result = await page.evaluate(async ({ flvUrl, seconds }) => {
    const support = {
      h264: MediaSource.isTypeSupported('video/mp4; codecs="avc1.42E01E"'),
      aac: MediaSource.isTypeSupported('audio/mp4; codecs="mp4a.40.2"'),
    };
    const media = document.createElement(support.h264 ? 'video' : 'audio');
    media.muted = true;
    document.body.appendChild(media);
    const player = mpegts.createPlayer(
      { type: 'flv', isLive: true, url: flvUrl, hasVideo: support.h264, hasAudio: true },
      { enableWorker: false, lazyLoad: false },
    );
    const errors = [];
    player.on(mpegts.Events.ERROR, (type, detail, info) => errors.push(`${type} ${detail} ${JSON.stringify(info)}`));
    player.attachMediaElement(media);
    player.load();
    try { await media.play(); } catch (e) { errors.push(`play: ${e}`); }
    const deadline = Date.now() + seconds * 1000;
    while (Date.now() < deadline && media.currentTime < 3) {
      await new Promise((r) => setTimeout(r, 200));
    }
    const out = {
      support,
      element: media.tagName.toLowerCase(),
      currentTime: media.currentTime,
      videoWidth: media.videoWidth || 0,
      videoHeight: media.videoHeight || 0,
      errors,
    };
    player.destroy();
    return out;
  }, { flvUrl, seconds: Number(seconds) });
  result.console = logs.slice(-20);
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
