"""The ``gal`` command line: run, images, decide, commit, export, runs, app.

Every subcommand is a thin layer over :class:`gal.engine.Studio`; errors in the input print one line
that says what to fix (exit code 2), and nothing already saved is lost.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from gal.fields import add_flags, apply_flags
from gal.review import parse_verdict, read_decisions  # noqa: F401  (the CLI's verdict words; tests use them)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gal",
        description="Generative Active Learning for text-to-image personalization",
    )
    p.add_argument(
        "--runs-dir",
        default=os.environ.get("GAL_RUNS_DIR", "runs"),
        help="folder of runs and gal.db (default ./runs)",
    )
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument(
        "--precision", default="auto", choices=["auto", "fp16", "bf16", "no"], help="weights dtype on CUDA"
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a new run, or --resume one")
    run.add_argument("--resume", metavar="RUN_ID", help="continue a run where it stopped")
    run.add_argument("--config", help="a JSON RunConfig (flags below override it)")
    run.add_argument(
        "--demo", action="store_true", help="the built-in toy-world scenario (default when no --ref is given)"
    )
    run.add_argument(
        "--scenario",
        choices=["object", "style", "known", "known-style"],
        help="with --demo: the toy-world scenario (known, known-style: a subject / style the toy model "
        "already draws)",
    )
    run.add_argument(
        "--ref",
        action="append",
        default=[],
        help="a reference image (repeat for several); NAME.mask.png (given or beside it) is its loss mask",
    )
    run.add_argument("--prompt", help="the references' prompt, e.g. 'a <sks> cat on the stairs'")
    run.add_argument(
        "--non-soi",
        help="what the model must NOT learn, e.g. 'a cat on the stairs' (default: prompt without token)",
    )
    run.add_argument("--anchors", help="a text file, one anchor template per line ({} = subject)")
    run.add_argument(
        "--alpha", type=float, help="LoRA alpha; scale = alpha / rank (default: alpha = rank, scale 1)"
    )
    run.add_argument(
        "--scheduler",
        help="dpmsolver++, ddim, euler, euler_a, pndm, ddpm; FLUX.1: flow-euler "
        "(default: the model family's)",
    )
    add_flags(run)  # one flag per setting of the field table (gal.fields)
    run.add_argument(
        "--continue-adapter",
        action="store_true",
        help="each round continues the last adapter (official: retrain from base)",
    )
    run.add_argument(
        "--keep-selected", action="store_true", help="selected anchors stay in the pool (official: removed)"
    )
    run.add_argument(
        "--no-adaptive-stop", action="store_true", help="run all --rounds even when Eq. 10 says stop"
    )
    run.add_argument(
        "--pause", action="store_true", help="stop at every round's review (then gal decide / gal commit)"
    )

    images = sub.add_parser("images", help="print the current round's images as CSV (to fill in verdicts)")
    images.add_argument("run_id")

    decide = sub.add_parser("decide", help="apply a person's verdicts from a CSV/JSON file")
    decide.add_argument("run_id")
    decide.add_argument("file")
    decide.add_argument("--commit", action="store_true", help="commit the round afterwards")
    decide.add_argument("--mode", choices=["auto", "human"], help="the round's mode when committing")
    decide.add_argument(
        "--clear-blank",
        action="store_true",
        help="a blank verdict clears the image's verdict (default: blank = no change)",
    )
    decide.add_argument(
        "--force",
        action="store_true",
        help="apply even where images got newer verdicts after `gal images` wrote the file",
    )

    commit = sub.add_parser("commit", help="commit the round under review and go on")
    commit.add_argument("run_id")
    commit.add_argument("--mode", choices=["auto", "human"])
    commit.add_argument("--no-advance", action="store_true", help="do not start the next round's training")

    export = sub.add_parser("export", help="export the run's final LoRA, dataset and model card")
    export.add_argument("run_id")
    export.add_argument("out")
    export.add_argument(
        "--format",
        default="diffusers,kohya,dataset,card",
        help="comma list of diffusers,kohya,fused,checkpoint,dataset,card",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="replace this run's previous export in that folder (nothing else)",
    )

    sub.add_parser("runs", help="list the runs")

    sub.add_parser(
        "app", help="launch the GAL Studio web app (same flags as python app.py: gal app --port 7870)"
    )
    return p


def _progress_printer():
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int, info: dict) -> None:
        key = f"{stage}{info.get('round', '')}"
        if key not in bars:
            for bar in bars.values():
                bar.close()
            bars.clear()
            label = f"round {info['round']} {stage}" if "round" in info else stage
            bars[key] = tqdm(
                total=total, desc=label, unit="step" if stage == "train" else "img", file=sys.stderr
            )
        bar = bars[key]
        if info.get("resumed"):
            bar.write(f"{bar.desc}: resumed at step {info['resumed']}/{total}", file=sys.stderr)
        bar.n = done
        if "loss" in info:
            bar.set_postfix(loss=f"{info['loss']:.4f}", refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()
            bars.pop(key, None)

    return progress


MAX_CONFIG_FILE = 1_000_000  # bytes; a run's config.json with 1000 anchors is ~100 KB


def _check_device(spec: str | None) -> None:
    """``--device`` names a device torch knows and this machine has, else one line that says so."""
    if spec is None:
        return
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {spec!r} is not a device: use cuda, cuda:1 or cpu") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: this machine has no CUDA GPU: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s), "
                f"numbered 0-{torch.cuda.device_count() - 1}"
            )
    elif device.type != "cpu" and device.type != "mps":
        raise ValueError(f"--device {spec!r} is not supported: use cuda, cuda:1 or cpu")


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_FILE:
        raise ValueError(
            f"config file {path} is {size / 1e6:.1f} MB: a run's config.json is a few KB — "
            "is it the right file?"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"config file {path} is not valid JSON ({err}): fix it, or start from a run's config.json"
        ) from None
    except RecursionError:
        raise ValueError(
            f"config file {path} nests too deeply to be a config: start from a run's config.json"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {path} must hold a JSON object like a run's config.json, got {type(data).__name__}"
        )
    return data


def _apply_family_defaults(config, model: str) -> None:
    """Fill the model family's defaults into a new run's config (full-size models; the built-in tiny and
    toy models keep the settings they were made for)."""
    from gal.families import TINY, config_defaults
    from gal.models import model_family

    if model in TINY or model == "toy":
        return
    for section, values in config_defaults(model_family(model).name).items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)


def _new_config(args):
    from gal.config import RunConfig
    from gal.demo import demo_scenario

    if args.config:
        config = RunConfig.from_dict(_read_config(Path(args.config)))
        references = []
    elif args.demo or not args.ref:
        scenario = args.scenario or args.task or "object"
        config, references = demo_scenario(Path(args.runs_dir) / "demo-references", task=scenario)
    else:
        config = RunConfig(task=args.task or "object")
        references = []
        if (
            args.model
        ):  # the family's defaults (resolution, lr, rank, sampler, guidance); flags below override
            _apply_family_defaults(config, args.model)
    from gal.engine import ReferenceInput
    from gal.references import pair_masks

    if args.ref:
        if not args.prompt:
            raise ValueError("--ref needs --prompt: the caption of the references, with the SoI token")
        # --non-soi with the token (the prompt pasted twice) would score the subject itself as overfitting
        RunConfig(soi_token=args.token or config.soi_token).check_non_soi(args.non_soi, args.prompt)
        # NAME.mask.png among the --ref files (or beside an image) is that image's loss mask
        references = [
            ReferenceInput(path, args.prompt, args.non_soi, mask) for path, mask in pair_masks(args.ref)
        ]
    apply_flags(config, args)  # the field table's flags
    for flag, (section, key) in {"alpha": ("train", "alpha"), "scheduler": ("generate", "scheduler")}.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(getattr(config, section), key, value)
    if args.rank is not None and args.alpha is None:
        config.train.alpha = None  # the rule: alpha = rank (scale 1) unless --alpha says otherwise
    if args.anchors:
        path = Path(args.anchors)
        if not path.is_file():
            raise ValueError(f"anchors file {path} does not exist")
        config.anchors = [
            line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        if not config.anchors:
            raise ValueError(
                f"anchors file {path} has no anchors: write one prompt template per line ({{}} = subject)"
            )
    if args.continue_adapter:
        config.train.retrain_from_base = False
    if args.keep_selected:
        config.gal.remove_selected = False
    if args.pause:
        config.gal.pause_for_review = True
    if args.no_adaptive_stop:
        config.gal.adaptive_stop = False
    if args.task == "object" and args.token and args.subject is None and args.ref:
        config.subject_phrase = f"a {args.token}"
    return config, references


def _report_run(studio, run: dict) -> None:
    rounds = studio.history(run["run_id"])["rounds"]
    for r in rounds:
        m = r.get("metrics") or {}
        if "txt_aln" in m:
            print(
                f"round {r['round_index']}: TXT-ALN {m['txt_aln']:.4f}  IMG-ALN {m['img_aln']:.4f}  "
                f"OVF {m['ovf']:.3f}"
                f"  Δ {r.get('openness') if r.get('openness') is not None else '–'}"
            )
    status = run["status"]
    if status == "awaiting_review":
        print(
            f"run {run['run_id']}: round {run['current_round']} awaits review.\n"
            f"  gal images {run['run_id']} > verdicts.csv   # fill the verdict column\n"
            f"  gal decide {run['run_id']} verdicts.csv --commit"
        )
    elif status == "finished":
        print(f"run {run['run_id']} finished. Export: gal export {run['run_id']} out/")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["app"]:
        # The web app sits above the engine (app.py -> ui -> gal): the `gal` console script routes
        # `gal app` to app.py before it gets here; from `python -m gal` say where the app is.
        print(
            "gal: error: start the web app with `gal app` (the console script) or `python -m app`",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted: what was saved is kept; resume with gal run --resume RUN_ID", file=sys.stderr)
        return 130
    except ValueError as err:  # our input errors (storage errors are ValueErrors too)
        print(f"gal: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        from gal.runfolder import disk_full

        if not disk_full(err):
            raise
        resume = (
            f"gal run --resume {args.resume or '<RUN_ID>'}"
            if args.command == "run"
            else "run the command again"
        )
        print(
            f"gal: error: the disk is full ({err.strerror}: {err.filename}): free some space, then {resume}; "
            "what was saved before is kept",
            file=sys.stderr,
        )
        return 1


def _dispatch(args) -> int:
    from gal.engine import Studio
    from gal.runfolder import check_run_id

    _check_device(args.device)

    if args.command == "runs":
        from storage import list_runs, open_db

        with open_db(Path(args.runs_dir) / "gal.db") as db:
            runs = list_runs(db)
        if not runs:
            print("no runs yet: gal run --demo")
        for run in runs:
            print(f"{run['run_id']}\t{run['status']}\tround {run['current_round']}\t{run['created_at']}")
        return 0
    if args.command == "run":
        studio = Studio(
            args.runs_dir, model=args.model, oracle=args.oracle, device=args.device, precision=args.precision
        )
        main_process = studio.processes.is_main  # under `accelerate launch`, one process creates and reports
        run_id = args.resume
        if run_id is not None:
            check_run_id(run_id)  # `--resume ""` is a mistake, not a new run
        else:
            if main_process:
                run_id = studio.create_run(*_new_config(args))
            run_id = studio.processes.broadcast(run_id)
        if main_process:
            print(f"run {run_id} in {studio.run_dir(run_id)}", file=sys.stderr)
        run = studio.advance(run_id, progress=_progress_printer() if main_process else None)
        if main_process:
            _report_run(studio, run)
        studio.processes.close()  # every process has its last message before any exits
        return 0
    studio = Studio(args.runs_dir, device=args.device, precision=args.precision)
    if args.command == "images":
        state = studio.review_state(args.run_id)
        writer = csv.writer(sys.stdout)
        # round + revision let `gal decide` refuse this file once it is stale (newer verdicts, a later round)
        writer.writerow(
            [
                "image_id",
                "round",
                "revision",
                "anchor_index",
                "slot",
                "prompt",
                "file",
                "seed",
                "sim_anchor",
                "sim_non_soi",
                "oracle_verdict",
                "verdict",
            ]
        )
        r, revision = state["round"]["round_index"], state["revision"]
        for a in state["anchors"]:
            for im in a["images"]:
                writer.writerow(
                    [
                        im["id"],
                        r,
                        revision,
                        a["anchor_index"],
                        im["slot"],
                        a["prompt"],
                        im["path"],
                        im["seed"],
                        f"{im['sim_anchor']:.5f}" if im["sim_anchor"] is not None else "",
                        f"{im['sim_non_soi']:.5f}" if im["sim_non_soi"] is not None else "",
                        im["oracle_verdict"],
                        "" if im["person_verdict"] is None else im["person_verdict"],
                    ]
                )
        return 0
    if args.command == "decide":
        done = studio.apply_decisions(
            args.run_id, read_decisions(args.file, clear_blank=args.clear_blank), force=args.force
        )
        print(f"recorded {done['recorded']} verdicts ({done['unchanged']} unchanged)", file=sys.stderr)
        if args.commit:
            studio.commit_round(args.run_id, args.mode)
            _report_run(studio, studio.advance(args.run_id, progress=_progress_printer()))
        return 0
    if args.command == "commit":
        run = studio.commit_round(args.run_id, args.mode)
        if not args.no_advance:
            run = studio.advance(args.run_id, progress=_progress_printer())
        _report_run(studio, run)
        return 0
    if args.command == "export":
        from gal.export import parse_formats

        written = studio.export(args.run_id, args.out, parse_formats(args.format), force=args.force)
        for fmt, path in written.items():
            print(f"{fmt}\t{path}")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
