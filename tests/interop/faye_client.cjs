// Drives the Faye client (npm "faye") against the adapter's Bayeux server and
// prints one JSON line. Usage:
//   node faye_client.cjs URL TRANSPORT USER PASSWORD SCENARIO
// TRANSPORT: long-polling | websocket. SCENARIO: receive | denied | badcredentials
const faye = require("faye");

const [url, transport, user, password, scenario] = process.argv.slice(2);
const base = url.replace(/\/cometd$/, "");
const result = { received: [], errors: [], transports: [] };

const client = new faye.Client(url, { timeout: 10, retry: 1 });
// Faye always handshakes over HTTP and then moves to a WebSocket when the
// server offers one; "long-polling" mode forbids that move.
if (transport === "long-polling") {
    client.disable("websocket");
}
client.disable("autodisconnect");

client.addExtension({
    outgoing(message, callback) {
        if (message.channel === "/meta/handshake") {
            message.ext = { authentication: { user, password } };
        }
        if (message.channel === "/meta/connect") {
            result.transports.push(message.connectionType);
        }
        callback(message);
    },
    incoming(message, callback) {
        if (message.channel === "/meta/handshake" && !message.successful) {
            result.errors.push(message.error);
            if (scenario === "badcredentials") {
                finish(0);
            }
        }
        callback(message);
    },
});

function finish(code) {
    result.transports = [...new Set(result.transports)];
    console.log(JSON.stringify(result));
    client.disconnect();
    setTimeout(() => process.exit(code), 100);
}

setTimeout(() => {
    result.errors.push("timed out");
    finish(1);
}, 15000);

async function deliver(count) {
    const response = await fetch(base + "/control/deliver", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ app: user, channel: `/bayeux/${user}/faye`, count }),
    });
    return response.json();
}

if (scenario === "receive") {
    const subscription = client.subscribe(`/bayeux/${user}/*`, (data) => {
        result.received.push(data);
        if (result.received.length === 5) {
            finish(0);
        }
    });
    subscription.then(
        () => deliver(5),
        (error) => {
            result.errors.push(error.message);
            finish(1);
        },
    );
} else if (scenario === "denied") {
    const outcomes = {};
    const done = () => {
        if (Object.keys(outcomes).length === 2) {
            result.denied = outcomes;
            finish(0);
        }
    };
    client.subscribe("/bayeux/app-b/**", () => {}).then(
        () => { outcomes.otherApp = "subscribed"; done(); },
        (error) => { outcomes.otherApp = error.message; done(); },
    );
    client.publish(`/bayeux/${user}/faye`, { forged: true }).then(
        () => { outcomes.publish = "published"; done(); },
        (error) => { outcomes.publish = error.message; done(); },
    );
} else {
    client.connect();
}
