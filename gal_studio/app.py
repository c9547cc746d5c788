"""GAL Studio's web app: parse the flags, load the models once (one Studio), build the page, launch it.

    python app.py                      # http://127.0.0.1:7860, offline, the built-in default model
    python app.py --runs-dir runs --model stable-diffusion-v1-5/stable-diffusion-v1-5 --auth me:secret
    gal app --port 7870                # the same, through the CLI

Binds 127.0.0.1 unless --host says otherwise; no public link unless --share; serves only files under
--runs-dir (the run folders), never the database itself. Every request passes
``gal_studio.security.WebGuard``:
Host allow-list (loopback names, --host's name, --allowed-host), Origin check on state-changing calls,
a bound on uploads (--max-file-size) and on request bodies, and a login throttle under --auth.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gal app", description="GAL Studio: review and steer Generative Active Learning runs"
    )
    p.add_argument(
        "--runs-dir",
        default=os.environ.get("GAL_RUNS_DIR", "runs"),
        help="folder of runs and gal.db (default ./runs)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="default generator for new runs: tiny, toy, a hub id or a folder (default: the built-in)",
    )
    p.add_argument(
        "--oracle",
        default=None,
        help="default CLIP oracle: tiny, toy, ViT-B-32/openai or a folder (default: the built-in)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (off by default)"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests for this host name (repeatable; *.example.org matches sub-names); "
        "loopback names and --host's name are always accepted",
    )
    p.add_argument(
        "--max-file-size",
        default="20mb",
        metavar="SIZE",
        help="largest uploaded file, e.g. 20mb (default), 512kb or a number of bytes",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        action="append",
        default=[],
        metavar="IP",
        help="a proxy you run (IP or network, repeatable) whose X-Forwarded-For names the client for the "
        "login throttle; default none: the throttle counts by the connecting address",
    )
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    return p


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth must be USER:PASS with both parts non-empty, e.g. --auth me:secret")
    return user, password


def check_model_spec(spec: str) -> None:
    """Fail at start, not at the first round, when a model cannot be found offline."""
    if spec in ("tiny",):
        return
    from gal.models import resolve_model_path

    resolve_model_path(spec)


def leave_a_core_free(device) -> int | None:
    """On CPU, train on all cores but one, leaving it to the web server and the browser.

    OpenMP workers spin-wait when every core is busy: with the page open on 2 cores, LoRA steps ran
    at 0.54/s on 2 threads and 19.3/s on 1 (measured). An explicit OMP_NUM_THREADS wins.
    """
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    import torch

    threads = max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    return threads


def create_app(args: argparse.Namespace):
    """(studio, blocks, launch kwargs) for ``args``; raises ValueError naming the fix."""
    import ui
    from gal.engine import Studio
    from gal_studio import security

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be 1-65535, got {args.port}")
    auth = parse_auth(args.auth)
    max_file_size = security.parse_size(args.max_file_size)
    policy = security.WebPolicy.from_flags(
        args.host, args.allowed_host, bool(args.share), max_file_size, args.forwarded_allow_ips
    )
    security.peer_addresses_only()  # uvicorn must not rewrite the client from X-Forwarded-For
    runs_dir = Path(args.runs_dir).expanduser().resolve()
    # The models load once, here.
    studio = Studio(runs_dir, model=args.model, oracle=args.oracle, device=args.device)
    leave_a_core_free(studio.device)
    check_model_spec(studio.default_model)
    demo = ui.build(studio)
    db = studio.db_path
    kwargs = {
        "server_name": args.host,
        "server_port": args.port,
        "auth": auth,
        "share": bool(args.share),
        # Only the run folders are served; the database (and its WAL files) never is.
        "allowed_paths": [str(runs_dir)],
        "blocked_paths": [str(db), f"{db}-wal", f"{db}-shm", f"{db}-journal"],
        "max_file_size": max_file_size,
        # Host allow-list, Origin check, body bound and login throttle in front of every route.
        "app_kwargs": {"middleware": [security.guard(policy)]},
        **ui.launch_kwargs(),
    }
    return studio, demo, kwargs


def _warn_if_exposed(host: str, auth) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and auth is None:
        print(
            f"warning: listening on {host} without --auth: anyone who can reach it can run and export jobs",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        _studio, demo, kwargs = create_app(args)
    except ValueError as err:  # our input errors (bad flags, a model that is not there, an unusable folder)
        print(f"error: {err}", file=sys.stderr)
        return 2
    _warn_if_exposed(args.host, kwargs["auth"])
    if args.host in ("0.0.0.0", "::") and not args.allowed_host:
        print(
            f"note: listening on {args.host}, but only requests for 127.0.0.1/localhost pass the Host check: "
            "add --allowed-host NAME for the name or IP others will type (e.g. --allowed-host 192.168.1.20)",
            file=sys.stderr,
        )
    demo.queue(default_concurrency_limit=1)
    with contextlib.redirect_stdout(_OurFlags(sys.stdout)):
        demo.launch(**kwargs)
    return 0


class _OurFlags(io.TextIOBase):
    """Gradio's start-up hint names its Python API ("set `share=True` in `launch()`"); ours is a flag."""

    HINT = "set `share=True` in `launch()`"

    def __init__(self, out):
        self._out = out

    def write(self, s: str) -> int:
        self._out.write(s.replace(self.HINT, "restart with --share (gal app --share)"))
        return len(s)

    def flush(self) -> None:
        self._out.flush()


if __name__ == "__main__":
    sys.exit(main())
