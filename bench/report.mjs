// Reads what bench/compare.sh wrote (meta.json, <system>/<step>.json from fanout-bench,
// <system>/<step>.procs.json from the script) and prints markdown tables.
//
//   node bench/report.mjs verdict <fanout-bench.json> <p99-limit-ms>   exit 0 = sustainable
//   node bench/report.mjs report <results-dir>
//   node bench/report.mjs summary <results-dir>   one JSON line per system (used by the test)
//   node bench/report.mjs other <results-dir> <system> <step>   other processes' CPU % in a run

import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";

const readJson = (p) => JSON.parse(readFileSync(p, "utf8"));
const sum = (xs) => xs.reduce((a, b) => a + (b ?? 0), 0);
const num = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
const int = (x) => (x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US").replace(/,/g, " "));
const ratio = (a, b, d = 2) => (a == null || b == null || b === 0 ? "–" : `${(a / b).toFixed(d)}×`);

/**
 * Whether every measured delivery of a step has its latency at the client's socket (the
 * generator read with kernel receive timestamps and the kernel stamped every read).
 */
const stamped = (d) => d.socket_latency_ms?.p99 !== undefined && d.socket_latency_ms.count === d.latency_ms?.count;

/**
 * The delivery latency a step is judged on: send to the kernel's receipt at the client's socket
 * (`socket_latency_ms`) when every delivery has it, else send to the generator's read
 * (`latency_ms`: generators before the stamps, or reads the kernel left unstamped). The first
 * leaves out the time frames waited for the generator itself, which shares the machine; a
 * generator that falls behind by more than the grace period still fails the step, as loss.
 */
const judged = (d) => (stamped(d) ? d.socket_latency_ms : d.latency_ms);

/** Why a step is not sustainable (empty = sustainable). */
function reasons(r, p99Limit) {
  const out = [];
  const nacked = sum(Object.values(r.send.nacked ?? {}));
  const joinFailed = sum(Object.values(r.join?.failed ?? {}));
  if (r.connect.failed > 0) out.push(`${r.connect.failed} connects failed`);
  if (joinFailed > 0) out.push(`${joinFailed} joins failed`);
  if (nacked > 0) out.push(`${nacked} NACKed ${JSON.stringify(r.send.nacked)}`);
  if (r.send.ack_timeouts > 0) out.push(`${r.send.ack_timeouts} ACK timeouts`);
  if (r.send.ack_transport_errors > 0) out.push(`${r.send.ack_transport_errors} ACK transport errors`);
  if (r.send.skipped_inflight_cap > 0) out.push(`${r.send.skipped_inflight_cap} sends skipped (in-flight cap)`);
  const d = r.delivery;
  if (d.lost > 0) out.push(`${d.lost} lost`);
  if (d.duplicated > 0) out.push(`${d.duplicated} duplicated`);
  if (d.reordered > 0) out.push(`${d.reordered} reordered`);
  const p99 = judged(d)?.p99;
  const where = stamped(d) ? " at socket" : "";
  if (p99 === undefined) out.push("no deliveries");
  else if (p99 > p99Limit) out.push(`delivery p99${where} ${p99.toFixed(1)} ms > ${p99Limit} ms`);
  // A generator that could not keep its schedule did not offer the rate the step names.
  const target = r.config.rate * r.config.duration_secs;
  if (r.config.senders > 0 && r.send.sent < 0.95 * target) {
    out.push(`sent ${r.send.sent} < 95% of ${Math.round(target)} due`);
  }
  return out;
}

/** One step of one system: the generator JSON(s) and the script's process figures. */
function loadStep(dir, sys, step) {
  const procsPath = join(dir, sys, `${step}.procs.json`);
  if (!existsSync(procsPath)) return null;
  const procs = readJson(procsPath);
  const gens = procs.generators
    .map((g) => join(dir, sys, `${g}.json`))
    .filter((p) => existsSync(p))
    .map(readJson);
  return { step, procs, gens, r: gens[0] ?? null };
}

function loadSystem(dir, meta, sys) {
  const names = meta.senders > 0 ? meta.rates.map((r) => `r${r}`) : [meta.scenario];
  return names.map((s) => loadStep(dir, sys, s)).filter((s) => s !== null);
}

/** µs of CPU per delivery from a share of one core (%) and deliveries per second. */
function perDelivery(pct, perSec) {
  return pct == null || !perSec ? null : (pct / 100 / perSec) * 1e6;
}

/** "user / kernel" µs per delivery, or the total alone when the split is unknown. */
function splitUs(f) {
  if (!f || f.nodeUsPerDelivery == null) return "–";
  if (f.nodeSysUsPerDelivery == null) return num(f.nodeUsPerDelivery, 1);
  return `${num(f.nodeUsPerDelivery - f.nodeSysUsPerDelivery, 1)} / ${num(f.nodeSysUsPerDelivery, 1)}`;
}

/** CPU and memory figures of one step (generator 1's view of the measured window). */
function figures(st, p99Limit) {
  const r = st.r;
  if (!r) return null;
  const nNodes = st.procs.node_pids.length;
  const w = r.watched ?? [];
  const nodeCpu = w.slice(0, nNodes).map((x) => x.cpu_pct_of_one_core);
  // The kernel's part (stime); absent in result files from before it was recorded.
  const nodeSys = w.slice(0, nNodes).map((x) => x.cpu_sys_pct_of_one_core);
  const nodesSys = nodeSys.every((x) => x != null) ? sum(nodeSys) : null;
  const redisCpu = w[nNodes]?.cpu_pct_of_one_core ?? null;
  const genCpu = sum(st.gens.map((g) => g.generator.cpu_pct_of_one_core_measured));
  const busy = r.generator.machine_cpu_busy_pct_all_cores_measured;
  const nproc = r.machine.nproc ?? 1;
  const known = sum(nodeCpu) + (redisCpu ?? 0) + genCpu;
  const nacked = sum(Object.values(r.send.nacked ?? {}));
  const why = reasons(r, p99Limit);
  return {
    rate: r.config.rate,
    sentPerSec: r.send.rate_per_sec,
    deliveriesPerSec: r.delivery.per_sec,
    expected: r.delivery.expected,
    actual: r.delivery.actual,
    // Judged latency (at the socket when stamped), and the generator's read latency.
    dp50: judged(r.delivery)?.p50,
    dp99: judged(r.delivery)?.p99,
    rp50: r.delivery.latency_ms?.p50,
    rp99: r.delivery.latency_ms?.p99,
    ap50: r.send.ack_latency_ms?.p50,
    ap99: r.send.ack_latency_ms?.p99,
    lost: r.delivery.lost,
    dup: r.delivery.duplicated,
    reordered: r.delivery.reordered,
    offsetRegressions: r.delivery.offset_regressions,
    offsetGaps: r.delivery.offset_gaps,
    nacked,
    ackTimeouts: r.send.ack_timeouts,
    skipped: r.send.skipped_inflight_cap,
    nodeCpu,
    nodesCpu: sum(nodeCpu),
    // Node CPU per delivery in µs, split into user space and the kernel.
    nodeUsPerDelivery: perDelivery(sum(nodeCpu), r.delivery.per_sec),
    nodeSysUsPerDelivery: nodesSys == null ? null : perDelivery(nodesSys, r.delivery.per_sec),
    redisCpu,
    genCpu,
    busy,
    busyBefore: st.procs.machine_busy_pct_before,
    foreign: busy == null ? null : Math.max(0, busy * nproc - known),
    nodesRssEndMiB: sum(w.slice(0, nNodes).map((x) => x.rss_mib)),
    nodesHwmMiB: sum(st.procs.node_hwm_kib_after) / 1024,
    genCpuBound: st.gens.some((g) => g.generator.cpu_bound),
    scheduleLate: st.gens.some((g) => g.generator.send_schedule_late_p99_over_50ms),
    ok: why.length === 0,
    why,
  };
}

function stepTable(sys, steps, p99Limit) {
  const lines = [
    `#### ${sys}`,
    "",
    "| rate (msg/s) | sent/s | deliveries/s | delivery p50 / p99 (ms) | read p50 / p99 (ms) | ACK p50 / p99 (ms) | lost / dup / reordered / offset regr. | NACK / ACK timeouts / skipped | node a / b CPU % | redis CPU % | generator CPU % | machine busy % (before run) | other CPU % | nodes RSS end / peak (MiB) | sustainable |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const st of steps) {
    const f = figures(st, p99Limit);
    if (!f) {
      lines.push(`| ${st.step} | no generator output | | | | | | | | | | | | | no |`);
      continue;
    }
    lines.push(
      `| ${int(f.rate)} | ${int(f.sentPerSec)} | ${int(f.deliveriesPerSec)} | ${num(f.dp50, 2)} / ${num(f.dp99, 2)} | ` +
        `${num(f.rp50, 2)} / ${num(f.rp99, 2)} | ${num(f.ap50, 2)} / ${num(f.ap99, 2)} | ${f.lost} / ${f.dup} / ${f.reordered} / ${f.offsetRegressions} | ` +
        `${f.nacked} / ${f.ackTimeouts} / ${f.skipped} | ${f.nodeCpu.map((c) => num(c, 0)).join(" / ")} | ` +
        `${num(f.redisCpu, 0)} | ${num(f.genCpu, 0)}${f.genCpuBound ? " (CPU-bound)" : ""} | ${num(f.busy, 0)} (${f.busyBefore}) | ` +
        `${num(f.foreign, 0)} | ${num(f.nodesRssEndMiB, 0)} / ${num(f.nodesHwmMiB, 0)} | ` +
        `${f.ok ? "yes" : "no: " + f.why.join("; ")} |`,
    );
  }
  return lines.join("\n");
}

/** Highest sustainable step (steps run in rising order and stop at the first failure). */
function saturation(steps, p99Limit) {
  let best = null;
  let firstBad = null;
  for (const st of steps) {
    const f = figures(st, p99Limit);
    if (f && f.ok && !firstBad) best = f;
    else if (!firstBad) firstBad = f ? f : { rate: st.step, why: ["no output"] };
  }
  return { best, firstBad };
}

function compareRow(name, f) {
  if (!f) return `| ${name} | – | – | – | – | – | – | – | – | – | – | – | – | – | – |`;
  return (
    `| ${name} | ${int(f.rate)} | ${int(f.deliveriesPerSec)} | ${num(f.dp50, 2)} / ${num(f.dp99, 2)} | ${num(f.rp50, 2)} / ${num(f.rp99, 2)} | ${num(f.ap50, 2)} / ${num(f.ap99, 2)} | ` +
    `${f.lost} / ${f.dup} / ${f.reordered} / ${f.offsetRegressions} | ${num(f.nodesCpu, 0)} | ${splitUs(f)} | ${num(f.nodesHwmMiB, 0)} / ${num(f.nodesRssEndMiB, 0)} | ` +
    `${num(f.redisCpu, 0)} | ${num(f.genCpu, 0)} | ${num(f.busy, 0)} | ${num(f.foreign, 0)} |`
  );
}

function ratioRow(a, b) {
  if (!a || !b) return "| fanout ÷ peer | – | – | – | – | – | – | – | – | – | – | – | – | – | – |";
  return (
    `| fanout ÷ peer | ${ratio(a.rate, b.rate)} | ${ratio(a.deliveriesPerSec, b.deliveriesPerSec)} | ${ratio(a.dp50, b.dp50)} / ${ratio(a.dp99, b.dp99)} | ` +
    `${ratio(a.rp50, b.rp50)} / ${ratio(a.rp99, b.rp99)} | ` +
    `${ratio(a.ap50, b.ap50)} / ${ratio(a.ap99, b.ap99)} | | ${ratio(a.nodesCpu, b.nodesCpu)} | ${ratio(a.nodeUsPerDelivery, b.nodeUsPerDelivery)} | ${ratio(a.nodesHwmMiB, b.nodesHwmMiB)} / ${ratio(a.nodesRssEndMiB, b.nodesRssEndMiB)} | ` +
    `${ratio(a.redisCpu, b.redisCpu)} | ${ratio(a.genCpu, b.genCpu)} | | |`
  );
}

const COMPARE_HEAD = [
  "| system | rate (msg/s) | deliveries/s | delivery p50 / p99 (ms) | read p50 / p99 (ms) | ACK p50 / p99 (ms) | lost / dup / reordered / offset regr. | nodes CPU % of one core (sum) | nodes CPU per delivery, user / kernel (µs) | nodes RSS peak / end (MiB, sum) | redis CPU % | generator CPU % | machine busy % | other CPU % |",
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
];

function trafficReport(dir, meta, systems) {
  const out = [];
  const p99Limit = meta.p99_limit_ms;
  const data = Object.fromEntries(systems.map((s) => [s, loadSystem(dir, meta, s)]));
  const sat = Object.fromEntries(systems.map((s) => [s, saturation(data[s], p99Limit)]));
  const fAt = (s, rate) => {
    const st = data[s]?.find((x) => x.r && x.r.config.rate === rate);
    return st ? figures(st, p99Limit) : null;
  };

  if (meta.rates.length > 1) {
    out.push(`### Saturation (${meta.scenario}: ${meta.clients} clients, rooms of ${meta.room_size}, ${meta.senders} senders)`);
    out.push("");
    out.push(
      "| system | highest sustainable rate (msg/s) | its deliveries/s | its delivery p99 (ms) | first unsustainable step | delivery p99 at the peer's highest sustainable rate (ms) | read p99 there (ms) |",
    );
    out.push("|---|---|---|---|---|---|---|");
    const peerBest = sat.peer?.best?.rate;
    for (const s of systems) {
      const { best, firstBad } = sat[s];
      const at = peerBest == null ? null : fAt(s, peerBest);
      out.push(
        `| ${s} | ${best ? int(best.rate) : "none"} | ${best ? int(best.deliveriesPerSec) : "–"} | ${best ? num(best.dp99, 2) : "–"} | ` +
          `${firstBad ? `${int(firstBad.rate)}: ${firstBad.why.join("; ")}` : "none (all steps sustained)"} | ${at ? num(at.dp99, 2) : "–"} | ${at ? num(at.rp99, 2) : "–"} |`,
      );
    }
    if (sat.fanout && sat.peer) {
      const a = sat.fanout.best;
      const b = sat.peer.best;
      const atA = peerBest == null ? null : fAt("fanout", peerBest);
      const atB = peerBest == null ? null : fAt("peer", peerBest);
      out.push(
        `| fanout ÷ peer | ${ratio(a?.rate, b?.rate)} | ${ratio(a?.deliveriesPerSec, b?.deliveriesPerSec)} | | | ${ratio(atA?.dp99, atB?.dp99)} | ${ratio(atA?.rp99, atB?.rp99)} |`,
      );
    }
    out.push("");
    if (peerBest != null) {
      out.push(`### Both systems at the peer's highest sustainable rate (${peerBest} msg/s)`);
      out.push("");
      out.push(...COMPARE_HEAD);
      const a = fAt("fanout", peerBest);
      const b = fAt("peer", peerBest);
      if (systems.includes("fanout")) out.push(compareRow("fanout", a));
      if (systems.includes("peer")) out.push(compareRow("peer", b));
      if (a && b) out.push(ratioRow(a, b));
      out.push("");
    } else if (sat.peer && data.peer?.length) {
      // Without a sustainable peer step there is no rate to compare the two systems at.
      const lowest = Math.min(...meta.rates);
      out.push(
        `The peer sustained none of the steps (the lowest was ${lowest} msg/s), so neither ratio can be taken: ` +
          `run again with lower \`--rates\` (or a quieter machine; see "other CPU" in the steps).`,
      );
      out.push("");
    }
    out.push("### Steps");
    out.push("");
    for (const s of systems) {
      out.push(stepTable(s, data[s], p99Limit));
      out.push("");
    }
  } else {
    out.push(`### ${meta.scenario}: ${meta.clients} clients, rooms of ${meta.room_size}, ${meta.senders} senders, ${meta.rates[0]} msg/s`);
    out.push("");
    out.push(...COMPARE_HEAD);
    const fs = Object.fromEntries(systems.map((s) => [s, data[s][0] ? figures(data[s][0], p99Limit) : null]));
    for (const s of systems) out.push(compareRow(s, fs[s]));
    if (fs.fanout && fs.peer) out.push(ratioRow(fs.fanout, fs.peer));
    out.push("");
    for (const s of systems) {
      const f = fs[s];
      out.push(`- ${s}: ${f ? (f.ok ? "sustainable" : "NOT sustainable: " + f.why.join("; ")) : "no output"}`);
    }
    out.push("");
  }
  return out.join("\n");
}

function idleReport(dir, meta, systems) {
  const out = [];
  out.push(`### ${meta.scenario}: ${meta.clients} connections, ${meta.generators} generator process(es)`);
  out.push("");
  out.push(
    "| system | connected / failed | connect time (s) | connects/s | connect p50 / p99 (ms) | sockets per node | node RSS before (MiB, each node) | node RSS with sockets (MiB, each node) | RSS per socket (KiB) | node peak RSS (MiB, each node) | nodes CPU s over the run | redis CPU s | generator RSS (MiB) |",
  );
  out.push("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  const per = {};
  for (const s of systems) {
    const st = loadSystem(dir, meta, s)[0];
    if (!st || st.gens.length === 0) {
      out.push(`| ${s} | no output | | | | | | | | | | | |`);
      continue;
    }
    const p = st.procs;
    const connected = sum(st.gens.map((g) => g.connect.connected));
    const failed = sum(st.gens.map((g) => g.connect.failed));
    const secs = Math.max(...st.gens.map((g) => g.connect.secs));
    const p50 = Math.max(...st.gens.map((g) => g.connect.latency_ms?.p50 ?? 0));
    const p99 = Math.max(...st.gens.map((g) => g.connect.latency_ms?.p99 ?? 0));
    const nNodes = p.node_pids.length;
    const perNode = connected / nNodes;
    const mib = (k) => (k == null ? null : k / 1024);
    let kib = null;
    if (Array.isArray(p.node_rss_kib_measuring) && perNode > 0) {
      kib = sum(p.node_rss_kib_measuring.map((x, i) => x - p.node_rss_kib_before[i])) / nNodes / perNode;
    }
    per[s] = kib;
    const cpuNodes = sum(p.cpu_secs_after_nodes_then_redis.slice(0, nNodes).map((x, i) => x - p.cpu_secs_before_nodes_then_redis[i]));
    const cpuRedis = p.cpu_secs_after_nodes_then_redis[nNodes] - p.cpu_secs_before_nodes_then_redis[nNodes];
    out.push(
      `| ${s} | ${connected} / ${failed} | ${num(secs, 2)} | ${int(connected / Math.max(secs, 1e-6))} | ${num(p50, 1)} / ${num(p99, 1)} | ${int(perNode)} | ` +
        `${p.node_rss_kib_before.map((k) => num(mib(k), 1)).join(" / ")} | ` +
        `${Array.isArray(p.node_rss_kib_measuring) ? p.node_rss_kib_measuring.map((k) => num(mib(k), 1)).join(" / ") : "–"} | ` +
        `${num(kib, 1)} | ${p.node_hwm_kib_after.map((k) => num(mib(k), 1)).join(" / ")} | ${num(cpuNodes, 1)} | ${num(cpuRedis, 1)} | ` +
        `${num(sum(st.gens.map((g) => g.generator.rss_mib)), 0)} |`,
    );
  }
  if (per.fanout != null && per.peer != null) {
    out.push(`| fanout ÷ peer | | | | | | | | ${ratio(per.fanout, per.peer)} | | | | |`);
  }
  out.push("");
  return out.join("\n");
}

function report(dir) {
  const meta = readJson(join(dir, "meta.json"));
  const systems = meta.systems;
  const head = [
    `## ${meta.scenario} (${meta.started_utc})`,
    "",
    `${meta.fanout_version} from ${meta.fanout_bin_dir} (repo HEAD ${meta.git_head}); peer on Node ${meta.node_version}; ${meta.redis_version}; ` +
      `RLIMIT_NOFILE hard ${meta.nofile_hard}. Warm-up ${meta.warmup} s, measured ${meta.duration} s, grace ${meta.grace} s, ` +
      `${meta.payload_bytes}-byte payloads, connect concurrency ${meta.connect_concurrency}` +
      `${meta.generator_nice ? `, the generator ${meta.generator_nice} nice levels below the servers` : ""}. "Delivery" latency is send to the kernel's receipt at the ` +
      `client's socket (receive timestamps; send to the generator's read, "read", when the generator did not stamp); steps are judged on it. ` +
      `CPU % are of one core over the measured window; ` +
      `"machine busy" is % of all cores; "other CPU" = machine busy × cores − (nodes + redis + generator): work of other processes.`,
    "",
    "",
  ];
  const body = meta.senders > 0 ? trafficReport(dir, meta, systems) : idleReport(dir, meta, systems);
  return head.join("\n") + body;
}

/** One JSON line per system with the figures the integration test checks. */
function summary(dir) {
  const meta = readJson(join(dir, "meta.json"));
  for (const s of meta.systems) {
    for (const st of loadSystem(dir, meta, s)) {
      const f = figures(st, meta.p99_limit_ms);
      console.log(JSON.stringify({ system: s, step: st.step, ...(f ?? { missing: true }) }));
    }
  }
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === "verdict") {
  const r = readJson(args[0]);
  const why = reasons(r, Number(args[1] ?? 100));
  console.log(
    why.length === 0
      ? `deliveries ${Math.round(r.delivery.per_sec)}/s, delivery p99 ${judged(r.delivery)?.p99} ms` +
          (stamped(r.delivery) ? ` at socket (${r.delivery.latency_ms?.p99} ms at read)` : "")
      : why.join("; "),
  );
  process.exit(why.length === 0 ? 0 : 1);
} else if (cmd === "report") {
  console.log(report(args[0]));
} else if (cmd === "other") {
  // CPU % of one core that other processes used during one run (0 when unknown).
  const meta = readJson(join(args[0], "meta.json"));
  const st = loadStep(args[0], args[1], args[2]);
  const f = st ? figures(st, meta.p99_limit_ms) : null;
  console.log(Math.round(f?.foreign ?? 0));
} else if (cmd === "summary") {
  summary(args[0]);
} else {
  console.error("usage: report.mjs verdict <json> <p99-ms> | report <dir> | summary <dir>");
  process.exit(2);
}
