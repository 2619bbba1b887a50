// Runs in the browser. Query string: ?api=<API URL>&key=<API key>
// The official client reads window.__ODYSSEY_API_URL__ when an Odyssey object is built,
// so it is set before the first `new Odyssey(...)`.
import { Odyssey } from "@odysseyml/odyssey";

const q = new URLSearchParams(location.search);
window.__ODYSSEY_API_URL__ = q.get("api");
const API_KEY = q.get("key");
const results = [];

function record(step, ok, detail) {
  const row = { step, result: ok ? "PASS" : "FAIL", detail: String(detail ?? "") };
  results.push(row);
  console.log("COMPAT " + JSON.stringify(row));
  const tr = document.createElement("tr");
  for (const v of [row.step, row.result, row.detail]) {
    const td = document.createElement("td");
    td.textContent = v;
    tr.appendChild(td);
  }
  document.getElementById("results").appendChild(tr);
}

function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

async function step(name, fn, { timeoutMs = 30000, detail } = {}) {
  const t0 = performance.now();
  try {
    const value = await withTimeout(Promise.resolve().then(fn), timeoutMs, name);
    const ms = Math.round(performance.now() - t0);
    record(name, true, `${detail ? detail(value) : ""} (${ms} ms)`.trim());
    return value;
  } catch (err) {
    record(name, false, `${err?.name ?? "Error"}: ${err?.message ?? err}`);
    return undefined;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(pred, ms) {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (pred()) return true;
    await sleep(50);
  }
  return pred();
}

// Counts frames presented by a <video> element (requestVideoFrameCallback).
function frameCounter(video) {
  const c = { frames: 0, width: 0, height: 0 };
  const tick = (_now, meta) => {
    c.frames += 1;
    c.width = meta.width;
    c.height = meta.height;
    video.requestVideoFrameCallback(tick);
  };
  video.requestVideoFrameCallback(tick);
  return c;
}

async function rtcSummary(pc) {
  if (!pc) return "no peer connection";
  const stats = await pc.getStats();
  const codecs = new Map();
  const out = { codec: "?", framesDecoded: 0, local: new Set(), remote: new Set(), dataChannels: 0 };
  stats.forEach((s) => { if (s.type === "codec") codecs.set(s.id, s.mimeType); });
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.codec = codecs.get(s.codecId) ?? "?";
      out.framesDecoded = s.framesDecoded ?? 0;
    }
    if (s.type === "local-candidate") out.local.add(`${s.candidateType}/${s.protocol}${s.address?.endsWith(".local") ? "/mdns" : ""}`);
    if (s.type === "remote-candidate") out.remote.add(`${s.candidateType}/${s.protocol}`);
    if (s.type === "data-channel" && s.state === "open") out.dataChannels += 1;
  });
  return `codec=${out.codec} framesDecoded=${out.framesDecoded} dataChannelsOpen=${out.dataChannels} ` +
    `local=[${[...out.local].join(",")}] remote=[${[...out.remote].join(",")}]`;
}

async function makeImage() {
  const canvas = document.createElement("canvas");
  canvas.width = 640; canvas.height = 360;
  const g = canvas.getContext("2d");
  g.fillStyle = "#c03030"; g.fillRect(0, 0, 320, 360);
  g.fillStyle = "#3030c0"; g.fillRect(320, 0, 320, 360);
  const blob = await new Promise((r) => canvas.toBlob(r, "image/png"));
  return new File([blob], "flag.png", { type: "image/png" });
}

async function run() {
  const mainVideo = document.getElementById("main");
  const counter = frameCounter(mainVideo);
  const events = [];
  let broadcastInfo = null;
  const client = new Odyssey({ apiKey: API_KEY });

  const media = await step("connect", () => client.connect({
    onStreamStarted: (id) => events.push("started"),
    onStreamEnded: () => events.push("ended"),
    onInteractAcknowledged: (p) => events.push("ack"),
    onBroadcastReady: (info) => { broadcastInfo = info; events.push("broadcast_ready"); },
    onStreamError: (r, m) => events.push(`error:${r}`),
    onError: (e, fatal) => events.push(`onError:${e?.message}`),
  }), { detail: () => `status=${client.currentStatus}` });
  if (!media) return finish(client);
  mainVideo.srcObject = media;
  await mainVideo.play().catch(() => {});

  const sid1 = await step("startStream (text)", () => client.startStream({ prompt: "A lighthouse at dusk", portrait: false }),
    { detail: (id) => `stream_id=${id}` });
  await step("interact #1", () => client.interact({ prompt: "The lamp turns on" }), { detail: (p) => `ack=${JSON.stringify(p)}` });
  await step("interact #2", () => client.interact({ prompt: "A ship passes by" }), { detail: (p) => `ack=${JSON.stringify(p)}` });
  // The track is live between streams too (idle picture), so let the stream itself run a while.
  await sleep(1000);
  const ok = await until(() => counter.frames >= 10, 10000);
  record("video frames presented (text stream)", ok, `${counter.frames} frames, ${counter.width}x${counter.height}`);
  record("WebRTC stats", true, await rtcSummary(client.pc));
  // Hand a few decoded pictures, at native size, to the driver, which checks their stamps.
  for (let i = 0; i < 3; i++) {
    const canvas = document.createElement("canvas");
    canvas.width = mainVideo.videoWidth; canvas.height = mainVideo.videoHeight;
    canvas.getContext("2d").drawImage(mainVideo, 0, 0);
    console.log("COMPAT_FRAME " + canvas.toDataURL("image/png"));
    await sleep(150);
  }
  await step("endStream", () => client.endStream());

  const file = await makeImage();
  const before = counter.frames;
  const sid2 = await step("startStream (image)", () => client.startStream({ prompt: "Animate this flag", portrait: true, image: file }),
    { detail: (id) => `stream_id=${id}` });
  await sleep(1000);
  const ok2 = await until(() => counter.frames >= before + 10, 10000);
  record("video frames presented (image stream)", ok2, `${counter.frames - before} frames, ${counter.width}x${counter.height}`);
  await step("endStream (image)", () => client.endStream());

  // Broadcast + spectator via WHEP.
  await step("startStream (broadcast)", () => client.startStream({ prompt: "Fireworks", portrait: false, broadcast: true }));
  const gotInfo = await until(() => broadcastInfo !== null, 15000);
  record("onBroadcastReady", gotInfo, gotInfo ? `webrtcUrl=${broadcastInfo.webrtcUrl}` : "never called");
  if (gotInfo) {
    const spec = await step("Odyssey.connectToStream (spectator)",
      () => Odyssey.connectToStream(broadcastInfo.webrtcUrl, broadcastInfo.spectatorToken));
    if (spec) {
      const sv = document.getElementById("spectator");
      const sc = frameCounter(sv);
      sv.srcObject = spec.stream;
      await sv.play().catch(() => {});
      const ok3 = await until(() => sc.frames >= 10, 15000);
      record("spectator frames presented", ok3, `${sc.frames} frames, ${sc.width}x${sc.height}; ${await rtcSummary(spec.pc)}`);
      await step("spectator disconnect", () => spec.disconnect());
    }
  }
  await step("endStream (broadcast)", () => client.endStream());

  for (const sid of [sid1, sid2].filter(Boolean)) {
    await step(`getRecording(${sid.slice(0, 12)}…)`, async () => {
      for (let i = 0; i < 40; i++) {
        try {
          const r = await client.getRecording(sid);
          if (r.video_url ?? r.videoUrl) return r;
        } catch (e) { /* 404 until finalised */ }
        await sleep(500);
      }
      throw new Error("no recording with a video URL");
    }, { detail: (r) => `frame_count=${r.frame_count ?? r.frameCount}` });
  }
  await step("listStreamRecordings", () => client.listStreamRecordings({ limit: 10 }),
    { detail: (r) => `total=${r.total} returned=${r.recordings.length}` });

  const script = [
    { timestamp_ms: 0, start: { prompt: "A cat sleeping" } },
    { timestamp_ms: 500, interact: { prompt: "The cat wakes up" } },
    { timestamp_ms: 1000, end: {} },
  ];
  const job = await step("simulate", () => client.simulate({ script, portrait: false }),
    { detail: (j) => `job_id=${j.job_id ?? j.jobId} status=${j.status}` });
  if (job) {
    const jobId = job.job_id ?? job.jobId;
    await step("getSimulateStatus until completed", async () => {
      for (;;) {
        const s = await client.getSimulateStatus(jobId);
        if (["completed", "failed", "cancelled"].includes(s.status)) {
          if (s.status !== "completed") throw new Error(`ended ${s.status}`);
          return s;
        }
        await sleep(300);
      }
    }, { timeoutMs: 60000, detail: (s) => `streams=${s.streams?.length}` });
  }
  await step("listSimulations", () => client.listSimulations({ limit: 5 }),
    { detail: (r) => `total=${r.total} returned=${r.jobs.length}` });
  const job2 = await step("simulate (to cancel)", () => client.simulate({ script }));
  if (job2) {
    await step("cancelSimulation", () => client.cancelSimulation(job2.job_id ?? job2.jobId), { detail: (j) => `status=${j.status}` });
  }
  record("callbacks", events.includes("ack") && events.includes("ended"), events.join(","));
  await step("disconnect", () => client.disconnect());

  // Two-phase auth: a key holder mints credentials, a key-less client connects with them.
  const creds = await step("createClientCredentials", () => new Odyssey({ apiKey: API_KEY }).createClientCredentials(),
    { detail: (c) => `sessionId=${c.sessionId} expiresIn=${c.expiresIn}` });
  if (creds) {
    const guest = new Odyssey();
    const gv = document.getElementById("main");
    const gc = frameCounter(gv);
    const gm = await step("connectWithCredentials", () => guest.connectWithCredentials(creds, {}));
    if (gm) {
      gv.srcObject = gm;
      await gv.play().catch(() => {});
      await step("startStream (credentials client)", () => guest.startStream({ prompt: "A forest path" }));
      await step("interact (credentials client)", () => guest.interact({ prompt: "It starts to rain" }));
      await sleep(1000);
      record("video frames (credentials client)", await until(() => gc.frames >= 5, 10000), `${gc.frames} frames`);
      await step("endStream (credentials client)", () => guest.endStream());
    }
    await step("disconnect (credentials client)", () => guest.disconnect());
  }

  // A wrong key: the server answers 401, which JS 1.3.1 turns into a plain Error("Invalid API key").
  try {
    await withTimeout(new Odyssey({ apiKey: "ody_wrong_key_for_compat_check" }).connect({}), 30000, "connect");
    record("connect with a wrong key", false, "connected?!");
  } catch (e) {
    record("connect with a wrong key", e?.message === "Invalid API key", `${e?.name}: ${e?.message}`);
  }
  return finish(null);
}

async function finish(client) {
  if (client) await step("disconnect", () => client.disconnect());
  document.getElementById("done").textContent = JSON.stringify(results);
  console.log("COMPAT_DONE " + JSON.stringify(results));
}

run().catch((e) => {
  record("uncaught", false, `${e?.name}: ${e?.message}`);
  document.getElementById("done").textContent = JSON.stringify(results);
  console.log("COMPAT_DONE " + JSON.stringify(results));
});
