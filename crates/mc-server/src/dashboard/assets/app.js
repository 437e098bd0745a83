// Mission Control dashboard: live updates over server-sent events, ticking "N s ago"
// times, copy buttons and instant name search. Progressive: every page works without it.
"use strict";
(function () {
  // Every event type (mc_domain::activity::EventType::ALL): a job's progress changes the
  // agent's status too (queued: updating or deleting; done or failed: back).
  var AGENT_EVENTS = ["agent.created", "agent.updated", "agent.deleted", "agent.token_rotated",
    "agent.provisioning", "agent.healthy", "agent.degraded", "agent.offline",
    "agent.provision.queued", "agent.provision.retrying", "agent.provision.done",
    "agent.provision.failed", "agent.wakeup.sent"];
  var ICONS = { healthy: "\u25CF", degraded: "\u25B2", offline: "\u2715", provisioning: "\u25CC",
    updating: "\u21BB", deleting: "\u232B" };
  var LABELS = { healthy: "Healthy", degraded: "Degraded", offline: "Offline", provisioning: "Provisioning",
    updating: "Updating", deleting: "Deleting" };

  function ago(ms) {
    var s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function tick() {
    if (document.hidden) return;
    var times = document.querySelectorAll("time.ago[data-ts]");
    for (var i = 0; i < times.length; i++) {
      var ts = times[i].getAttribute("data-ts");
      if (ts) {
        var text = ago(Number(ts));
        if (times[i].textContent !== text) times[i].textContent = text;
      }
    }
  }

  function setAgo(el, iso) {
    if (!el) return;
    if (!iso) { el.setAttribute("data-ts", ""); el.textContent = "never"; return; }
    var ms = Date.parse(iso);
    el.setAttribute("data-ts", String(ms));
    el.setAttribute("datetime", iso);
    el.setAttribute("title", iso);
    el.textContent = ago(ms);
  }

  function setBadge(badge, status) {
    if (!badge) return;
    badge.className = "badge status-" + status;
    badge.querySelector("i").textContent = ICONS[status] || "?";
    badge.querySelector("span").textContent = LABELS[status] || status;
  }

  function bump(status, delta) {
    var counters = document.querySelectorAll('[data-count="' + status + '"], [data-count="total"]');
    for (var i = 0; i < counters.length; i++) {
      counters[i].textContent = String(Number(counters[i].textContent) + delta);
    }
  }

  function names() {
    var el = document.getElementById("mc-names");
    if (!el) return { boards: {}, gateways: {} };
    if (!names.cache) names.cache = JSON.parse(el.textContent);
    return names.cache;
  }

  // Fleet rows are kept small: their cells are found by position. Elsewhere (the agent
  // page) by data-field.
  var CELL = { name: 0, heartbeat: 3, board: 4, gateway: 5 };

  function field(row, name) {
    if (row.tagName === "TR") {
      var cell = row.cells[CELL[name]];
      return name === "name" && cell ? cell.querySelector("a") : cell || null;
    }
    return row.querySelector('[data-field="' + name + '"]');
  }

  function fill(row, agent) {
    var status = agent.status;
    row.setAttribute("data-status", status);
    row.setAttribute("data-name", agent.name.toLowerCase());
    setBadge(row.querySelector(".badge"), status);
    setAgo(row.querySelector("time.ago"), agent.last_seen_at);
    var link = field(row, "name");
    if (link) { link.textContent = agent.name; if (link.tagName === "A") link.href = "/agents/" + agent.id; }
    var hb = field(row, "heartbeat");
    if (hb) hb.textContent = "every " + agent.heartbeat_config.interval_seconds + " s, offline after " +
      agent.heartbeat_config.missing_tolerance + " s";
    var n = names();
    var board = field(row, "board");
    if (board) board.textContent = agent.board_id ? (n.boards[agent.board_id] || agent.board_id) : "(gateway main)";
    var gateway = field(row, "gateway");
    if (gateway) gateway.textContent = n.gateways[agent.gateway_id] || agent.gateway_id;
  }

  function visible(container, row) {
    var wanted = container.getAttribute("data-filter-status");
    var search = document.getElementById("fleet-search");
    var q = search ? search.value.trim().toLowerCase() : "";
    var okStatus = !wanted || row.getAttribute("data-status") === wanted;
    var okName = !q || row.getAttribute("data-name").indexOf(q) !== -1;
    row.hidden = !(okStatus && okName);
  }

  function belongs(container, agent) {
    var board = container.getAttribute("data-filter-board");
    var gateway = container.getAttribute("data-filter-gateway");
    var single = container.getAttribute("data-agent-id");
    var q = (container.getAttribute("data-filter-q") || "").toLowerCase();
    return (!single || single === agent.id) && (!board || board === agent.board_id) &&
      (!gateway || gateway === agent.gateway_id) && (!q || agent.name.toLowerCase().indexOf(q) !== -1);
  }

  function onAgentEvent(container, message) {
    var data = JSON.parse(message.data);
    var agent = data.agent;
    var id = agent ? agent.id : data.event.agent_id;
    var row = document.getElementById("agent-" + id);
    if (!agent || !belongs(container, agent)) {
      if (row) {
        bump(row.getAttribute("data-status"), -1);
        if (container.hasAttribute("data-agent-id")) {
          container.querySelector("[data-gone]").hidden = false;
        } else {
          row.parentNode.removeChild(row);
        }
      }
      return;
    }
    if (!row) {
      var template = document.getElementById("agent-row-template");
      var body = container.querySelector("[data-rows]");
      if (!template || !body) return;
      row = template.content.firstElementChild.cloneNode(true);
      row.id = "agent-" + id;
      fill(row, agent);
      body.appendChild(row);
      bump(agent.status, 1);
      var empty = container.querySelector("[data-empty]");
      if (empty) empty.hidden = true;
    } else {
      var before = row.getAttribute("data-status");
      fill(row, agent);
      if (before !== agent.status) { bump(before, -1); bump(agent.status, 1); }
    }
    if (!container.hasAttribute("data-agent-id")) visible(container, row);
  }

  function liveStatus(text, state) {
    var els = document.querySelectorAll("[data-live-status]");
    for (var i = 0; i < els.length; i++) {
      els[i].textContent = text;
      els[i].setAttribute("data-state", state);
    }
  }

  function connect(url, types, handler) {
    var source = new EventSource(url);
    source.onopen = function () { liveStatus("Live", "live"); };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        liveStatus("Live updates stopped: reload the page (your session may have expired)", "closed");
      } else {
        liveStatus("Reconnecting\u2026", "reconnecting");
      }
    };
    for (var i = 0; i < types.length; i++) source.addEventListener(types[i], handler);
    return source;
  }

  function startAgents(container) {
    var url = container.getAttribute("data-stream-url");
    connect(url, AGENT_EVENTS, function (message) { onAgentEvent(container, message); });
  }

  function startActivity(list) {
    var url = list.getAttribute("data-stream-url");
    var limit = Number(list.getAttribute("data-limit") || "200");
    connect(url, AGENT_EVENTS, function (message) {
      var event = JSON.parse(message.data);
      var item = document.createElement("li");
      item.className = "event type-" + event.event_type.replace(/[^a-z_]/g, "-");
      var time = document.createElement("time");
      time.className = "ago";
      item.appendChild(time);
      setAgo(time, event.created_at);
      var text = document.createElement("span");
      text.className = "message";
      text.textContent = " " + event.message;
      item.appendChild(text);
      list.insertBefore(item, list.firstChild);
      while (list.children.length > limit) list.removeChild(list.lastChild);
      var empty = document.querySelector("[data-activity-empty]");
      if (empty) empty.hidden = true;
    });
  }

  function copy(button) {
    var target = document.querySelector(button.getAttribute("data-copy"));
    var status = document.querySelector("[data-copy-status]");
    function done(ok) { if (status) status.textContent = ok ? "Copied." : "Select the text and copy it by hand."; }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(target.value).then(function () { done(true); }, function () { done(false); });
    } else {
      target.select();
      try { done(document.execCommand("copy")); } catch (e) { done(false); }
    }
  }

  document.addEventListener("click", function (e) {
    var button = e.target.closest ? e.target.closest("[data-copy]") : null;
    if (button) copy(button);
  });

  document.addEventListener("DOMContentLoaded", function () {
    var agents = document.querySelectorAll("[data-live-agents]");
    for (var i = 0; i < agents.length; i++) startAgents(agents[i]);
    var feeds = document.querySelectorAll("[data-live-activity]");
    for (var j = 0; j < feeds.length; j++) startActivity(feeds[j]);
    var search = document.getElementById("fleet-search");
    var fleet = document.querySelector("[data-live-agents][data-rows-container]");
    if (search && fleet) {
      search.addEventListener("input", function () {
        var rows = fleet.querySelectorAll("[data-rows] > [data-status]");
        for (var k = 0; k < rows.length; k++) visible(fleet, rows[k]);
      });
    }
    setInterval(tick, 1000);
  });
})();
