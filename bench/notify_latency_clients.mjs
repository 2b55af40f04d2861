// Bayeux clients for bench/notify_latency.py: COUNT applications, each its own
// CometD JavaScript client (npm "cometd" + "cometd-nodejs-client", websocket
// transport, ack extension on, as an application that must not lose a
// notification runs it) in this one Node process, subscribed to
// /bayeux/<PREFIX><i>/**. Usage:
//   node notify_latency_clients.mjs URL PREFIX COUNT PASSWORD
// Prints "READY" once every subscription is confirmed, then one line per
// message received:
//   M <app index> <receive wall-clock ms, µs resolution> <JSON data>
// The receive time is taken first thing in the subscription callback, from
// performance.timeOrigin + performance.now() (Date.now() has only ms).
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "tests", "interop", "package.json"));
const { adapt } = require("cometd-nodejs-client");
const { AckExtension, CometD } = require("cometd");

adapt();

const [url, prefix, countText, password] = process.argv.slice(2);
const count = Number(countText);
const origin = performance.timeOrigin;
const clients = [];
let subscribed = 0;
const out = [];

function flush() {
    if (out.length) {
        process.stdout.write(out.join(""));
        out.length = 0;
    }
}
// Lines are batched per event-loop turn: one write per burst, not per message.
setInterval(flush, 5);

for (let i = 0; i < count; i++) {
    const user = `${prefix}${i}`;
    const cometd = new CometD(user);
    cometd.registerExtension("ack", new AckExtension());
    cometd.configure({ url, logLevel: "warn", maxBackoff: 500 });
    cometd.unregisterTransport("long-polling");
    let first = true;
    cometd.addListener("/meta/handshake", (message) => {
        if (!message.successful) {
            process.stdout.write(`E ${i} ${JSON.stringify(message.error ?? "unreachable")}\n`);
            return;
        }
        cometd.subscribe(
            `/bayeux/${user}/**`,
            (message) => {
                const at = origin + performance.now();
                out.push(`M ${i} ${at.toFixed(3)} ${JSON.stringify(message.data)}\n`);
            },
            (reply) => {
                if (!reply.successful) {
                    process.stdout.write(`E ${i} ${JSON.stringify(reply.error)}\n`);
                } else if (first) {
                    first = false;
                    subscribed += 1;
                    if (subscribed === count) process.stdout.write("READY\n");
                }
            },
        );
    });
    cometd.handshake({ ext: { authentication: { user, password } } });
    clients.push(cometd);
}

function stop() {
    flush();
    let left = clients.length;
    for (const cometd of clients) cometd.disconnect(() => (--left === 0 ? process.exit(0) : 0));
    setTimeout(() => process.exit(0), 1000);
}

process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.resume();
