// The feature table: sort by a column header, filter by the search box. Rows are built with
// textContent only (labels and tokens are corpus text), and only PAGE rows at a time are in the
// DOM, so 16k features stay fast.
"use strict";
(function () {
  const PAGE = 200;
  const index = window.MONOSEM_INDEX;
  const $ = (id) => document.getElementById(id);
  if (!index) {
    $("error").hidden = false;
    return;
  }
  const col = {};
  index.columns.forEach((name, i) => { col[name] = i; });
  const rows = index.rows;
  let sortKey = "density";
  let descending = true;
  let shown = PAGE;
  let matches = rows;

  $("meta").textContent = `${rows.length} features of SAE "${index.sae}" at ${index.hook}, ` +
    `from ${index.tokens.toLocaleString()} held-out tokens` +
    (index.labelled ? "; concept F1 against the corpus's planted labels" : "");

  function fmt(x, digits) {
    if (x === null || x === undefined) return "–";
    if (x !== 0 && Math.abs(x) < 1e-3) return x.toExponential(1);
    return x.toPrecision(digits);
  }

  function compare(a, b) {
    const x = a[col[sortKey]];
    const y = b[col[sortKey]];
    if (x === y) return a[0] - b[0];
    if (x === null) return 1; // missing values last in either direction
    if (y === null) return -1;
    const order = typeof x === "string" ? x.localeCompare(y) : x - y;
    return descending ? -order : order;
  }

  function update() {
    const terms = $("search").value.toLowerCase().split(/\s+/).filter((t) => t);
    matches = rows.filter((r) => terms.every((t) => r[col.search].includes(t)));
    matches.sort(compare);
    render();
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function render() {
    const body = document.querySelector("#features tbody");
    const fragment = document.createDocumentFragment();
    for (const r of matches.slice(0, shown)) {
      const tr = document.createElement("tr");
      const link = document.createElement("a");
      link.href = "feature.html#" + r[col.id];
      link.textContent = String(r[col.id]);
      cell(tr, "", "num").appendChild(link);
      cell(tr, r[col.label], "label-cell");
      cell(tr, fmt(r[col.density], 3), "num");
      cell(tr, fmt(r[col.max_act], 3), "num");
      const f1 = r[col.f1];
      cell(tr, f1 === null ? "–" : `${f1.toFixed(2)} ${r[col.concept] || ""}`, "num");
      fragment.appendChild(tr);
    }
    body.replaceChildren(fragment);
    $("count").textContent = `${matches.length} of ${rows.length} features` +
      (matches.length > shown ? ` (showing ${shown})` : "");
    $("more").hidden = matches.length <= shown;
    for (const th of document.querySelectorAll("th[data-key]")) {
      if (th.dataset.key === sortKey) th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    }
  }

  for (const th of document.querySelectorAll("th[data-key]")) {
    th.addEventListener("click", () => {
      descending = th.dataset.key === sortKey ? !descending : th.dataset.key !== "label";
      sortKey = th.dataset.key;
      update();
    });
  }
  $("search").addEventListener("input", () => { shown = PAGE; update(); });
  $("more").addEventListener("click", () => { shown += PAGE; render(); });
  update();
})();
