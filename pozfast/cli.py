"""The ``pozfast`` command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_callable(spec: str) -> Callable[..., Any]:
    """``module:function`` or ``path/to/file.py:function`` -> the function."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"error: {spec!r} is not of the form module:function or file.py:function")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.exists():
            raise SystemExit(f"error: no file {path}")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"error: module {module_name!r} has no attribute {attr!r}") from None


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def cmd_apoz(args: argparse.Namespace) -> int:
    import pozfast

    if (args.model is None) != (args.data is None):
        raise SystemExit("error: give both --model and --data, or neither (for the embedded digits default)")
    if args.model is None:
        from pozfast import digits

        print("no --model/--data: measuring the embedded default (a small ReLU CNN trained for a few "
              "seconds on scikit-learn's handwritten digits, validation split)", flush=True)
        model, data = digits.default_model(), digits.default_data()
    else:
        model, data = load_callable(args.model)(), load_callable(args.data)()
    report = pozfast.apoz(model, data, device=args.device, layers=args.layers, max_batches=args.max_batches,
                          progress=not args.no_progress, checkpoint=args.checkpoint)
    out = Path(args.out)
    report.save(out / "apoz.json")
    summary = report.summary()
    (out / "summary.txt").write_text(summary + "\n")
    report.plot_overview(out / "overview.png")
    for key in report.layers:
        report.plot_histogram(key, out / f"hist_{_file_name(key)}.png")
    print(summary)
    print(f"\nwrote {out / 'apoz.json'}, summary.txt, overview.png and {len(report)} histograms to {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pozfast",
        description="Fast APoZ (average percentage of zeros after ReLU) for PyTorch models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "apoz", help="measure the APoZ of every ReLU of a model over a dataset",
        description="Measure the APoZ of every ReLU call site of a model over validation data; write the "
                    "report (JSON), a summary table and plots into an output folder. Without --model and "
                    "--data, measures the embedded digits default.",
        epilog="example: pozfast apoz --model mypkg.models:build --data mypkg.data:val_loader --out runs/apoz")
    p.add_argument("--model", metavar="MODULE:FUNCTION", help="function returning the nn.Module to measure")
    p.add_argument("--data", metavar="MODULE:FUNCTION",
                   help="function returning an iterable of batches (tensors, (inputs, targets) or dicts)")
    p.add_argument("--out", default="pozfast-apoz", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--device", help="device for the inputs (default: the model's)")
    p.add_argument("--layers", nargs="+", metavar="KEY", help="report only these layer keys or module names")
    p.add_argument("--max-batches", type=int, metavar="N", help="stop after N batches")
    p.add_argument("--checkpoint", metavar="FILE", help="save counts here while running; resume from it if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_apoz)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
