// A tiny static server for `make up` (deploy/up.sh): the official Socket.IO Admin UI's built
// files at /admin-ui/ and the demo chat page at /demo/, from this package's node_modules (no
// CDN, nothing fetched at run time: the UI's icon font, which its index.html takes from a CDN,
// is served from npm's @mdi/font instead; its web font falls back to the system's). No
// dependencies beyond Node itself.
//
// Environment:
//   UI_PORT [8090]          port to listen on
//   UI_BIND [127.0.0.1]     address to listen on
//   DEMO_CONFIG             path of the demo's config.json (written by up.sh: the
//                           load balancer's URL and a token per demo user)

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const PORT = Number(process.env.UI_PORT ?? 8090);
const BIND = process.env.UI_BIND ?? "127.0.0.1";
const DEMO_CONFIG = process.env.DEMO_CONFIG ?? "";

const roots = {
  "/admin-ui/mdi/": join(here, "node_modules", "@mdi", "font"),
  "/admin-ui/": join(here, "node_modules", "@socket.io", "admin-ui", "ui", "dist"),
  "/demo/": join(here, "..", "demo"),
};
// Single files under /demo/ that do not live in deploy/demo/.
const extra = {
  "/demo/socket.io.min.js": join(here, "node_modules", "socket.io-client", "dist", "socket.io.min.js"),
  "/demo/config.json": DEMO_CONFIG,
};

const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".map": "application/json",
  ".woff": "font/woff",
  ".woff2": "font/woff2",
  ".ttf": "font/ttf",
};

/** The file a request path names, or null (outside every root: no traversal). */
function resolve(path) {
  if (path in extra) return extra[path] || null;
  for (const [prefix, root] of Object.entries(roots)) {
    if (!path.startsWith(prefix)) continue;
    let rest = path.slice(prefix.length) || "index.html";
    if (rest.endsWith("/")) rest += "index.html";
    const file = normalize(join(root, rest));
    return file.startsWith(root + sep) ? file : null;
  }
  return null;
}

const server = createServer(async (req, res) => {
  let path;
  try {
    path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  } catch {
    res.writeHead(400).end();
    return;
  }
  if (path === "/" || path === "/demo" || path === "/admin-ui") {
    res.writeHead(302, { location: path === "/admin-ui" ? "/admin-ui/" : "/demo/" }).end();
    return;
  }
  const file = resolve(path);
  if (!file) {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    return;
  }
  try {
    let body = await readFile(file);
    if (path === "/admin-ui/" || path === "/admin-ui/index.html") {
      body = body
        .toString()
        .replace(/https:\/\/cdn\.jsdelivr\.net\/npm\/@mdi\/font@[^/]+\//, "mdi/")
        .replace(/<link[^>]+fonts\.googleapis\.com[^>]*>/, "");
    }
    res.writeHead(200, {
      "content-type": types[extname(file)] ?? "application/octet-stream",
      "cache-control": "no-store",
    });
    res.end(body);
  } catch {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
  }
});

server.listen(PORT, BIND, () => {
  console.log(`serving the Admin UI at http://${BIND}:${PORT}/admin-ui/ and the demo at http://${BIND}:${PORT}/demo/`);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
