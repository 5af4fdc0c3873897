// Drive brownout with toxiproxy-node-client from npm, unchanged.
//
// Usage: node toxiproxy_node.cjs API_URL ECHO_ADDR
// Exits non-zero, with the reason, on the first check that fails.
const net = require("net");
const path = require("path");

const root = path.join(__dirname, "..", "..", ".node", "node_modules");
const { Toxiproxy, ToxiproxyError } = require(path.join(root, "toxiproxy-node-client"));

const [api, echo] = process.argv.slice(2);

function check(cond, what) {
  if (!cond) {
    console.log("FAILED: " + what);
    process.exit(1);
  }
  console.log("ok: " + what);
}

// Send `payload` through `listen` and read until as many bytes came back or the peer
// closed: what came, and how long it took in seconds.
function roundTrip(listen, payload = "ping") {
  const [host, port] = [listen.slice(0, listen.lastIndexOf(":")), listen.slice(listen.lastIndexOf(":") + 1)];
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    let got = "";
    const done = () => resolve([got, Number(process.hrtime.bigint() - start) / 1e9]);
    const s = net.connect({ host, port: Number(port) }, () => s.write(payload));
    s.setTimeout(10000, () => reject(new Error("no answer in 10 s")));
    s.on("data", (d) => {
      got += d.toString();
      if (got.length >= payload.length) {
        s.end();
        done();
      }
    });
    s.on("end", done);
    s.on("error", reject);
  });
}

// What a call that must fail failed with: the error, or null if it succeeded.
async function failure(call) {
  try {
    await call();
    return null;
  } catch (e) {
    return e;
  }
}

async function main() {
  const toxiproxy = new Toxiproxy(api);
  check((await toxiproxy.getVersion()).length > 0, "version answers");

  const proxy = await toxiproxy.createProxy({ name: "node_echo", listen: "127.0.0.1:0", upstream: echo });
  check(proxy.name === "node_echo" && proxy.enabled, "proxy created and enabled");
  check(!proxy.listen.endsWith(":0"), "listen shows the real port: " + proxy.listen);
  check("node_echo" in (await toxiproxy.getAll()), "proxy listed");
  check((await toxiproxy.get("node_echo")).upstream === echo, "proxy read back by name");

  const dup = await failure(() => toxiproxy.createProxy({ name: "node_echo", listen: "127.0.0.1:0", upstream: echo }));
  check(
    dup instanceof ToxiproxyError && dup.message.includes("409"),
    "duplicate create fails with 409: " + (dup && dup.message),
  );
  const missing = await failure(() => toxiproxy.get("no_such_proxy"));
  check(
    missing instanceof ToxiproxyError && missing.message.includes("404"),
    "unknown proxy fails with 404: " + (missing && missing.message),
  );

  let [got, rtt] = await roundTrip(proxy.listen);
  check(got === "ping" && rtt < 0.2, `data passes without toxics (${rtt.toFixed(3)} s)`);

  // A downstream latency toxic named "slow", as the client's create and update take it.
  const slow = (ms) => ({ name: "slow", type: "latency", stream: "downstream", toxicity: 1, attributes: { latency: ms, jitter: 0 } });
  const latency = await proxy.addToxic(slow(150));
  check(latency.attributes.latency === 150, "toxic created with its attributes");
  [got, rtt] = await roundTrip(proxy.listen);
  check(got === "ping" && rtt >= 0.15, `latency applied (${rtt.toFixed(3)} s)`);

  const slower = await latency.update(slow(300));
  check(slower.attributes.latency === 300, "toxic updated");
  check((await proxy.getToxic("slow")).attributes.latency === 300, "update read back");
  [got, rtt] = await roundTrip(proxy.listen);
  check(got === "ping" && rtt >= 0.3, `updated latency applied (${rtt.toFixed(3)} s)`);
  await latency.remove();
  [got, rtt] = await roundTrip(proxy.listen);
  check(got === "ping" && rtt < 0.15, `latency gone after removal (${rtt.toFixed(3)} s)`);

  const cut = await proxy.addToxic({
    name: "cut",
    type: "limit_data",
    stream: "downstream",
    toxicity: 1,
    attributes: { bytes: 3 },
  });
  [got] = await roundTrip(proxy.listen, "abcdef");
  check(got === "abc", `limit_data cut the stream after 3 bytes (got ${JSON.stringify(got)})`);
  await cut.remove();

  const bad = await failure(() =>
    proxy.addToxic({ name: "bad", type: "no_such_type", stream: "downstream", toxicity: 1, attributes: {} }),
  );
  check(bad instanceof ToxiproxyError && bad.message.includes("400"), "unknown toxic type fails with 400");

  const down = await proxy.update({ enabled: false, listen: proxy.listen, upstream: echo });
  check(!down.enabled, "proxy disabled");
  const refused = await failure(() => roundTrip(proxy.listen));
  check(refused && refused.code === "ECONNREFUSED", "disabled proxy refuses connections: " + (refused && refused.code));
  await proxy.update({ enabled: true, listen: proxy.listen, upstream: echo });
  [got] = await roundTrip(proxy.listen);
  check(got === "ping", "re-enabled proxy passes data");

  const populated = await toxiproxy.populate([
    { name: "node_a", listen: "127.0.0.1:0", upstream: echo },
    { name: "node_b", listen: "127.0.0.1:0", upstream: echo },
  ]);
  check("node_a" in populated && "node_b" in populated, "populate created both proxies");
  [got] = await roundTrip(populated.node_b.listen);
  check(got === "ping", "a populated proxy passes data");

  await proxy.addToxic(slow(200));
  await toxiproxy.reset();
  const gone = await failure(() => proxy.getToxic("slow"));
  check(gone instanceof ToxiproxyError && gone.message.includes("404"), "reset removed the toxics");
  [got, rtt] = await roundTrip(proxy.listen);
  check(got === "ping" && rtt < 0.15, `no delay after reset (${rtt.toFixed(3)} s)`);

  for (const p of Object.values(await toxiproxy.getAll())) {
    await p.remove();
  }
  check(Object.keys(await toxiproxy.getAll()).length === 0, "every proxy removed");
  console.log("all checks passed");
}

main().catch((e) => {
  console.log("FAILED: " + (e && e.stack ? e.stack : e));
  process.exit(1);
});
