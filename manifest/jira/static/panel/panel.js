// deskroute's Jira issue panel: shows the latest decision for the open issue and sends
// Accept or Override to the deskroute server through Forge Remote.
//
// Forge adds the invocation token to every invokeRemote call; the server takes the issue
// from that token, so no request here names the issue.
//
// vendor/forge-bridge.js is @forge/bridge bundled as one ES module (see package.json,
// `npm run vendor-bridge`); the panel itself needs no build step.
import { invokeRemote } from "./vendor/forge-bridge.js";

export const PANEL_ROUTE = { method: "GET", path: "/forge/panel" };
export const FEEDBACK_ROUTE = { method: "POST", path: "/forge/panel/feedback" };
const PRIORITIES = ["low", "normal", "high", "urgent"];

const root = document.getElementById("root");

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  // Text goes in as text nodes, never as HTML, because reasons and account names come
  // from ticket and CRM data.
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function percent(value) {
  return value === null || value === undefined ? "n/a" : `${Math.round(value * 100)}%`;
}

async function call(route, body) {
  const request = { method: route.method, path: route.path };
  if (body !== undefined) {
    request.body = body;
    request.headers = { "Content-Type": "application/json" };
  }
  const response = await invokeRemote(request);
  const status = response.status ?? 200;
  if (status >= 400) {
    const message = response.body?.error?.message ?? `HTTP ${status}`;
    throw new Error(message);
  }
  return response.body;
}

function showError(error) {
  root.replaceChildren(element("p", { class: "error" }, `deskroute: ${error.message}`));
}

function accountRows(account) {
  if (!account || typeof account !== "object") return [];
  return Object.entries(account)
    .filter(([, value]) => value !== null && value !== "" && typeof value !== "object")
    .map(([name, value]) => [element("dt", {}, name), element("dd", {}, value)]);
}

function render(state) {
  const { decision, queues, feedback } = state;
  if (!decision) {
    root.replaceChildren(
      element("p", { class: "muted" }, "deskroute has not decided on this issue yet."),
    );
    return;
  }

  const summary = element(
    "dl",
    {},
    element("dt", {}, "Queue"),
    element("dd", {}, decision.queue ?? "none"),
    element("dt", {}, "Priority"),
    element("dd", {}, decision.priority ?? "none"),
    element("dt", {}, "Confidence"),
    element("dd", {}, `${percent(decision.confidence)} (threshold ${percent(decision.threshold)})`),
    element("dt", {}, "Action"),
    element("dd", {}, `${decision.action} (${decision.mode} mode)`),
  );
  if (decision.alternatives.length) {
    summary.append(
      element("dt", {}, "Alternatives"),
      element(
        "dd",
        {},
        decision.alternatives.map(([queue, p]) => `${queue} ${percent(p)}`).join(", "),
      ),
    );
  }

  const reasons = element(
    "ul",
    {},
    ...decision.reasons.map((reason) => element("li", {}, `${reason.rule}: ${reason.detail}`)),
  );
  const account = element("dl", {}, ...accountRows(decision.account).flat());

  const queueChoice = element(
    "select",
    { "aria-label": "Queue" },
    ...queues.map((queue) => element("option", { value: queue }, queue)),
  );
  queueChoice.value = decision.queue;
  const priorityChoice = element(
    "select",
    { "aria-label": "Priority" },
    ...PRIORITIES.map((priority) => element("option", { value: priority }, priority)),
  );
  priorityChoice.value = decision.priority;

  const send = async (body, buttons) => {
    buttons.forEach((button) => (button.disabled = true));
    try {
      await call(FEEDBACK_ROUTE, { ...body, decision_id: decision.id });
      await load();
    } catch (error) {
      showError(error);
    }
  };
  const accept = element("button", { class: "primary", type: "button" }, "Accept");
  const override = element("button", { type: "button" }, "Override");
  accept.addEventListener("click", () => send({ action: "accept" }, [accept, override]));
  override.addEventListener("click", () => {
    const body = { action: "override" };
    if (queueChoice.value !== decision.queue) body.queue = queueChoice.value;
    if (priorityChoice.value !== decision.priority) body.priority = priorityChoice.value;
    if (!body.queue && !body.priority) {
      showError(new Error("choose another queue or priority to override"));
      return;
    }
    send(body, [accept, override]);
  });

  const answered = feedback.length
    ? element("p", { class: "muted" }, `Answered: ${feedback.map((f) => f.verdict).join(", ")}`)
    : "";
  root.replaceChildren(
    summary,
    element("strong", {}, "Reasons"),
    reasons,
    account.childElementCount ? element("strong", {}, "Account") : "",
    account,
    element("div", { class: "actions" }, accept, queueChoice, priorityChoice, override),
    answered,
  );
}

async function load() {
  try {
    render(await call(PANEL_ROUTE));
  } catch (error) {
    showError(error);
  }
}

load();
