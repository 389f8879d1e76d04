// Test stand-in for Zendesk's ZAF v2 client SDK, served in place of zaf_sdk.min.js.
//
// The test sets window.__zafTest before any script runs: the installation id, the
// non-secure settings metadata() returns, and the values get() returns. request() posts
// the options to the harness's /zaf-proxy, which substitutes secure settings and forwards
// the request on the server side as Zendesk's proxy does. set() and invoke() calls are
// recorded in window.__zafCalls for the test to read.
(function () {
  "use strict";

  const config = window.__zafTest;
  const calls = { get: [], request: [], set: [], invoke: [] };
  window.__zafCalls = calls;

  function get(paths) {
    const names = Array.isArray(paths) ? paths : [paths];
    calls.get.push(names);
    const result = { errors: {} };
    for (const name of names) {
      if (Object.prototype.hasOwnProperty.call(config.data, name)) result[name] = config.data[name];
      else result.errors[name] = { message: `"${name}" is not a valid path` };
    }
    return Promise.resolve(result);
  }

  async function request(options) {
    calls.request.push(JSON.parse(JSON.stringify(options)));
    const response = await fetch("/zaf-proxy", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ installation: config.installationId, options }),
    });
    const result = await response.json();
    if (result.status >= 200 && result.status < 300) {
      return options.dataType === "json" && result.responseText
        ? JSON.parse(result.responseText)
        : result.responseText;
    }
    let responseJSON;
    try {
      responseJSON = JSON.parse(result.responseText);
    } catch (parseError) {
      responseJSON = undefined;
    }
    throw {
      status: result.status,
      statusText: result.statusText,
      responseText: result.responseText,
      responseJSON,
    };
  }

  function createClient() {
    return {
      get,
      request,
      metadata: () =>
        Promise.resolve({ installationId: config.installationId, settings: config.settings }),
      invoke(name, ...args) {
        calls.invoke.push([name, ...args]);
        return Promise.resolve({ errors: {} });
      },
      set(path, value) {
        calls.set.push([path, value]);
        return Promise.resolve({ [path]: value, errors: {} });
      },
      on() {},
    };
  }

  window.ZAFClient = { init: createClient };
})();
