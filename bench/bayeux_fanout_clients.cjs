// Load clients for bench/bayeux_fanout.py: CLIENTS Faye clients (the same
// client code against both servers), each subscribed to one channel of
// CHANNELS. Prints "READY" when every subscription is confirmed, then one JSON
// line of results once every client has its EXPECTED messages or the deadline
// passes. Usage:
//   node bayeux_fanout_clients.cjs URL TRANSPORT CLIENTS CHANNELS EXPECTED DEADLINE_S
const path = require("path");
const faye = require(path.join(__dirname, "..", "tests", "interop", "node_modules", "faye"));

const [url, transport, clientCount, channelCount, expected, deadline] = process.argv.slice(2);
const clients = Number(clientCount);
const channels = Number(channelCount);
const perClient = Number(expected);

const latencies = [];
let received = 0;
let duplicates = 0;
let firstSent = Infinity;
let lastReceived = 0;
let complete = 0;
let subscribed = 0;
const seen = [];
const all = [];

function report(timedOut) {
    latencies.sort((a, b) => a - b);
    const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null);
    const seconds = (lastReceived - firstSent) / 1000;
    console.log(JSON.stringify({
        received,
        duplicates,
        lost: clients * perClient - (received - duplicates),
        seconds,
        rate: seconds > 0 ? (received - duplicates) / seconds : null,
        p50: q(0.5),
        p99: q(0.99),
        timedOut,
    }));
    for (const client of all) client.disconnect();
    setTimeout(() => process.exit(0), 200);
}

for (let i = 0; i < clients; i++) {
    const client = new faye.Client(url, { timeout: 40, retry: 1 });
    if (transport === "long-polling") client.disable("websocket");
    client.disable("autodisconnect");
    client.addExtension({
        outgoing(message, callback) {
            if (message.channel === "/meta/handshake") {
                message.ext = { authentication: { user: "bench", password: "bench" } };
            }
            callback(message);
        },
    });
    const mine = new Set();
    seen.push(mine);
    all.push(client);
    const channel = `/bayeux/bench/c${i % channels}`;
    client.subscribe(channel, (data) => {
        const now = Date.now();
        if (mine.has(data.seq)) {
            duplicates += 1;
            received += 1;
            return;
        }
        mine.add(data.seq);
        received += 1;
        latencies.push(Math.max(0, now - data.t));  // ms clocks of two processes
        firstSent = Math.min(firstSent, data.t);
        lastReceived = Math.max(lastReceived, now);
        if (mine.size === perClient) {
            complete += 1;
            if (complete === clients) report(false);
        }
    }).then(() => {
        subscribed += 1;
        if (subscribed === clients) {
            console.log("READY");
            setTimeout(() => report(true), Number(deadline) * 1000);
        }
    });
}
