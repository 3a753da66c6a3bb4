// Headless browser check of what `make up` shows: two demo chat pages on two nodes exchange a
// message and see each other's presence and typing, and the official Socket.IO Admin UI
// (served from npm's @socket.io/admin-ui) logs in to a 3-node cluster, lists every node and the
// pages' sockets, and disconnects one of them.
//
// Environment:
//   UI_URL       base URL of deploy/admin-ui/serve.mjs (/admin-ui/ and /demo/)
//   SERVER_URL   the node the Admin UI connects to
//   NODE_IDS     comma-separated ids of every node
//   ADMIN_USER, ADMIN_PASSWORD   the Admin UI credentials
//   CHROMIUM     the browser [/usr/bin/chromium]
//   PROFILE_DIR  a fresh, empty directory for the browser profile
//   SHOTS_DIR    where screenshots go (demo-chat.png, admin-ui-dashboard.png,
//                admin-ui-servers.png, admin-ui-sockets.png)
//
// Exits 0 with one JSON line on success; exits 1 naming the failed step.

import { chromium } from "playwright-core";

import { checks } from "./steps.mjs";

const { env, fail, step } = checks("browser", { stepMs: 20_000, overallMs: 240_000 });

const UI_URL = env("UI_URL");
const SERVER_URL = env("SERVER_URL");
const NODE_IDS = env("NODE_IDS").split(",");
const SHOTS = env("SHOTS_DIR");

const ctx = await step("launch chromium", () =>
  chromium.launchPersistentContext(env("PROFILE_DIR"), {
    executablePath: env("CHROMIUM", "/usr/bin/chromium"),
    headless: true,
    viewport: { width: 1280, height: 760 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  }),
  // A first start with a fresh profile on a loaded 2-core machine took over 20 s once.
  60_000,
);
// No internet: the Admin UI's web fonts and icon font (CDN links) are answered at once.
await ctx.route(/^https?:\/\/(?!127\.0\.0\.1|localhost)/, (route) => route.abort());

const summary = {};
const demo = async (user) => {
  const page = await ctx.newPage();
  await page.goto(`${UI_URL}/demo/#${user}`);
  await page.waitForFunction(() => window.socket?.connected === true);
  return page;
};

const alice = await step("alice's demo page connects", () => demo("alice"));
const bob = await step("bob's demo page connects", () => demo("bob"));

await step("each sees the other online", async () => {
  await alice.locator('li.online[data-user="bob"]').waitFor();
  await bob.locator('li.online[data-user="alice"]').waitFor();
});

await step("bob sees alice typing", async () => {
  await alice.locator("#text").pressSequentially("hello bob", { delay: 20 });
  await bob.getByText("alice is typing").waitFor();
});

await step("a message crosses nodes", async () => {
  await alice.locator("#text").press("Enter");
  await bob.locator("#log .msg", { hasText: "hello bob" }).waitFor();
  await bob.locator("#text").fill("hi alice");
  await bob.locator("#text").press("Enter");
  await alice.locator("#log .msg", { hasText: "hi alice" }).waitFor();
});

await step("history after a reload", async () => {
  await bob.reload();
  await bob.waitForFunction(() => window.socket?.connected === true);
  await bob.locator("#log .msg", { hasText: "hello bob" }).waitFor();
  await bob.locator("#log .msg", { hasText: "hi alice" }).waitFor();
  await bob.locator('li.online[data-user="alice"]').waitFor();
  await bob.screenshot({ path: `${SHOTS}/demo-chat.png` });
});

const ids = {
  alice: await alice.evaluate(() => window.socket.id),
  bob: await bob.evaluate(() => window.socket.id),
};

const ui = await ctx.newPage();
await step("Admin UI login", async () => {
  await ui.goto(`${UI_URL}/admin-ui/`);
  await ui.getByLabel("Server URL").fill(SERVER_URL);
  await ui.getByLabel("Username").fill(env("ADMIN_USER"));
  await ui.getByLabel("Password").fill(env("ADMIN_PASSWORD"));
  await ui.getByRole("button", { name: "Connect" }).click();
  await ui.getByText(/^connected$/i).first().waitFor();
  await ui.waitForTimeout(2500); // a round of server_stats
  await ui.screenshot({ path: `${SHOTS}/admin-ui-dashboard.png` });
});

await step("every node is a server", async () => {
  await ui.getByText("Servers", { exact: true }).first().click();
  for (const id of NODE_IDS) await ui.locator("main tbody tr", { hasText: id }).first().waitFor();
  await ui.waitForTimeout(800); // the page fades in
  summary.servers = NODE_IDS.length;
  await ui.screenshot({ path: `${SHOTS}/admin-ui-servers.png` });
});

await step("the pages' sockets are listed", async () => {
  await ui.getByText("Sockets", { exact: true }).first().click();
  for (const id of Object.values(ids)) await ui.locator("main tbody tr", { hasText: id }).waitFor();
  await ui.waitForTimeout(800); // the page fades in
  await ui.screenshot({ path: `${SHOTS}/admin-ui-sockets.png` });
});

await step("disconnect alice's socket from the UI", async () => {
  const gone = alice.evaluate(
    () => new Promise((resolve) => window.socket.once("disconnect", (reason) => resolve(reason))),
  );
  await ui.locator("main tbody tr", { hasText: ids.alice }).locator("button:has(i.mdi-logout)").click();
  const reason = await gone;
  if (reason !== "io server disconnect") throw new Error(`alice's page saw ${reason}`);
  summary.disconnectReason = reason;
  // The row goes away once socket_disconnected reaches the UI (the click also opened the
  // socket's page: back to the list).
  await ui.getByText("Sockets", { exact: true }).first().click();
  const rows = ui.locator("main tbody tr", { hasText: ids.alice });
  for (let i = 0; (await rows.count()) > 0; i++) {
    if (i === 50) throw new Error(`still listed: ${JSON.stringify(await rows.allInnerTexts())}`);
    await ui.waitForTimeout(100);
  }
  if (!(await bob.evaluate(() => window.socket.connected))) throw new Error("bob was disconnected too");
});

await ctx.close();
console.log(JSON.stringify({ ok: true, ...summary }));
process.exit(0);
