"""What every tab shares: messages as toasts, the ``ValueError -> gr.Error`` rule, and ``bind``.

Handlers return ``{name: value}`` dicts; a name is a component's key in the page's registry (``ui.page``).
:func:`bind` turns such a handler into what Gradio calls: the values in the order of its outputs, an
output the handler did not name left as it is (``gr.skip()``), and a name that is not an output an error
(the wiring and the handler cannot drift apart silently).
"""

from __future__ import annotations

import functools
import html
import logging

import gradio as gr

# The review controls whose ``interactive`` follows the run (components ``<name>_btn``).
CONTROLS = ("commit", "accept", "reject", "skip", "undo", "redo", "oracle", "below", "resume", "cancel")
MAX_SESSIONS = 1000  # pages whose latest click nonce is remembered


def text(message) -> str:
    """A message for a toast as text: Gradio renders toast messages as HTML, so ``<sks>`` vanished as an
    unknown tag; escaping < > & shows every message as typed."""
    return html.escape(str(message), quote=False)


log = logging.getLogger("gal_studio")


def error(message) -> gr.Error:
    """A user mistake for the page. ``print_exception=False``: the terminal gets the one line
    :func:`user_errors` logs, not Gradio's traceback (a session of ordinary mistakes printed seven)."""
    return gr.Error(text(message), print_exception=False)


def warn(message, **kw) -> None:
    gr.Warning(text(message), **kw)


def info(message, **kw) -> None:
    gr.Info(text(message), **kw)


def user_errors(handler):
    """A handler's ``ValueError`` (bad input; its message names the fix) becomes ``gr.Error``: the event
    stops and the page shows the message."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error as err:
            if not err.print_exception:
                log.warning("user error (%s): %s", handler.__name__, html.unescape(str(err.message)))
            raise
        except ValueError as err:
            log.warning("user error (%s): %s", handler.__name__, err)
            raise error(err) from err

    return wrapper


def bind(handler, names: list[str] | tuple[str, ...]):
    """``handler`` (returns ``{name: value}``) as a Gradio function over the outputs ``names``."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        out = handler(*args, **kwargs)
        unknown = set(out) - set(names)
        if unknown:
            raise KeyError(f"{handler.__name__} returned {sorted(unknown)}, not among its outputs {names}")
        values = [out.get(name, gr.skip()) for name in names]
        return values[0] if len(values) == 1 else values

    return wrapper


def wire(event, handler, inputs, names: list[str] | tuple[str, ...], c: dict, **kw):
    """``event(bind(handler, names), inputs, [c[n] for n in names], **kw)``."""
    return event(bind(handler, names), inputs, [c[n] for n in names], **kw)


def select_tab(selected: str | None):
    return gr.Tabs(selected=selected) if selected else gr.skip()


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1
