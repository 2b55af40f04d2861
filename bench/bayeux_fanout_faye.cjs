// The reference server for bench/bayeux_fanout.py and bench/fanout_watchers.py:
// Faye's NodeAdapter (npm faye, from tests/interop/node_modules) at /cometd,
// plus POST /bench/publish which publishes from inside the server like the
// adapter's Hub.deliver does, and POST /bench/watchers (one burst of
// bench/fanout_watchers.py).
// Prints "PORT <n>" once listening on a free loopback port.
const http = require("http");
const path = require("path");
const { performance } = require("perf_hooks");
const faye = require(path.join(__dirname, "..", "tests", "interop", "node_modules", "faye"));

const bayeux = new faye.NodeAdapter({ mount: "/cometd", timeout: 30 });
const publisher = bayeux.getClient();

function publishAll(channels, perChannel, rate) {
    const total = channels.length * perChannel;
    let sent = 0;
    const publishOne = () => {
        const seq = Math.floor(sent / channels.length);
        const channel = channels[sent % channels.length];
        publisher.publish(channel, { seq, t: Date.now() });
        sent += 1;
    };
    if (!rate) {
        while (sent < total) publishOne();
        return;
    }
    const started = Date.now();
    const tick = () => {
        const due = Math.min(total, Math.floor(((Date.now() - started) / 1000) * rate) + 1);
        while (sent < due) publishOne();
        if (sent < total) setTimeout(tick, 2);
    };
    tick();
}

// bench/fanout_watchers.py: one burst = one change of every presentity, told
// to each of its watchers (in different applications) by a statusChanged
// message on the watcher's application channel, built as the adapter builds it.
function publishWatchers({ burst, presentities, apps, per_presentity: perPresentity }) {
    const stride = apps / perPresentity;
    const activity = burst % 2 ? "Busy" : "Available";
    for (let p = 0; p < presentities; p++) {
        const sent = performance.timeOrigin + performance.now();
        const lastChange = new Date(sent).toISOString();
        for (let j = 0; j < perPresentity; j++) {
            const app = (p + j * stride) % apps;
            publisher.publish(`/bayeux/a${app}/notify`, {
                statusChanged: {
                    correlator: `p${p}.${j}`,
                    presentity: `sip:p${p}@bench.example`,
                    changedAttributes: [
                        {
                            lastChange,
                            typeAndValue: { unionElement: "Activity", activity },
                            note: `${burst} ${sent.toFixed(3)}`,
                        },
                    ],
                },
            });
        }
    }
}

const server = http.createServer((request, response) => {
    if (request.method === "POST" && request.url === "/bench/watchers") {
        let body = "";
        request.on("data", (chunk) => (body += chunk));
        request.on("end", () => {
            response.writeHead(202, { "content-type": "application/json" });
            response.end("{}");
            const burst = JSON.parse(body);
            setImmediate(() => publishWatchers(burst));
        });
        return;
    }
    if (request.method === "POST" && request.url === "/bench/publish") {
        let body = "";
        request.on("data", (chunk) => (body += chunk));
        request.on("end", () => {
            const { channels, per_channel: perChannel, rate } = JSON.parse(body);
            response.writeHead(202, { "content-type": "application/json" });
            response.end("{}");
            setImmediate(() => publishAll(channels, perChannel, rate));
        });
        return;
    }
    response.writeHead(404);
    response.end();
});
bayeux.attach(server);
server.listen(0, "127.0.0.1", () => console.log(`PORT ${server.address().port}`));
process.on("SIGTERM", () => process.exit(0));
