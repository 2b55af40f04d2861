// Load clients for bench/fanout_watchers.py: one Faye client per application
// (the same client code against both servers), application i authenticating
// as "a<i>" and subscribed to its notification channel /bayeux/a<i>/notify,
// over websocket, long-polling, or alternately one and the other ("mixed",
// by the application's number). One process holds applications FIRST to
// FIRST + COUNT - 1 of APPS; the driver runs several side by side so that
// one Node process (one core) does not cap what a server can deliver.
//
// Usage: node fanout_watchers_clients.cjs URL APPS FIRST COUNT TRANSPORTS WATCHERS_PER_PRESENTITY DEADLINE_S
//
// Prints "READY {json}" (the transports the clients actually use) once every
// subscription is confirmed. Then reads commands on stdin:
//   EXPECT <burst> <count>  report burst <burst> once <count> distinct
//                           deliveries arrived, or DEADLINE_S after this line
//   END                     print the per-client summary, disconnect, exit
// Each report is one JSON line (with this process's first publish time, last
// receipt and every latency, which the driver merges across processes). Every delivery is a statusChanged message as
// the adapter sends it; its note is "<burst> <publish time, ms since epoch>"
// and its correlator "p<presentity>.<j>", which names the application that
// must receive it ((presentity + j * APPS / WATCHERS) % APPS).
const path = require("path");
const { performance } = require("perf_hooks");
const faye = require(path.join(__dirname, "..", "tests", "interop", "node_modules", "faye"));

const [url, appCount, firstApp, ownCount, transports, perPresentity, deadline] = process.argv.slice(2);
const apps = Number(appCount);
const first = Number(firstApp);
const own = Number(ownCount);
const stride = apps / Number(perPresentity);
const now = () => performance.timeOrigin + performance.now();

const bursts = new Map(); // burst -> state
const clients = [];
const perClientDistinct = new Array(own).fill(0);
const perClientDuplicates = new Array(own).fill(0);
let misrouted = 0;
let malformed = 0;
let subscribed = 0;

function burstState(burst) {
    let state = bursts.get(burst);
    if (state === undefined) {
        state = {
            seen: new Set(),
            duplicates: 0,
            latencies: [],
            firstSent: Infinity,
            lastReceived: 0,
            expected: null,
            timer: null,
            reported: false,
        };
        bursts.set(burst, state);
    }
    return state;
}

function report(burst, timedOut) {
    const state = burstState(burst);
    if (state.reported) return;
    state.reported = true;
    if (state.timer) clearTimeout(state.timer);
    const latencies = state.latencies.sort((a, b) => a - b);
    const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null);
    const seconds = (state.lastReceived - state.firstSent) / 1000;
    const distinct = state.seen.size;
    console.log(JSON.stringify({
        burst,
        distinct,
        duplicates: state.duplicates,
        lost: state.expected - distinct,
        seconds,
        rate: seconds > 0 ? distinct / seconds : null,
        p50: q(0.5),
        p99: q(0.99),
        max: latencies.length ? latencies[latencies.length - 1] : null,
        timedOut,
        firstSent: state.firstSent,
        lastReceived: state.lastReceived,
        latencies: latencies.map((x) => Math.round(x * 100) / 100),
    }));
    state.latencies = [];
}

function received(index, data) {
    const at = now();
    const changed = data && data.statusChanged;
    const note = changed && changed.changedAttributes && changed.changedAttributes[0] && changed.changedAttributes[0].note;
    if (typeof note !== "string") {
        malformed += 1;
        return;
    }
    const [burstText, sentText] = note.split(" ");
    const burst = Number(burstText);
    const sent = Number(sentText);
    const [p, j] = changed.correlator.slice(1).split(".").map(Number);
    if ((p + j * stride) % apps !== first + index) misrouted += 1;
    const state = burstState(burst);
    if (state.seen.has(changed.correlator)) {
        state.duplicates += 1;
        perClientDuplicates[index] += 1;
        return;
    }
    state.seen.add(changed.correlator);
    perClientDistinct[index] += 1;
    state.latencies.push(Math.max(0, at - sent)); // wall clocks of two processes
    if (sent < state.firstSent) state.firstSent = sent;
    if (at > state.lastReceived) state.lastReceived = at;
    if (state.expected !== null && state.seen.size >= state.expected) report(burst, false);
}

function command(line) {
    const [verb, ...args] = line.trim().split(" ");
    if (verb === "EXPECT") {
        const burst = Number(args[0]);
        const state = burstState(burst);
        state.expected = Number(args[1]);
        if (state.seen.size >= state.expected) report(burst, false);
        else state.timer = setTimeout(() => report(burst, true), Number(deadline) * 1000);
    } else if (verb === "END") {
        const types = clients.map((client) => client._dispatcher.connectionType);
        console.log(JSON.stringify({
            perClientDistinct,
            perClientDuplicates,
            transports: types,
            misrouted,
            malformed,
            cpu: process.cpuUsage(),
        }));
        for (const client of clients) client.disconnect();
        setTimeout(() => process.exit(0), 300);
    }
}

let pending = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
    pending += chunk;
    let newline;
    while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (line.trim()) command(line);
    }
});
process.stdin.on("end", () => process.exit(0));

for (let index = 0; index < own; index++) {
    const i = first + index;
    const client = new faye.Client(url, { timeout: 40, retry: 1 });
    const websocket = transports === "websocket" || (transports === "mixed" && i % 2 === 0);
    if (!websocket) client.disable("websocket");
    client.disable("autodisconnect");
    client.addExtension({
        outgoing(message, callback) {
            if (message.channel === "/meta/handshake") {
                message.ext = { authentication: { user: `a${i}`, password: "bench" } };
            }
            callback(message);
        },
    });
    clients.push(client);
    client.subscribe(`/bayeux/a${i}/notify`, (data) => received(index, data)).then(() => {
        subscribed += 1;
        if (subscribed === own) {
            // The websocket transport is chosen once its probe connects; give
            // it a moment so that READY reports what the bursts will use.
            setTimeout(() => {
                const counts = {};
                for (const c of clients) {
                    const type = c._dispatcher.connectionType;
                    counts[type] = (counts[type] || 0) + 1;
                }
                console.log("READY " + JSON.stringify(counts));
            }, 500);
        }
    });
}
