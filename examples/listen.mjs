// Prints the notifications an application receives, one JSON line each:
// the CometD JavaScript client (npm "cometd", with "cometd-nodejs-client" to
// run it in Node) on the application's Bayeux channels /bayeux/<id>/**.
//
//   npm ci --prefix examples          # once
//   node examples/listen.mjs http://127.0.0.1:8080/cometd bob-app bob-secret
//
// Ctrl-C stops it.
import { adapt } from "cometd-nodejs-client";
import { CometD } from "cometd";

adapt(); // gives the browser client Node's HTTP and WebSocket

const [url, user, password] = process.argv.slice(2);
if (!password) {
    console.error("usage: node examples/listen.mjs URL APPLICATION PASSWORD");
    process.exit(2);
}

const cometd = new CometD();
cometd.configure({ url, logLevel: "warn" });

cometd.addListener("/meta/handshake", (reply) => {
    if (!reply.successful) {
        // No error: nothing answered (yet), and the client tries again by itself.
        console.error(reply.error ? `refused: ${reply.error}` : `no answer from ${url}, retrying`);
        if (reply.error) process.exit(1);
        return;
    }
    // Here rather than after handshake(), so that a re-handshake subscribes again.
    cometd.subscribe(
        `/bayeux/${user}/**`,
        (message) => console.log(JSON.stringify({ channel: message.channel, data: message.data })),
        (subscribed) => {
            if (subscribed.successful) console.error(`listening on /bayeux/${user}/**`);
            else console.error(`subscription refused: ${subscribed.error}`);
        },
    );
});

process.on("SIGINT", () => cometd.disconnect(() => process.exit(0)));
process.on("SIGTERM", () => cometd.disconnect(() => process.exit(0)));

// The same account as for REST: the adapter reads ext.authentication (or HTTP
// Basic) on the handshake.
cometd.handshake({ ext: { authentication: { user, password } } });
