// npm `eventsource` alone against a stream with ids and keep-alives.
//
//   node keepalive.mjs http://127.0.0.1:PORT/path
//
// Prints one JSON line per open, message and error event; after the message
// "done", one with its readyState, then closes and exits 0. Exits 1 when
// "done" has not come within 20 s.

import { EventSource } from "eventsource";

const print = (record) => console.log(JSON.stringify(record));
const timer = setTimeout(() => {
  print({ fail: "no 'done' within 20 s" });
  process.exit(1);
}, 20000);

const source = new EventSource(process.argv[2]);
source.addEventListener("open", () => print({ open: source.readyState }));
source.addEventListener("error", (event) => print({ error: String(event.message ?? event.type) }));
source.addEventListener("message", (event) => {
  print({ type: event.type, data: event.data, id: event.lastEventId });
  if (event.data === "done") {
    print({ readyState: source.readyState });
    source.close();
    clearTimeout(timer);
  }
});
