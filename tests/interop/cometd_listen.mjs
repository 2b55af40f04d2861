// Listens on an application's Bayeux channels with the CometD JavaScript
// client (npm "cometd" + "cometd-nodejs-client") and prints what it receives,
// one JSON object per line, until it is terminated. Usage:
//   node cometd_listen.mjs URL USER PASSWORD [TRANSPORT]
// URL is the adapter's /cometd; TRANSPORT long-polling | websocket (default:
// whichever the client negotiates). Lines printed:
//   {"event":"subscribed"}              /bayeux/USER/** is subscribed
//   {"event":"message","channel":C,"data":D}
//   {"event":"error","error":E}         a handshake or subscription refused
//   {"event":"unreachable"}             a handshake that got no answer (the
//                                       client retries it with backoff)
// The ack extension is on, as an application that must not lose a
// notification across a reconnect would run it.
import { adapt } from "cometd-nodejs-client";
import { AckExtension, CometD } from "cometd";

adapt();

const [url, user, password, transport] = process.argv.slice(2);

function emit(line) {
    console.log(JSON.stringify(line));
}

const cometd = new CometD();
cometd.registerExtension("ack", new AckExtension());
cometd.configure({ url, logLevel: "warn", maxBackoff: 500 });
if (transport === "long-polling") {
    cometd.unregisterTransport("websocket");
} else if (transport === "websocket") {
    cometd.unregisterTransport("long-polling");
}

cometd.addListener("/meta/handshake", (message) => {
    if (!message.successful) {
        // No Bayeux error means no server answered (connection refused...):
        // not a refusal, and the client tries again by itself.
        emit(message.error === undefined ? { event: "unreachable" } : { event: "error", error: message.error });
        return;
    }
    // In the handshake listener, so that it runs again after a re-handshake.
    cometd.subscribe(
        `/bayeux/${user}/**`,
        (message) => emit({ event: "message", channel: message.channel, data: message.data }),
        (reply) => emit(reply.successful ? { event: "subscribed" } : { event: "error", error: reply.error }),
    );
});

function stop() {
    cometd.disconnect(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000);
}

process.on("SIGTERM", stop);
process.on("SIGINT", stop);
// The test process going away closes our stdin: do not outlive it.
process.stdin.on("end", stop);
process.stdin.resume();

cometd.handshake({ ext: { authentication: { user, password } } });
