// The chat page's behaviour on top of htmx. Everything here is an enhancement: with
// JavaScript off the form posts and the page reloads. No HTML is built here from user
// text; rows always come rendered (and escaped) by the server.
(function () {
  "use strict";

  const FALLBACK_FAILURES = 2; // failed or instantly closed sockets ...
  const FALLBACK_WINDOW = 15000; // ... within this many ms switch to the event stream
  const FIRST_OPEN_TIMEOUT = 6000; // a socket that never opens counts as a failure
  const STABLE_AFTER = 3000; // a socket open this long is a working socket
  // Closes the server sends on purpose (internal error, restarting, try again later):
  // the socket reached it, so they never count towards the fallback, and after "server
  // restarting" neither do failures for a while (the old process may still answer HTTP
  // on a kept-alive connection while it refuses new sockets).
  const SERVER_CLOSES = [1011, 1012, 1013];
  const RESTARTING = 1012;
  const RESTART_GRACE = 30000;
  const NEAR_BOTTOM = 80; // px: closer than this to the end keeps following new messages

  const $ = (id) => document.getElementById(id);

  // -- where the transcript stands --------------------------------------------------

  function lastId() {
    const rows = document.querySelectorAll('#chat [id^="message-"]');
    if (rows.length) return Number(rows[rows.length - 1].id.slice("message-".length));
    const chat = $("chat");
    return chat ? Number(chat.dataset.lastId || 0) : 0;
  }

  function withLastId(url) {
    const u = new URL(url, location.href);
    u.searchParams.set("last_id", String(lastId()));
    return u.toString();
  }

  // Rows an operator deleted, announced on the event stream ("delete": one id; "clear":
  // every row up to an id). The htmx socket removes them itself (out-of-band swaps).
  function dropDeletedRows(source) {
    source.addEventListener("delete", (event) => {
      const row = $("message-" + Number(event.data));
      if (row) row.remove();
    });
    source.addEventListener("clear", (event) => {
      const through = Number(event.data);
      document.querySelectorAll('#chat [id^="message-"]').forEach((row) => {
        if (Number(row.id.slice("message-".length)) <= through) row.remove();
      });
    });
    return source;
  }

  // Every (re)connection resumes after the newest row shown: the server replays what
  // was missed, so nothing is lost and nothing doubled. Reconnect attempts back off with
  // full jitter, but never wait more than 5 s (htmx's default grows to 64 s).
  if (window.htmx) {
    htmx.config.wsReconnectDelay = (retries) => Math.random() * Math.min(5000, 500 * 2 ** retries);
    htmx.createWebSocket = function (url) {
      const socket = new WebSocket(withLastId(url));
      socket.binaryType = htmx.config.wsBinaryType;
      return socket;
    };
    htmx.createEventSource = function (url) {
      return dropDeletedRows(new EventSource(withLastId(url), { withCredentials: true }));
    };
  }

  // -- status ----------------------------------------------------------------------

  const STATUS_TEXT = {
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting…",
    fallback: "live (event stream)",
    offline: "offline",
  };

  function setStatus(state) {
    const status = $("status");
    if (!status) return;
    status.dataset.state = state;
    status.textContent = STATUS_TEXT[state] || state;
  }

  // -- rows: local times, own messages, no duplicates, follow the newest -------------

  const sameDay = (a, b) => a.toDateString() === b.toDateString();
  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });

  function localizeTime(el) {
    const when = new Date(el.getAttribute("datetime"));
    if (isNaN(when)) return;
    el.textContent = (sameDay(when, new Date()) ? timeFormat : dateTimeFormat).format(when);
    el.title = when.toLocaleString();
  }

  function markMine(row) {
    const handle = $("handle");
    const mine = !!handle && handle.value.trim() !== "" && row.dataset.handle === handle.value.trim();
    row.classList.toggle("mine", mine);
  }

  function prepareRow(row) {
    if (!row.id || !row.id.startsWith("message-")) return;
    const twin = document.querySelectorAll("#" + CSS.escape(row.id));
    if (twin.length > 1 && twin[0] !== row) {
      row.remove(); // already shown (two paths overlapped while switching)
      return;
    }
    row.querySelectorAll("time[datetime]").forEach(localizeTime);
    markMine(row);
  }

  function setUpTranscript() {
    const chat = $("chat");
    if (!chat) return;
    let follow = true;
    const nearBottom = () => chat.scrollHeight - chat.scrollTop - chat.clientHeight < NEAR_BOTTOM;
    const toBottom = () => { chat.scrollTop = chat.scrollHeight; };
    chat.addEventListener("scroll", () => { follow = nearBottom(); }, { passive: true });
    chat.querySelectorAll(".msg").forEach(prepareRow);
    new MutationObserver((mutations) => {
      for (const mutation of mutations) {
        mutation.addedNodes.forEach((node) => {
          if (node.nodeType === 1) prepareRow(node);
        });
      }
      const empty = $("empty-room");
      if (empty && chat.querySelector(".msg")) empty.remove();
      if (follow) toBottom();
    }).observe(chat, { childList: true });
    toBottom();
    document.querySelectorAll("time[datetime]").forEach(localizeTime);
    const handle = $("handle");
    if (handle) handle.addEventListener("change", () => chat.querySelectorAll(".msg").forEach(markMine));
  }

  // -- the composer ----------------------------------------------------------------

  let lastSent = "";

  function clearComposer() {
    const box = $("message");
    if (!box) return;
    lastSent = box.value;
    box.value = "";
    autosize(box);
    box.focus();
  }

  function autosize(box) {
    box.style.height = "auto";
    box.style.height = Math.min(box.scrollHeight, 160) + "px";
  }

  function setUpComposer() {
    const form = $("chatform");
    const box = $("message");
    if (!form || !box) return;
    // The typing signal and a name change carry only what they need (never the draft):
    // data-send-only lists the fields such a ws-send keeps. (hx-params would do this,
    // but htmx-ext-ws 2.0.4 hands it a plain object and it fails.)
    document.body.addEventListener("htmx:wsConfigSend", (event) => {
      const only = event.target.dataset && event.target.dataset.sendOnly;
      if (!only) return;
      const keep = new Set(only.split(" "));
      const parameters = event.detail.parameters;
      for (const name of Object.keys(parameters)) {
        if (!keep.has(name)) delete parameters[name];
      }
    });
    box.addEventListener("keydown", (event) => {
      // Enter sends, Shift+Enter is a new line (not while an IME is composing).
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    box.addEventListener("input", () => autosize(box));
    // After a send over the socket, the next error line (if any) is that message's
    // verdict: give the refused text back to edit. Our own row arriving means it was
    // stored.
    let awaitingVerdict = false;
    document.body.addEventListener("htmx:wsAfterSend", (event) => {
      if (event.target !== form) return; // a typing signal or a name change
      const error = $("chat-error");
      if (error) error.textContent = "";
      clearComposer();
      awaitingVerdict = true;
    });
    document.body.addEventListener("htmx:wsAfterMessage", (event) => {
      if (!awaitingVerdict) return;
      const error = $("chat-error");
      if (error && error.textContent.trim()) {
        awaitingVerdict = false;
        if (!box.value) {
          box.value = lastSent;
          autosize(box);
        }
      } else if (String(event.detail.message).includes("data-handle=")) {
        awaitingVerdict = false;
      }
    });
  }

  // -- WebSocket, and the event stream where WebSockets are blocked ------------------
  //
  // The page chats over its WebSocket (htmx ws extension). When sockets fail twice
  // within 15 s without working (refused by a proxy, or closed as soon as opened, but
  // not closed by the server itself, as it does while restarting), or the first one
  // does not open within 6 s, the page switches to the fallback: it
  // receives over the event stream (resuming after its newest row) and sends with
  // ordinary htmx POSTs. The WebSocket keeps retrying in the background; when one opens
  // and stays open, the page switches back and closes the stream.

  let mode = "socket";
  let failures = [];
  let openedAt = 0;
  let stream = null;
  let restartedAt = -Infinity;

  // A failed socket counts towards the fallback only if the server answers plain HTTP
  // and is healthy: while it is down or restarting, both would fail alike.
  function failure() {
    if (Date.now() - restartedAt < RESTART_GRACE) return;
    fetch("/healthz", { cache: "no-store" }).then((response) => {
      if (!response.ok) return;
      const now = Date.now();
      failures = failures.filter((t) => now - t < FALLBACK_WINDOW);
      failures.push(now);
      if (failures.length >= FALLBACK_FAILURES) useStream();
    }, () => { /* unreachable: not a blocked socket */ });
  }

  function useStream() {
    const room = $("room");
    if (mode === "stream" || !room) return;
    mode = "stream";
    setStatus("fallback");
    openStream(room.dataset.events);
  }

  function openStream(url) {
    if (stream) stream.close();
    stream = dropDeletedRows(new EventSource(withLastId(url)));
    stream.addEventListener("message", (event) => {
      htmx.swap($("chat"), event.data, { swapStyle: "beforeend" });
    });
    stream.addEventListener("room", (event) => {
      htmx.swap($("room-name"), event.data, { swapStyle: "innerHTML" });
    });
    stream.addEventListener("reset", () => {
      stream.close();
      location.reload(); // more was missed than is replayed: start from the latest
    });
    stream.onopen = () => setStatus("fallback");
    stream.onerror = () => {
      if (stream.readyState === EventSource.CLOSED) {
        setTimeout(() => { if (mode === "stream") openStream(url); }, 2000);
      }
    };
  }

  function useSocket() {
    if (mode === "socket") return;
    mode = "socket";
    failures = [];
    if (stream) { stream.close(); stream = null; }
  }

  function setUpConnection() {
    const room = $("room");
    if (!room || !room.hasAttribute("ws-connect")) return;
    setStatus("connecting");
    const neverOpened = setTimeout(() => { if (!openedAt) { failure(); failure(); } }, FIRST_OPEN_TIMEOUT);
    let stableTimer = null;
    document.body.addEventListener("htmx:wsOpen", () => {
      openedAt = Date.now();
      clearTimeout(neverOpened);
      setStatus(mode === "stream" ? "fallback" : "live");
      stableTimer = setTimeout(() => { failures = []; useSocket(); setStatus("live"); }, STABLE_AFTER);
    });
    document.body.addEventListener("htmx:wsClose", (event) => {
      clearTimeout(stableTimer);
      const lived = openedAt ? Date.now() - openedAt : 0;
      openedAt = 0;
      const code = event.detail.event && event.detail.event.code;
      if (code === RESTARTING) restartedAt = Date.now();
      if (lived < STABLE_AFTER && !SERVER_CLOSES.includes(code)) failure();
      if (mode === "socket") setStatus("reconnecting");
    });
    // (A socket that fails fires "error" and then "close": only the close counts, once.)

    // Sending while on the stream (or while the socket is down): an htmx POST.
    const form = $("chatform");
    document.addEventListener("submit", (event) => {
      if (event.target !== form || mode === "socket") return;
      event.preventDefault();
      event.stopImmediatePropagation();
      htmx.ajax("POST", room.dataset.post, { source: form, target: "#chat-error", swap: "outerHTML" })
        .then(() => {
          const error = $("chat-error");
          if (!error || !error.textContent.trim()) clearComposer();
        });
    }, true);
  }

  // -- the embed page -----------------------------------------------------------------

  function setUpEmbed() {
    if (!$("live")) return;
    setStatus("connecting");
    document.body.addEventListener("htmx:sseOpen", () => setStatus("live"));
    document.body.addEventListener("htmx:sseError", () => setStatus("reconnecting"));
    // After a reset the live part is replaced: watch the new transcript.
    document.body.addEventListener("htmx:afterSwap", (event) => {
      if (event.detail.target && event.detail.target.id === "live") setUpTranscript();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setUpTranscript();
    setUpComposer();
    setUpConnection();
    setUpEmbed();
  });
})();
