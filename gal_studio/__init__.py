"""GAL Studio's top floor: the web app's launcher (``gal_studio.app``) and the ``gal`` console script.

Imports run one way: ``gal_studio -> ui -> gal -> storage``. It is a package (not a loose ``app.py``) so
that ``gal app`` works from any folder once GAL Studio is installed.
"""
