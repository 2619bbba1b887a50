// Drives headless Chromium through index.html against an odyssey_sync.local server.
//
//   node drive.mjs                         # starts `python3 -m odyssey_sync.local` itself
//   node drive.mjs --api http://127.0.0.1:8787 --key KEY
//   node drive.mjs --no-mdns               # Chromium shows raw host IPs instead of *.local names
//   node drive.mjs --codec h264            # (self-started server) offer H.264 instead of VP8
//
// Exit code: number of failed steps (0 = all passed). Needs `npm install && npm run build` first,
// Chromium at $CHROMIUM (default /usr/bin/chromium), and python3 with odyssey_sync importable
// when the server is self-started (run from the repository root or set PYTHONPATH).
import { spawn, spawnSync } from "node:child_process";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, extname } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const flag = (name) => argv.includes(name);
const TOTAL_TIMEOUT_MS = Number(opt("--timeout", "180")) * 1000;

async function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

async function startLocalServer() {
  const port = await freePort();
  const key = "ody_compat_" + randomBytes(12).toString("hex");
  const dataDir = mkdtempSync(join(tmpdir(), "odyssey-compat-"));
  const args = ["-m", "odyssey_sync.local", "--port", String(port), "--api-key", key, "--data-dir", dataDir,
    "--size", opt("--size", "320x176"), "--fps", "15", "--codec", opt("--codec", "vp8")];
  if (flag("--server-log")) args.push("--verbose");
  const proc = spawn("python3", args, { stdio: ["ignore", "pipe", "inherit"], cwd: opt("--repo", join(here, "..", "..")) });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("local server did not start in 30 s")), 30000);
    proc.stdout.on("data", (buf) => {
      if (String(buf).includes("listening on")) { clearTimeout(timer); resolve(); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`local server exited with ${code}`)); });
  });
  const stop = async () => {
    if (proc.exitCode === null) {
      proc.kill("SIGTERM");
      await new Promise((r) => { const t = setTimeout(() => { proc.kill("SIGKILL"); r(); }, 10000); proc.on("exit", () => { clearTimeout(t); r(); }); });
    }
    rmSync(dataDir, { recursive: true, force: true });
  };
  return { api: `http://127.0.0.1:${port}`, key, stop };
}

// Static server for the page: a different origin than the API, so CORS is exercised.
async function startPageServer() {
  const types = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const rel = path === "/" ? "index.html" : path.slice(1);
    if (rel.includes("..") || !/^(index\.html|dist\/[\w.-]+)$/.test(rel)) { res.writeHead(404); res.end(); return; }
    try {
      const body = await readFile(join(here, rel));
      res.writeHead(200, { "Content-Type": types[extname(rel)] ?? "application/octet-stream" });
      res.end(body);
    } catch { res.writeHead(404); res.end(); }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { origin: `http://localhost:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

// Decodes the stamps of pictures the browser drew (PNG data URLs) with odyssey_sync's decoder.
function checkStamps(dataUrls) {
  const code = [
    "import base64, io, json, sys",
    "import numpy as np",
    "from PIL import Image",
    "from odyssey_sync.local.render.stamp import decode_stamp_raw",
    "out = []",
    "for url in json.load(sys.stdin):",
    "    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(',', 1)[1]))).convert('RGB'))",
    "    raw = decode_stamp_raw(img)",
    "    out.append(None if raw is None else raw[0])",
    "print(json.dumps(out))",
  ].join("\n");
  const r = spawnSync("python3", ["-c", code], {
    input: JSON.stringify(dataUrls), cwd: opt("--repo", join(here, "..", "..")), encoding: "utf8",
  });
  if (r.status !== 0) return { step: "stamps of browser-decoded frames", result: "FAIL", detail: (r.stderr || "").slice(-200) };
  const got = JSON.parse(r.stdout);
  const ok = got.length > 0 && got.every((f) => f !== null);
  return { step: "stamps of browser-decoded frames", result: ok ? "PASS" : "FAIL", detail: `frame numbers ${JSON.stringify(got)}` };
}

async function main() {
  let api = opt("--api"), key = opt("--key"), local = null;
  if (!api) { local = await startLocalServer(); ({ api, key } = local); }
  const page_ = await startPageServer();
  const userDataDir = mkdtempSync(join(tmpdir(), "chromium-compat-"));
  const args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required"];
  if (flag("--no-mdns")) args.push("--disable-features=WebRtcHideLocalIpsWithMdns");
  const browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true, args,
  });
  const rows = [];
  const frames = [];
  let done = false;
  try {
    const page = browser.pages()[0] ?? await browser.newPage();
    const finished = new Promise((resolve) => {
      page.on("console", (msg) => {
        const text = msg.text();
        if (text.startsWith("COMPAT_DONE ")) { done = true; resolve(); }
        else if (text.startsWith("COMPAT_FRAME ")) frames.push(text.slice(13));
        else if (text.startsWith("COMPAT ")) {
          const row = JSON.parse(text.slice(7));
          rows.push(row);
          console.log(`${row.result}  ${row.step}: ${row.detail}`);
        } else if (flag("--verbose") || msg.type() === "error") {
          console.log(`[browser ${msg.type()}] ${text}`);
        }
      });
      page.on("pageerror", (err) => console.log(`[page error] ${err.message}`));
      // Name every failed HTTP exchange: the console's "Failed to load resource" has no URL.
      page.on("response", (r) => {
        if (r.status() >= 400) console.log(`[http ${r.status()}] ${r.request().method()} ${r.url().replace(/token=[^&]+/, "token=…")}`);
      });
      page.on("requestfailed", (r) => console.log(`[http failed] ${r.method()} ${r.url().replace(/token=[^&]+/, "token=…")}: ${r.failure()?.errorText}`));
    });
    const url = `${page_.origin}/?api=${encodeURIComponent(api)}&key=${encodeURIComponent(key)}`;
    await page.goto(url);
    await Promise.race([finished, new Promise((r) => setTimeout(r, TOTAL_TIMEOUT_MS))]);
    if (!done) rows.push({ step: "page finished", result: "FAIL", detail: `not done after ${TOTAL_TIMEOUT_MS / 1000} s` });
    if (opt("--screenshot")) await page.screenshot({ path: opt("--screenshot") });
  } finally {
    await browser.close();
    rmSync(userDataDir, { recursive: true, force: true });
    await page_.close();
    if (local) await local.stop();
  }
  if (frames.length) rows.push(checkStamps(frames));
  const version = JSON.parse(await readFile(join(here, "node_modules/@odysseyml/odyssey/package.json"), "utf8")).version;
  console.log(`\n@odysseyml/odyssey ${version}, ${browser.browser()?.version?.() ?? "chromium"}${flag("--no-mdns") ? ", mDNS off" : ", mDNS host candidates (default)"}`);
  console.log("| step | result | detail |\n|---|---|---|");
  for (const r of rows) console.log(`| ${r.step} | ${r.result} | ${r.detail} |`);
  process.exitCode = rows.filter((r) => r.result !== "PASS").length;
}

main().catch((e) => { console.error(e); process.exitCode = 99; });
