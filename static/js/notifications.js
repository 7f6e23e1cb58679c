/*
 * notifications.js: the bell and toasts of every page, a client of
 * /ws/notifications/ (PROTOCOL.md).
 *
 * Delivery is at-least-once: a notification comes again on the next connect
 * until it is acknowledged. So each one is shown once per tab (deduplicated by
 * id), then acknowledged; acks are batched because a reconnect can bring up to
 * NOTIFICATIONS_QUEUE_LIMIT notifications at once and every frame counts against
 * the rate limit. The last few are kept in sessionStorage, so moving between
 * pages does not lose what was already acknowledged.
 */
(function () {
  "use strict";

  var R = window.Realtime;
  var box = document.getElementById("notifications");
  if (!box || !R) return;

  var KEEP = 20;
  var TOAST_MS = 6000;
  var MAX_TOASTS = 3;
  var STORE_KEY = "rt-notifications";
  var UNREAD_KEY = "rt-notifications-unread";

  var toggle = document.getElementById("notif-toggle");
  var badge = document.getElementById("notif-badge");
  var panel = document.getElementById("notif-panel");
  var list = document.getElementById("notif-list");
  var empty = document.getElementById("notif-empty");
  var toasts = document.getElementById("toasts");

  var items = load(STORE_KEY, []);
  var unread = load(UNREAD_KEY, 0);
  var seen = new Set(
    items.map(function (n) {
      return n.id;
    })
  );
  var toAck = [];
  var ackTimer = null;

  function load(key, fallback) {
    try {
      var value = JSON.parse(window.sessionStorage.getItem(key));
      return value === null ? fallback : value;
    } catch (err) {
      return fallback;
    }
  }

  function save() {
    try {
      window.sessionStorage.setItem(STORE_KEY, JSON.stringify(items.slice(-KEEP)));
      window.sessionStorage.setItem(UNREAD_KEY, JSON.stringify(unread));
    } catch (err) {
      /* storage full or disabled: the list just does not survive navigation */
    }
  }

  /* A one-line text for a notification's free-form data object. */
  function describe(data) {
    if (!data || typeof data !== "object") return String(data);
    var parts = [];
    ["title", "message", "text", "body"].forEach(function (key) {
      if (typeof data[key] === "string" && data[key]) parts.push(data[key]);
    });
    if (parts.length) return parts.join(": ");
    var json = JSON.stringify(data);
    return json.length > 200 ? json.slice(0, 199) + "…" : json;
  }

  function renderItem(n) {
    var item = R.el("li", "notif-item" + (n.broadcast ? " broadcast" : ""));
    item.dataset.id = String(n.id);
    item.appendChild(R.el("span", "notif-text", n.text));
    var when = R.formatTime(n.timestamp);
    var time = R.el("time", "muted small", when.short);
    time.dateTime = n.timestamp || "";
    time.title = when.full;
    item.appendChild(time);
    return item;
  }

  function renderList() {
    list.replaceChildren();
    items
      .slice()
      .reverse()
      .forEach(function (n) {
        list.appendChild(renderItem(n));
      });
    empty.hidden = items.length > 0;
    badge.hidden = unread === 0;
    badge.textContent = unread > 99 ? "99+" : String(unread);
    toggle.setAttribute(
      "aria-label",
      unread ? "Notifications, " + unread + " new" : "Notifications"
    );
  }

  function toast(text, extraClass) {
    var node = R.el("div", "toast" + (extraClass ? " " + extraClass : ""));
    node.appendChild(R.el("span", "toast-text", text));
    var close = R.el("button", "alert-close", "×");
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", function () {
      node.remove();
    });
    node.appendChild(close);
    toasts.appendChild(node);
    while (toasts.children.length > MAX_TOASTS) toasts.firstChild.remove();
    setTimeout(function () {
      node.remove();
    }, TOAST_MS);
  }

  function queueAck(id) {
    toAck.push(id);
    if (!ackTimer) ackTimer = setTimeout(flushAcks, 100);
  }

  function flushAcks() {
    ackTimer = null;
    if (!toAck.length) return;
    /* unsent acks are simply retried by the server re-sending on next connect */
    if (socket.send({ type: "ack", ids: toAck.slice(0, 1000) })) toAck = toAck.slice(1000);
    if (toAck.length && socket.isOpen()) ackTimer = setTimeout(flushAcks, 100);
  }

  var burst = 0;
  var burstTimer = null;

  function onNotification(frame) {
    if (!Number.isInteger(frame.id)) return;
    var broadcast = frame.broadcast === true;
    if (seen.has(frame.id)) {
      if (!broadcast) queueAck(frame.id);
      return;
    }
    seen.add(frame.id);
    var n = {
      id: frame.id,
      text: describe(frame.data),
      timestamp: typeof frame.timestamp === "string" ? frame.timestamp : "",
      broadcast: broadcast,
    };
    items.push(n);
    if (items.length > KEEP) items = items.slice(-KEEP);
    if (panel.hidden) unread += 1;
    save();
    renderList();
    /* many at once (a reconnect): one summary instead of a wall of toasts */
    burst += 1;
    if (burst <= MAX_TOASTS) toast(n.text, broadcast ? "broadcast" : "");
    clearTimeout(burstTimer);
    burstTimer = setTimeout(function () {
      if (burst > MAX_TOASTS) toast(burst + " new notifications", "summary");
      burst = 0;
    }, 300);
    if (!broadcast) queueAck(frame.id);
  }

  function setOpen(open) {
    panel.hidden = !open;
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) {
      toasts.replaceChildren(); /* the panel shows the same items */
      unread = 0;
      save();
      renderList();
    }
  }

  toggle.addEventListener("click", function () {
    setOpen(panel.hidden);
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && !panel.hidden) {
      setOpen(false);
      toggle.focus();
    }
  });
  document.addEventListener("click", function (event) {
    if (!panel.hidden && !box.contains(event.target)) setOpen(false);
  });

  var socket = new R.ReconnectingSocket({
    path: box.dataset.wsPath,
    liveOnOpen: true,
    onFrame: function (frame) {
      if (frame.type === "notification") onNotification(frame);
    },
    onState: function (state) {
      box.dataset.state = state;
      if (state === "live") flushAcks();
    },
    onClosed: function (code) {
      var C = R.CLOSE;
      if (
        code === C.NO_CREDENTIALS ||
        code === C.TOKEN_EXPIRED ||
        code === C.INVALID_CREDENTIALS
      ) {
        return { stop: true };
      }
      if (code === C.TOO_MANY_CONNECTIONS) return { minDelay: 30000 };
      if (code === C.RATE_LIMITED) return { minDelay: 10000 };
      return undefined;
    },
  });

  window.notificationsDebug = {
    dropSocket: function (opts) {
      socket.drop(opts);
    },
    resume: function () {
      socket.resume();
    },
    state: function () {
      return socket.state;
    },
  };

  renderList();
  socket.start();
})();
