"""The ``gal`` console script: ``gal app …`` launches the web app, every other command is the engine's CLI.

The web app sits above the engine (``gal_studio -> ui -> gal``), so this router lives up here: the
engine's CLI (``gal.cli``) never imports the UI.
"""

from __future__ import annotations

import sys

APP_GLOBALS = ("--runs-dir", "--device")  # `gal` options that mean the same to the app


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `gal [--runs-dir D] [--device X] app …`: the global options the app also takes may come first
    i, carried = 0, []
    while i + 1 < len(argv) and argv[i] in APP_GLOBALS:
        carried += argv[i : i + 2]
        i += 2
    if argv[i : i + 1] == ["app"]:
        from gal_studio.app import main as app_main

        rest = argv[i + 1 :]
        return app_main(carried + (rest[1:] if rest[:1] == ["--"] else rest))
    from gal.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
