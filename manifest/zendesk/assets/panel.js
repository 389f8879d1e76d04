// deskroute's Zendesk ticket sidebar: shows deskroute's latest decision for the open ticket
// and records the agent's Accept or Override on the deskroute server.
//
// Every call goes through client.request with secure: true and cors: false, so Zendesk's
// proxy replaces {{setting.api_token}} on Zendesk's servers and the token never reaches
// the browser. Zendesk substitutes secure settings only for hosts listed in the manifest's
// domainWhitelist.
(function () {
  "use strict";

  const HELPDESK = "zendesk";
  // Paths on the deskroute server. Tests check them against the server's routes.
  const DECISIONS_PATH = "/api/decisions";
  const QUEUES_PATH = "/api/queues";
  const FEEDBACK_PATH = "/api/decisions/{id}/feedback";
  const AUTH_HEADER = "Bearer {{setting.api_token}}";

  // Account fields shown in the summary, in this order, with their labels.
  const ACCOUNT_FIELDS = [
    ["account_name", "Account"],
    ["tier", "Tier"],
    ["sla_priority", "SLA priority"],
    ["account_owner", "Account owner"],
    ["days_to_renewal", "Days to renewal"],
    ["open_cases", "Open cases"],
    ["overdue_invoices", "Overdue invoices"],
    ["disputed_invoices", "Disputed invoices"],
    ["billing_hold", "Billing hold"],
    ["provisioning_hold", "Provisioning hold"],
    ["days_to_go_live", "Days to go-live"],
  ];

  const root = document.getElementById("root");
  const client = ZAFClient.init();
  let serverUrl = "";

  // Builds an element whose children are nodes or text. Text always goes in as a text
  // node, never as HTML, because reasons and account names come from tickets and CRMs.
  function element(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined || child === "") continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function percent(value) {
    if (typeof value !== "number") return "n/a";
    if (value > 0 && value < 0.005) return "<1%";
    return `${Math.round(value * 100)}%`;
  }

  function resize() {
    const height = Math.max(document.documentElement.scrollHeight, 60);
    return client.invoke("resize", { width: "100%", height: `${height}px` });
  }

  function show(...nodes) {
    root.replaceChildren(...nodes.filter((node) => node !== null));
    resize();
  }

  // client.request rejects with an XHR-like object: status, statusText, responseText.
  function describeFailure(failure) {
    if (failure instanceof Error) return failure.message;
    const status = failure && typeof failure.status === "number" ? failure.status : 0;
    let body = failure && failure.responseJSON;
    if (!body && failure && failure.responseText) {
      try {
        body = JSON.parse(failure.responseText);
      } catch (parseError) {
        body = null;
      }
    }
    const message = (body && body.error && body.error.message) || (failure && failure.statusText);
    if (status === 401) {
      return `deskroute rejected the API token (HTTP 401: ${message || "unauthorized"}). ` +
        "Check the API token in the deskroute app's settings.";
    }
    if (status === 0) {
      return `deskroute at ${serverUrl} could not be reached. ` +
        "Check the server URL in the app's settings and the manifest's domainWhitelist.";
    }
    return `deskroute returned HTTP ${status}: ${message || "request failed"}`;
  }

  function call(method, path, body) {
    const options = {
      url: serverUrl + path,
      type: method,
      headers: { Authorization: AUTH_HEADER },
      secure: true,
      cors: false,
      dataType: "json",
    };
    if (body !== undefined) {
      options.contentType = "application/json";
      options.data = JSON.stringify(body);
    }
    return client.request(options);
  }

  function showError(message) {
    show(element("p", { class: "error", role: "alert" }, message));
  }

  function summaryList(decision) {
    const details = decision.decision || {};
    const threshold =
      typeof details.threshold === "number"
        ? `threshold ${percent(details.threshold)}`
        : "no safe threshold for this queue";
    const list = element(
      "dl",
      { class: "summary" },
      element("dt", {}, "Queue"),
      element("dd", { "data-field": "queue" }, decision.queue || "none"),
      element("dt", {}, "Priority"),
      element("dd", { "data-field": "priority" }, decision.priority || "none"),
      element("dt", {}, "Confidence"),
      element(
        "dd",
        { "data-field": "confidence" },
        `${percent(decision.confidence)} (${threshold})`,
      ),
      element("dt", {}, "Action"),
      element("dd", { "data-field": "action" }, `${decision.action} (${decision.mode} mode)`),
    );
    const alternatives = details.alternatives || [];
    if (alternatives.length) {
      const text = alternatives.map(([queue, p]) => `${queue} ${percent(p)}`).join(", ");
      list.append(
        element("dt", {}, "Alternatives"),
        element("dd", { "data-field": "alternatives" }, text),
      );
    }
    return list;
  }

  function reasonList(decision) {
    const reasons = (decision.decision && decision.decision.reasons) || [];
    return element(
      "ul",
      { class: "reasons" },
      ...reasons.map((reason) => element("li", {}, `${reason.rule}: ${reason.detail}`)),
    );
  }

  function accountValue(value) {
    if (value === true) return "yes";
    if (value === false) return "no";
    return value;
  }

  function accountList(account) {
    if (!account || typeof account !== "object") return null;
    const rows = ACCOUNT_FIELDS.filter(
      ([name]) => account[name] !== null && account[name] !== undefined,
    );
    if (!rows.length) return null;
    return element(
      "dl",
      { class: "account" },
      ...rows.flatMap(([name, label]) => [
        element("dt", {}, label),
        element("dd", { "data-field": name }, accountValue(account[name])),
      ]),
    );
  }

  function feedbackList(feedback, queues) {
    if (!feedback.length) {
      return element("p", { class: "muted feedback" }, "No feedback from an agent yet.");
    }
    const queueNames = new Map(queues.filter((q) => q.target).map((q) => [q.target, q.name]));
    return element(
      "ul",
      { class: "feedback" },
      ...feedback.map((item) => {
        const when = new Date(item.created_at * 1000).toISOString().slice(0, 16).replace("T", " ");
        const chosen = queueNames.get(item.chosen) || item.chosen || "none";
        const by = item.actor ? ` by ${item.actor}` : "";
        return element("li", {}, `${item.verdict} ${item.field}: ${chosen}${by}, ${when} UTC`);
      }),
    );
  }

  async function setGroup(groupId) {
    const result = await client.set("ticket.assignee", { groupId: Number(groupId) });
    const errors = (result && result.errors) || {};
    if (Object.keys(errors).length) {
      throw new Error(`Zendesk did not set the group ${groupId}: ${JSON.stringify(errors)}`);
    }
  }

  function render(state) {
    const { ticketId, decisions, feedback, queues, actor } = state;
    const decision = decisions[decisions.length - 1];
    if (!decision) {
      const refresh = element("button", { type: "button" }, "Refresh");
      refresh.addEventListener("click", () => load(ticketId, actor));
      show(
        element("p", { class: "muted" }, `deskroute has not decided on ticket ${ticketId} yet.`),
        element("div", { class: "actions" }, refresh),
      );
      return;
    }

    const target = decision.decision && decision.decision.target;
    const status = element("p", { class: "status", role: "status" });
    const accept = element("button", { class: "primary", type: "button" }, "Accept");
    const choices = queues.filter((queue) => queue.target && queue.target !== target);
    const queueChoice = element(
      "select",
      { "aria-label": "Override queue" },
      ...choices.map((queue) => element("option", { value: queue.target }, queue.name)),
    );
    const override = element("button", { type: "button" }, "Override");
    if (!choices.length) {
      queueChoice.disabled = true;
      override.disabled = true;
    }

    async function answer(body, groupId, done) {
      accept.disabled = true;
      override.disabled = true;
      try {
        await call("POST", FEEDBACK_PATH.replace("{id}", String(decision.id)), { ...body, actor });
        if (groupId) await setGroup(groupId);
        await load(ticketId, actor, done);
      } catch (failure) {
        showError(describeFailure(failure));
      }
    }

    // client.set changes the agent's ticket form, which Zendesk saves when the agent submits.
    const saveHint = "Submit the ticket to save it.";
    accept.addEventListener("click", () => {
      const done = target
        ? `Accepted. The group for ${decision.queue} is set in the ticket form. ${saveHint}`
        : `Accepted. Queue ${decision.queue} has no Zendesk group in the policy, ` +
          "so set the group by hand.";
      answer({ verdict: "accept" }, target, done);
    });
    override.addEventListener("click", () => {
      const chosen = queueChoice.value;
      const name = queueChoice.selectedOptions[0].textContent;
      const done = `Overridden. The group for ${name} is set in the ticket form. ${saveHint}`;
      answer({ verdict: "override", field: "group", chosen }, chosen, done);
    });

    const account = accountList(decision.account);
    show(
      summaryList(decision),
      element("h3", {}, "Reasons"),
      reasonList(decision),
      account ? element("h3", {}, "Account") : null,
      account,
      element("div", { class: "actions" }, accept, queueChoice, override),
      element("h3", {}, "Feedback"),
      feedbackList(feedback, queues),
      status,
    );
    if (state.message) status.textContent = state.message;
  }

  async function load(ticketId, actor, message) {
    const query = `?helpdesk=${HELPDESK}&ticket_id=${encodeURIComponent(ticketId)}`;
    try {
      const [decided, listed] = await Promise.all([
        call("GET", DECISIONS_PATH + query),
        call("GET", `${QUEUES_PATH}?helpdesk=${HELPDESK}`),
      ]);
      render({
        ticketId,
        actor,
        message,
        decisions: decided.decisions || [],
        feedback: decided.feedback || [],
        queues: listed.queues || [],
      });
    } catch (failure) {
      showError(describeFailure(failure));
    }
  }

  async function start() {
    const metadata = await client.metadata();
    const configured = (metadata.settings && metadata.settings.deskroute_url) || "";
    serverUrl = String(configured).replace(/\/+$/, "");
    if (!/^https?:\/\/[^/]+/.test(serverUrl)) {
      showError("The deskroute server URL is missing or invalid in the app's settings.");
      return;
    }
    const data = await client.get(["ticket.id", "currentUser"]);
    const ticketId = data["ticket.id"];
    if (ticketId === undefined || ticketId === null) {
      showError("Zendesk did not return the ticket id for this sidebar.");
      return;
    }
    const user = data.currentUser;
    const actor = user && user.id !== undefined ? `zendesk user ${user.id}` : null;
    await load(String(ticketId), actor);
  }

  start().catch((failure) => showError(describeFailure(failure)));
})();
