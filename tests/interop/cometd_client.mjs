// Drives the CometD JavaScript client (npm "cometd" + "cometd-nodejs-client")
// against the adapter's Bayeux server and prints one JSON line describing what
// happened. Usage:
//   node cometd_client.mjs URL TRANSPORT USER PASSWORD SCENARIO
// TRANSPORT: long-polling | websocket. SCENARIO:
//   receive     subscribe to /bayeux/USER/**, have the adapter publish 5
//               messages, collect them
//   rehandshake receive 2, make the adapter forget the session, publish 2
//               more: the client must handshake again by itself and get them
//   denied      try /bayeux/app-b, a publish to /bayeux/USER and /meta/**
import { adapt } from "cometd-nodejs-client";
import { AckExtension, CometD } from "cometd";

adapt();

const [url, transport, user, password, scenario] = process.argv.slice(2);
const base = url.replace(/\/cometd$/, "");
const channel = `/bayeux/${user}/notifications`;
const result = { handshakes: [], received: [], errors: [] };

function finish(code = 0) {
    console.log(JSON.stringify(result));
    cometd.disconnect(() => process.exit(code));
    setTimeout(() => process.exit(code), 2000);
}

async function control(path, body) {
    const response = await fetch(base + path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
    });
    return response.json();
}

const cometd = new CometD();
cometd.registerExtension("ack", new AckExtension());
cometd.configure({ url, logLevel: "warn", maxBackoff: 500 });
if (transport === "long-polling") {
    cometd.unregisterTransport("websocket");
} else {
    cometd.unregisterTransport("long-polling");
}

setTimeout(() => {
    result.errors.push("timed out");
    finish(1);
}, 15000);

let subscribed = 0;
const seen = new Set();
let round = 1;
const onMessage = (message) => {
    const key = `${message.data.round}/${message.data.seq}`;
    if (seen.has(key)) {
        result.duplicates = (result.duplicates || 0) + 1;
        return;
    }
    seen.add(key);
    result.received.push(message.data);
    result.transport = cometd.getTransport().type;
    const wanted = scenario === "receive" ? 5 : 2;
    if ([...seen].filter((k) => k.startsWith(`${round}/`)).length === wanted) {
        afterRound();
    }
};

let afterRound = () => finish(0);

cometd.addListener("/meta/handshake", (message) => {
    result.handshakes.push({ successful: message.successful, ack: message.ext && message.ext.ack });
    if (!message.successful) {
        result.errors.push(message.error);
        if (scenario === "badcredentials") {
            finish(0);
        }
        return;
    }
    if (scenario === "denied") {
        denied();
        return;
    }
    // Subscribing in the handshake listener is the CometD idiom: it runs
    // again after a re-handshake, when the server has forgotten everything.
    cometd.subscribe(`/bayeux/${user}/**`, onMessage, async (reply) => {
        if (!reply.successful) {
            result.errors.push(reply.error);
            finish(1);
            return;
        }
        subscribed += 1;
        const count = scenario === "receive" ? 5 : 2;
        await control("/control/deliver", { app: user, channel, count, data: { round: subscribed } });
    });
});

if (scenario === "rehandshake") {
    afterRound = () => {
        if (round === 1) {
            round = 2;
            control("/control/forget", { app: user });
        } else {
            finish(0);
        }
    };
}

function denied() {
    const outcomes = {};
    const check = () => {
        if (Object.keys(outcomes).length === 3) {
            result.denied = outcomes;
            finish(0);
        }
    };
    cometd.subscribe("/bayeux/app-b/**", () => {}, (reply) => {
        outcomes.otherApp = { successful: reply.successful, error: reply.error };
        check();
    });
    cometd.subscribe("/meta/**", () => {}, (reply) => {
        outcomes.meta = { successful: reply.successful, error: reply.error };
        check();
    });
    cometd.publish(`/bayeux/${user}/notifications`, { forged: true }, (reply) => {
        outcomes.publish = { successful: reply.successful, error: reply.error };
        check();
    });
}

cometd.handshake({ ext: { authentication: { user, password } } });
