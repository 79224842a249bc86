// One feature page, for feature.html#<id>: loads data/<id>.js, which calls monosemFeature(data).
// Every piece of corpus text goes into the DOM through textContent, never innerHTML.
"use strict";
(function () {
  const vocab = window.MONOSEM_VOCAB || [];
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined) return "–";
    if (x !== 0 && Math.abs(x) < 1e-3) return x.toExponential(2);
    return x.toPrecision(digits);
  }

  // Whitespace made visible, so a token that is a newline or a space still shows.
  function tokenText(id) {
    const text = id >= 0 && id < vocab.length ? vocab[id] : `<${id}>`;
    return text.replace(/\n/g, "\u21b5");
  }

  function example(ex, maxAct) {
    const row = el("div", null, "example");
    row.appendChild(el("span", fmt(ex.act, 3), "act"));
    const text = el("span", null, "text");
    ex.tokens.forEach((id, j) => {
      const a = ex.acts[j] || 0;
      const span = el("span", tokenText(id), j === ex.focus ? "tok focus" : "tok");
      span.title = `${JSON.stringify(vocab[id] ?? "")}: ${fmt(a, 3)}`;
      if (a > 0) {
        const alpha = Math.min(1, a / (maxAct || 1));
        span.style.backgroundColor = `rgba(255, 110, 0, ${alpha.toFixed(3)})`;
      }
      text.appendChild(span);
    });
    row.appendChild(text);
    return row;
  }

  function histogram(h) {
    const box = $("hist");
    if (!h.counts.length) {
      box.textContent = "never active on the tokens read";
      return;
    }
    const width = 640, height = 150, pad = 28;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height + pad);
    svg.setAttribute("role", "img");
    const peak = Math.max(...h.counts);
    const bar = (width - 2 * pad) / h.counts.length;
    h.counts.forEach((c, i) => {
      const r = document.createElementNS(SVG, "rect");
      const barHeight = (c / peak) * (height - 10);
      r.setAttribute("x", pad + i * bar);
      r.setAttribute("y", height - barHeight);
      r.setAttribute("width", Math.max(1, bar - 1));
      r.setAttribute("height", barHeight);
      r.setAttribute("fill", "#e8772e");
      const tip = document.createElementNS(SVG, "title");
      tip.textContent = `[${fmt(h.edges[i], 3)}, ${fmt(h.edges[i + 1], 3)}): ${c}`;
      r.appendChild(tip);
      svg.appendChild(r);
    });
    const label = (x, y, text, anchor) => {
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", x);
      t.setAttribute("y", y);
      t.setAttribute("text-anchor", anchor);
      t.textContent = text;
      svg.appendChild(t);
    };
    label(pad, height + 16, fmt(h.edges[0], 3), "start");
    label(width - pad, height + 16, fmt(h.edges[h.edges.length - 1], 3), "end");
    label(width / 2, height + 16, "activation (log scale)", "middle");
    label(pad - 4, 12, String(peak), "end");
    box.replaceChildren(svg);
  }

  function logitList(target, pairs) {
    const list = $(target);
    list.replaceChildren();
    for (const [id, value] of pairs) {
      const li = el("li");
      li.appendChild(el("span", tokenText(id), "tokname"));
      li.appendChild(el("span", (value > 0 ? "+" : "") + fmt(value, 3), "val"));
      list.appendChild(li);
    }
  }

  function render(d) {
    const title = `Feature ${d.id}`;
    document.title = `${title} · ${d.label}`;
    $("heading").textContent = title;
    $("label").textContent = d.label;
    const stats = $("stats");
    stats.replaceChildren();
    const stat = (name, value) => {
      stats.appendChild(el("dt", name));
      stats.appendChild(el("dd", value));
    };
    stat("density", `${fmt(d.density * 100, 3)} % of tokens (${d.count} of ${d.tokens})`);
    stat("max activation", fmt(d.max_act, 4));
    stat("mean nonzero activation", fmt(d.mean_act, 4));
    let match = "no concept labels in this corpus";
    if (d.concept !== null) match = `${d.concept} (F1 ${d.f1.toFixed(3)})`;
    else if (d.f1 !== null) match = "none (F1 0 for every concept)";
    stat("matched concept", match);
    histogram(d.hist);
    if (d.logits) {
      logitList("up", d.logits.up);
      logitList("down", d.logits.down);
    } else {
      $("up").replaceChildren(el("li", "not defined for this hook (not in the residual basis)"));
      $("down").replaceChildren();
    }
    $("top").replaceChildren(...d.top.map((ex) => example(ex, d.max_act)));
    if (!d.top.length) $("top").textContent = "never active on the tokens read";
    const bins = $("quantiles");
    bins.replaceChildren();
    d.quantiles.forEach((q, i) => {
      const bin = el("div", null, "bin");
      bin.appendChild(el("h3", `bin ${i + 1} of ${d.quantiles.length}: activations ${fmt(q.low, 3)} to ${fmt(q.high, 3)}`));
      q.examples.forEach((ex) => bin.appendChild(example(ex, d.max_act)));
      bins.appendChild(bin);
    });
  }

  // The data script calls this global (JSONP-style: fetch() of file:// URLs is blocked).
  window.monosemFeature = function (d) {
    $("error").hidden = true;
    render(d);
  };

  function load() {
    const raw = location.hash.slice(1);
    if (!/^\d+$/.test(raw)) {
      $("error").textContent = "No feature id in the address (expected feature.html#<id>).";
      $("error").hidden = false;
      return;
    }
    const id = Number(raw);
    $("prev").href = `#${Math.max(0, id - 1)}`;
    $("next").href = `#${id + 1}`;
    const old = document.getElementById("feature-data");
    if (old) old.remove();
    const script = document.createElement("script");
    script.id = "feature-data";
    script.src = `data/${id}.js`;
    script.onerror = () => {
      $("error").textContent = `No data for feature ${id} (data/${id}.js is missing).`;
      $("error").hidden = false;
    };
    document.head.appendChild(script);
  }

  window.addEventListener("hashchange", load);
  load();
})();
