"""The page's CSS and JavaScript, as strings: Gradio 6 takes ``css``/``head`` in ``launch()``.

The review grid is a ``gr.HTML`` whose ``js_on_load`` (``GRID_JS``) turns clicks and keys into
``trigger('select', {index, value: {image_id, verdict}})`` — one ``.select`` event per verdict, so
clicks and keys share one server path. The verdict is painted at once in the page; the server's
answer, read back from SQLite, arrives as a small JSON patch (``PATCH_JS``) that sets every tile and
anchor of the round, so a click does not cost a 20 KB re-render of the grid. Each click carries a
nonce and every answer (patch or full render) the latest nonce handled, so a tile's 'pending' always
resolves to what SQLite holds, even when answers are merged or arrive out of order.
"""

from __future__ import annotations

ALIGNED_COLOUR = "#15803d"  # green-700: readable on white and on the dark theme's grey
OVERFIT_COLOUR = "#b91c1c"  # red-700

CSS = f"""
:root {{ --gal-aligned: {ALIGNED_COLOUR}; --gal-overfit: {OVERFIT_COLOUR}; --gal-pick: #d97706; }}
.gal-hidden {{ display: none !important; }}
#gal-header .gal-head {{ display: flex; flex-wrap: wrap; gap: .4rem 1rem; align-items: baseline; }}
#gal-header .gal-title {{ font-size: 1.25rem; font-weight: 700; }}
.gal-pill {{ display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: .8rem;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary); }}
.gal-pill.awaiting_review {{ border-color: var(--gal-pick); }}
.gal-pill.failed, .gal-pill.cancelled {{ border-color: var(--gal-overfit); }}
.gal-pill.finished {{ border-color: var(--gal-aligned); }}
.gal-muted {{ opacity: .75; font-size: .85rem; }}
.gal-msg {{ padding: .6rem .8rem; border-radius: 8px; border: 1px solid var(--border-color-primary);
  background: var(--background-fill-secondary); }}
.gal-msg.error {{ border-color: var(--gal-overfit); }}
.gal-msg.ok {{ border-color: var(--gal-aligned); }}
.gal-msg.warn {{ border-color: var(--gal-pick); margin: .3rem 0; }}

/* set-up */
#gal-validation .gal-msg {{ margin: 0; }}

/* review grid */
.gal-grid {{ display: flex; flex-direction: column; gap: 2px; }}
.gal-legend {{ font-size: .8rem; opacity: .85; margin: 0 0 .4rem 0; line-height: 1.6; }}
.gal-legend b.a {{ color: var(--gal-aligned); }} .gal-legend b.o {{ color: var(--gal-overfit); }}
.gal-anchor {{ display: grid; grid-template-columns: minmax(150px, 210px) 1fr; gap: 10px; padding: 8px 4px;
  border-bottom: 1px solid var(--border-color-primary); align-items: start; }}
.gal-anchor.out {{ opacity: .6; padding: 4px; }}
.gal-anchor-title {{ font-weight: 600; font-size: .9rem; word-break: break-word; }}
.gal-anchor-title .idx {{ opacity: .6; font-weight: 400; margin-right: 4px; }}
.gal-anchor-stats {{ font-size: .8rem; margin-top: 4px; display: flex; flex-wrap: wrap; gap: 4px 8px; }}
.gal-state {{ font-weight: 600; }}
.gal-state.mixed {{ color: var(--gal-pick); }}
.gal-tiles {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.gal-tile {{ position: relative; display: flex; flex-direction: column; align-items: center; gap: 1px;
  width: 112px; padding: 3px 3px 4px; margin: 0; border: 3px dashed; border-radius: 8px; cursor: pointer;
  background: var(--background-fill-secondary); color: var(--body-text-color); font: 11px/1.25 var(--font);
  transition: opacity .1s; }}
.gal-tile img {{ width: 100px; height: 100px; object-fit: cover; border-radius: 4px; display: block; }}
.gal-grid.pixel .gal-tile img {{ image-rendering: pixelated; }}
.gal-tile.v0 {{ border-color: var(--gal-aligned); }}
.gal-tile.v1 {{ border-color: var(--gal-overfit); }}
.gal-tile.person {{ border-style: solid; }}
.gal-tile.cursor {{ outline: 3px solid var(--color-accent, #6366f1); outline-offset: 2px; }}
.gal-tile:focus-visible {{ outline: 3px solid var(--color-accent, #6366f1); outline-offset: 2px; }}
.gal-tile.pending {{ opacity: .7; }}
.gal-badge {{ font-weight: 700; font-size: 12px; }}
.gal-tile.v0 .gal-badge {{ color: var(--gal-aligned); }}
.gal-tile.v1 .gal-badge {{ color: var(--gal-overfit); }}
.gal-who {{ opacity: .8; }}
.gal-tile.override .gal-who {{ font-weight: 700; opacity: 1; }}
.gal-pick {{ display: none; position: absolute; top: 4px; right: 6px; padding: 0 4px; border-radius: 4px;
  background: var(--gal-pick); color: #fff; font-weight: 700; font-size: 11px; }}
.gal-tile.pick .gal-pick {{ display: block; }}
.gal-tile.pick {{ box-shadow: 0 0 0 2px var(--gal-pick); }}
.gal-empty {{ padding: 1.5rem; text-align: center; opacity: .85; }}

/* counters, preview, progress */
.gal-counters {{ display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; align-items: center; font-size: .95rem; }}
.gal-counters b {{ font-size: 1.05rem; }}
.gal-bar {{ position: relative; height: 10px; border-radius: 5px; background: var(--background-fill-secondary);
  border: 1px solid var(--border-color-primary); overflow: hidden; min-width: 120px; }}
.gal-bar > span {{ position: absolute; inset: 0 auto 0 0; background: var(--color-accent, #6366f1); }}
.gal-preview h4 {{ margin: 0 0 .3rem 0; }}
.gal-preview ul {{ margin: .2rem 0 .4rem 1rem; padding: 0; }}
.gal-preview li {{ margin: 2px 0; }}
.gal-preview .thumbs {{ display: flex; flex-wrap: wrap; gap: 4px; margin-top: 4px; }}
.gal-preview .thumbs img {{ width: 56px; height: 56px; border-radius: 4px; border: 2px solid var(--gal-pick); }}
.gal-progress .gal-bar {{ height: 14px; margin: .3rem 0; }}
.gal-progress .stage {{ font-weight: 600; }}
.gal-stages {{ display: flex; gap: 6px; flex-wrap: wrap; font-size: .8rem; margin-top: .3rem; }}
.gal-stages span {{ padding: 1px 6px; border-radius: 4px; border: 1px solid var(--border-color-primary); }}
.gal-stages span.done {{ border-color: var(--gal-aligned); }}
.gal-stages span.now {{ border-color: var(--color-accent, #6366f1); font-weight: 700; }}

/* history */
.gal-table {{ border-collapse: collapse; font-size: .85rem; }}
.gal-table th, .gal-table td {{ border: 1px solid var(--border-color-primary); padding: 3px 8px; text-align: center; }}
.gal-compare td img {{ width: 96px; height: 96px; border-radius: 4px; border: 3px solid transparent; display: block; }}
.gal-compare td.v0 img {{ border-color: var(--gal-aligned); }}
.gal-compare td.v1 img {{ border-color: var(--gal-overfit); }}
.gal-compare.pixel td img {{ image-rendering: pixelated; }}

/* keyboard help, toggled with ? */
#gal-help {{ display: none; }}
#gal-help.open {{ display: block; }}
.gal-help {{ padding: .6rem 1rem; border-radius: 8px; border: 2px solid var(--color-accent, #6366f1);
  background: var(--background-fill-primary); }}
.gal-help kbd {{ display: inline-block; min-width: 1.4em; padding: 0 4px; border-radius: 4px; text-align: center;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary); font-family: monospace; }}
.gal-help table td {{ padding: 2px 10px 2px 0; }}
"""

HELP_HTML = """
<div class="gal-help" role="dialog" aria-label="Keyboard shortcuts">
<b>Keys on the Review tab</b> (not while typing in a field) — press <kbd>?</kbd> or <kbd>Esc</kbd> to close
<table>
<tr><td><kbd>a</kbd></td><td>aligned / accept the image under the cursor, then move on</td></tr>
<tr><td><kbd>x</kbd></td><td>overfit / reject the image under the cursor, then move on</td></tr>
<tr><td><kbd>←</kbd> <kbd>→</kbd></td><td>previous / next image</td></tr>
<tr><td><kbd>↑</kbd> <kbd>↓</kbd></td><td>same slot in the anchor above / below</td></tr>
<tr><td><kbd>u</kbd></td><td>undo your last verdict</td></tr>
<tr><td><kbd>?</kbd></td><td>show / hide this help</td></tr>
<tr><td>click</td><td>flip an image's verdict (aligned ⇄ overfit)</td></tr>
</table>
</div>
"""

# Runs in the page once, from launch(head=...): tiny helpers shared by buttons.
HEAD = """
<script>
window.galToggleHelp = function (force) {
  const help = document.getElementById('gal-help');
  if (help) help.classList.toggle('open', force);
};
window.galSyncUrl = function (runId) {
  try {
    const url = new URL(window.location.href);
    if (runId) { url.searchParams.set('run', runId); } else { url.searchParams.delete('run'); }
    window.history.replaceState(null, '', url);
  } catch (e) { /* a URL we cannot rewrite: the run id is still in the header */ }
  return runId;
};
</script>
"""

# js_on_load of the review grid: `element` is the component's root (it persists across re-renders),
# `trigger` sends an event to Python, `watch` runs after the template re-renders.
GRID_JS = r"""
const grid = element;
const tiles = () => Array.from(grid.querySelectorAll('.gal-tile'));
const WORD = {0: '✓ aligned', 1: '✗ overfit'};

function tileById(id) { return id == null ? null : grid.querySelector(`.gal-tile[data-id="${id}"]`); }

function setCursor(tile, scroll) {
  grid.querySelectorAll('.gal-tile.cursor').forEach(t => t.classList.remove('cursor'));
  if (!tile) { window.galCursor = null; return; }
  tile.classList.add('cursor');
  window.galCursor = tile.dataset.id;
  if (scroll) tile.scrollIntoView({block: 'nearest', inline: 'nearest'});
}

function restoreCursor() {
  const all = tiles();
  const tile = tileById(window.galCursor) || all[0] || null;
  setCursor(tile, false);
}

// One tile's look from its verdicts: colour AND word AND border style, never colour alone.
function setTile(tile, final, person, oracle, pick) {
  tile.dataset.final = final == null ? '' : String(final);
  tile.classList.toggle('v0', final === 0);
  tile.classList.toggle('v1', final === 1);
  tile.classList.toggle('person', person != null);
  tile.classList.toggle('override', person != null && person !== oracle);
  if (pick != null) tile.classList.toggle('pick', !!pick);
  const badge = tile.querySelector('.gal-badge');
  if (badge && final != null) badge.textContent = WORD[final];
  const who = tile.querySelector('.gal-who');
  if (who) who.textContent = person == null ? 'oracle' : (person !== oracle ? '✎ you (override)' : 'you');
}

// A click or a key: paint at once, send it with a nonce (this page's click number), and remember it
// as in flight until an answer acknowledges it. Answers acknowledge cumulatively (``ack``: the latest
// nonce the server had handled before reading), so an answer the page never sees -- two answers that
// land together reach ``watch`` once, with the later value -- or one that arrives late loses nothing.
window.galInflight = window.galInflight || new Map();  // nonce -> {id, verdict, round}
function roundOf() { const root = grid.querySelector('.gal-grid'); return root ? String(root.dataset.round) : null; }

function decide(tile, verdict) {
  if (!tile) return;
  const oracle = tile.dataset.oracle === '' ? null : Number(tile.dataset.oracle);
  setTile(tile, verdict, verdict, oracle, null);
  tile.classList.add('pending');
  const nonce = window.galNonce = (window.galNonce || 0) + 1;
  window.galInflight.set(nonce, {id: String(tile.dataset.id), verdict: verdict, round: roundOf()});
  window.galSent = (window.galSent || 0) + 1;
  trigger('select', {index: Number(tile.dataset.pos),
                     value: {image_id: Number(tile.dataset.id), verdict: verdict, nonce: nonce}});
}

// The newest painted verdict of each tile still in flight (later clicks win).
function inflightTiles(round) {
  const out = new Map();
  for (const [nonce, c] of [...window.galInflight.entries()].sort((x, y) => x[0] - y[0])) {
    if (c.round === round) out.set(c.id, c.verdict);
  }
  return out;
}

// Apply one state read from SQLite (a patch, or the one a full render carries): every tile and
// anchor of the round. Clicks up to ``ack`` are settled; tiles with a later click still in flight keep
// their painted verdict (and 'pending') until an answer covering that click arrives. A state read
// before one already shown (lower ``seq``) only settles clicks: the newer state is shown.
function applyState(state) {
  const round = roundOf();
  if (!state || !state.tiles || round === null || round !== String(state.round)) return;
  for (const nonce of [...window.galInflight.keys()]) {
    const c = window.galInflight.get(nonce);
    if (nonce <= (state.ack || 0) || c.round !== round) window.galInflight.delete(nonce);
  }
  const shown = window.galShown;
  if (shown && String(shown.round) === round && shown.seq > state.seq) {
    // read before the state already shown (a late answer, or a full render that replaced the DOM with
    // an older read): show the newer one again, now with the clicks this answer settled
    state = shown;
  } else {
    window.galShown = state;
  }
  const painted = inflightTiles(round);
  for (const [id, final, person, oracle, pick] of state.tiles) {
    const tile = tileById(id);
    if (!tile) continue;
    if (painted.has(String(id))) {
      const v = painted.get(String(id));
      setTile(tile, v, v, tile.dataset.oracle === '' ? null : Number(tile.dataset.oracle), pick);
      tile.classList.add('pending');
      continue;
    }
    setTile(tile, final, person, oracle, pick);
    tile.classList.remove('pending');
  }
  for (const [a, beta, omega, css, words] of state.anchors) {
    const section = grid.querySelector(`.gal-anchor[data-anchor="${a}"]`);
    if (!section) continue;
    section.className = 'gal-anchor ' + css;
    const b = section.querySelector('.beta'), o = section.querySelector('.omega'), st = section.querySelector('.gal-state');
    if (b) b.textContent = 'β ' + beta;
    if (o) o.textContent = 'Ω ' + omega;
    if (st) { st.className = 'gal-state ' + css; st.textContent = words; }
  }
}

window.galApplyPatch = function (text) {
  let patch;
  try { patch = JSON.parse(text); } catch (e) { return; }
  applyState(patch);
  window.galRenders = (window.galRenders || 0) + 1;
};

// A full render (open, the poll, a new round, an error): it carries its state too.
function onRender() {
  const root = grid.querySelector('.gal-grid');
  let state = null;
  try { state = root && root.dataset.state ? JSON.parse(root.dataset.state) : null; } catch (e) { state = null; }
  if (state) {
    applyState(state);
  } else {
    window.galInflight.clear();  // no grid to review: nothing of the old one is in flight any more
    window.galShown = null;
  }
}

function move(dx, dy) {
  const all = tiles();
  if (!all.length) return;
  let cur = tileById(window.galCursor);
  if (!cur) { setCursor(all[0], true); return; }
  if (dx) {
    const i = all.indexOf(cur) + dx;
    setCursor(all[Math.max(0, Math.min(all.length - 1, i))], true);
    return;
  }
  const sections = Array.from(grid.querySelectorAll('.gal-anchor')).filter(s => s.querySelector('.gal-tile'));
  const si = sections.indexOf(cur.closest('.gal-anchor')) + dy;
  if (si < 0 || si >= sections.length) return;
  const row = Array.from(sections[si].querySelectorAll('.gal-tile'));
  const slot = Number(cur.dataset.slot);
  setCursor(row.find(t => Number(t.dataset.slot) === slot) || row[Math.min(slot, row.length - 1)], true);
}

function key(k) {
  if (k === 'a' || k === 'x') {
    const tile = tileById(window.galCursor) || tiles()[0];
    if (!tile) return;
    setCursor(tile, false);
    decide(tile, k === 'a' ? 0 : 1);
    move(1, 0);
  } else if (k === 'u') {
    const undo = document.getElementById('gal-btn-undo');
    if (undo) undo.click();
  } else if (k === '?') {
    window.galToggleHelp();
  } else if (k === 'Escape') {
    window.galToggleHelp(false);
  } else if (k === 'ArrowLeft') { move(-1, 0); }
  else if (k === 'ArrowRight') { move(1, 0); }
  else if (k === 'ArrowUp') { move(0, -1); }
  else if (k === 'ArrowDown') { move(0, 1); }
}
window.galKey = key;

grid.addEventListener('click', (e) => {
  const tile = e.target.closest('.gal-tile');
  if (!tile || !grid.contains(tile)) return;
  setCursor(tile, false);
  decide(tile, tile.dataset.final === '1' ? 0 : 1);
});

const KEYS = new Set(['a', 'x', 'u', '?', 'Escape', 'ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown']);
function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
  if (!grid.isConnected || grid.offsetParent === null) return;  // only while the Review tab shows
  const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (!KEYS.has(k)) return;
  e.preventDefault();
  key(k);
}
if (window.galOnKey) document.removeEventListener('keydown', window.galOnKey);
window.galOnKey = onKey;
document.addEventListener('keydown', onKey);

watch('value', () => { onRender(); window.galRenders = (window.galRenders || 0) + 1; restoreCursor(); });
onRender();
restoreCursor();
"""

# js_on_load of the hidden patch component: hand each new patch to the grid's script.
PATCH_JS = "watch('value', () => { if (window.galApplyPatch) window.galApplyPatch(props.value); });"
