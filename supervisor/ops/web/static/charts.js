// Small bar charts drawn as SVG elements: no library, nothing fetched.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgElement(name, attrs) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  return el;
}

// values: numbers oldest first; label(i, v) the tooltip of one bar.
function drawBars(svg, values, label, cssClass) {
  const width = 600, height = 120, top = 14, bottom = 4;
  svg.replaceChildren();
  const max = Math.max(0, ...values);
  const step = width / Math.max(1, values.length);
  svg.appendChild(svgElement("line", { x1: 0, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" }));
  values.forEach((v, i) => {
    if (!v) return;
    const h = max > 0 ? (v / max) * (height - top - bottom) : 0;
    const bar = svgElement("rect", {
      x: i * step + 1, y: height - bottom - h, width: Math.max(1, step - 2), height: h, class: cssClass,
    });
    const title = svgElement("title", {});
    title.textContent = label(i, v);
    bar.appendChild(title);
    svg.appendChild(bar);
  });
  const peak = svgElement("text", { x: 4, y: 11, class: "chart-label" });
  peak.textContent = max > 0 ? `max ${label(-1, max)}` : "no jobs in the last hour";
  svg.appendChild(peak);
}
