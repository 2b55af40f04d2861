// The presence console: one application, in the browser, through the adapter's
// public interfaces only — REST under ../rest/presence with HTTP Basic, and
// the Bayeux server at ../cometd with the CometD JavaScript client.
import { CometD } from "./vendor/cometd/cometd.js";

const REST = new URL("../rest/presence", location.href).href;
const BAYEUX = new URL("../cometd", location.href).href;
const PICKED = ["Activity", "Place", "Privacy", "Sphere"]; // enums published from pickers

const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
        if (name === "text") node.textContent = value;
        else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
}

function show(where, text, ok = true) {
    const status = $(".status", where);
    status.textContent = text;
    status.classList.toggle("error", !ok);
}

// -- the session: credentials, REST, Bayeux -----------------------------------

let session = null; // {id, identity, authorization, cometd, watching: Map, poll}

function basic(id, password) {
    // btoa takes Latin-1: encode the UTF-8 bytes (RFC 7617 §2.1, charset UTF-8).
    const bytes = new TextEncoder().encode(`${id}:${password}`);
    return "Basic " + btoa(String.fromCharCode(...bytes));
}

class RestError extends Error {}

async function rest(method, path, body) {
    const headers = { Authorization: session.authorization };
    if (session.identity) headers["X-Presence-Identity"] = session.identity;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(REST + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit", // the Authorization header above, never a browser prompt
    });
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
        const exception = data?.requestError && Object.values(data.requestError)[0];
        const why = exception
            ? `${exception.messageId}: ${exception.text.replace(/%(\d+)/g, (_, n) => exception.variables?.[n - 1] ?? "")}`
            : text;
        throw new RestError(`${method} ${path}: ${response.status} ${why}`);
    }
    return data;
}

function signIn(id, password, identity) {
    const cometd = new CometD();
    cometd.configure({ url: BAYEUX, logLevel: "warn" });
    session = { id, identity, authorization: basic(id, password), cometd, watching: new Map() };
    const form = $("#sign-in");
    show(form, "signing in…");

    cometd.addListener("/meta/handshake", (reply) => {
        if (!reply.successful) {
            if (reply.error) { // refused: wrong id or password
                show(form, `refused: ${reply.error}`, false);
                cometd.disconnect();
                session = null;
            }
            return; // no answer: the client tries again by itself
        }
        // In the handshake listener, so that a re-handshake subscribes again.
        cometd.subscribe(`/bayeux/${id}/**`, received, (subscribed) => {
            if (!subscribed.successful) {
                show(form, `cannot listen: ${subscribed.error}`, false);
                return;
            }
            if ($("#app").hidden) started();
        });
    });
    cometd.addListener("/meta/connect", (reply) => {
        const up = reply.successful === true;
        $("#link").textContent = up ? `live (${cometd.getTransport()?.type})` : "reconnecting";
        $("#link").classList.toggle("down", !up);
    });
    cometd.handshake({ ext: { authentication: { user: id, password } } });
}

function started() {
    $("#sign-in").hidden = true;
    $("#app").hidden = false;
    $("#who").hidden = false;
    $("#signed-in").textContent = session.identity ? `${session.id} as ${session.identity}` : session.id;
    $("#channels").textContent = `/bayeux/${session.id}/**`;
    refreshWatchers();
    // Nothing notifies a presentity of a new watcher: ask every few seconds.
    session.poll = setInterval(refreshWatchers, 5000);
}

function signOut() {
    if (session) {
        clearInterval(session.poll);
        session.cometd.disconnect();
    }
    session = null;
    location.reload();
}

// -- my presence --------------------------------------------------------------

function pickers(model) {
    const where = $("#publish .pickers");
    for (const kind of PICKED) {
        const select = element("select", { name: kind });
        select.append(element("option", { value: "", text: "(unchanged)" }));
        for (const value of model[kind]) select.append(element("option", { value, text: value }));
        where.append(element("label", {}, kind + " ", select));
    }
    const attributes = $("#subscribe .attributes");
    for (const kind of model.attributes) {
        const box = element("input", { type: "checkbox", name: "attribute", value: kind });
        box.checked = PICKED.includes(kind);
        attributes.append(element("label", { class: "check" }, box, " " + kind));
    }
}

async function publish(event) {
    event.preventDefault();
    const form = event.target;
    const note = form.elements.note.value.trim();
    const presence = [];
    for (const kind of PICKED) {
        const value = form.elements[kind].value;
        if (!value) continue;
        const attribute = { typeAndValue: { unionElement: kind, [kind.toLowerCase()]: value } };
        if (kind === "Activity" && note) attribute.note = note;
        presence.push(attribute);
    }
    if (presence.length === 0) {
        show(form, "pick at least one value", false);
        return;
    }
    try {
        await rest("POST", "", { presence });
        show(form, `published ${presence.map(describe).join(" · ")}`);
    } catch (error) {
        show(form, error.message, false);
    }
}

// -- watching others ----------------------------------------------------------

function token() {
    return crypto.getRandomValues(new Uint32Array(2)).join("");
}

async function subscribe(event) {
    event.preventDefault();
    const form = event.target;
    const presentity = form.elements.presentity.value.trim();
    const attributes = [...form.querySelectorAll("input[name=attribute]:checked")].map((b) => b.value);
    const channel = `/bayeux/${session.id}/console`;
    const reference = (correlator, endpoint) => ({ correlator, endpoint, interfaceName: "PresenceNotification" });
    try {
        // Subscribe Presence asks the presentity; its answer comes as notifySubscription.
        await rest("POST", "/subscription", {
            application: "presence console",
            presentity,
            attributes,
            reference: reference(`console-s-${token()}`, `${channel}/subscription`),
        });
        // Start Presence Notification: statusChanged on every change once authorised,
        // and at once (checkImmediate) if it already is.
        const correlator = `console-n-${token()}`;
        const started = await rest("POST", "/notification", {
            presentity,
            attributes,
            checkImmediate: true,
            reference: reference(correlator, `${channel}/notifications`),
        });
        if (started.result.length) throw new RestError(`${presentity} could not be subscribed`);
        watching(presentity).correlator = correlator;
        watched(presentity, { state: "asked, waiting for a decision" });
        show(form, `asked ${presentity}`);
    } catch (error) {
        show(form, error.message, false);
    }
}

function watching(presentity) {
    let entry = session.watching.get(presentity);
    if (!entry) {
        entry = { presentity, state: "", attributes: new Map(), correlator: null };
        session.watching.set(presentity, entry);
    }
    return entry;
}

function watched(presentity, { state, attributes = [] }) {
    const entry = watching(presentity);
    if (state) entry.state = state;
    for (const attribute of attributes) entry.attributes.set(attribute.typeAndValue.unionElement, attribute);
    renderWatching();
}

function renderWatching() {
    $("#watching").replaceChildren(...[...session.watching.values()].map((entry) => {
        const values = [...entry.attributes.values()].map(describe).join(" · ") || "nothing seen yet";
        const stop = element("button", { type: "button", class: "quiet", text: "Stop" });
        stop.addEventListener("click", () => unwatch(entry));
        return element("li", { "data-presentity": entry.presentity },
            element("div", {}, element("strong", { text: entry.presentity }), " ",
                element("span", { class: "pill", text: entry.state })),
            element("div", { class: "values", text: values }),
            stop);
    }));
}

async function unwatch(entry) {
    const form = $("#subscribe");
    try {
        if (entry.correlator) await rest("DELETE", `/notification/${encodeURIComponent(entry.correlator)}`);
        await rest("DELETE", `/subscription?presentity=${encodeURIComponent(entry.presentity)}`);
        session.watching.delete(entry.presentity);
        renderWatching();
        show(form, `stopped watching ${entry.presentity}`);
    } catch (error) {
        show(form, error.message, false);
    }
}

// -- my watchers --------------------------------------------------------------

async function refreshWatchers() {
    const where = $("#watchers");
    try {
        const [open, current] = await Promise.all([
            rest("GET", "/subscription?status=open"),
            rest("GET", "/subscription?filter=watcher"),
        ]);
        $("#open").replaceChildren(...(open.result.length ? open.result.map(asking) : [empty("nobody")]));
        $("#current").replaceChildren(...(current.result.length
            ? current.result.map((w) => element("li", { text: w })) : [empty("nobody")]));
        show(where, `as of ${new Date().toLocaleTimeString()}`);
    } catch (error) {
        show(where, error.message, false);
    }
}

function empty(text) {
    return element("li", { class: "empty", text });
}

function asking({ watcher, application, attributes }) {
    const boxes = attributes.map((kind) => {
        const box = element("input", { type: "checkbox", value: kind });
        box.checked = true;
        return element("label", { class: "check" }, box, " " + kind);
    });
    const allow = element("button", { type: "button", text: "Authorise" });
    const block = element("button", { type: "button", class: "quiet", text: "Block" });
    const item = element("li", { "data-watcher": watcher },
        element("div", {}, element("strong", { text: watcher }), application ? ` for “${application}”` : ""),
        element("div", { class: "values" }, ...boxes),
        allow, " ", block);
    allow.addEventListener("click", async () => {
        // Unticked attributes are denied; all denied politely blocks (RFC 5025).
        const decisions = [...item.querySelectorAll("input")].map((b) => ({ presenceAttribute: b.value, decision: b.checked }));
        await decide(() => rest("PUT", "/subscription", { watcher, decisions }), `authorised ${watcher}`);
    });
    block.addEventListener("click", () =>
        decide(() => rest("DELETE", `/subscription/${encodeURIComponent(watcher)}`), `blocked ${watcher}`));
    return item;
}

async function decide(call, done) {
    const where = $("#watchers");
    try {
        await call();
        await refreshWatchers();
        show(where, done);
    } catch (error) {
        show(where, error.message, false);
    }
}

// -- notifications --------------------------------------------------------------

function describe(attribute) {
    const { unionElement, ...rest } = attribute.typeAndValue;
    const value = Object.values(rest)[0];
    const shown = typeof value === "object" ? JSON.stringify(value) : value;
    return `${unionElement}: ${shown}` + (attribute.note ? ` (“${attribute.note}”)` : "");
}

function received(message) {
    const [kind, body] = Object.entries(message.data)[0] ?? ["message", message.data];
    let summary = "";
    if (kind === "statusChanged") {
        summary = `${body.presentity}: ${body.changedAttributes.map(describe).join(" · ")}`;
        watched(body.presentity, { state: "watching", attributes: body.changedAttributes });
    } else if (kind === "notifySubscription") {
        const granted = body.decisions.filter((d) => d.decision).map((d) => d.presenceAttribute);
        summary = `${body.presentity} ${granted.length ? "grants " + granted.join(", ") : "grants nothing"}`;
        watched(body.presentity, { state: granted.length ? "authorised" : "denied" });
    } else if (kind === "subscriptionEnded") {
        summary = `${body.presentity}: ended (${body.reason})`;
        watched(body.presentity, { state: `ended: ${body.reason}` });
    } else if (kind === "statusEnd") {
        summary = `notifications ${body.correlator} ended`;
    }
    const log = $("#log");
    $(".empty", log)?.remove();
    const raw = element("details", {}, element("summary", { text: message.channel }),
        element("pre", { text: JSON.stringify(message.data, null, 2) }));
    log.prepend(element("li", { "data-kind": kind },
        element("time", { text: new Date().toLocaleTimeString() }),
        element("span", { class: `kind ${kind}`, text: kind }),
        element("span", { class: "summary", text: summary }),
        raw));
}

// -- start ------------------------------------------------------------------------

async function main() {
    const model = await (await fetch("model.json")).json();
    pickers(model);
    $("#sign-in").addEventListener("submit", (event) => {
        event.preventDefault();
        const form = event.target;
        signIn(form.elements.id.value.trim(), form.elements.password.value, form.elements.identity.value.trim());
    });
    $("#publish").addEventListener("submit", publish);
    $("#subscribe").addEventListener("submit", subscribe);
    $("#refresh").addEventListener("click", refreshWatchers);
    $("#sign-out").addEventListener("click", signOut);
}

main();
