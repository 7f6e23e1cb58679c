/*
 * realtime.js: a WebSocket that reconnects by itself (window.Realtime).
 *
 * Used by chat.js and notifications.js. The page authenticates with its
 * session cookie: no token is ever put in a URL or in the page.
 *
 * Reconnection uses exponential backoff with "equal jitter" (a delay between
 * half and all of min(maxDelay, baseDelay * 2^attempt)), so a server restart is
 * not met by every open tab at the same instant. The attempt counter is reset
 * only after a connection stayed live for STABLE_MS, so a server that accepts
 * and closes at once is not hammered. The owner decides per close code (via
 * onClosed) whether to stop or to wait longer; PROTOCOL.md close codes are
 * listed in CLOSE below.
 */
(function () {
  "use strict";

  var STABLE_MS = 10000;
  var HEARTBEAT_CHECK_MS = 5000;
  var IDLE_BEFORE_PING_MS = 25000;
  var PONG_TIMEOUT_MS = 10000;

  /* Application close codes of PROTOCOL.md. */
  var CLOSE = {
    TOKEN_EXPIRED: 4001,
    INVALID_CREDENTIALS: 4002,
    NO_CREDENTIALS: 4003,
    NO_ACCESS: 4004,
    RATE_LIMITED: 4008,
    MESSAGE_TOO_BIG: 4009,
    TOO_MANY_CONNECTIONS: 4013,
  };

  function wsUrl(path, query) {
    var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + window.location.host + path + (query ? "?" + query : "");
  }

  function now() {
    return Date.now();
  }

  /**
   * options:
   *   path        "/ws/chat/room/"
   *   query()     returns the query string for the next attempt ("" for none)
   *   onFrame(f)  every JSON frame except pong
   *   onState(state, info)  state is connecting | live | reconnecting | offline;
   *               info: {delay, nextAt, reason, held}
   *   onClosed(code, reason) -> undefined | {stop: true, reason} | {minDelay: ms, reason}
   *   liveOnOpen  mark live as soon as the socket opens (else call markLive())
   *   baseDelay, maxDelay  backoff bounds in ms (defaults 1000 and 30000)
   */
  function ReconnectingSocket(options) {
    this.options = options;
    this.baseDelay = options.baseDelay || 1000;
    this.maxDelay = options.maxDelay || 30000;
    this.ws = null;
    this.state = "idle";
    this.attempt = 0;
    this.timer = null;
    this.nextAt = 0;
    this.liveSince = 0;
    this.everLive = false;
    this.held = false;
    this.stopped = false;
    this.lastReceived = 0;
    this.pingSentAt = 0;
    this.heartbeat = null;
    var self = this;
    window.addEventListener("online", function () {
      if (!self.ws && !self.stopped && !self.held) self.retryNow();
    });
  }

  ReconnectingSocket.prototype._setState = function (state, info) {
    this.state = state;
    if (this.options.onState) this.options.onState(state, info || {});
  };

  ReconnectingSocket.prototype.start = function () {
    this.stopped = false;
    this._connect();
  };

  ReconnectingSocket.prototype._connect = function () {
    var self = this;
    clearTimeout(this.timer);
    this.timer = null;
    this._setState(this.everLive || this.attempt > 0 ? "reconnecting" : "connecting", {});
    var query = this.options.query ? this.options.query() : "";
    var ws;
    try {
      ws = new WebSocket(wsUrl(this.options.path, query));
    } catch (err) {
      this._closed(1006, String(err));
      return;
    }
    this.ws = ws;
    ws.onopen = function () {
      self.lastReceived = now();
      self._startHeartbeat();
      if (self.options.liveOnOpen) self.markLive();
    };
    ws.onmessage = function (event) {
      self.lastReceived = now();
      self.pingSentAt = 0;
      if (typeof event.data !== "string") return;
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (!frame || typeof frame.type !== "string" || frame.type === "pong") return;
      self.options.onFrame(frame);
    };
    ws.onerror = function () {
      /* a close event always follows */
    };
    ws.onclose = function (event) {
      if (self.ws !== ws) return;
      self._closed(event.code, event.reason);
    };
  };

  /* The connection is usable (for chat: its history frame arrived). */
  ReconnectingSocket.prototype.markLive = function () {
    this.liveSince = now();
    this.everLive = true;
    this._setState("live", {});
  };

  ReconnectingSocket.prototype._closed = function (code, reason) {
    this.ws = null;
    this._stopHeartbeat();
    if (this.liveSince && now() - this.liveSince >= STABLE_MS) this.attempt = 0;
    this.liveSince = 0;
    var decision = (this.options.onClosed && this.options.onClosed(code, reason)) || {};
    if (this.stopped || decision.stop) {
      this.stopped = true;
      this._setState("offline", { reason: decision.reason || "" });
      return;
    }
    if (this.held) {
      this._setState("reconnecting", { held: true, reason: decision.reason || "" });
      return;
    }
    this._schedule(decision.minDelay || 0, decision.reason || "");
  };

  ReconnectingSocket.prototype.nextDelay = function () {
    var ceiling = Math.min(this.maxDelay, this.baseDelay * Math.pow(2, this.attempt));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  };

  ReconnectingSocket.prototype._schedule = function (minDelay, reason) {
    var self = this;
    var delay = Math.max(this.nextDelay(), minDelay);
    this.attempt += 1;
    this.nextAt = now() + delay;
    this.timer = setTimeout(function () {
      self._connect();
    }, delay);
    if (navigator.onLine === false) {
      /* no network at all: say so; the "online" event retries at once */
      this._setState("offline", { retry: true, reason: "no network" });
    } else {
      this._setState("reconnecting", { delay: delay, nextAt: this.nextAt, reason: reason });
    }
  };

  /* Skip the rest of the current wait (the "Retry now" button, network back). */
  ReconnectingSocket.prototype.retryNow = function () {
    if (this.ws) return;
    this.stopped = false;
    this.held = false;
    this._connect();
  };

  ReconnectingSocket.prototype.send = function (frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  };

  ReconnectingSocket.prototype.isOpen = function () {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  };

  /* Throw the current socket away at once and treat it as a lost connection. */
  ReconnectingSocket.prototype._abandon = function (reason) {
    var ws = this.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close();
    } catch (err) {
      /* already closing */
    }
    this._closed(1006, reason);
  };

  /* Test hook: drop the connection; with {hold: true} stay down until resume(). */
  ReconnectingSocket.prototype.drop = function (opts) {
    this.held = !!(opts && opts.hold);
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) {
      this._abandon("dropped");
    } else if (!this.held) {
      this._schedule(0, "dropped");
    }
  };

  ReconnectingSocket.prototype.resume = function () {
    this.held = false;
    if (!this.ws) this.retryNow();
  };

  ReconnectingSocket.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      var ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      ws.close(1000);
    }
    this._stopHeartbeat();
    this._setState("offline", {});
  };

  /* An idle connection is pinged; one that does not answer is replaced. */
  ReconnectingSocket.prototype._startHeartbeat = function () {
    var self = this;
    this._stopHeartbeat();
    this.heartbeat = setInterval(function () {
      if (!self.isOpen()) return;
      var t = now();
      if (self.pingSentAt && t - self.pingSentAt > PONG_TIMEOUT_MS) {
        self._abandon("no answer to ping");
      } else if (!self.pingSentAt && t - self.lastReceived > IDLE_BEFORE_PING_MS) {
        self.pingSentAt = t;
        self.send({ type: "ping" });
      }
    }, HEARTBEAT_CHECK_MS);
  };

  ReconnectingSocket.prototype._stopHeartbeat = function () {
    clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.pingSentAt = 0;
  };

  /* Build an element with text only: message data never goes through innerHTML. */
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function formatTime(iso) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) return { short: "", full: "" };
    var today = new Date();
    var sameDay = date.toDateString() === today.toDateString();
    var short = sameDay
      ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : date.toLocaleString([], {
          month: "short",
          day: "numeric",
          hour: "2-digit",
          minute: "2-digit",
        });
    return { short: short, full: date.toLocaleString() };
  }

  /* Django's CSRF cookie (set by every page that has a form with {% csrf_token %}). */
  function csrfToken() {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  /**
   * A call to the JSON API with the session cookie and the CSRF header.
   * Resolves to the parsed body (null for 204); rejects with an Error whose
   * message is the API's {"error", "message"} body as one line, and whose
   * .code and .status say what went wrong.
   */
  function api(method, path, body) {
    var init = {
      method: method,
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    };
    if (method !== "GET") init.headers["X-CSRFToken"] = csrfToken();
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      if (response.status === 204) return null;
      return response.json().then(
        function (data) {
          if (response.ok) return data;
          throw apiError(response.status, data);
        },
        function () {
          throw apiError(response.status, null);
        }
      );
    });
  }

  function apiError(status, data) {
    var code = data && typeof data.error === "string" ? data.error : "http_" + status;
    var detail = data && typeof data.message === "string" ? data.message : "";
    var error = new Error(detail ? code + ": " + detail : code + " (HTTP " + status + ")");
    error.code = code;
    error.status = status;
    return error;
  }

  window.Realtime = {
    CLOSE: CLOSE,
    ReconnectingSocket: ReconnectingSocket,
    api: api,
    el: el,
    formatTime: formatTime,
    wsUrl: wsUrl,
  };
})();
