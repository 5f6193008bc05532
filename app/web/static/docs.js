// Renders the OpenAPI document (sanic-ext, /docs/openapi.json) as a plain page: served from
// 'self', no CDN, so the API reference works offline and under the strict CSP.
"use strict";

(async function () {
  const root = document.getElementById("api-docs");
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  let spec;
  try {
    const response = await fetch(root.dataset.specUrl, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    spec = await response.json();
  } catch (error) {
    root.replaceChildren(el("p", "error", "Could not load the API description: " + error.message));
    return;
  }
  const info = spec.info || {};
  root.replaceChildren(el("h1", "", (info.title || "API") + (info.version ? " " + info.version : "")));
  if (info.description) root.append(el("p", "description", info.description));

  const groups = new Map();
  for (const [path, operations] of Object.entries(spec.paths || {})) {
    for (const [method, operation] of Object.entries(operations)) {
      if (typeof operation !== "object" || !operation) continue;
      const tag = (operation.tags && operation.tags[0]) || "other";
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push({ path, method, operation });
    }
  }
  for (const [tag, operations] of [...groups.entries()].sort()) {
    root.append(el("h2", "", tag));
    for (const { path, method, operation } of operations) {
      const details = el("details", "operation");
      const summary = el("summary");
      summary.append(el("span", "method " + method, method), el("span", "path", path),
        el("span", "muted", operation.summary || ""));
      details.append(summary);
      if (operation.description) details.append(el("p", "description", operation.description));
      const parameters = operation.parameters || [];
      if (parameters.length) {
        const table = el("table");
        const head = el("tr");
        head.append(el("th", "", "parameter"), el("th", "", "in"), el("th", "", "type"));
        table.append(head);
        for (const parameter of parameters) {
          const row = el("tr");
          row.append(el("td", "path", parameter.name), el("td", "", parameter.in),
            el("td", "", (parameter.schema && parameter.schema.type) || ""));
          table.append(row);
        }
        details.append(table);
      }
      const responses = operation.responses || {};
      if (Object.keys(responses).length) {
        const table = el("table");
        const head = el("tr");
        head.append(el("th", "", "status"), el("th", "", "meaning"));
        table.append(head);
        for (const [status, response] of Object.entries(responses)) {
          const row = el("tr");
          row.append(el("td", "", status), el("td", "", (response && response.description) || ""));
          table.append(row);
        }
        details.append(table);
      }
      root.append(details);
    }
  }
})();
