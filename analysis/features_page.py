"""The feature browser's page: one static HTML file with its data inside, no CDN and no server. An index of
the latents (sorted by clicking a column, a latent found by its number) and the card of the latent chosen
(the first by ReasonScore when the page opens, or the one in the address's #latent-<i>)."""
import html
import json

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; display: flex; height: 100vh; color: #222; }
#side { width: 430px; border-right: 1px solid #ccc; display: flex; flex-direction: column; }
#side header { padding: 8px 10px; border-bottom: 1px solid #ddd; }
#side h1 { font-size: 16px; margin: 0 0 4px; }
#list { overflow-y: auto; flex: 1; }
table { border-collapse: collapse; width: 100%; }
th { position: sticky; top: 0; background: #f4f4f4; cursor: pointer; text-align: right; padding: 3px 6px; }
td { text-align: right; padding: 2px 6px; border-bottom: 1px solid #eee; }
tr.latent:hover, tr.chosen { background: #fff2d9; cursor: pointer; }
#card { flex: 1; overflow-y: auto; padding: 10px 18px; }
.context { font-family: ui-monospace, monospace; white-space: pre-wrap; margin: 3px 0; padding: 3px 6px;
           border-left: 3px solid #eee; }
.token { border-radius: 2px; }
.focus { outline: 2px solid #c0392b; }
.logits { display: flex; gap: 30px; }
.logits table { width: auto; }
.note { color: #666; }
"""

SCRIPT = """
const data = JSON.parse(document.getElementById('data').textContent);
const vocab = data.vocab;
let order = data.features.map((_, n) => n), sortKey = 'reason_score', descending = true;
const fmt = v => (typeof v === 'number') ? Number(v.toPrecision(3)).toString() : v;
const show = t => (vocab[t] ?? '?').replace(/\\n/g, '\\u21b5');

function drawIndex() {
  order.sort((a, b) => {
    const x = data.features[a][sortKey], y = data.features[b][sortKey];
    return descending ? y - x : x - y; });
  const rows = order.map(n => { const f = data.features[n];
    return `<tr class="latent" id="row-${f.index}" onclick="choose(${f.index})"><td>${f.index}</td>` +
      `<td>${fmt(f.density)}</td><td>${fmt(f.max)}</td><td>${fmt(f.reason_score)}</td></tr>`; });
  document.getElementById('rows').innerHTML = rows.join('');
}

function sortBy(key) {
  descending = key === sortKey ? !descending : key !== 'index';
  sortKey = key; drawIndex();
}

function histogram(f) {
  const counts = f.histogram.counts, peak = Math.max(1, ...counts), w = 12, h = 60;
  const bars = counts.map((c, k) => `<rect x="${k * w}" y="${h - h * c / peak}" width="${w - 1}" ` +
    `height="${h * c / peak}" fill="#e67e22"><title>${fmt(f.histogram.edges[k])} to ` +
    `${fmt(f.histogram.edges[k + 1])}: ${c}</title></rect>`).join('');
  return `<svg width="${counts.length * w}" height="${h + 14}" role="img">${bars}` +
    `<text x="0" y="${h + 12}" font-size="10">${fmt(f.histogram.edges[0])}</text>` +
    `<text x="${counts.length * w - 30}" y="${h + 12}" font-size="10">${fmt(f.max)}</text></svg>`;
}

function context(c, f) {
  const spans = c.tokens.map((t, k) => {
    const a = Math.max(0, c.acts[k]) / (f.max || 1);
    return `<span class="token${k === c.focus ? ' focus' : ''}" style="background: rgba(230, 126, 34, ${a.toFixed(3)})"` +
      ` title="${fmt(c.acts[k])}">${escapeHtml(show(t))}</span>`; }).join('');
  return `<div class="context">${spans} <span class="note">(${fmt(c.acts[c.focus])})</span></div>`;
}

function escapeHtml(s) {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function logits(f) {
  if (!f.promoted) return `<p class="note">Logit effect: ${data.logit_effect}.</p>`;
  const table = (title, rows) => `<table><tr><th>${title}</th><th>logit</th></tr>` +
    rows.map(([t, v]) => `<tr><td>${escapeHtml(show(t))}</td><td>${fmt(v)}</td></tr>`).join('') + '</table>';
  return `<p class="note">Logit effect: ${data.logit_effect}.</p><div class="logits">` +
    table('promotes', f.promoted) + table('suppresses', f.suppressed) + '</div>';
}

function choose(index) {
  const f = data.features.find(g => g.index === index);
  const card = document.getElementById('card');
  if (!f) { card.innerHTML = `<p>Latent ${index} is not on this page (features= chose others).</p>`; return; }
  document.querySelectorAll('tr.chosen').forEach(r => r.classList.remove('chosen'));
  const row = document.getElementById(`row-${index}`);
  if (row) { row.classList.add('chosen'); row.scrollIntoView({block: 'nearest'}); }
  history.replaceState(null, '', `#latent-${index}`);
  card.innerHTML = `<h2 id="latent-card">Latent ${index}</h2>` +
    `<p>density ${fmt(f.density)} (fires on ${fmt(100 * f.density)}% of ${data.tokens} ${data.split} tokens), ` +
    `max activation ${fmt(f.max)}, ReasonScore ${fmt(f.reason_score)}</p>` +
    `<h3>Activations (log-spaced bins below the max)</h3>${histogram(f)}` +
    `<h3>Logit effect</h3>${logits(f)}` +
    `<h3>Top ${f.contexts.length} contexts</h3>` +
    (f.contexts.length ? f.contexts.map(c => context(c, f)).join('') : '<p class="note">It never fires on these tokens.</p>');
}

function find(event) {
  event.preventDefault();
  choose(Number(document.getElementById('find').value));
}

drawIndex();
const wanted = /^#latent-(\\d+)$/.exec(location.hash);
choose(wanted ? Number(wanted[1]) : data.features[order[0]].index);
"""


def render(page: dict) -> str:
    """The page for ``page`` (analysis.features' data), as one HTML string."""
    data = json.dumps(page).replace("</", "<\\/")  # no </script> inside the data
    title = html.escape(f"{page['model']} layer {page['layer']}: {len(page['features'])} latents")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body>
<div id="side"><header><h1>{title}</h1>
<div class="note">{html.escape(page['run'])}: {page['tokens']} {page['split']} tokens, {page['latents']} latents.
ReasonScore: the reasoning words' windows against the rest (docs/features.md).<br>
The SAE: {html.escape(page.get('fidelity', ''))}.<br>{html.escape(page['stamp'])}</div>
<form onsubmit="find(event)"><label>latent <input id="find" type="number" min="0" max="{page['latents'] - 1}"></label>
<button>show</button></form></header>
<div id="list"><table id="index"><thead><tr><th onclick="sortBy('index')">latent</th>
<th onclick="sortBy('density')">density</th><th onclick="sortBy('max')">max</th>
<th onclick="sortBy('reason_score')">ReasonScore</th></tr></thead><tbody id="rows"></tbody></table></div></div>
<main id="card"></main>
<script type="application/json" id="data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""
