"""The page's static parts, kept as real files under ``ui/static/`` (CSS, the head script, the grid's
script, the keyboard help), and how Gradio 6 takes them: ``css_paths``/``head_paths`` in ``launch()``,
``js_on_load`` strings for the two ``gr.HTML`` components that run a script.

The review grid is a ``gr.HTML`` whose ``js_on_load`` (``grid.js``) turns clicks and keys into
``trigger('select', {index, value: {image_id, verdict}})`` — one ``.select`` event per verdict, so
clicks and keys share one server path. The verdict is painted at once in the page; the server's
answer, read back from SQLite, arrives as a small JSON patch (``patch.js``) that sets every tile and
anchor of the round, so a click does not cost a 20 KB re-render of the grid. Each click carries a
nonce and every answer (patch or full render) the latest nonce handled, so a tile's 'pending' always
resolves to what SQLite holds, even when answers are merged or arrive out of order. Every page global
lives under ``window.gal``.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
CSS_FILE = STATIC / "gal.css"
HEAD_FILE = STATIC / "head.html"
GRID_JS = (STATIC / "grid.js").read_text()
PATCH_JS = (STATIC / "patch.js").read_text()
HELP_HTML = (STATIC / "help.html").read_text()
