/*
 * chat.js: the room page, a client of /ws/chat/<room>/ (PROTOCOL.md).
 *
 * - Messages are kept sorted by id and deduplicated by id, so a message that
 *   arrives twice (live, then again in a recovery history) is shown once.
 * - After a lost connection it reconnects with ?since=<highest id seen>: ids are
 *   strictly increasing per room, so that id says exactly what is missing. If
 *   the recovery history is truncated (more than 1000 missed), the hole is
 *   filled with history requests paging back until it meets what was seen.
 *   Then it asks for the latest messages once more and removes the shown ones
 *   that are missing from that answer: deleted while the page was away.
 * - Every piece of message data is set with textContent, never innerHTML.
 * - Rooms (PROTOCOL.md "Rooms: access, moderation, read state"): a delete
 *   button on the messages one may delete, "alice is typing…", and the read
 *   marker: while the page is visible it sends {"type": "read"} for the newest
 *   message shown, and tells the user's other tabs (the lobby's unread badges)
 *   on the BroadcastChannel "rt-rooms".
 * - window.chatDebug is a test hook (drop the socket, read the state).
 */
(function () {
  "use strict";

  var R = window.Realtime;
  var el = R.el;
  var root = document.getElementById("chat");
  if (!root || !R) return;

  var ME = root.dataset.user;
  var ROOM = root.dataset.room;
  var CAN_MODERATE = root.dataset.canModerate === "true";
  var MAX_CHARS = 4000;
  var PAGE = 50;
  var GAP_PAGE = 100;
  var SWEEP_PAGE = 100;
  var UNCONFIRMED_AFTER_MS = 10000;
  var TYPING_SEND_EVERY_MS = 2000; /* the server relays at most one per 2 s anyway */
  var TYPING_SHOW_MS = 3000;
  var DELETE_CONFIRM_MS = 4000;
  var NO_ACCESS_TEXT =
    "You do not have access to this room (it is private, or you were removed or banned)";

  var list = document.getElementById("messages");
  var pendingList = document.getElementById("pending");
  var scroller = document.getElementById("messages-scroll");
  var earlierButton = document.getElementById("load-earlier");
  var historyStart = document.getElementById("history-start");
  var connState = document.getElementById("conn-state");
  var connText = connState.querySelector(".conn-text");
  /* the countdown is aria-hidden: a status region must not speak every second */
  var connCountdown = connState.querySelector(".conn-countdown");
  var alerts = document.getElementById("alerts");
  var people = document.getElementById("people");
  var peopleCount = document.getElementById("people-count");
  var form = document.getElementById("composer");
  var input = document.getElementById("message-input");
  var recipient = document.getElementById("recipient");
  var sendButton = document.getElementById("send-button");
  var typingLine = document.getElementById("typing");

  var ids = []; /* sorted ids on the page */
  var byId = new Map();
  var lastId = 0; /* highest id seen: the ?since= of the next connection */
  var olderExist = false; /* a history said `truncated` for the oldest page we hold */
  var historyRequests = new Map(); /* String(before) -> {purpose, floor}; "null": the sweep */
  var users = [];
  var pending = new Map(); /* ref -> {content, node, sentAt} */
  var refCounter = 0;
  var lastPrivate = null;
  var awaitingInitialHistory = false;
  var retryButton = null;
  var countdown = null;
  var typers = new Map(); /* user -> timer that forgets them */
  var lastTypingSent = 0;
  var readSent = 0; /* highest id this user's read marker is known to be at */
  var readTimer = null;
  var tabs = "BroadcastChannel" in window ? new BroadcastChannel("rt-rooms") : null;

  /* ---- connection state ------------------------------------------------ */

  var STATE_TEXT = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    offline: "Offline",
  };

  function showState(state, info) {
    connState.dataset.state = state;
    clearInterval(countdown);
    connCountdown.textContent = "";
    if (state === "reconnecting" && info.nextAt) {
      connText.textContent = "Reconnecting";
      var tick = function () {
        var seconds = Math.max(0, Math.ceil((info.nextAt - Date.now()) / 1000));
        connCountdown.textContent = seconds > 0 ? " in " + seconds + " s…" : "…";
      };
      tick();
      countdown = setInterval(tick, 1000);
    } else if (state === "offline" && info.reason === "no network") {
      connText.textContent = "Offline: no network";
    } else if (state === "offline" && info.reason === "no access") {
      connText.textContent = "No access";
    } else {
      connText.textContent = STATE_TEXT[state] || state;
    }
    var canRetry = (state === "reconnecting" && !info.held) || (state === "offline" && info.retry);
    if (canRetry && !retryButton) {
      retryButton = el("button", "button-link retry", "Retry now");
      retryButton.type = "button";
      retryButton.addEventListener("click", function () {
        socket.retryNow();
      });
      connState.appendChild(retryButton);
    } else if (!canRetry && retryButton) {
      retryButton.remove();
      retryButton = null;
    }
    sendButton.disabled = state !== "live";
  }

  /* ---- alerts ------------------------------------------------------------- */

  function showAlert(text, kind, options) {
    var box = el("div", "alert alert-" + (kind || "error"));
    box.appendChild(el("span", "alert-text", text));
    if (options && options.link) {
      var link = el("a", "", options.link.text);
      link.href = options.link.href;
      box.appendChild(document.createTextNode(" "));
      box.appendChild(link);
    }
    var close = el("button", "alert-close", "×");
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", function () {
      box.remove();
    });
    box.appendChild(close);
    alerts.appendChild(box);
    while (alerts.children.length > 4) alerts.firstChild.remove();
    if (!(options && options.sticky)) {
      setTimeout(function () {
        box.remove();
      }, 10000);
    }
    return box;
  }

  var ERROR_TEXT = {
    invalid_json: "The server could not read a frame.",
    invalid_message: "The server refused that request",
    unknown_type: "The server does not know that request.",
    not_in_room: "That person is no longer in the room; the private message was not sent.",
    invalid_token: "The credentials were refused.",
    rate_limited: "You are sending too fast; a message was dropped.",
    forbidden: "You may not do that",
    not_found: "That message is gone or was never visible to you",
    unavailable: "The server is having trouble; try again in a moment.",
  };

  function showError(frame) {
    var base = ERROR_TEXT[frame.code] || "Error";
    var detail = typeof frame.message === "string" && frame.message ? frame.message : "";
    var text = base;
    if ((frame.code === "invalid_message" || frame.code === "forbidden") && detail) {
      text = base + ": " + detail;
    }
    else if (!ERROR_TEXT[frame.code] && detail) text = base + " (" + String(frame.code) + "): " + detail;
    var box = showAlert(text, "error");
    box.dataset.code = String(frame.code || "");
    if (frame.code === "not_in_room" && lastPrivate && !input.value) {
      input.value = lastPrivate.content;
    }
  }

  /* ---- messages ----------------------------------------------------------- */

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }

  function scrollToBottom() {
    scroller.scrollTop = scroller.scrollHeight;
  }

  function render(msg) {
    var isPrivate = msg.type === "private";
    var author = isPrivate ? msg.from : msg.user_id;
    var item = el("li", "msg");
    item.id = "msg-" + msg.id;
    item.dataset.id = String(msg.id);
    if (author === ME) item.classList.add("mine");
    var meta = el("div", "msg-meta");
    meta.appendChild(el("span", "msg-author", author));
    if (isPrivate) {
      item.classList.add("private");
      var tag =
        msg.from === ME ? "private to " + msg.to : "private to you";
      meta.appendChild(el("span", "msg-private-tag", tag));
    }
    var when = R.formatTime(msg.timestamp);
    var time = el("time", "msg-time", when.short);
    time.dateTime = String(msg.timestamp || "");
    time.title = when.full;
    meta.appendChild(time);
    if (mayDelete(msg)) {
      var remove = el("button", "button-link msg-delete", "Delete");
      remove.type = "button";
      remove.setAttribute("aria-label", "Delete this message");
      meta.appendChild(remove);
    }
    item.appendChild(meta);
    item.appendChild(el("p", "msg-content", msg.content));
    return item;
  }

  /* One's own messages; any room message for owners, staff and moderators. A private
     message only by its sender (PROTOCOL.md: only the sender may delete it). */
  function mayDelete(msg) {
    if (msg.type === "private") return msg.from === ME;
    return msg.user_id === ME || CAN_MODERATE;
  }

  function validMessage(msg) {
    return (
      msg &&
      (msg.type === "message" || msg.type === "private") &&
      Number.isInteger(msg.id) &&
      msg.id > 0 &&
      typeof msg.content === "string"
    );
  }

  /* Insert in id order; returns false for an id already shown. */
  function insert(msg) {
    if (!validMessage(msg) || byId.has(msg.id)) return false;
    var node = render(msg);
    /* binary search for the first id greater than msg.id */
    var lo = 0;
    var hi = ids.length;
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (ids[mid] < msg.id) lo = mid + 1;
      else hi = mid;
    }
    if (lo === ids.length) list.appendChild(node);
    else list.insertBefore(node, byId.get(ids[lo]));
    ids.splice(lo, 0, msg.id);
    byId.set(msg.id, node);
    if (msg.id > lastId) lastId = msg.id;
    return true;
  }

  function removeMessage(id) {
    var node = byId.get(id);
    if (!node) return;
    node.remove();
    byId.delete(id);
    ids.splice(ids.indexOf(id), 1);
  }

  /* Delete takes two clicks: "Delete", then "Confirm delete" within a few seconds. */
  list.addEventListener("click", function (event) {
    var button = event.target.closest(".msg-delete");
    if (!button) return;
    var id = Number(button.closest(".msg").dataset.id);
    if (button.dataset.armed) {
      if (!socket.send({ type: "delete", id: id })) {
        showAlert("Not connected: the message was not deleted.", "info");
      }
      return;
    }
    button.dataset.armed = "true";
    button.textContent = "Confirm delete";
    setTimeout(function () {
      delete button.dataset.armed;
      button.textContent = "Delete";
    }, DELETE_CONFIRM_MS);
  });

  function insertMany(messages, keepViewport) {
    var bulk = messages && messages.length > 1;
    if (bulk) list.setAttribute("aria-busy", "true");
    var stick = nearBottom();
    var oldHeight = scroller.scrollHeight;
    var oldTop = scroller.scrollTop;
    var added = 0;
    (messages || []).forEach(function (m) {
      if (insert(m)) added += 1;
    });
    if (keepViewport) scroller.scrollTop = oldTop + (scroller.scrollHeight - oldHeight);
    else if (stick) scrollToBottom();
    if (bulk) list.removeAttribute("aria-busy");
    return added;
  }

  /* The start of the room shows exactly when a history said nothing is older, even
     when the page holds no message (an empty room). */
  function updateEarlier() {
    earlierButton.hidden = !olderExist;
    earlierButton.disabled = false;
    historyStart.hidden = olderExist;
  }

  function requestHistory(before, limit, purpose, floor) {
    var key = String(before);
    if (historyRequests.has(key)) return true;
    var frame = { type: "history", limit: limit };
    if (before !== null) frame.before = before;
    if (!socket.send(frame)) return false;
    historyRequests.set(key, { purpose: purpose, floor: floor || 0 });
    return true;
  }

  earlierButton.addEventListener("click", function () {
    if (!ids.length) return;
    earlierButton.disabled = true;
    if (!requestHistory(ids[0], PAGE, "earlier")) earlierButton.disabled = false;
  });

  function onInitialHistory(frame, since) {
    var messages = Array.isArray(frame.messages) ? frame.messages : [];
    var firstConnect = ids.length === 0 && since === 0;
    insertMany(messages, false);
    if (firstConnect) {
      olderExist = !!frame.truncated;
      scrollToBottom();
    } else if (since > 0 && frame.truncated && messages.length) {
      /* more than the recovery limit was missed: page back to what we had */
      requestHistory(messages[0].id, GAP_PAGE, "gap", since);
    }
    reconcilePending(messages);
    updateEarlier();
    /* A reconnect: ?since= brought what is new, not what was deleted meanwhile. The
       sweep asks for the latest (before: null, a key no paging request uses). */
    if (since > 0) requestHistory(null, SWEEP_PAGE, "sweep", lastId);
  }

  /* The answer holds every visible message from its oldest id (from 0 when nothing is
     older) to the newest: a shown message in that range that it lacks was deleted. As
     it is the latest, the range reaches up to what the page held when it asked
     (request.floor, for a sweep), so a deleted newest message goes too; messages that
     arrived after the question are newer than that. */
  function onSweepAnswer(frame, request) {
    var messages = Array.isArray(frame.messages) ? frame.messages : [];
    if (frame.truncated && !messages.length) return; /* says nothing usable */
    var kept = new Set(messages.map(function (m) {
      return m && m.id;
    }));
    var from = frame.truncated ? messages[0].id : 0;
    var newest = messages.length ? messages[messages.length - 1].id : 0;
    var to = Math.max(newest, request.floor);
    ids.filter(function (id) {
      return id >= from && id <= to && !kept.has(id);
    }).forEach(removeMessage);
  }

  function onHistoryAnswer(frame) {
    var key = String(frame.before === undefined ? null : frame.before);
    var request = historyRequests.get(key);
    historyRequests.delete(key);
    var messages = Array.isArray(frame.messages) ? frame.messages : [];
    if (request && request.purpose === "sweep") {
      onSweepAnswer(frame, request);
      return;
    }
    if (!request || request.purpose === "earlier") {
      insertMany(messages, true);
      olderExist = !!frame.truncated;
      updateEarlier();
      return;
    }
    /* gap filling after a long outage */
    insertMany(messages, true);
    var oldest = messages.length ? messages[0].id : 0;
    if (frame.truncated && oldest > request.floor + 1) {
      requestHistory(oldest, GAP_PAGE, "gap", request.floor);
    }
  }

  /* ---- people ------------------------------------------------------------- */

  function setUsers(list) {
    if (!Array.isArray(list)) return;
    var previous = recipient.value;
    users = list.filter(function (u) {
      return typeof u === "string";
    });
    people.replaceChildren();
    users.forEach(function (name) {
      var item = el("li", "person");
      item.dataset.user = name;
      if (name === ME) {
        item.appendChild(el("span", "person-name", name));
        item.appendChild(el("span", "muted small", " (you)"));
      } else {
        var button = el("button", "person-name button-link", name);
        button.type = "button";
        button.title = "Send " + name + " a private message";
        button.setAttribute("aria-label", "Send " + name + " a private message");
        button.addEventListener("click", function () {
          recipient.value = name;
          updateComposer();
          input.focus();
        });
        item.appendChild(button);
      }
      people.appendChild(item);
    });
    peopleCount.textContent = "(" + users.length + ")";
    while (recipient.options.length > 1) recipient.remove(1);
    users.forEach(function (name) {
      if (name === ME) return;
      var option = el("option", "", name + " (private)");
      option.value = name;
      recipient.appendChild(option);
    });
    if (previous && users.indexOf(previous) >= 0) {
      recipient.value = previous;
    } else {
      if (previous) showAlert(previous + " left; your next message goes to everyone.", "info");
      recipient.value = "";
    }
    updateComposer();
  }

  function updateComposer() {
    form.classList.toggle("is-private", !!recipient.value);
  }
  recipient.addEventListener("change", updateComposer);

  /* ---- sending ------------------------------------------------------------ */

  function addPending(ref, content) {
    var item = el("li", "msg mine pending-msg");
    item.dataset.ref = ref;
    var meta = el("div", "msg-meta");
    meta.appendChild(el("span", "msg-author", ME));
    meta.appendChild(el("span", "msg-status", "sending…"));
    item.appendChild(meta);
    item.appendChild(el("p", "msg-content", content));
    pendingList.appendChild(item);
    pending.set(ref, { content: content, node: item, sentAt: Date.now(), failed: false });
    scrollToBottom();
  }

  function confirmPending(ref) {
    var entry = pending.get(ref);
    if (!entry) return;
    entry.node.remove();
    pending.delete(ref);
  }

  function failPending(ref, why) {
    var entry = pending.get(ref);
    if (!entry || entry.failed) return;
    entry.failed = true;
    entry.node.classList.add("failed");
    var status = entry.node.querySelector(".msg-status");
    status.textContent = why;
    var retry = el("button", "button-link", "Send again");
    retry.type = "button";
    retry.addEventListener("click", function () {
      if (!socket.isOpen()) return;
      confirmPending(ref);
      sendMessage(entry.content, "");
    });
    var discard = el("button", "button-link", "Discard");
    discard.type = "button";
    discard.addEventListener("click", function () {
      confirmPending(ref);
    });
    status.after(retry, discard);
  }

  /* After a reconnect: a pending message found in the recovery history was sent. */
  function reconcilePending(messages) {
    pending.forEach(function (entry, ref) {
      var found = messages.some(function (m) {
        return m.type === "message" && m.user_id === ME && m.content === entry.content;
      });
      if (found) confirmPending(ref);
      else failPending(ref, "not sent");
    });
  }

  setInterval(function () {
    var t = Date.now();
    pending.forEach(function (entry, ref) {
      if (!entry.failed && t - entry.sentAt > UNCONFIRMED_AFTER_MS) failPending(ref, "not confirmed");
    });
  }, 2000);

  function sendMessage(content, to) {
    if (to) {
      if (!socket.send({ type: "private", target: to, content: content })) return false;
      lastPrivate = { target: to, content: content };
      return true;
    }
    refCounter += 1;
    var ref = "p" + Date.now().toString(36) + "-" + refCounter;
    if (!socket.send({ type: "message", content: content, ref: ref })) return false;
    addPending(ref, content);
    return true;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var content = input.value;
    if (!content.trim()) return;
    if (Array.from(content).length > MAX_CHARS) {
      showAlert("A message holds at most " + MAX_CHARS + " characters.", "error");
      return;
    }
    if (sendMessage(content, recipient.value)) {
      input.value = "";
      input.focus();
    } else {
      showAlert("Not connected: the message was kept, send it once the room is live.", "info");
    }
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (typeof form.requestSubmit === "function") form.requestSubmit();
      else form.dispatchEvent(new Event("submit", { cancelable: true }));
    }
  });

  /* ---- read marker ---------------------------------------------------------- */

  /* The newest message shown is read once the page is visible; a burst of messages
     (a history, a busy room) sends one frame. */
  function markRead() {
    if (readTimer) return;
    readTimer = setTimeout(function () {
      readTimer = null;
      if (document.visibilityState !== "visible" || !ids.length) return;
      var newest = ids[ids.length - 1];
      if (newest <= readSent) return;
      if (!socket.send({ type: "read", id: newest })) return;
      readSent = newest;
      tellTabs(newest);
    }, 250);
  }

  function tellTabs(id) {
    if (tabs) tabs.postMessage({ type: "read", room: ROOM, id: id });
  }

  /* Another connection of this user read up to id: nothing to send for those. */
  function onRead(frame) {
    if (!Number.isInteger(frame.id) || frame.id <= readSent) return;
    readSent = frame.id;
    tellTabs(frame.id);
  }

  document.addEventListener("visibilitychange", markRead);

  /* ---- typing --------------------------------------------------------------- */

  input.addEventListener("input", function () {
    var t = Date.now();
    if (!input.value.trim() || t - lastTypingSent < TYPING_SEND_EVERY_MS) return;
    if (socket.send({ type: "typing" })) lastTypingSent = t;
  });

  function onTyping(user) {
    if (typeof user !== "string" || user === ME) return;
    clearTimeout(typers.get(user));
    typers.set(
      user,
      setTimeout(function () {
        stopTyping(user);
      }, TYPING_SHOW_MS)
    );
    showTyping();
  }

  function stopTyping(user) {
    if (!typers.has(user)) return;
    clearTimeout(typers.get(user));
    typers.delete(user);
    showTyping();
  }

  function showTyping() {
    var names = Array.from(typers.keys()).sort();
    var text = "";
    if (names.length === 1) text = names[0] + " is typing…";
    else if (names.length === 2) text = names[0] + " and " + names[1] + " are typing…";
    else if (names.length === 3) text = names[0] + ", " + names[1] + " and " + names[2] + " are typing…";
    else if (names.length > 3) text = "Several people are typing…";
    typingLine.textContent = text;
  }

  /* ---- frames --------------------------------------------------------------- */

  var sinceOfThisConnection = 0;

  function onFrame(frame) {
    switch (frame.type) {
      case "history":
        if (awaitingInitialHistory) {
          awaitingInitialHistory = false;
          onInitialHistory(frame, sinceOfThisConnection);
          socket.markLive();
          markRead();
        } else {
          onHistoryAnswer(frame);
        }
        break;
      case "message":
      case "private":
        if (frame.type === "message" && typeof frame.ref === "string") confirmPending(frame.ref);
        stopTyping(frame.type === "message" ? frame.user_id : frame.from);
        insertMany([frame], false);
        markRead();
        break;
      case "message_deleted":
        if (Number.isInteger(frame.id)) removeMessage(frame.id);
        break;
      case "read":
        onRead(frame);
        break;
      case "typing":
        onTyping(frame.user_id);
        break;
      case "user_joined":
      case "user_left":
        setUsers(frame.users);
        typers.forEach(function (timer, user) {
          if (users.indexOf(user) < 0) stopTyping(user);
        });
        break;
      case "error":
        showError(frame);
        break;
      default:
        break;
    }
  }

  function onClosed(code) {
    awaitingInitialHistory = false;
    historyRequests.clear();
    earlierButton.disabled = false;
    var C = R.CLOSE;
    var next = encodeURIComponent(window.location.pathname);
    var loginHref = root.dataset.loginUrl + "?next=" + next;
    if (code === C.NO_ACCESS) {
      /* private room, or removed or banned: retrying would only be refused again */
      showAlert(NO_ACCESS_TEXT, "error", {
        sticky: true,
        link: { text: "Back to the lobby", href: root.dataset.lobbyUrl },
      });
      typers.forEach(function (timer, user) {
        stopTyping(user);
      });
      return { stop: true, reason: "no access" };
    }
    if (code === C.NO_CREDENTIALS) {
      /* the session is gone: log in again (once; nothing to retry) */
      showAlert("You are logged out.", "error", {
        sticky: true,
        link: { text: "Log in again", href: loginHref },
      });
      window.location.assign(loginHref);
      return { stop: true };
    }
    if (code === C.TOKEN_EXPIRED || code === C.INVALID_CREDENTIALS) {
      showAlert("The server refused your credentials.", "error", {
        sticky: true,
        link: { text: "Log in again", href: loginHref },
      });
      return { stop: true };
    }
    if (code === C.RATE_LIMITED) {
      showAlert("Disconnected for sending too fast. Reconnecting shortly.", "error");
      return { minDelay: 10000 };
    }
    if (code === C.MESSAGE_TOO_BIG) {
      showAlert("Disconnected: a frame was too large.", "error");
      return undefined;
    }
    if (code === C.TOO_MANY_CONNECTIONS) {
      showAlert(
        "Too many open connections for your account (close other tabs), or the server " +
          "cannot reach its database. Retrying in a while.",
        "error"
      );
      return { minDelay: 30000 };
    }
    return undefined;
  }

  var socket = new R.ReconnectingSocket({
    path: root.dataset.wsPath,
    query: function () {
      sinceOfThisConnection = lastId;
      awaitingInitialHistory = true;
      return lastId > 0 ? "since=" + lastId : "";
    },
    onFrame: onFrame,
    onState: showState,
    onClosed: onClosed,
  });

  window.chatDebug = {
    /* Close the socket now; with {hold: true} stay disconnected until resume(). */
    dropSocket: function (opts) {
      socket.drop(opts);
    },
    resume: function () {
      socket.resume();
    },
    state: function () {
      return socket.state;
    },
    lastId: function () {
      return lastId;
    },
    ids: function () {
      return ids.slice();
    },
  };

  showState("connecting", {});
  socket.start();
})();
