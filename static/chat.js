// The chat page's behaviour on top of htmx. Everything here is an enhancement: with
// JavaScript off the form posts, the page reloads and "Earlier messages" is a link. No
// HTML is built here from user text; rows always come rendered (and escaped) by the
// server.
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
  // htmx's ws extension reconnects by itself after these codes only; after any other
  // (1000, 1001 or 1008 from a proxy, 1005, ...) this script reconnects.
  const EXTENSION_RECONNECTS = [1006, 1011, 1012, 1013];
  const UNKNOWN_ROOM = 4404; // final, once the server confirms the room is gone
  const NEAR_BOTTOM = 80; // px: closer than this to the end keeps following new messages
  const NEAR_TOP = 40; // px: scrolled this close to the top loads earlier messages

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

  // A room cleared by an operator: its rows up to an id go. A row stored after the clear
  // may arrive before the news of it (two publishers): it stays.
  function dropRowsThrough(through) {
    document.querySelectorAll('#chat [id^="message-"]').forEach((row) => {
      if (Number(row.id.slice("message-".length)) <= through) row.remove();
    });
  }

  // Rows an operator deleted, announced on the event stream ("delete": one id; "clear":
  // every row up to an id). The htmx socket removes one row itself (an out-of-band
  // delete swap) and says "cleared through an id" with a marker taken out here.
  function dropDeletedRows(source) {
    source.addEventListener("delete", (event) => {
      const row = $("message-" + Number(event.data));
      if (row) row.remove();
    });
    source.addEventListener("clear", (event) => dropRowsThrough(Number(event.data)));
    return source;
  }
  document.body.addEventListener("htmx:wsBeforeMessage", (event) => {
    const cleared = /^<template data-cleared-through="(\d+)">/.exec(String(event.detail.message));
    if (cleared) {
      dropRowsThrough(Number(cleared[1]));
      event.preventDefault(); // nothing in it to swap
    }
  });

  // Every (re)connection resumes after the newest row shown: the server replays what
  // was missed, so nothing is lost and nothing doubled. Reconnect attempts back off with
  // full jitter, but never wait more than 5 s (htmx's default grows to 64 s).
  const reconnectDelay = (retries) => Math.random() * Math.min(5000, 500 * 2 ** retries);
  if (window.htmx) {
    htmx.config.wsReconnectDelay = reconnectDelay;
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
    live: "live (socket)",
    reconnecting: "reconnecting…",
    fallback: "live (event stream fallback)",
    gone: "room gone",
    offline: "offline",
  };

  function setStatus(state, text) {
    const status = $("status");
    if (!status) return;
    status.dataset.state = state;
    status.textContent = text || STATUS_TEXT[state] || state;
  }

  // A refusal's reason from the server's answer: the error line of a fragment, or the
  // reason on a whole error page (only its text is used), else the status.
  function reasonIn(html, status, statusText, ownId) {
    let text = "";
    try {
      const doc = new DOMParser().parseFromString(html, "text/html");
      const line = doc.getElementById(ownId) || doc.getElementById("error-reason");
      text = line ? line.textContent.trim() : "";
    } catch (e) { /* not HTML: the status says it */ }
    return text || `Not sent (${status}${statusText ? " " + statusText : ""}). Try again.`;
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

  // Returns false for a row already shown (two paths overlapped while switching).
  function prepareRow(row) {
    if (!row.id || !row.id.startsWith("message-")) return false;
    const twin = document.querySelectorAll("#" + CSS.escape(row.id));
    if (twin.length > 1 && twin[0] !== row) {
      row.remove();
      return false;
    }
    row.querySelectorAll("time[datetime]").forEach(localizeTime);
    markMine(row);
    return true;
  }

  // -- away from the tab: "(3) name · Chat", and a divider where the new ones start ---

  const unread = { count: 0, title: document.title, divider: null };

  function arrivedWhileAway(row) {
    if (!document.hidden || row.classList.contains("mine")) return;
    if (unread.count === 0) {
      if (unread.divider) unread.divider.remove();
      const divider = document.createElement("li");
      divider.className = "new-divider";
      divider.id = "new-divider";
      divider.setAttribute("role", "separator");
      divider.textContent = "New messages";
      row.before(divider);
      unread.divider = divider;
    }
    unread.count += 1;
    document.title = `(${unread.count}) ${unread.title}`;
  }

  function setUpUnread() {
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) {
        unread.title = document.title.replace(/^\(\d+\) /, "");
      } else if (unread.count) {
        unread.count = 0;
        document.title = unread.title;
      }
    });
  }

  // -- the transcript ----------------------------------------------------------------

  function setUpTranscript() {
    const chat = $("chat");
    if (!chat) return;
    let follow = true;
    const nearBottom = () => chat.scrollHeight - chat.scrollTop - chat.clientHeight < NEAR_BOTTOM;
    const toBottom = () => { chat.scrollTop = chat.scrollHeight; };
    chat.querySelectorAll(".msg").forEach(prepareRow);
    const observer = new MutationObserver((mutations) => {
      for (const mutation of mutations) {
        mutation.addedNodes.forEach((node) => {
          if (node.nodeType === 1 && prepareRow(node) && node.isConnected) arrivedWhileAway(node);
        });
      }
      const empty = $("empty-room");
      if (empty && chat.querySelector(".msg")) empty.remove();
      if (follow) toBottom();
    });
    observer.observe(chat, { childList: true });
    chat.addEventListener("scroll", () => {
      follow = nearBottom();
      if (chat.scrollTop < NEAR_TOP && chat.scrollHeight > chat.clientHeight) loadEarlier(chat, observer);
    }, { passive: true });
    // (On the transcript, not the link: a reset swaps in a new link.)
    chat.addEventListener("click", (event) => {
      if (!event.target.closest("#earlier")) return;
      event.preventDefault();
      loadEarlier(chat, observer);
    });
    toBottom();
    document.querySelectorAll("time[datetime]").forEach(localizeTime);
    const handle = $("handle");
    if (handle) handle.addEventListener("change", () => chat.querySelectorAll(".msg").forEach(markMine));
  }

  // -- earlier messages: the previous page's rows go above, the reader stays put -------

  let loadingEarlier = false;

  async function loadEarlier(chat, observer) {
    const link = $("earlier");
    if (!link || loadingEarlier) return;
    loadingEarlier = true;
    link.setAttribute("aria-busy", "true");
    try {
      const response = await fetch(link.href, { credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const rows = [...doc.querySelectorAll("#chat .msg")]
        .filter((row) => row.id && !document.getElementById(row.id))
        .map((row) => document.importNode(row, true));
      // Keep the first row shown where it is on screen while rows go in above it.
      const anchor = chat.querySelector(".msg");
      const before = anchor ? anchor.getBoundingClientRect().top : 0;
      link.parentElement.after(...rows);
      observer.takeRecords(); // older rows: not new, no scrolling to the bottom
      rows.forEach(prepareRow);
      if (anchor) chat.scrollTop += anchor.getBoundingClientRect().top - before;
      const next = doc.getElementById("earlier");
      if (next) link.href = next.getAttribute("href");
      else link.parentElement.remove(); // the room's first message is shown
    } catch (error) {
      location.assign(link.href); // the page still works as a link
    } finally {
      link.removeAttribute("aria-busy");
      loadingEarlier = false;
    }
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
      if (socketState !== "open") { // never into the extension's queue for a later socket
        event.preventDefault();
        return;
      }
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
        if (!event.repeat) form.requestSubmit();
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
    // The socket ended before the message's row or verdict came back: it may not have
    // reached the server, so the text goes back into the box to check and send again.
    document.body.addEventListener("htmx:wsClose", () => {
      if (!awaitingVerdict) return;
      awaitingVerdict = false;
      if (!box.value) {
        box.value = lastSent;
        autosize(box);
      }
      const error = $("chat-error");
      if (error) error.textContent = "The connection dropped before this was confirmed: if it does not appear, send it again.";
    });
    // An htmx form post refused (renaming, a name change): its error line shows the
    // reason as text, never a whole error page swapped into it.
    document.body.addEventListener("htmx:beforeSwap", (event) => {
      const target = event.detail.target;
      const xhr = event.detail.xhr;
      if (!target || !target.classList.contains("send-error") || xhr.status < 400) return;
      const html = xhr.responseText || "";
      const answer = new DOMParser().parseFromString(html, "text/html").body;
      if (answer.childElementCount === 1 && answer.firstElementChild.id === target.id) return; // the line itself
      event.detail.shouldSwap = false;
      target.textContent = reasonIn(html, xhr.status, xhr.statusText, target.id);
    });
  }

  // -- sending over HTTP (socket not open, or on the event stream) ---------------------

  let sending = false;

  async function sendOverHttp(form, url) {
    if (sending) return; // a second Enter while the first is on its way
    sending = true;
    const error = $("chat-error");
    let reason = "";
    try {
      const response = await fetch(url, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { "HX-Request": "true" },
        credentials: "same-origin",
      });
      if (!response.ok) reason = reasonIn(await response.text(), response.status, response.statusText, "chat-error");
    } catch (e) {
      reason = "Not sent: the server cannot be reached. Try again.";
    } finally {
      sending = false;
    }
    if (error) error.textContent = reason;
    if (!reason) clearComposer(); // stored: the row comes over the socket or the stream
  }

  // -- WebSocket, and the event stream where WebSockets are blocked ------------------
  //
  // The page chats over its WebSocket (htmx ws extension). Whatever ends the socket, it
  // comes back: the extension reconnects after 1006/1011/1012/1013, this script after
  // any other code (a proxy's 1000, 1001, 1008, ...), at once when the network returns
  // or the tab wakes. Only 4404 is final, once the server confirms the room is gone.
  // When sockets fail twice within 15 s without working (refused by a proxy, or closed
  // as soon as opened, but not closed by the server itself, as it does while
  // restarting), or the first one does not open within 6 s, the page switches to the
  // fallback: it receives over the event stream (resuming after its newest row) and
  // sends with ordinary POSTs. The socket keeps retrying in the background; when one
  // opens and stays open, the page switches back and closes the stream. A message sent
  // while the socket is not open goes over HTTP at once.

  let mode = "socket"; // "socket", "stream" or "gone"
  let socketState = "connecting"; // the htmx socket: "connecting", "open" or "closed"
  let socket = null; // the extension's socket wrapper (its public interface)
  let extensionRetries = false; // the extension reconnects this close by itself
  let retries = 0;
  let retryTimer = null;
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

  function reconnectSoon() {
    if (retryTimer || mode === "gone") return;
    retryTimer = setTimeout(() => { retryTimer = null; reconnectNow(); }, reconnectDelay(retries++));
  }

  function reconnectNow() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket && socketState === "closed" && !extensionRetries && mode !== "gone") socket.reconnect();
    if (mode === "stream" && stream && stream.readyState === EventSource.CLOSED) openStream();
  }

  // 4404 is final only when the server says the room is gone; from anything else
  // (a proxy) it is one more close to recover from.
  function checkRoomGone() {
    const room = $("room");
    fetch(room.dataset.history, { cache: "no-store" }).then((response) => {
      if (response.status === 404) roomGone();
      else reconnectSoon();
    }, reconnectSoon);
  }

  function roomGone() {
    mode = "gone";
    clearTimeout(retryTimer);
    if (stream) { stream.close(); stream = null; }
    setStatus("gone");
    const error = $("chat-error");
    if (error) error.textContent = "This room no longer exists: nothing can be sent here.";
  }

  function useStream() {
    if (mode !== "socket") return;
    mode = "stream";
    setStatus("fallback");
    openStream();
  }

  function openStream() {
    const url = $("room").dataset.events;
    if (stream) stream.close();
    stream = dropDeletedRows(new EventSource(withLastId(url)));
    stream.addEventListener("message", (event) => {
      htmx.swap($("chat"), event.data, { swapStyle: "beforeend" });
    });
    stream.addEventListener("room", (event) => {
      htmx.swap($("room-name"), event.data, { swapStyle: "innerHTML" });
    });
    stream.addEventListener("lock", (event) => {
      const notice = $("room-locked");
      if (notice) notice.hidden = event.data !== "locked";
    });
    stream.addEventListener("reset", () => {
      stream.close();
      location.reload(); // more was missed than is replayed: start from the latest
    });
    stream.onopen = () => setStatus("fallback");
    stream.onerror = () => {
      if (stream.readyState === EventSource.CLOSED) {
        setTimeout(() => { if (mode === "stream") openStream(); }, 2000);
      }
    };
  }

  function useSocket() {
    if (mode !== "stream") return;
    mode = "socket";
    failures = [];
    if (stream) { stream.close(); stream = null; }
  }

  function setUpConnection() {
    const room = $("room");
    if (room && $("newest")) setStatus("offline", "earlier messages (not live)");
    if (!room || !room.hasAttribute("ws-connect")) return;
    setStatus("connecting");
    const neverOpened = setTimeout(() => { if (!openedAt) { failure(); failure(); } }, FIRST_OPEN_TIMEOUT);
    let stableTimer = null;
    document.body.addEventListener("htmx:wsConnecting", () => { socketState = "connecting"; });
    document.body.addEventListener("htmx:wsOpen", (event) => {
      socket = event.detail.socketWrapper;
      socketState = "open";
      openedAt = Date.now();
      clearTimeout(neverOpened);
      if (mode === "gone") { socket.queue.length = 0; return; }
      setStatus(mode === "stream" ? "fallback" : "live");
      stableTimer = setTimeout(() => {
        failures = [];
        retries = 0;
        useSocket();
        setStatus("live");
      }, STABLE_AFTER);
    });
    document.body.addEventListener("htmx:wsClose", (event) => {
      socket = event.detail.socketWrapper;
      socketState = "closed";
      socket.queue.length = 0; // nothing waits for a later socket (sends go over HTTP)
      clearTimeout(stableTimer);
      const lived = openedAt ? Date.now() - openedAt : 0;
      openedAt = 0;
      const code = event.detail.event && event.detail.event.code;
      if (code === RESTARTING) restartedAt = Date.now();
      if (lived < STABLE_AFTER && !SERVER_CLOSES.includes(code)) failure();
      extensionRetries = EXTENSION_RECONNECTS.includes(code);
      if (code === UNKNOWN_ROOM) checkRoomGone();
      else if (!extensionRetries) reconnectSoon();
      if (mode === "socket") setStatus("reconnecting");
    });
    // (A socket that fails fires "error" and then "close": only the close counts, once.)
    window.addEventListener("online", reconnectNow);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) reconnectNow(); });

    // Sending while the socket is not open, or while on the stream: a POST, at once.
    const form = $("chatform");
    document.addEventListener("submit", (event) => {
      if (event.target !== form) return;
      if (mode === "socket" && socketState === "open" && !sending) return; // over the socket
      event.preventDefault();
      event.stopImmediatePropagation();
      if (mode !== "gone") sendOverHttp(form, room.dataset.post);
    }, true);
  }

  // -- the embed page -----------------------------------------------------------------

  function setUpEmbed() {
    if (!$("live")) return;
    setStatus("connecting");
    document.body.addEventListener("htmx:sseOpen", () => setStatus("live", "live"));
    document.body.addEventListener("htmx:sseError", () => setStatus("reconnecting"));
    // After a reset the live part is replaced: watch the new transcript.
    document.body.addEventListener("htmx:afterSwap", (event) => {
      if (event.detail.target && event.detail.target.id === "live") setUpTranscript();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setUpUnread();
    setUpTranscript();
    setUpComposer();
    setUpConnection();
    setUpEmbed();
  });
})();
