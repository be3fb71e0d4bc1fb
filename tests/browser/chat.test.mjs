// The browser chat in a real browser: Debian's headless Chromium driven by
// playwright-core, against `courier standalone` on loopback ports. Two users in
// two browser contexts register, chat in a room and privately, reload, and lose
// their connection, and one is sent back to log in when the session ends
// elsewhere; screenshots land in artifacts/browser/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execSync } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const targetDir = process.env.CARGO_TARGET_DIR || join(process.env.HOME, ".cache/courier/target");
const courierBin = process.env.COURIER_BIN || join(targetDir, "debug/courier");
const artifacts = process.env.COURIER_ARTIFACTS || new URL("../../artifacts/browser/", import.meta.url).pathname;
const chromiumPath = process.env.CHROMIUM || execSync("command -v chromium", { shell: "/bin/bash" }).toString().trim();
const run = Date.now().toString(36).slice(-5);

let courier;
let browser;
let siteUrl;

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  const dataDir = mkdtempSync(join(tmpdir(), "courier-browser-"));
  const any = "127.0.0.1:0";
  courier = spawn(
    courierBin,
    ["standalone", "--no-demo-users", "--data-dir", dataDir, "--api-addr", any, "--ws-addr", any, "--tcp-addr", any,
      "--site-addr", any, "--admin-addr", any, "--sends-per-second", "0", "--requests-per-second-per-ip", "0"],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  siteUrl = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: courier.stdout });
    lines.on("line", (line) => {
      const match = line.match(/browser chat\s+(http:\/\/\S+)/);
      if (match) resolve(match[1]);
    });
    courier.on("exit", (code) => reject(new Error(`courier exited with ${code}`)));
    setTimeout(() => reject(new Error("courier did not print its addresses")), 30000);
  });
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
  });
});

after(async () => {
  await browser?.close();
  courier?.kill("SIGTERM");
});

async function signUp(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (error) => assert.fail(`page error for ${name}: ${error.message}`));
  await page.goto(siteUrl);
  await page.getByLabel("User name").fill(name);
  await page.getByLabel("Password").fill("browser-pw");
  await page.getByRole("button", { name: "Register" }).click();
  await page.locator("#connection", { hasText: /^online$/ }).waitFor();
  return page;
}

function messages(page, text) {
  return page.locator("#messages li", { hasText: text });
}

test("two users chat in a room and privately, reload, and recover after a dropped connection", async () => {
  const alice = await signUp(`alice${run}`);
  const bob = await signUp(`bob${run}`);

  // Room chat, with the sender's name and time.
  await alice.getByLabel("Message").fill("hello from alice");
  await alice.getByLabel("Message").press("Enter");
  const seen = messages(bob, "hello from alice");
  await seen.waitFor();
  assert.match(await seen.innerText(), new RegExp(`alice${run} · \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d`));
  await bob.screenshot({ path: join(artifacts, "1-room-chat.png") });

  // Member list, then a private chat from bob; alice sees an unread marker.
  await bob.locator("#members button", { hasText: `alice${run}` }).click();
  await bob.getByLabel("Message").fill("psst, alice");
  await bob.getByLabel("Message").press("Enter");
  await messages(bob, "psst, alice").waitFor();
  const privateChat = alice.locator("#rooms button", { hasText: `bob${run} (private)` });
  await privateChat.locator(".unread").waitFor();
  await alice.screenshot({ path: join(artifacts, "2-unread-marker.png") });
  await privateChat.click();
  await messages(alice, "psst, alice").waitFor();

  // Bob fills the room with more than one page of history.
  await bob.locator("#rooms button", { hasText: /^Room 1/ }).click();
  await bob.evaluate(async () => {
    const token = sessionStorage.getItem("courier.token");
    const config = await (await fetch("/config.json")).json();
    const api = config.apiUrl || `${location.protocol}//${location.hostname}:${config.apiPort}`;
    for (let i = 0; i < 55; i++) {
      await fetch(`${api}/push/pushRoom`, {
        method: "POST",
        body: JSON.stringify({ authToken: token, msg: `filler ${i}`, roomId: 1 }),
      });
    }
  });
  await messages(bob, "filler 54").waitFor();

  // A reload keeps the session and shows the room's recent history; older pages
  // come on request.
  await alice.reload();
  await alice.locator("#connection", { hasText: /^online$/ }).waitFor();
  await messages(alice, "filler 54").waitFor();
  assert.equal(await messages(alice, "hello from alice").count(), 0, "only the newest page at first");
  await alice.getByRole("button", { name: "Load older messages" }).click();
  await messages(alice, "hello from alice").waitFor();
  await alice.locator("#members button", { hasText: `bob${run}` }).waitFor();
  await alice.screenshot({ path: join(artifacts, "3-after-reload.png") });

  // Alice loses her connection; bob writes meanwhile; she gets each message once.
  await alice.evaluate(() => window.courierDebug.dropConnection(2500));
  await alice.locator("#connection", { hasText: /offline|reconnecting/ }).waitFor();
  for (const n of [1, 2, 3]) {
    await bob.getByLabel("Message").fill(`while you were away ${n}`);
    await bob.getByLabel("Message").press("Enter");
    await messages(bob, `while you were away ${n}`).waitFor();
  }
  await alice.locator("#connection", { hasText: /^online$/ }).waitFor();
  await alice.locator("#rooms button", { hasText: /^Room 1/ }).click();
  for (const n of [1, 2, 3]) {
    await messages(alice, `while you were away ${n}`).waitFor();
    assert.equal(await messages(alice, `while you were away ${n}`).count(), 1, "no duplicates after recovery");
  }
  assert.equal(await messages(alice, "hello from alice").count(), 1);
  await alice.locator("#online-count", { hasText: "(2)" }).waitFor();
  await alice.screenshot({ path: join(artifacts, "4-recovered.png") });

  // Errors are shown in plain words: an over-long message is refused before sending.
  await alice.getByLabel("Message").fill("é".repeat(2001));
  await alice.getByLabel("Message").press("Enter");
  await alice.locator("#chat-error", { hasText: "longer than 4,000 bytes" }).waitFor();
});

test("a session that ends elsewhere sends the user back to the login form", async () => {
  // The server closes the connection saying the session ended, as it does
  // after a logout elsewhere, a revocation, or a Redis that came back empty.
  const carol = await signUp(`carol${run}`);
  await carol.evaluate(async () => {
    const token = sessionStorage.getItem("courier.token");
    const config = await (await fetch("/config.json")).json();
    const api = config.apiUrl || `${location.protocol}//${location.hostname}:${config.apiPort}`;
    await fetch(`${api}/user/logout`, { method: "POST", body: JSON.stringify({ authToken: token }) });
  });
  await carol.locator("#login-error", { hasText: "Your session ended. Please log in again." }).waitFor();
  assert.equal(await carol.locator("#login-view").isVisible(), true);
  assert.equal(await carol.getByLabel("Password").inputValue(), "", "the password is not kept in the page");
  await carol.screenshot({ path: join(artifacts, "5-session-ended.png") });
});
