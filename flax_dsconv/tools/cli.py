"""``flax-dsconv``: ``parity`` (the main job), ``summary``, ``convert``, ``predict``, ``export``, ``train`` and
``bench``."""

from __future__ import annotations

import argparse
import ast
import functools
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


def _parity(args: argparse.Namespace) -> int:
    from flax_dsconv.tools import parity

    cases = parity.default_cases()
    if args.models:
        unknown = set(args.models) - {c.label for c in cases}
        if unknown:
            raise ValueError(f"unknown models {sorted(unknown)}; known: {[c.label for c in cases]}")
        cases = [c for c in cases if c.label in args.models]
    results = []
    for case in cases:
        r = parity.check(case)
        results.append(r)
        if not args.json:  # progress, one line per model as it finishes
            line = f"  {r.label} ({r.source}): max |Δ| {r.max_abs_diff:.1e}, {r.seconds:.1f}s"
            print(f"{line}, {'ok' if r.ok else 'FAIL'}", file=sys.stderr)
    if args.json:
        print(json.dumps([{**r.__dict__, "ok": r.ok} for r in results], indent=2))
    else:
        print(parity.format_table(results))
    failed = [r.label for r in results if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _summary(args: argparse.Namespace) -> int:
    from flax_dsconv import BUILDERS, create_model, summary

    kwargs: dict[str, Any] = {"num_classes": args.num_classes}
    if args.width is not None:
        if args.arch not in BUILDERS:
            raise ValueError(f"--width: {args.arch} is a timm name, its width is part of it; --width takes a builder "
                             f"({', '.join(sorted(BUILDERS))})")  # fmt: skip
        kwargs["width_multiplier"] = args.width
    if args.full_conv:
        if args.arch != "mobilenet_v1":
            raise ValueError("--full-conv applies to mobilenet_v1 only")
        kwargs["separable"] = False
    model = create_model(args.arch, **kwargs)
    print(
        f"{args.arch}  width {1.0 if args.width is None else args.width}  resolution {args.resolution}"
        + ("  (full convolution)" if args.full_conv else "")
    )
    print(summary(model, (1, args.resolution, args.resolution, 3)))
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def _model_name(value: str) -> str:
    """A ``create_model`` name; a wrong one gets the close names, not all of them."""
    import difflib

    from flax_dsconv import list_models

    names = list_models()
    if value not in names:
        near = difflib.get_close_matches(value, names, n=6, cutoff=0.6)
        raise argparse.ArgumentTypeError(f"unknown model {value!r}; close names: {', '.join(near) or 'none'} "
                                         f"(flax_dsconv.list_models() has all {len(names)})")  # fmt: skip
    return value


def _width(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {value}")
    return number


def _literal(value: str) -> Any:
    """A ``--config`` value: JSON or a Python literal (``0.75``, ``true``/``True``, ``null``/``None``), else the
    string itself (``hard_swish``)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _is_hub(src: str) -> bool:
    """A hub-layout checkpoint (a directory, ``local-dir:DIR``, ``hf-hub:org/name``) rather than a file."""
    return src.startswith(("hf-hub:", "local-dir:")) or os.path.isdir(src)


def _convert(args: argparse.Namespace) -> int:
    from flax_dsconv import from_pretrained, from_torch, pretrained_cfg, save

    config = {}
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config takes KEY=VALUE, got {item!r}")
        config[key] = _literal(value)
    module: Any  # a MobileNet from a hub directory; whatever network the torch source was
    if _is_hub(args.src):
        if args.arch or args.source or config:
            raise ValueError(f"{args.src} is a hub-layout checkpoint: its config.json names the architecture; drop "
                             "--arch, --source and --config")  # fmt: skip
        module, variables = from_pretrained(args.src)
        cfg = pretrained_cfg(args.src)
        out = save(args.out, module, variables, arch=cfg["architecture"], source="timm", pretrained_cfg=cfg)
        print(f"wrote {out}/config.json and {out}/variables.msgpack (timm {cfg['architecture']}, from {args.src})")
        return 0
    if not (args.arch and args.source):
        raise ValueError(f"{args.src} is a checkpoint file: name what it holds with --arch and --source (a hub-layout "
                         "directory needs neither)")  # fmt: skip
    module, variables = from_torch(args.src, arch=args.arch, source=args.source, **config)
    # --out a file or a directory of other files, a full disk: save refuses, and nothing is written
    out = save(args.out, module, variables, arch=args.arch, source=args.source, torch_config=config)
    print(f"wrote {out}/config.json and {out}/variables.msgpack ({args.source} {args.arch})")
    return 0


def _read_model(src: str, arch: str | None = None, source: str | None = None,
                config: dict[str, Any] | None = None) -> tuple[Any, Any, dict[str, Any]]:  # fmt: skip
    """``(module, variables, pretrained_cfg)`` from a directory ``flax_dsconv.save`` wrote, a hub-layout checkpoint,
    or a torch checkpoint file (which needs ``arch`` and ``source``)."""
    from flax_dsconv import from_pretrained, from_torch, load, pretrained_cfg

    if os.path.isfile(os.path.join(src, "variables.msgpack")):  # written by flax-dsconv convert / flax_dsconv.save
        module, variables = load(src)
        with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
            return module, variables, json.load(f).get("pretrained_cfg") or {}
    if _is_hub(src):
        module, variables = from_pretrained(src)
        return module, variables, pretrained_cfg(src)
    if not (arch and source):
        raise ValueError(f"{src} is a checkpoint file: name what it holds with --arch and --source (a hub-layout "
                         "directory or a convert output needs neither)")  # fmt: skip
    module, variables = from_torch(src, arch=arch, source=source, **(config or {}))
    return module, variables, {}


def _export(args: argparse.Namespace) -> int:
    from flax_dsconv.export import save_stablehlo

    module, variables, cfg = _read_model(args.src, args.arch, args.source)
    size = tuple(args.input_size) if args.input_size else tuple(cfg.get("input_size", (3, 224, 224))[1:])
    out = save_stablehlo(args.out, module, variables, input_size=size, platforms=args.platforms)
    print(f"wrote {out} (StableHLO, images float32 NHWC (batch, {size[0]}, {size[1]}, 3) for any batch)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import jax
    import numpy as np
    from PIL import Image

    from flax_dsconv import data

    module, variables, cfg = _read_model(args.model)
    if getattr(module, "features_only", True) or not module.config.num_classes:
        raise ValueError(f"{args.model}: a model without classifier has no classes to predict")
    transform = data.eval_transform(cfg)
    images = []
    for path in args.images:
        with Image.open(path) as image:
            images.append(transform(image.convert("RGB")))
    probs = np.asarray(jax.nn.softmax(jax.jit(module.apply)(variables, np.stack(images)), axis=-1))
    for path, p in zip(args.images, probs, strict=True):
        top = np.argsort(-p, kind="stable")[: args.top]
        print(f"{path}: " + ", ".join(f"{int(i)} ({p[i]:.4f})" for i in top))
    return 0


def _train(args: argparse.Namespace) -> int:
    from flax_dsconv.tools.digits import train_digits

    # settings that cannot train, or that do not fit the run being resumed: a ValueError, reported by main
    history = train_digits(
        args.out, arch=args.arch, width=args.width, epochs=args.epochs, limit=args.limit, progress=not args.quiet
    )
    print(f"final test accuracy {history[-1]['test_accuracy']:.4f}; curves in {args.out}/curves.png")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import dataclasses

    import jax

    from flax_dsconv.tools import bench

    overrides = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(bench.Settings)}}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    settings = bench.Settings.for_backend(jax.default_backend(), **overrides)
    log = (lambda _: None) if args.json else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    results = bench.run(settings, log)
    if args.json:
        payload = {"machine": bench.describe_machine(), "settings": dataclasses.asdict(settings)}
        print(json.dumps({**payload, "results": [dataclasses.asdict(r) for r in results]}, indent=2))
    else:
        print(bench.describe_machine())
        print(
            f"dtype {settings.dtype}, layer input {settings.layer_shape} (NHWC), {settings.resolution}² images, "
            f"depthwise {settings.depthwise!r}"
        )
        print(bench.format_table(results))
    return 1 if any(r.error for r in results) else 0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``flax-dsconv summary: argument --width: ...``, exit 2), as every other
    CLI error; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (--help shows the usage)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="flax-dsconv", description=__doc__)
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on an error, show its traceback")
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = functools.partial(sub.add_parser, parents=[common])

    p = add_parser("parity", help="convert every supported torch model and compare outputs with PyTorch")
    p.add_argument("--models", nargs="+", metavar="LABEL", help="check only these rows")
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.set_defaults(func=_parity)

    from flax_dsconv import BUILDERS, DEPTHWISE_IMPLEMENTATIONS

    s = add_parser("summary", help="per-layer parameters and mult-adds")
    s.add_argument(
        "--arch",
        type=_model_name,
        default="mobilenet_v1",
        metavar="NAME",
        help="a builder or timm name (flax_dsconv.list_models())",
    )
    s.add_argument("--width", type=_width, help="width multiplier α of a builder (default 1.0)")
    s.add_argument("--resolution", type=_positive, default=224, help="input height and width")
    s.add_argument("--num-classes", type=_count, default=1000)
    s.add_argument("--full-conv", action="store_true", help="MobileNetV1 with full 3x3 convs (paper, Table 4)")
    s.set_defaults(func=_summary)

    c = add_parser("convert", help="convert a .pth/.safetensors checkpoint or a hub-layout directory into a Flax "
                                   "directory")  # fmt: skip
    c.add_argument("src", help="checkpoint file (.pth, .pt, .bin, .safetensors; needs --arch and --source), or a "
                              "hub-layout directory (config.json + weights), local-dir:DIR or hf-hub:org/name")
    c.add_argument("--arch", help="dsconv | mobilenet_v1 (torch_ref), a timm name, or a torchvision builder")
    c.add_argument("--source", choices=["torch_ref", "timm", "torchvision"])
    c.add_argument(
        "--config", nargs="*", default=[], metavar="KEY=VALUE", help="torch constructor args, e.g. width_mult=0.75"
    )
    c.add_argument("--out", required=True, help="output directory; read it back with flax_dsconv.load(DIR)")
    c.set_defaults(func=_convert)

    pr = add_parser("predict", help="top classes of images, preprocessed as the checkpoint's pretrained_cfg says")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    pr.add_argument("--model", required=True, help="a hub-layout directory (local-dir:, hf-hub:) or a convert output")
    pr.add_argument("--top", type=_positive, default=5, help="how many classes per image (default 5)")
    pr.set_defaults(func=_predict)

    e = add_parser("export", help="export a model for deployment: a serialized StableHLO inference function")
    e.add_argument("src", help="a convert output or flax_dsconv.save directory, a hub-layout directory, or a "
                              "checkpoint file (with --arch and --source)")  # fmt: skip
    e.add_argument("--format", choices=["stablehlo"], default="stablehlo", help="the file's format")
    e.add_argument("--out", required=True, help="the file to write (replaced only once the export succeeded)")
    e.add_argument("--arch", help="for a checkpoint file: what convert's --arch takes")
    e.add_argument("--source", choices=["torch_ref", "timm", "torchvision"])
    e.add_argument("--input-size", type=_positive, nargs=2, metavar=("H", "W"),
                   help="image height and width (default: the checkpoint's pretrained_cfg, else 224 224)")
    e.add_argument("--platforms", nargs="+", help="backends to lower for, e.g. cpu cuda (default: this machine's)")
    e.set_defaults(func=_export)

    t = add_parser("train", help="train a MobileNet on scikit-learn's digits (resumes from --out)")
    t.add_argument("--out", default="runs/digits", help="checkpoints, history.json and curves.png go here")
    t.add_argument("--arch", choices=sorted(BUILDERS), default="mobilenet_v1")
    t.add_argument("--width", type=_width, default=0.5)
    t.add_argument("--epochs", type=_positive, default=30)
    t.add_argument("--limit", type=_positive, default=None, help="train on the first N images only (quick runs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=_train)

    b = add_parser("bench", help="time Flax (jit) against PyTorch eager (and torch.compile) in one process")
    b.add_argument("--models", nargs="*", type=_model_name, metavar="NAME",
                   help="models to time, by create_model name, each against its torch twin (torch_ref's or "
                        "torchvision's for the builders, timm's for the others; default: the four builders; none: "
                        "skip)")  # fmt: skip
    b.add_argument("--no-layers", dest="layers", action="store_false", default=None, help="skip the layer rows")
    b.add_argument("--compile", dest="torch_compile", action="store_true", default=None, help="add torch.compile")
    b.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: float32 on CPU, bfloat16 on GPU")
    b.add_argument(
        "--depthwise", choices=DEPTHWISE_IMPLEMENTATIONS, help="DepthwiseConv implementation (default: auto)"
    )
    b.add_argument("--train-batch", type=_positive, help="default: 16 on CPU, 256 on GPU")
    b.add_argument("--infer-batch", type=_positive, help="default: 16 on CPU, 1024 on GPU")
    b.add_argument("--resolution", type=_positive, help="image height and width (default 224)")
    b.add_argument("--layer-shape", type=_positive, nargs=4, metavar=("N", "H", "W", "C"), help="layer rows' input")
    b.add_argument("--repeats", type=_positive, help="timed calls per row after one warm-up (median reported)")
    b.add_argument("--peak-gbps", type=_width, help="memory bandwidth for the GB/s column (default: from device name)")
    b.add_argument("--json", action="store_true", help="print machine-readable results")
    b.set_defaults(func=_bench)

    args = parser.parse_args(argv)
    from flax_dsconv import ConversionError

    try:
        return args.func(args)
    except (ConversionError, OSError, TypeError, ValueError) as e:  # bad file, arch, config: a message, not a trace
        if args.debug:
            raise
        print(f"flax-dsconv {args.command}: {type(e).__name__}: {e} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
