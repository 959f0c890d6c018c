// A self-contained reader of the OpenAPI schema (the usual Swagger UI loads from a CDN, which
// hospital networks block): every path, its summary, description, request body and responses.
"use strict";
(async function () {
  const root = document.getElementById("api");
  let spec;
  try {
    spec = await (await fetch("/openapi.json")).json();
  } catch (e) {
    root.textContent = "Could not load /openapi.json: " + e.message;
    return;
  }
  const resolve = (s) => {
    if (s && s.$ref) return spec.components.schemas[s.$ref.split("/").pop()] || s;
    return s;
  };
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const shape = (schema, depth) => {
    schema = resolve(schema) || {};
    if (depth > 2) return schema.type || "object";
    if (schema.properties) {
      const out = {};
      Object.entries(schema.properties).forEach(([k, v]) => { out[k] = shape(v, depth + 1); });
      return out;
    }
    if (schema.type === "array") return [shape(schema.items, depth + 1)];
    if (schema.anyOf) return schema.anyOf.map((s) => (resolve(s) || {}).type || "object").join(" | ");
    return schema.format ? schema.type + " (" + schema.format + ")" : schema.type || "any";
  };
  root.textContent = "";
  root.appendChild(el("p", "note", spec.info.description || ""));
  Object.entries(spec.paths).forEach(([path, ops]) => {
    Object.entries(ops).forEach(([method, op]) => {
      const box = el("section", "op");
      const h = el("h2");
      h.appendChild(el("span", "method " + method, method.toUpperCase()));
      h.appendChild(document.createTextNode(path));
      box.appendChild(h);
      if (op.summary) box.appendChild(el("p", "", op.summary));
      if (op.description) box.appendChild(el("p", "note", op.description));
      const dl = el("dl");
      const body = op.requestBody && op.requestBody.content;
      if (body) {
        Object.entries(body).forEach(([ctype, media]) => {
          dl.appendChild(el("dt", "", "Request body (" + ctype + ")"));
          const dd = el("dd");
          dd.appendChild(el("pre", "", JSON.stringify(shape(media.schema, 0), null, 2)));
          dl.appendChild(dd);
        });
      }
      Object.entries(op.responses || {}).forEach(([code, r]) => {
        dl.appendChild(el("dt", "", code + " " + (r.description || "")));
        const media = r.content && r.content["application/json"];
        if (media && media.schema && Object.keys(media.schema).length) {
          const dd = el("dd");
          dd.appendChild(el("pre", "", JSON.stringify(shape(media.schema, 0), null, 2)));
          dl.appendChild(dd);
        }
      });
      box.appendChild(dl);
      root.appendChild(box);
    });
  });
})();
