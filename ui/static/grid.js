window.gal = window.gal || {};
const grid = element;
const allTiles = () => Array.from(grid.querySelectorAll('.gal-tile'));
// the tiles the filters show, in page order: the cursor, n and the arrows only visit these
const tiles = () => allTiles().filter(t => !t.classList.contains('gal-hidden') && !t.closest('.gal-anchor.gal-hidden'));
const WORD = {0: '✓ aligned', 1: '✗ overfit'};
const SKIP = 2;  // "seen, no opinion": the oracle's verdict stands, the image counts as reviewed

function tileById(id) { return id == null ? null : grid.querySelector(`.gal-tile[data-id="${id}"]`); }
// Controls that take no typed text: a review key pressed while one has focus (the mode switch, a filter
// checkbox, a button just clicked) is a review key, not lost.
const NOT_TEXT = new Set(['radio', 'checkbox', 'button', 'submit', 'reset', 'file', 'color', 'range']);
function isText(t) {
  if (!t) return false;
  if (t.isContentEditable || /^(TEXTAREA|SELECT)$/.test(t.tagName)) return true;
  return t.tagName === 'INPUT' && !NOT_TEXT.has((t.type || 'text').toLowerCase());
}
function typing() { return isText(document.activeElement); }
function reviewed(tile) { return tile.classList.contains('person') || tile.classList.contains('seen'); }

// One cursor: the tile with the outline is the focused tile (roving tabindex: Tab enters the grid once,
// on the cursor), and focusing a tile (Tab, a click) moves the cursor there.
function setCursor(tile, scroll, focus = true) {
  grid.querySelectorAll('.gal-tile.cursor').forEach(t => { t.classList.remove('cursor'); t.tabIndex = -1; });
  if (!tile) { window.gal.cursor = null; return; }
  tile.classList.add('cursor');
  tile.tabIndex = 0;
  window.gal.cursor = tile.dataset.id;
  const active = document.activeElement;
  if (focus && !typing() && (!active || active === document.body || grid.contains(active) || window.gal.lightboxOpen)) {
    if (document.activeElement !== tile) tile.focus({preventScroll: true});
  }
  if (scroll && !window.gal.lightboxOpen) tile.scrollIntoView({block: 'nearest', inline: 'nearest'});
}

function firstUnreviewed(from) {  // the first unreviewed tile after ``from`` (wrapping), or from the top
  const all = tiles();
  const start = all.indexOf(from) + 1;
  for (let i = 0; i < all.length; i++) {
    const t = all[(start + i) % all.length];
    if (!reviewed(t)) return t;
  }
  return null;
}

// After a render or a refresh: keep the cursor's image, else resume at the next unreviewed image.
function restoreCursor() {
  const keep = tileById(window.gal.cursor);
  const tile = (keep && tiles().includes(keep)) ? keep : (firstUnreviewed(null) || tiles()[0] || null);
  setCursor(tile, false, false);
}

// One tile's look from its verdicts: colour AND word AND border style, never colour alone.
function setTile(tile, final, person, oracle, pick, seen) {
  tile.dataset.final = final == null ? '' : String(final);
  tile.classList.toggle('v0', final === 0);
  tile.classList.toggle('v1', final === 1);
  tile.classList.toggle('person', person != null);
  tile.classList.toggle('seen', person == null && !!seen);
  tile.classList.toggle('override', person != null && person !== oracle);
  if (pick != null) tile.classList.toggle('pick', !!pick);
  const badge = tile.querySelector('.gal-badge');
  if (badge && final != null) badge.textContent = WORD[final];
  const who = tile.querySelector('.gal-who');
  if (who) who.textContent = person == null ? (seen ? "you: skip (oracle's)" : 'oracle')
    : (person !== oracle ? '✎ you (override)' : 'you');
}
function oracleOf(tile) { return tile.dataset.oracle === '' ? null : Number(tile.dataset.oracle); }
function paint(tile, verdict, pick) {  // what a click or key shows before the server answers
  const oracle = oracleOf(tile);
  if (verdict === SKIP) setTile(tile, oracle, null, oracle, pick, true);
  else setTile(tile, verdict, verdict, oracle, pick, false);
}

// A click or a key: paint at once, send it with a nonce (this page's click number), and remember it
// as in flight until an answer acknowledges it. Answers acknowledge cumulatively (``ack``: the latest
// nonce the server had handled before reading), so an answer the page never sees -- two answers that
// land together reach ``watch`` once, with the later value -- or one that arrives late loses nothing.
window.gal.inflight = window.gal.inflight || new Map();  // nonce -> {id, verdict, round}
function roundOf() { const root = grid.querySelector('.gal-grid'); return root ? String(root.dataset.round) : null; }

function decide(tile, verdict) {
  if (!tile) return;
  paint(tile, verdict, null);
  tile.classList.add('pending');
  const nonce = window.gal.nonce = (window.gal.nonce || 0) + 1;
  window.gal.inflight.set(nonce, {id: String(tile.dataset.id), verdict: verdict, round: roundOf()});
  window.gal.outbox.push([Number(tile.dataset.id), verdict, nonce]);
  // Send right after this frame is painted: dispatching an event costs Gradio's page more than the paint,
  // so sending first kept the judged tile and the cursor's move off screen for a frame or more.
  requestAnimationFrame(() => setTimeout(flush, 0));
}

// At most one verdict event in flight: keys pressed meanwhile wait in the outbox and go together in the
// next one (each still its own action). A queue of a hundred events made Gradio re-send every waiting
// event's position after each answer, and a fast pass took longer the faster the keys came.
window.gal.outbox = window.gal.outbox || [];
function flush() {
  const g = window.gal;
  if (!g.outbox.length) return;
  if (g.sentUpTo && g.sentAt && Date.now() - g.sentAt < 3000) return;  // the answer is on its way
  const batch = g.outbox.splice(0, g.outbox.length);
  g.sentUpTo = batch[batch.length - 1][2];
  g.sentAt = Date.now();
  if (batch.length === 1) {
    const [id, verdict, nonce] = batch[0];
    const tile = tileById(id);
    trigger('select', {index: tile ? Number(tile.dataset.pos) : 0, value: {image_id: id, verdict: verdict, nonce: nonce}});
  } else {
    trigger('select', {index: 0, value: {batch: batch}});
  }
  clearTimeout(g.flushTimer);
  g.flushTimer = setTimeout(() => { g.sentAt = 0; flush(); }, 3000);  // an answer that never comes
}
// Every answer says which of this page's clicks it covers (``ack``): once it covers the last one sent,
// the next batch goes.
function settle(ack) {
  const g = window.gal;
  if (g.sentUpTo && (ack || 0) >= g.sentUpTo) {
    g.sentUpTo = 0;
    g.sentAt = 0;
    clearTimeout(g.flushTimer);
    if (g.outbox.length) setTimeout(flush, 0);
  }
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
  if (state) settle(state.ack);
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
  for (const [id, final, person, oracle, pick, seen] of state.tiles) {
    const tile = tileById(id);
    if (!tile) continue;
    if (painted.has(String(id))) {
      paint(tile, painted.get(String(id)), pick);
      tile.classList.add('pending');
      tile._galKey = null;
      continue;
    }
    // only tiles whose state changed touch the DOM: a fast keyboard pass applies an answer per key
    const k = `${final}|${person}|${oracle}|${pick}|${seen}`;
    if (tile._galKey === k && !tile.classList.contains('pending')) continue;
    setTile(tile, final, person, oracle, pick, seen);
    tile.classList.remove('pending');
    tile._galKey = k;
  }
  for (const [a, beta, omega, css, words, omegaValue, betaValue] of state.anchors) {
    const section = grid.querySelector(`.gal-anchor[data-anchor="${a}"]`);
    if (!section) continue;
    section.className = 'gal-anchor ' + css + (section.classList.contains('gal-hidden') ? ' gal-hidden' : '');
    if (omegaValue != null) section.dataset.omega = omegaValue;
    if (betaValue != null) section.dataset.beta = betaValue;
    const b = section.querySelector('.beta'), o = section.querySelector('.omega'), st = section.querySelector('.gal-state');
    if (b) b.textContent = 'β ' + beta;
    if (o) o.textContent = 'Ω ' + omega;
    if (st) { st.className = 'gal-state ' + css; st.textContent = words; }
  }
  if (window.gal.lightboxOpen) fillLightbox(tileById(window.gal.cursor));
}

window.gal.applyPatch = function (text) {
  let patch;
  try { patch = JSON.parse(text); } catch (e) { return; }
  applyState(patch);
  // a filter follows the verdicts a patch brings (an undo, another tab's, a bulk action): one applied
  // before the patch landed kept showing the old state (the "unreviewed filter" flake on a loaded machine)
  const view = window.gal.view;
  if (view && (view.filters || []).length) arrange(view.order, view.filters);
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
    closeLightbox();
  }
  const view = window.gal.view;
  if (view && (view.order !== 'omega' || (view.filters || []).length)) arrange(view.order, view.filters);
}

// -- order and filters, in place (the server renders Ω order; this re-sorts and hides) --------------------
const FILTERS = {
  'unreviewed': t => !reviewed(t),
  'overrides': t => t.classList.contains('override'),
  'oracle-overfit': t => t.dataset.oracle === '1',
  'oracle-aligned': t => t.dataset.oracle === '0',
  'mixed': t => t.closest('.gal-anchor').classList.contains('mixed'),
  'disagree': t => t.dataset.disagree === '1',  // an ensemble's judges voted differently
};
function arrange(order, filters) {
  order = order || 'omega';
  filters = (filters || []).filter(f => FILTERS[f]);
  window.gal.view = {order: order, filters: filters};
  const root = grid.querySelector('.gal-grid');
  if (!root) return;
  const sections = Array.from(root.querySelectorAll('.gal-anchor'));
  const num = (s, k) => Number(s.dataset[k] === undefined ? -1 : s.dataset[k]);
  // disagreement: Studio.review_queue's order (the server's data-disrank: the anchor's first place in it)
  const key = (s) => order === 'index' ? 0 : (order === 'disagreement' ? num(s, 'disrank')
                                             : -num(s, order === 'beta' ? 'beta' : 'omega'));
  sections.sort((x, y) => (x.dataset.pool === '0') - (y.dataset.pool === '0') || key(x) - key(y)
                          || Number(x.dataset.anchor) - Number(y.dataset.anchor));
  for (const s of sections) root.appendChild(s);
  let shown = 0;
  for (const s of sections) {
    let any = false;
    for (const t of s.querySelectorAll('.gal-tile')) {
      const ok = filters.every(f => FILTERS[f](t));
      t.classList.toggle('gal-hidden', !ok);
      if (ok) { any = true; shown++; }
    }
    s.classList.toggle('gal-hidden', filters.length > 0 && !any);
  }
  root.dataset.shown = String(shown);
  const cur = tileById(window.gal.cursor);
  if (!cur || !tiles().includes(cur)) setCursor(firstUnreviewed(null) || tiles()[0] || null, false, false);
}
window.gal.arrange = arrange;

window.gal.tileSize = function (px) {
  const v = Math.max(48, Math.min(400, Number(px) || 128));
  grid.style.setProperty('--gal-tile', v + 'px');
  try { localStorage.setItem('gal.tileSize', String(v)); } catch (e) { /* private mode */ }
};
try { const v = localStorage.getItem('gal.tileSize'); if (v) window.gal.tileSize(v); } catch (e) { /* none */ }

// -- the lightbox: the cursor's image large, with its prompt, similarities and both verdicts --------------
function lightbox() {
  let lb = document.getElementById('gal-lightbox');
  if (!lb) {
    lb = document.createElement('div');
    lb.id = 'gal-lightbox';
    lb.hidden = true;
    lb.setAttribute('role', 'dialog');
    lb.setAttribute('aria-modal', 'true');
    lb.setAttribute('aria-label', 'the image under the cursor, large');
    lb.innerHTML = '<div class="gal-lb-body"><img alt=""><div class="gal-lb-side"><div class="gal-lb-info" aria-live="polite"></div>' +
      '<div class="gal-lb-actions">' +
      '<button type="button" data-k="a" class="gal-lb-a">✓ Aligned (a)</button>' +
      '<button type="button" data-k="x" class="gal-lb-x">✗ Overfit (x)</button>' +
      '<button type="button" data-k="s" class="gal-lb-s">Skip (s)</button></div></div></div>' +
      '<button type="button" class="gal-lb-close" aria-label="Close (Esc)">×</button>';
    lb.addEventListener('click', (e) => {
      const act = e.target.closest('.gal-lb-actions button');
      if (act) { e.preventDefault(); window.gal.key(act.dataset.k); return; }
      if (e.target === lb || e.target.closest('.gal-lb-close')) closeLightbox();
    });
    document.body.appendChild(lb);
  }
  return lb;
}
function esc(s) { const d = document.createElement('span'); d.textContent = s == null ? '' : String(s); return d.innerHTML; }
function verdictWords(tile) {
  const oracle = oracleOf(tile);
  const you = tile.classList.contains('seen') ? 'skip (no opinion)'
    : (tile.classList.contains('person') ? WORD[Number(tile.dataset.final)] : '—');
  return {oracle: oracle == null ? 'judging…' : WORD[oracle], you: you,
          final: tile.dataset.final === '' ? '…' : WORD[Number(tile.dataset.final)]};
}
function fillLightbox(tile) {
  if (!tile) return;
  const lb = lightbox();
  const img = lb.querySelector('img');
  const src = tile.querySelector('img').getAttribute('src');
  if (img.getAttribute('src') !== src) img.setAttribute('src', src);
  img.classList.toggle('pixel', !!grid.querySelector('.gal-grid.pixel'));
  const section = tile.closest('.gal-anchor');
  const all = tiles();
  const w = verdictWords(tile);
  lb.dataset.id = tile.dataset.id;
  lb.className = tile.classList.contains('v1') ? 'v1' : (tile.classList.contains('v0') ? 'v0' : '');
  lb.querySelector('.gal-lb-info').innerHTML =
    `<div class="gal-lb-prompt">#${esc(tile.dataset.anchor)} ${esc(section ? section.dataset.prompt : '')}</div>` +
    `<div>image ${Number(tile.dataset.slot) + 1} · ${all.indexOf(tile) + 1} of ${all.length} shown</div>` +
    `<div>sim(image, anchor) <b>${esc(tile.dataset.sim)}</b> · sim(image, non-SoI caption) <b>${esc(tile.dataset.nonsoi)}</b></div>` +
    `<div>oracle <b>${esc(w.oracle)}</b> · you <b class="gal-lb-you">${esc(w.you)}</b> · final <b>${esc(w.final)}</b></div>` +
    '<div class="gal-muted"><kbd>a</kbd> aligned <kbd>x</kbd> overfit <kbd>s</kbd> skip (then the next) · ' +
    '<kbd>←</kbd><kbd>→</kbd><kbd>↑</kbd><kbd>↓</kbd> move · <kbd>n</kbd> next unreviewed · <kbd>Esc</kbd> close</div>';
}
function openLightbox(tile) {
  if (!tile) return;
  window.gal.lightboxOpen = true;
  fillLightbox(tile);
  const lb = lightbox();
  lb.hidden = false;
  window.gal.lightboxOpened = (window.gal.lightboxOpened || 0) + 1;
}
function closeLightbox() {
  const lb = document.getElementById('gal-lightbox');
  if (lb) lb.hidden = true;
  const was = window.gal.lightboxOpen;
  window.gal.lightboxOpen = false;
  if (was) { const t = tileById(window.gal.cursor); if (t) { t.focus({preventScroll: true}); t.scrollIntoView({block: 'nearest'}); } }
}
window.gal.closeLightbox = closeLightbox;

function move(dx, dy) {
  const all = tiles();
  if (!all.length) return;
  let cur = tileById(window.gal.cursor);
  if (!cur || !all.includes(cur)) { setCursor(all[0], true); return; }
  if (dx) {
    const i = all.indexOf(cur) + dx;
    setCursor(all[Math.max(0, Math.min(all.length - 1, i))], true);
    return;
  }
  const sections = Array.from(grid.querySelectorAll('.gal-anchor')).filter(s => s.querySelector('.gal-tile:not(.gal-hidden)')
                                                                            && !s.classList.contains('gal-hidden'));
  const si = sections.indexOf(cur.closest('.gal-anchor')) + dy;
  if (si < 0 || si >= sections.length) return;
  const row = Array.from(sections[si].querySelectorAll('.gal-tile:not(.gal-hidden)'));
  const slot = Number(cur.dataset.slot);
  setCursor(row.find(t => Number(t.dataset.slot) === slot) || row[Math.min(slot, row.length - 1)], true);
}

function goGrid() {
  if (grid.offsetParent === null) {
    const tab = [...document.querySelectorAll('button[role="tab"]')].find(b => b.textContent.trim() === 'Review');
    if (tab) tab.click();
  }
  setTimeout(() => {
    const t = tileById(window.gal.cursor) || firstUnreviewed(null) || tiles()[0];
    if (t) { setCursor(t, true, false); t.focus({preventScroll: true}); }
  }, 60);
}
window.gal.goGrid = goGrid;
// After a review control changes (mode, order, filters, tile size): focus back on the cursor's tile, so
// the next key judges instead of going to the control.
window.gal.focusGrid = function () {
  setTimeout(() => {
    if (!grid.isConnected || grid.offsetParent === null || window.gal.lightboxOpen) return;
    const t = tileById(window.gal.cursor) || firstUnreviewed(null) || tiles()[0];
    if (t) { setCursor(t, false, false); t.focus({preventScroll: true}); }
  }, 0);
};

function click(id) { const b = document.getElementById(id); if (b && !b.disabled) b.click(); }

function key(k) {
  const cur = () => { const t = tileById(window.gal.cursor); return t && tiles().includes(t) ? t : tiles()[0]; };
  if (k === 'a' || k === 'x' || k === 's') {
    const tile = cur();
    if (!tile) return;
    setCursor(tile, false);
    decide(tile, k === 'a' ? 0 : (k === 'x' ? 1 : SKIP));
    move(1, 0);
  } else if (k === 'z' || k === ' ') {
    if (window.gal.lightboxOpen) closeLightbox(); else openLightbox(cur());
    return;
  } else if (k === 'n') {
    const next = firstUnreviewed(tileById(window.gal.cursor));
    if (next) setCursor(next, true);
  } else if (k === 'g') {
    goGrid();
  } else if (k === 'u') { click('gal-btn-undo'); }
  else if (k === 'U') { click('gal-btn-redo'); }
  else if (k === '?') { window.gal.toggleHelp(); }
  else if (k === 'Escape') {
    if (window.gal.lightboxOpen) closeLightbox(); else window.gal.toggleHelp(false);
    return;
  } else if (k === 'ArrowLeft') { move(-1, 0); }
  else if (k === 'ArrowRight') { move(1, 0); }
  else if (k === 'ArrowUp') { move(0, -1); }
  else if (k === 'ArrowDown') { move(0, 1); }
  if (window.gal.lightboxOpen) fillLightbox(tileById(window.gal.cursor));
}
window.gal.key = key;

// A click selects (the cursor moves there, focus with it); a double-click or z zooms; verdicts come
// from the keys and the buttons only -- a double-click used to record (and flip) a verdict.
grid.addEventListener('click', (e) => {
  const tile = e.target.closest('.gal-tile');
  if (!tile || !grid.contains(tile)) return;
  setCursor(tile, false);
  if (document.activeElement !== tile) tile.focus({preventScroll: true});
});
grid.addEventListener('dblclick', (e) => {
  const tile = e.target.closest('.gal-tile');
  if (tile) { e.preventDefault(); setCursor(tile, false); openLightbox(tile); }
});
grid.addEventListener('focusin', (e) => {
  const tile = e.target.closest && e.target.closest('.gal-tile');
  if (tile && tile.dataset.id !== window.gal.cursor) setCursor(tile, false, false);
});

const KEYS = new Set(['a', 'x', 's', 'z', ' ', 'n', 'g', 'u', 'U', '?', 'Escape', 'ArrowLeft', 'ArrowRight', 'ArrowUp',
                      'ArrowDown']);
function normal(e) { return e.key === 'U' ? 'U' : (e.key.length === 1 ? e.key.toLowerCase() : e.key); }
function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (isText(t)) return;
  const k = normal(e);
  if (!KEYS.has(k)) return;
  // a range slider and a radio group own their arrows; every other review key goes through
  if (k.startsWith('Arrow') && t && t.tagName === 'INPUT' && (t.type === 'range' || t.type === 'radio')) return;
  if (k === 'g') { e.preventDefault(); goGrid(); return; }  // from any tab: straight to the grid
  if (!grid.isConnected || grid.offsetParent === null) return;  // the rest only while the Review tab shows
  if (k === ' ' && !window.gal.lightboxOpen && !(t && grid.contains(t)) && t && t.tagName === 'BUTTON') return;
  e.preventDefault();
  key(k);
}
// Space/Enter on a focused tile would click it (flip): the key handler owns those keys on the grid.
function onKeyUp(e) { if (e.key === ' ' && e.target && e.target.closest && e.target.closest('.gal-tile')) e.preventDefault(); }
if (window.gal.onKey) document.removeEventListener('keydown', window.gal.onKey);
if (window.gal.onKeyUp) document.removeEventListener('keyup', window.gal.onKeyUp);
window.gal.onKey = onKey;
window.gal.onKeyUp = onKeyUp;
document.addEventListener('keydown', onKey);
document.addEventListener('keyup', onKeyUp);

watch('value', () => { onRender(); window.gal.renders = (window.gal.renders || 0) + 1; restoreCursor(); });
onRender();
restoreCursor();
