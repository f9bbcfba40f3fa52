"""The ``pozfast`` command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """A problem with the command's input: printed as one ``error:`` line, exit status 2."""


def load_callable(spec: str) -> Callable[..., Any]:
    """``module:function`` or ``path/to/file.py:function`` -> the function."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"{spec!r} is not of the form module:function or file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise CLIError(f"no file {path}")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except CLIError:
        raise
    except Exception as exc:
        raise CLIError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise CLIError(f"module {module_name!r} has no function {attr!r}")
    return function


def call_spec(spec: str, what: str) -> Any:
    """Call the function named by ``spec``; its failure is one line that names it."""
    function = load_callable(spec)
    try:
        return function()
    except Exception as exc:
        raise CLIError(f"{spec} (the {what}) raised {type(exc).__name__}: {exc}") from None


def output_folder(path: str) -> Path:
    """The output folder, created and checked before any computation."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write into the output folder {out}")
    return out


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def cmd_apoz(args: argparse.Namespace) -> int:
    import pozfast

    if (args.model is None) != (args.data is None):
        raise CLIError("give both --model and --data, or neither (for the embedded digits default)")
    out = output_folder(args.out)
    if args.model is None:
        from pozfast import digits

        print("no --model/--data: measuring the embedded default (a small ReLU CNN trained for a few "
              "seconds on scikit-learn's handwritten digits, validation split)", flush=True)
        model, data = digits.default_model(), digits.default_data()
    else:
        model, data = call_spec(args.model, "model"), call_spec(args.data, "data")
    report = pozfast.apoz(_placed(model, args.device), data, device=args.device, layers=args.layers,
                          max_batches=args.max_batches, progress=not args.no_progress, checkpoint=args.checkpoint,
                          thresholds=args.thresholds, activations=args.activations,
                          token_mask=None if args.token_mask == "none" else "auto")
    report.save(out / "apoz.json")
    summary = report.summary()
    (out / "summary.txt").write_text(summary + "\n")
    report.plot_overview(out / "overview.png")
    for key in report.layers:
        report.plot_histogram(key, out / f"hist_{_file_name(key)}.png")
    print(summary)
    print(f"\nwrote {out / 'apoz.json'}, summary.txt, overview.png and {len(report)} histograms to {out}/")
    return 0


def load_array(path: str):
    """A tensor from a .npy (numpy) or .pt (torch.save of one tensor) file."""
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"no file {p}")
    if p.suffix not in (".npy", ".pt", ".pth"):
        raise CLIError(f"{p}: expected a .npy or .pt file")
    try:
        obj = (torch.from_numpy(np.load(p, mmap_mode="r").copy()) if p.suffix == ".npy"
               else torch.load(p, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise CLIError(f"cannot read {p}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(obj, torch.Tensor):
        raise CLIError(f"{p} holds a {type(obj).__name__}, not a tensor")
    return obj


_RDM_FILES = (".h5", ".hdf5", ".npz")


def load_input(path: str, kind: str, option: str):
    """What a ``pozfast rdm`` input file holds: (features, None) or (None, RDM). Saved RDM files (.h5, .hdf5,
    .npz, read by :func:`pozfast.load_rdm`) are RDMs; a .npy or .pt array is one as ``kind`` says, or, for
    ``"auto"``, an RDM when 1-D or square symmetric with a zero diagonal, features otherwise."""
    from pozfast.interop import looks_like_similarity_matrix
    from pozfast.similarity import _is_rdm_like

    if Path(path).suffix in _RDM_FILES:
        if kind == "features":
            raise CLIError(f"{path} is a saved RDM file, but {option} features was given")
        import pozfast

        if not Path(path).is_file():
            raise CLIError(f"no file {path}")
        return None, pozfast.load_rdm(path)
    array = load_array(path)
    if kind == "auto":
        if looks_like_similarity_matrix(array):
            raise CLIError(f"{path} is a square symmetric matrix with a unit diagonal: a similarity matrix; pass "
                           f"{option} similarity to use it as one (1 - s), or {option} features if its rows are "
                           f"features")
        kind = "rdm" if _is_rdm_like(array, array.shape[0] if array.dim() else 0) else "features"
    if kind == "features":
        return array, None
    return None, (1 - array if kind == "similarity" else array)


def _rdm_option_errors(args: argparse.Namespace) -> None:
    """Options that the chosen mode would ignore are errors."""
    mode = "--compare" if args.compare else "--curve" if args.curve else None
    for given, option, needs in [(args.reference, "--reference", "--curve"), (args.order, "--order", "--curve"),
                                 (args.steps, "--steps", "--curve"), (args.y_kind, "--y-kind", "--compare"),
                                 (args.labels, "--labels", "--plot")]:
        if given is not None and not (mode == needs or (needs == "--plot" and args.plot)):
            raise CLIError(f"{option} needs {needs}; without it {option} would be ignored")
    if args.compare_method is not None and mode is None:
        raise CLIError("--compare-method needs --compare or --curve; without them it would be ignored")
    if mode == "--curve" and args.method is not None:
        raise CLIError("--method does not apply to --curve (insertion curves use correlation RDMs)")
    if mode == "--curve" and args.plot:
        raise CLIError("--plot does not apply to --curve (curve.png is always written)")


def _crossnobis_options(args: argparse.Namespace, method: str) -> dict:
    """pozfast.rdm's crossnobis arguments from --conditions, --folds and --noise (none for other methods,
    where those options are errors)."""
    if method != "crossnobis":
        for given, option in [(args.conditions, "--conditions"), (args.folds, "--folds"), (args.noise, "--noise")]:
            if given is not None:
                raise CLIError(f"{option} needs --method crossnobis; without it {option} would be ignored")
        return {}
    if args.conditions is None:
        raise CLIError("--method crossnobis needs --conditions FILE: the condition of each row of the features")
    return {"descriptor": _read_labels(args.conditions),
            "cv_descriptor": _read_labels(args.folds) if args.folds else None,
            "noise": load_array(args.noise).double().numpy() if args.noise else None}


def cmd_rdm(args: argparse.Namespace) -> int:
    import pozfast
    from pozfast._io import atomic_write_text, json_text

    if args.compare and args.curve:
        raise CLIError("give --compare or --curve, not both")
    _rdm_option_errors(args)
    method = _method(args.method or "correlation", "rdm", "--method")
    compare_method = _method(args.compare_method or ("r2" if args.curve else "pearson"), "compare",
                             "--compare-method")
    options = _crossnobis_options(args, method)
    progress = not args.no_progress
    X, given_rdm = load_input(args.features, args.kind, "--kind")
    if X is None and args.method is not None and not args.compare:
        raise CLIError(f"--method computes an RDM from features, but {args.features} is an RDM")
    if args.compare:
        Y, other_rdm = load_input(args.compare, args.y_kind or "auto", "--y-kind")
        if given_rdm is not None and other_rdm is not None and args.method is not None:
            raise CLIError("--method computes RDMs from features, but both inputs are RDMs")
    out = output_folder(args.out)  # after the inputs are read: a command that cannot start leaves no folder
    rdm_path = None
    if args.compare:
        if X is not None and method == "correlation" and compare_method in ("pearson", "r2"):
            # Pearson of correlation RDMs streams without an N x N matrix
            result = pozfast.rdm_similarity(X, Y if Y is not None else other_rdm, compare_method,
                                            y_kind="features" if Y is not None else "rdm", progress=progress)
        else:
            a = given_rdm if X is None else pozfast.rdm(X, method=method, progress=progress, **options)
            b = other_rdm if Y is None else pozfast.rdm(Y, method=method, progress=progress, **options)
            result = pozfast.compare_rdms(a, b, compare_method)
        if not isinstance(result, pozfast.Comparison):
            raise CLIError(f"--compare compares one RDM with one RDM; the inputs hold sets (values {result.shape})")
        numbers = {"method": result.method, "value": result.value, "n_pairs": result.n_pairs, "path": result.path,
                   "dissimilarity": method}
        print(f"{result.method} between the RDMs: {result.value:.6f} over {result.n_pairs} pairs ({result.path} path)")
    elif args.curve:
        if X is None:
            raise CLIError(f"--curve inserts features, but {args.features} is an RDM")
        poz = load_array(args.curve)
        reference = load_input(args.reference, "rdm", "--reference")[1] if args.reference else None
        order = args.order or "both"
        orders = ["low_to_high", "high_to_low"] if order == "both" else [order]
        curves = [pozfast.insertion_curve(X, poz, order=o, steps=50 if args.steps is None else args.steps,
                                          reference=reference, method=compare_method, progress=progress)
                  for o in orders]
        curves[0].plot(out / "curve.png", others=curves[1:])
        numbers = {c.order: c.to_dict() for c in curves}
        for c in curves:
            print(f"{c.order}: {c.method} at 25/50/100 % of features = "
                  f"{c.value_at(0.25):.4f} / {c.value_at(0.5):.4f} / {c.values[-1]:.4f}")
        print(f"wrote {out / 'curve.png'}")
    elif X is not None:
        rdm_path = pozfast.rdm(X, method=method, out=str(out / "rdm.npy"), progress=progress, **options)
        n = len(set(options["descriptor"])) if options else X.shape[0]
        numbers = {"n_items": n, "n_pairs": n * (n - 1) // 2, "rdm": str(rdm_path), "method": method,
                   "order": "scipy squareform (condensed)"}
        print(f"wrote the condensed {method} RDM of {n} items ({n * (n - 1) // 2} pairs) to {rdm_path}")
    elif not args.plot:
        raise CLIError(f"{args.features} is an RDM: give --compare, or --plot for its heat map")
    else:
        numbers = {}
    if args.plot:
        import numpy as np

        shown = given_rdm if X is None else (np.load(rdm_path, mmap_mode="r") if rdm_path is not None
                                            else pozfast.rdm(X, method=method, progress=progress, **options))
        labels = _read_labels(args.labels) if args.labels else \
            sorted(set(options["descriptor"])) if options else None
        pozfast.plot_rdm(shown, labels=labels, path=out / "rdm.png", title=None if X is None else method)
        numbers["plot"] = str(out / "rdm.png")
        print(f"wrote {out / 'rdm.png'}")
    atomic_write_text(out / "result.json", json_text(numbers))
    print(f"numbers in {out / 'result.json'}")
    return 0


def _method(name: str, kind: str, option: str) -> str:
    from pozfast.interop import canonical_method

    try:
        return canonical_method(name, kind)
    except ValueError as exc:
        raise CLIError(f"{option}: {exc}") from None


def _read_labels(path: str) -> list[str]:
    """Condition labels, one per line (blank lines at the end ignored)."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"no file {p}")
    try:
        return p.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read the labels in {p}: {exc}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    from pozfast import demo
    from pozfast.validate import integer

    for option, minimum in (("epochs", 1), ("rounds", 1), ("fine_tune_epochs", 0), ("steps", 1)):
        integer(getattr(args, option), f"--{option.replace('_', '-')}", minimum=minimum)  # now, not after training
    demo.run(args.out, epochs=args.epochs, rounds=args.rounds, fine_tune_epochs=args.fine_tune_epochs,
             steps=args.steps, seed=args.seed)
    return 0


def _count_or_fraction(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _join_torchrun(device: str | None) -> str | None:
    """Under torchrun (WORLD_SIZE > 1 in the environment), start the process group: NCCL when this machine has
    a GPU for each of its ranks (each rank on the GPU of its LOCAL_RANK), else gloo. Returns the device to run
    on: ``device``, or that GPU under NCCL."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        cuda = gpus >= int(os.environ.get("LOCAL_WORLD_SIZE", "1")) and (device is None or device.startswith("cuda"))
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}" if device in (None, "cuda") else device
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return device


def _placed(model: Any, device: str | None) -> Any:
    """The model from --model on --device when the function built it on the CPU; a model it placed (on a GPU,
    split over devices, offloaded) stays where it is."""
    import torch

    from pozfast.validate import device as checked_device

    if device is None or not isinstance(model, torch.nn.Module):
        return model
    device = checked_device(device)
    tensors = [*model.parameters(), *model.buffers()]
    on_cpu = all(t.device.type == "cpu" for t in tensors) and not getattr(model, "hf_device_map", None)
    return model.to(device) if on_cpu else model


def cmd_trim(args: argparse.Namespace) -> int:
    import torch

    from pozfast import prune

    rule = prune.Rule(args.rule, args.amount, args.min_keep)
    ckpt = output_folder(args.out)
    if (ckpt / "state.pt").exists() and not args.resume:
        raise CLIError(f"{ckpt} holds an earlier run; pass --resume to continue it or choose another --out")
    device = _join_torchrun(args.device)
    model = _placed(call_spec(args.model, "model"), device)
    train, val = call_spec(args.train_data, "training data"), call_spec(args.val_data, "validation data")
    result = prune.trim(model, train, val, layers=args.layers, rule=rule, rounds=args.rounds,
                        fine_tune_epochs=args.epochs, checkpoint_dir=ckpt, device=device,
                        optimizer_factory=lambda params: torch.optim.SGD(params, lr=args.lr, momentum=0.9),
                        progress=not args.no_progress, seed=args.seed, remove_dead=args.remove_dead)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return 0  # rank 0 reports
    if result.dead is not None:
        d = result.dead
        print(f"dead channels removed first: {d['channels']}, {d['compression']:.3f}x compression, top-1 "
              f"{100 * result.rows[0]['top1_after']:.2f}% -> {100 * d['top1']:.2f}%, largest output change "
              f"{d['max_abs_change']:.2g}\n")
    print(result.table())
    saved = "model.pt and model.pt2" if result.export_error is None else "model.pt"
    print(f"\nwrote trim.json, trim.csv and {saved} to {ckpt}/")
    if result.export_error is not None:
        print(f"model.pt2 not written: torch.export failed ({result.export_error})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pozfast",
        description="Fast APoZ (average percentage of zeros after ReLU), network trimming and representational "
                    "geometry (Pearson RDMs) for PyTorch models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "apoz", help="measure the APoZ of every ReLU (or near-zero fractions of other activations) over a dataset",
        description="Measure the APoZ of every ReLU call site of a model over validation data (or, with "
                    "--activations and --thresholds, the share of |a| <= tau of GELU, SiLU and other "
                    "activations); write the report (JSON), a summary table and plots into an output folder. "
                    "Without --model and --data, measures the embedded digits default.",
        epilog="examples:\n  pozfast apoz --model mypkg.models:build --data mypkg.data:val_loader --out runs/apoz\n"
               "  pozfast apoz --model m:llm --data m:padded_batches --activations silu --thresholds 0 0.01 0.1 "
               "--token-mask auto",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="MODULE:FUNCTION", help="function returning the nn.Module to measure")
    p.add_argument("--data", metavar="MODULE:FUNCTION",
                   help="function returning an iterable of batches (tensors, (inputs, targets) or dicts)")
    p.add_argument("--out", default="pozfast-apoz", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--device", help="device the inputs go to, and a model built on the CPU (default: the model's)")
    p.add_argument("--layers", nargs="+", metavar="KEY", help="report only these layer keys or module names")
    p.add_argument("--max-batches", type=int, metavar="N", help="stop after N batches")
    p.add_argument("--checkpoint", metavar="FILE", help="save counts here while running; resume from it if it exists")
    p.add_argument("--thresholds", nargs="+", type=float, default=[0.0], metavar="TAU",
                   help="count |a| <= tau per channel for each tau (increasing, up to 32; default: 0, APoZ)")
    p.add_argument("--activations", nargs="+", metavar="KIND",
                   help="activation kinds to count: relu (default), relu6, gelu, silu, ... or all")
    p.add_argument("--token-mask", default="auto", choices=["auto", "none"],
                   help="auto: dict batches with an attention_mask count only its nonzero positions (default); "
                        "none: count every position")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_apoz)

    r = sub.add_parser(
        "rdm", help="RDMs, RDM comparison, heat maps and PoZ insertion curves from saved features or RDMs",
        description="Compute the RDM (dissimilarities between rows: correlation, euclidean, sqeuclidean or "
                    "cosine) of a features file, compare it or a saved RDM with other features or another RDM "
                    "(--compare; Pearson of correlation RDMs streams without an N x N matrix), draw its heat map "
                    "(--plot), or compute PoZ-ordered feature insertion curves (--curve). Features are .npy or "
                    ".pt files; RDMs are .npy/.pt (condensed or square) or saved RDM files (.h5, .npz). Numbers "
                    "go to result.json, plots to PNG. Exit status 2: the command or its inputs are wrong; 1: a "
                    "failure while running.",
        epilog="examples:\n  pozfast rdm acts.npy --out runs/rdm --method cosine --plot --labels names.txt\n"
               "  pozfast rdm acts.npy --compare human_rdm.npy --compare-method spearman\n"
               "  pozfast rdm model_rdm.h5 --compare human_rdm.npz --compare-method tau-a\n"
               "  pozfast rdm acts.npy --curve poz.npy --order both --steps 50",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("features", metavar="INPUT", help="(N, D) features (.npy or .pt), or an RDM (.npy/.pt condensed "
                                                     "or square, .h5/.npz saved RDM)")
    r.add_argument("--kind", default="auto", choices=["auto", "features", "rdm", "similarity"],
                   help="what INPUT holds (default: auto, from its file type and shape)")
    r.add_argument("--out", default="pozfast-rdm", metavar="DIR", help="output folder (default: %(default)s)")
    r.add_argument("--method", metavar="NAME",
                   help="dissimilarity of RDMs computed from features: correlation (default), euclidean, "
                        "sqeuclidean, cosine, crossnobis (with --conditions; rsatoolbox names accepted)")
    r.add_argument("--conditions", metavar="FILE",
                   help="--method crossnobis: the condition of each row (observation) of the features, one per "
                        "line; the RDM's items are the conditions, sorted as text")
    r.add_argument("--folds", metavar="FILE",
                   help="--method crossnobis: the fold (run) of each row, one per line (default: the k-th row of "
                        "each condition is in fold k)")
    r.add_argument("--noise", metavar="FILE",
                   help="--method crossnobis: the (D, D) noise precision matrix, .npy or .pt (default: identity)")
    r.add_argument("--compare", metavar="FILE", help="features (N, D2) or an RDM to compare INPUT's RDM with")
    r.add_argument("--y-kind", choices=["auto", "features", "rdm", "similarity"], help="what --compare holds")
    r.add_argument("--compare-method", metavar="NAME",
                   help="pearson, r2, spearman, kendall_tau_a, cosine (rsatoolbox names accepted); default: "
                        "pearson for --compare, r2 for --curve (--curve: pearson, r2 or spearman)")
    r.add_argument("--plot", action="store_true", help="write the heat map of INPUT's RDM to rdm.png")
    r.add_argument("--labels", metavar="FILE", help="condition labels for --plot, one per line")
    r.add_argument("--curve", metavar="POZ", help="per-feature PoZ [D]: compute insertion curves")
    r.add_argument("--order", choices=["both", "low_to_high", "high_to_low"], help="--curve order (default: both)")
    r.add_argument("--steps", type=int, help="--curve steps (default: 50)")
    r.add_argument("--reference", metavar="FILE", help="reference RDM for --curve (default: the full-feature RDM)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_rdm)

    d = sub.add_parser(
        "demo", help="the whole workflow on the bundled handwritten digits (train, APoZ, trim, geometry)",
        description="Train a small VGG-style ReLU CNN on scikit-learn's bundled handwritten digits, measure APoZ, "
                    "trim the last conv layer and the first FC layer for several rounds with fine-tuning, and "
                    "compute PoZ-ordered insertion curves of the FC features; writes report.md, results.json "
                    "and plots. Seeded: two runs give the same tables.")
    d.add_argument("--out", default="pozfast-demo", metavar="DIR", help="output folder (default: %(default)s)")
    d.add_argument("--epochs", type=int, default=12, help="training epochs (default: %(default)s)")
    d.add_argument("--rounds", type=int, default=3, help="trimming rounds (default: %(default)s)")
    d.add_argument("--fine-tune-epochs", type=int, default=2, help="fine-tuning epochs per round (default: %(default)s)")
    d.add_argument("--steps", type=int, default=40, help="insertion-curve steps (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser(
        "trim", help="iterative APoZ trimming with fine-tuning of your own model",
        description="Each round: measure APoZ on the validation data, remove the channels the rule selects from "
                    "the named Conv/Linear layers (structurally, with Torch-Pruning), fine-tune, evaluate. Writes "
                    "a Table-4 style table (trim.csv, trim.json) and the trimmed model (model.pt, model.pt2) to "
                    "--out, which is also the checkpoint folder.",
        epilog="example: pozfast trim --model m:build --train-data m:train_loader --val-data m:val_loader "
               "--layers features.28 classifier.0 --rule threshold --amount 0.9 --rounds 4\n\n"
               "on several GPUs or processes (one per GPU; the data functions return each rank's shard, e.g. a\n"
               "DataLoader with a DistributedSampler; rank 0 writes --out):\n"
               "  torchrun --nproc-per-node 4 -m pozfast.cli trim --model m:build --train-data m:train_loader \\\n"
               "      --val-data m:val_loader --layers features.28 classifier.0 --rounds 4",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", required=True, metavar="MODULE:FUNCTION", help="function returning the trained model")
    t.add_argument("--train-data", required=True, metavar="MODULE:FUNCTION", help="(inputs, targets) batches to fine-tune on")
    t.add_argument("--val-data", required=True, metavar="MODULE:FUNCTION", help="(inputs, targets) batches for APoZ and accuracy")
    t.add_argument("--layers", required=True, nargs="+", metavar="NAME", help="Conv/Linear modules to trim")
    t.add_argument("--rule", default="threshold", choices=["threshold", "ratio", "std"])
    t.add_argument("--amount", type=float, default=0.9, help="APoZ threshold, ratio, or k of mean + k*std (default: %(default)s)")
    t.add_argument("--min-keep", type=_count_or_fraction, default=0.1,
                   help="channels kept per layer: a count (an integer such as 2) or a fraction (0.1; 1.0 keeps all)")
    t.add_argument("--remove-dead", action="store_true",
                   help="first remove every channel that is zero on all validation data (outputs unchanged)")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per round")
    t.add_argument("--lr", type=float, default=0.01, help="SGD learning rate for fine-tuning (momentum 0.9)")
    t.add_argument("--device", help="device the inputs go to, and a model built on the CPU (default: the model's; "
                                    "under torchrun with a GPU per rank, each rank's GPU)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="pozfast-trim", metavar="DIR", help="output and checkpoint folder")
    t.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_trim)
    return parser


USAGE_ERROR, FAILURE = 2, 1


def main(argv: list[str] | None = None) -> int:
    """Run the command. Its errors are one ``error:`` line: exit status 2 when the command line or its inputs
    are wrong (as argparse's), 1 when something fails while running (a file that cannot be written, a
    missing optional library, a runtime error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ValueError, KeyError, TypeError, IndexError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError quotes its text
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR
    except (OSError, RuntimeError, MemoryError, ImportError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return FAILURE


if __name__ == "__main__":
    sys.exit(main())
