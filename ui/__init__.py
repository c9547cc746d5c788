"""GAL Studio's web page: thin Gradio handlers over ``gal.engine.Studio`` (the only package importing gradio,
with ``app.py``). ``build(studio)`` returns the Blocks; ``app.py`` launches it with ``launch_kwargs()``."""

from ui.blocks import build, launch_kwargs

__all__ = ["build", "launch_kwargs"]
