/*
 * lobby.js: the lobby's "Create a room" form and live unread badges, a client
 * of the rooms HTTP API (PROTOCOL.md "Rooms: access, moderation, read state").
 *
 * - Create: POST /api/rooms {"name", "private"} (CSRF header from the cookie),
 *   then go to the new room; a refusal shows the API's {"error", "message"}.
 * - Badges: the server renders the list; GET /api/rooms refreshes it every few
 *   seconds while the page is visible, and at once when it becomes visible.
 * - A room page of this browser that reads a room posts {"type": "read", room,
 *   id} on the BroadcastChannel "rt-rooms": its badge clears at once, and a
 *   refresh that answered before the server stored that marker cannot bring
 *   the badge back.
 * - window.lobbyDebug is a test hook (stop the polling, refresh now).
 */
(function () {
  "use strict";

  var R = window.Realtime;
  var list = document.getElementById("room-list");
  if (!list || !R) return;

  var POLL_MS = 5000;
  var el = R.el;
  var noRooms = document.getElementById("no-rooms");
  var createForm = document.getElementById("create-room");
  var createName = document.getElementById("create-name");
  var createPrivate = document.getElementById("create-private");
  var createError = document.getElementById("create-error");

  var readUpTo = new Map(); /* room -> highest id a tab of this browser read */
  var latestRequest = 0;
  var poller = null;

  /* ---- the room list ------------------------------------------------------ */

  function itemFor(room) {
    return list.querySelector('li[data-room="' + room + '"]');
  }

  function newItem(room) {
    var item = el("li");
    item.dataset.room = room;
    var link = el("a", "", "#" + room);
    link.href = "/chat/" + encodeURIComponent(room) + "/";
    var tags = el("span", "room-tags");
    var badge = el("span", "badge");
    badge.title = "unread messages";
    tags.appendChild(badge);
    item.appendChild(link);
    item.appendChild(tags);
    return item;
  }

  function setUnread(item, count) {
    var badge = item.querySelector(".badge");
    badge.dataset.unread = String(count);
    badge.textContent = String(count);
    badge.hidden = !count;
  }

  function readHere(room, lastId) {
    return lastId !== null && readUpTo.has(room) && readUpTo.get(room) >= lastId;
  }

  /* Show the rooms of a GET /api/rooms answer, in its order. */
  function showRooms(rooms) {
    var keep = new Set();
    rooms.forEach(function (info) {
      if (!info || typeof info.room !== "string") return;
      keep.add(info.room);
      var item = itemFor(info.room) || newItem(info.room);
      var tags = item.querySelector(".room-tags");
      if (info.private && !item.querySelector(".tag-private")) {
        tags.insertBefore(el("span", "tag tag-private", "private"), tags.firstChild);
      }
      var empty = item.querySelector(".room-empty");
      if (empty && info.last_id !== null) empty.remove();
      if (!empty && info.last_id === null) {
        tags.insertBefore(el("span", "muted room-empty", "no messages yet"), tags.lastChild);
      }
      item.dataset.lastId = info.last_id === null ? "" : String(info.last_id);
      setUnread(item, readHere(info.room, info.last_id) ? 0 : info.unread || 0);
      list.appendChild(item); /* moves it: the answer's order is newest activity first */
    });
    Array.from(list.children).forEach(function (item) {
      if (!keep.has(item.dataset.room)) item.remove();
    });
    noRooms.hidden = keep.size > 0;
  }

  /* Only the answer to the newest request is shown: an older one may predate a read. */
  function refresh() {
    latestRequest += 1;
    var request = latestRequest;
    return R.api("GET", "/api/rooms").then(
      function (data) {
        if (request === latestRequest && data && Array.isArray(data.rooms)) showRooms(data.rooms);
      },
      function () {
        /* offline or logged out: the next refresh tries again */
      }
    );
  }

  function startPolling() {
    clearInterval(poller);
    poller = setInterval(function () {
      if (document.visibilityState === "visible") refresh();
    }, POLL_MS);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") refresh();
  });

  if ("BroadcastChannel" in window) {
    new BroadcastChannel("rt-rooms").addEventListener("message", function (event) {
      var data = event.data;
      if (!data || data.type !== "read" || typeof data.room !== "string") return;
      if (!Number.isInteger(data.id)) return;
      readUpTo.set(data.room, Math.max(data.id, readUpTo.get(data.room) || 0));
      var item = itemFor(data.room);
      if (item && item.dataset.lastId && data.id >= Number(item.dataset.lastId)) setUnread(item, 0);
      refresh();
    });
  }

  /* ---- create a room ------------------------------------------------------ */

  createForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var name = createName.value.trim();
    createError.textContent = "";
    createName.removeAttribute("aria-invalid");
    if (!name) {
      createError.textContent = "Type a name for the room.";
      createName.setAttribute("aria-invalid", "true");
      return;
    }
    var button = createForm.querySelector("button[type=submit]");
    button.disabled = true;
    R.api("POST", "/api/rooms", { name: name, private: createPrivate.checked })
      .then(function (room) {
        window.location.assign("/chat/" + encodeURIComponent(room.room) + "/");
      })
      .catch(function (error) {
        button.disabled = false;
        createName.setAttribute("aria-invalid", "true");
        createError.textContent =
          (error.code === "conflict" ? "That name is taken. " : "Could not create the room. ") +
          error.message;
      });
  });

  window.lobbyDebug = {
    stopPolling: function () {
      clearInterval(poller);
      poller = null;
    },
    refresh: refresh,
  };

  startPolling();
})();
