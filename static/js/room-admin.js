/*
 * room-admin.js: the room page's members and moderation controls, a client of
 * the rooms HTTP API (PROTOCOL.md "Rooms: access, moderation, read state").
 *
 * - Private rooms list their members (GET /api/rooms/<room>); the owner and
 *   staff (can_manage) invite (POST .../members) and remove (DELETE
 *   .../members/<user>) them.
 * - The owner, staff and moderators (can_moderate) ban (POST .../bans).
 * - An API refusal is shown as its {"error", "message"} body says.
 * A removed or banned user's sockets are closed with 4004 by the server;
 * chat.js shows that.
 */
(function () {
  "use strict";

  var R = window.Realtime;
  var root = document.getElementById("chat");
  if (!root || !R) return;

  var el = R.el;
  var API = root.dataset.api;
  var CAN_MANAGE = root.dataset.canManage === "true";
  var status = document.getElementById("admin-status");
  var membersPanel = document.getElementById("members-panel");
  var members = document.getElementById("members");
  var membersError = document.getElementById("members-error");
  var inviteForm = document.getElementById("invite-form");
  var banForm = document.getElementById("ban-form");
  var banError = document.getElementById("ban-error");

  function say(text) {
    status.textContent = text;
  }

  function memberPath(name) {
    return API + "/members/" + encodeURIComponent(name);
  }

  /* ---- members (private rooms) -------------------------------------------- */

  function showMembers(room) {
    var owner = room.owner;
    members.replaceChildren();
    (room.members || []).forEach(function (name) {
      var item = el("li", "member");
      item.dataset.user = name;
      item.appendChild(el("span", "member-name", name));
      if (name === owner) item.appendChild(el("span", "muted small", " (owner)"));
      if (CAN_MANAGE && name !== owner) {
        var remove = el("button", "button-link member-remove", "Remove");
        remove.type = "button";
        remove.setAttribute("aria-label", "Remove " + name + " from the room");
        remove.addEventListener("click", function () {
          removeMember(name);
        });
        item.appendChild(document.createTextNode(" "));
        item.appendChild(remove);
      }
      members.appendChild(item);
    });
  }

  function loadMembers() {
    if (!membersPanel) return Promise.resolve();
    return R.api("GET", API).then(showMembers, function (error) {
      membersError.textContent = "Could not load the members: " + error.message;
    });
  }

  function removeMember(name) {
    membersError.textContent = "";
    R.api("DELETE", memberPath(name))
      .then(function () {
        say(name + " was removed from the room.");
        return loadMembers();
      })
      .catch(function (error) {
        membersError.textContent = "Could not remove " + name + ": " + error.message;
      });
  }

  if (inviteForm) {
    inviteForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var input = document.getElementById("invite-user");
      var name = input.value.trim();
      membersError.textContent = "";
      if (!name) {
        membersError.textContent = "Type the username to invite.";
        return;
      }
      R.api("POST", API + "/members", { user_id: name })
        .then(function (room) {
          input.value = "";
          showMembers(room);
          say(name + " can now open this room.");
        })
        .catch(function (error) {
          membersError.textContent = "Could not invite " + name + ": " + error.message;
        });
    });
  }

  /* ---- bans --------------------------------------------------------------- */

  if (banForm) {
    banForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var input = document.getElementById("ban-user");
      var name = input.value.trim();
      banError.textContent = "";
      if (!name) {
        banError.textContent = "Type the username to ban.";
        return;
      }
      R.api("POST", API + "/bans", { user_id: name })
        .then(function () {
          input.value = "";
          say(name + " is banned from this room.");
          return loadMembers();
        })
        .catch(function (error) {
          banError.textContent = "Could not ban " + name + ": " + error.message;
        });
    });
  }

  loadMembers();
})();
