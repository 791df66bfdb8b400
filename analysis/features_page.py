"""The feature browser's pages: static HTML files with their data inside, no CDN and no server. Every page
holds the index of all latents (sorted by clicking a column, a latent found by its number) and the cards of
one block of latents (``cards_per_page``), in the order analysis.features chose them (index.html the first
block, by ReasonScore when a count was asked for; block-<b>.html the others): a card of another block is a
link away, so no page carries every card (3,072 latents x 20 contexts is 17 MB in one page). The card shown
is the first of the page's block, or the one in the address's #latent-<i>."""
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
const vocab = data.vocab, cards = new Map(data.cards.map(card => [card.index, card]));
let order = data.features.map((_, n) => n), sortKey = 'reason_score', descending = true, densest = 1;
const fmt = v => (typeof v === 'number') ? Number(v.toPrecision(3)).toString() : v;
const show = t => (vocab[t] ?? '?').replace(/\\n/g, '\\u21b5');

function drawIndex() {
  order.sort((a, b) => {
    const x = data.features[a][sortKey], y = data.features[b][sortKey];
    return descending ? y - x : x - y; });
  const shown = order.filter(n => data.features[n].density <= densest);
  document.getElementById('shown').textContent = `${shown.length} of ${order.length} latents`;
  const rows = shown.map(n => { const f = data.features[n];
    return `<tr class="latent" id="row-${f.index}" onclick="choose(${f.index})"><td>${f.index}</td>` +
      `<td>${fmt(f.density)}</td><td>${fmt(f.max)}</td><td>${fmt(f.reason_score)}</td></tr>`; });
  document.getElementById('rows').innerHTML = rows.join('');
}

function filterDensity(value) {  // dense latents fire on reasoning words too: leave them out to read the rest
  densest = value === '' ? 1 : Number(value); drawIndex();
}

function sortBy(key) {
  descending = key === sortKey ? !descending : key !== 'index';
  sortKey = key; drawIndex();
}

function histogram(f) {
  const counts = f.histogram.counts, peak = Math.max(1, ...counts), w = 12, h = 60, left = 44;
  const bars = counts.map((c, k) => `<rect x="${left + k * w}" y="${h - h * c / peak + 4}" width="${w - 1}" ` +
    `height="${h * c / peak}" fill="#e67e22"><title>${fmt(f.histogram.edges[k])} to ` +
    `${fmt(f.histogram.edges[k + 1])}: ${c}</title></rect>`).join('');
  const right = left + counts.length * w;
  return `<svg width="${right + 4}" height="${h + 30}" role="img">${bars}` +
    `<line x1="${left - 2}" y1="4" x2="${left - 2}" y2="${h + 4}" stroke="#888"/>` +
    `<text x="${left - 5}" y="12" font-size="10" text-anchor="end">${peak}</text>` +
    `<text x="${left - 5}" y="${h + 4}" font-size="10" text-anchor="end">0</text>` +
    `<text x="${left - 5}" y="${h / 2 + 8}" font-size="10" text-anchor="end">tokens</text>` +
    `<text x="${left}" y="${h + 16}" font-size="10">${fmt(f.histogram.edges[0])}</text>` +
    `<text x="${right}" y="${h + 16}" font-size="10" text-anchor="end">${fmt(f.max)}</text>` +
    `<text x="${(left + right) / 2}" y="${h + 28}" font-size="10" text-anchor="middle">activation</text></svg>`;
}

function context([position, focus, tokens, acts], f) {  // compact: [position, focus, [token ids], [acts]]
  const spans = tokens.map((t, k) => {
    const a = Math.max(0, acts[k]) / (f.max || 1);
    return `<span class="token${k === focus ? ' focus' : ''}" style="background: rgba(230, 126, 34, ${a.toFixed(3)})"` +
      ` title="${fmt(acts[k])}">${escapeHtml(show(t))}</span>`; }).join('');
  return `<div class="context">${spans} <span class="note">(${fmt(acts[focus])})</span></div>`;
}

function escapeHtml(s) {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function logits(f) {
  const note = `<p class="note">${data.logit_effect[0].toUpperCase()}${data.logit_effect.slice(1)}.</p>`;
  if (!f.promoted) return note;
  const table = (title, rows) => `<table><tr><th>${title}</th><th>logit</th></tr>` +
    rows.map(([t, v]) => `<tr><td>${escapeHtml(show(t))}</td><td>${fmt(v)}</td></tr>`).join('') + '</table>';
  return note + '<div class="logits">' + table('promotes', f.promoted) + table('suppresses', f.suppressed) + '</div>';
}

function choose(index) {
  const entry = data.features.find(g => g.index === index), f = cards.get(index);
  const card = document.getElementById('card');
  if (!entry) { card.innerHTML = `<p>Latent ${index} is not in this browser (features= chose others).</p>`; return; }
  if (!f) { location.href = `${data.pages[entry.block]}#latent-${index}`; return; }  // its card is on another page
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
if (wanted || data.cards.length) choose(wanted ? Number(wanted[1]) : data.cards[0].index);
"""


def page_name(block: int) -> str:
    return "index.html" if block == 0 else f"block-{block}.html"


def render_pages(page: dict, per_page: int) -> dict[str, str]:
    """The browser for ``page`` (analysis.features' data): file name -> HTML, a page per ``per_page`` cards."""
    cards = page["features"]
    blocks = range(max(1, -(-len(cards) // per_page)))
    index = [{key: card[key] for key in ("index", "density", "max", "reason_score")} | {"block": n // per_page}
             for n, card in enumerate(cards)]
    shared = {key: value for key, value in page.items() if key not in ("features", "vocab")}
    pages = {}
    for block in blocks:
        own = [compact(card) for card in cards[block * per_page:(block + 1) * per_page]]
        used = {str(t) for card in own for context in card["contexts"] for t in context[2]}
        used |= {str(t) for card in own for t, _ in card.get("promoted", []) + card.get("suppressed", [])}
        data = shared | {"features": index, "cards": own, "pages": [page_name(b) for b in blocks],
                         "vocab": {t: text for t, text in page["vocab"].items() if t in used}}
        pages[page_name(block)] = render(page, data, f"cards {block * per_page + 1}-{block * per_page + len(own)} of "
                                                     f"{len(cards)} on this page, page {block + 1} of {len(blocks)}")
    return pages


def compact(card: dict) -> dict:
    """A card with its contexts as [position, focus, tokens, acts]: the keys once per page, not per context."""
    return card | {"contexts": [[c["position"], c["focus"], c["tokens"], c["acts"]] for c in card["contexts"]]}


def render(page: dict, data: dict, shown: str) -> str:
    """One page of the browser, as an HTML string; ``shown`` says which cards it holds."""
    data = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no </script> inside the data
    title = html.escape(f"{page['model']} layer {page['layer']}: {len(page['features'])} latents")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body>
<div id="side"><header><h1>{title}</h1>
<div class="note">{html.escape(page['run'])}: {page['tokens']} {page['split']} tokens, {page['latents']} latents;
{shown}.
ReasonScore: the reasoning words' windows against the rest (docs/features.md).<br>
The SAE: {html.escape(page.get('fidelity', ''))}.<br>{html.escape(page['stamp'])}</div>
<form onsubmit="find(event)"><label>latent <input id="find" type="number" min="0" max="{page['latents'] - 1}"></label>
<button>show</button></form>
<label>density at most <input id="densest" type="number" min="0" max="1" step="0.01" placeholder="1"
  oninput="filterDensity(this.value)"></label> <span id="shown" class="note"></span></header>
<div id="list"><table id="index"><thead><tr><th onclick="sortBy('index')">latent</th>
<th onclick="sortBy('density')">density</th><th onclick="sortBy('max')">max</th>
<th onclick="sortBy('reason_score')">ReasonScore</th></tr></thead><tbody id="rows"></tbody></table></div></div>
<main id="card"></main>
<script type="application/json" id="data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""
