// crossws's own SSE client (crossws/websocket/sse), unmodified, against our server.
//
//   node chat.mjs http://127.0.0.1:PORT/path
//
// Prints one line per step; exits non-zero (with the reason) on the first failure.
// The server is tests/interop/test_interop.py's app: "ping" -> "pong",
// "binary" -> bytes, "echo:X" -> "X" to the sender, anything else is
// published to the "chat" topic.

import { EventSource } from "eventsource";

// WebSocketSSE uses the global EventSource, which Node 20 does not have.
globalThis.EventSource ??= EventSource;
const { WebSocketSSE } = await import("crossws/websocket/sse");

const url = process.argv[2];
const TIMEOUT_MS = 5000;

function fail(reason) {
  console.error(`FAIL: ${reason}`);
  process.exit(1);
}

function step(text) {
  console.log(`ok: ${text}`);
}

/** A client with an inbox of received message data. */
function connect(name) {
  const ws = new WebSocketSSE(url);
  const inbox = [];
  const waiters = [];
  ws.addEventListener("message", (event) => {
    inbox.push(event.data);
    for (const waiter of waiters.splice(0)) waiter();
  });
  ws.addEventListener("error", () => console.log(`${name}: error event`));

  /** The first unread message matching `predicate` (messages before it are skipped). */
  async function next(predicate, what) {
    const deadline = Date.now() + TIMEOUT_MS;
    for (;;) {
      const index = inbox.findIndex(predicate);
      if (index >= 0) return inbox.splice(0, index + 1).pop();
      const left = deadline - Date.now();
      if (left <= 0) fail(`${name}: no ${what} within ${TIMEOUT_MS} ms; got ${JSON.stringify(inbox)}`);
      await new Promise((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, left);
      });
    }
  }

  function opened() {
    if (ws.readyState === WebSocketSSE.OPEN) return Promise.resolve();
    return new Promise((resolve) => ws.addEventListener("open", resolve, { once: true }));
  }

  return { ws, inbox, next, opened };
}

const timer = setTimeout(() => fail("the whole run took more than 30 s"), 30000);

// 1. connect and get the welcome
const alice = connect("alice");
await alice.opened();
const welcome = await alice.next((d) => d.startsWith("welcome "), "welcome");
const aliceId = welcome.slice("welcome ".length);
step(`alice connected as ${aliceId}`);

// 2. ping -> pong: the first send opens the streamed POST (its first chunk
//    travels with the request headers); the answer must come without a
//    second send behind it
alice.ws.send("ping");
await alice.next((d) => d === "pong", "pong");
step("ping -> pong");
alice.ws.send("ping");
await alice.next((d) => d === "pong", "second pong");
step("ping -> pong again");

// 3. several sends in a row arrive in order, each answered
for (const n of [1, 2, 3, 4, 5]) alice.ws.send(`echo:${n}`);
for (const n of [1, 2, 3, 4, 5]) {
  const got = await alice.next((d) => d.startsWith("echo-"), `echo ${n}`);
  if (got !== `echo-${n}`) fail(`expected echo-${n}, got ${got}`);
}
step("five sends answered in order");

// 4. two clients chat through pub/sub
const bob = connect("bob");
await bob.opened();
const bobWelcome = await bob.next((d) => d.startsWith("welcome "), "welcome");
const bobId = bobWelcome.slice("welcome ".length);
step(`bob connected as ${bobId}`);
await alice.next((d) => d === `${bobId} joined`, "bob's join");
step("alice saw bob join");

alice.ws.send("hello bob");
const fromAlice = await bob.next((d) => d.includes("hello bob"), "alice's message");
if (fromAlice !== `${aliceId}: hello bob`) fail(`bob got ${fromAlice}`);
step("bob got alice's message");

bob.ws.send("hi alice");
const fromBob = await alice.next((d) => d.includes("hi alice"), "bob's message");
if (fromBob !== `${bobId}: hi alice`) fail(`alice got ${fromBob}`);
step("alice got bob's message");
if (alice.inbox.some((d) => d.includes("hello bob"))) fail("alice got her own message back");

// 5. binary from the server arrives as crossws's base64 data URL
alice.ws.send("binary");
const prefix = "data:application/octet-stream;base64,";
const binary = await alice.next((d) => d.startsWith(prefix), "binary message");
const bytes = Buffer.from(binary.slice(prefix.length), "base64");
if (!bytes.equals(Buffer.from([0, 1, 2, 0xfe, 0xff, 0x68, 0x69]))) {
  fail(`binary payload was ${bytes.toString("hex")}`);
}
step("binary arrived as a base64 data URL");

// 6. unicode survives both directions
alice.ws.send("echo:héllo ✓ 🎉");
const unicode = await alice.next((d) => d.startsWith("echo-"), "unicode echo");
if (unicode !== "echo-héllo ✓ 🎉") fail(`unicode came back as ${unicode}`);
step("unicode round trip");

bob.ws.close();
await alice.next((d) => d === `${bobId} left`, "bob's leave");
step("alice saw bob leave");
alice.ws.close();
clearTimeout(timer);
console.log("done");
// The streamed POST has no end in WebSocketSSE; leave without waiting for it.
process.exit(0);
