window.gal = window.gal || {};
const grid = element;
const tiles = () => Array.from(grid.querySelectorAll('.gal-tile'));
const WORD = {0: '✓ aligned', 1: '✗ overfit'};

function tileById(id) { return id == null ? null : grid.querySelector(`.gal-tile[data-id="${id}"]`); }

function setCursor(tile, scroll) {
  grid.querySelectorAll('.gal-tile.cursor').forEach(t => t.classList.remove('cursor'));
  if (!tile) { window.gal.cursor = null; return; }
  tile.classList.add('cursor');
  window.gal.cursor = tile.dataset.id;
  if (scroll) tile.scrollIntoView({block: 'nearest', inline: 'nearest'});
}

function restoreCursor() {
  const all = tiles();
  const tile = tileById(window.gal.cursor) || all[0] || null;
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
window.gal.inflight = window.gal.inflight || new Map();  // nonce -> {id, verdict, round}
function roundOf() { const root = grid.querySelector('.gal-grid'); return root ? String(root.dataset.round) : null; }

function decide(tile, verdict) {
  if (!tile) return;
  const oracle = tile.dataset.oracle === '' ? null : Number(tile.dataset.oracle);
  setTile(tile, verdict, verdict, oracle, null);
  tile.classList.add('pending');
  const nonce = window.gal.nonce = (window.gal.nonce || 0) + 1;
  window.gal.inflight.set(nonce, {id: String(tile.dataset.id), verdict: verdict, round: roundOf()});
  trigger('select', {index: Number(tile.dataset.pos),
                     value: {image_id: Number(tile.dataset.id), verdict: verdict, nonce: nonce}});
}

// The newest painted verdict of each tile still in flight (later clicks win).
function inflightTiles(round) {
  const out = new Map();
  for (const [nonce, c] of [...window.gal.inflight.entries()].sort((x, y) => x[0] - y[0])) {
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
  for (const nonce of [...window.gal.inflight.keys()]) {
    const c = window.gal.inflight.get(nonce);
    if (nonce <= (state.ack || 0) || c.round !== round) window.gal.inflight.delete(nonce);
  }
  const shown = window.gal.shown;
  if (shown && String(shown.round) === round && shown.seq > state.seq) {
    // read before the state already shown (a late answer, or a full render that replaced the DOM with
    // an older read): show the newer one again, now with the clicks this answer settled
    state = shown;
  } else {
    window.gal.shown = state;
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

window.gal.applyPatch = function (text) {
  let patch;
  try { patch = JSON.parse(text); } catch (e) { return; }
  applyState(patch);
  window.gal.renders = (window.gal.renders || 0) + 1;
};

// A full render (open, the poll, a new round, an error): it carries its state too.
function onRender() {
  const root = grid.querySelector('.gal-grid');
  let state = null;
  try { state = root && root.dataset.state ? JSON.parse(root.dataset.state) : null; } catch (e) { state = null; }
  if (state) {
    applyState(state);
  } else {
    window.gal.inflight.clear();  // no grid to review: nothing of the old one is in flight any more
    window.gal.shown = null;
  }
}

function move(dx, dy) {
  const all = tiles();
  if (!all.length) return;
  let cur = tileById(window.gal.cursor);
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
    const tile = tileById(window.gal.cursor) || tiles()[0];
    if (!tile) return;
    setCursor(tile, false);
    decide(tile, k === 'a' ? 0 : 1);
    move(1, 0);
  } else if (k === 'u') {
    const undo = document.getElementById('gal-btn-undo');
    if (undo) undo.click();
  } else if (k === '?') {
    window.gal.toggleHelp();
  } else if (k === 'Escape') {
    window.gal.toggleHelp(false);
  } else if (k === 'ArrowLeft') { move(-1, 0); }
  else if (k === 'ArrowRight') { move(1, 0); }
  else if (k === 'ArrowUp') { move(0, -1); }
  else if (k === 'ArrowDown') { move(0, 1); }
}
window.gal.key = key;

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
if (window.gal.onKey) document.removeEventListener('keydown', window.gal.onKey);
window.gal.onKey = onKey;
document.addEventListener('keydown', onKey);

watch('value', () => { onRender(); window.gal.renders = (window.gal.renders || 0) + 1; restoreCursor(); });
onRender();
restoreCursor();
