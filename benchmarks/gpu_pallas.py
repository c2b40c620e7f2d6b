"""The Pallas depthwise kernels on one GPU: correctness against XLA's conv, a tile sweep, layer timings, and the
MobileNetV2 train step with a kernel-time profile.

    python benchmarks/gpu_pallas.py [--sections check layers model profile] [--out DIR]

check: fp32 forward / input gradient / kernel gradient of the Pallas kernels against XLA's grouped conv at
  HIGHEST precision, on odd geometries and MobileNet layer shapes (max |Δ| and ‖Δ‖/‖ref‖).
layers: bf16, N256·56²·C144 (the bench's GPU layer) and N256·112²·C96 stride 2: each kernel's median time over
  several tile shapes, the achieved GB/s (input + output + weights, once each), and the full gradient of each
  implementation.
model: MobileNetV2 bf16 train step (batch 256) and inference (batch 1024), first call and median, per
  depthwise implementation.
profile: with model, the GPU kernel time of each train step by kernel name, from a JAX profiler trace.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import statistics
import sys
import time
import traceback
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

from flax_dsconv.ops import pallas as pdw
from flax_dsconv.tools.bench import peak_gbps


def log(*args) -> None:
    print(*args, flush=True)


def timed(fn, *args, repeats: int = 20) -> tuple[float, float]:
    """(median seconds per call, first call seconds); each call synchronised, as flax-dsconv bench does."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), first


def xla_conv(x, k, s, pads, d, precision=None):
    return jax.lax.conv_general_dilated(
        x,
        k,
        (s, s),
        pads,
        rhs_dilation=(d, d),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
        precision=precision,
    )


def geometry(n, h, w, c, k, s, d, pads):
    (t, b), (left, r) = pads
    return (k, s, d, t, b), (k, s, d, left, r)


CHECKS = [  # N, H, W, C, k, s, d, pads
    (2, 9, 11, 16, 3, 1, 1, ((1, 1), (1, 1))),
    (2, 9, 11, 16, 3, 2, 1, ((1, 1), (1, 1))),
    (1, 10, 7, 24, 5, 2, 1, ((2, 2), (2, 2))),
    (1, 8, 8, 20, 3, 1, 2, ((2, 2), (2, 2))),
    (1, 7, 9, 8, 3, 2, 1, ((0, 1), (1, 0))),
    (1, 6, 6, 8, 3, 1, 1, ((5, 0), (0, 6))),
    (3, 9, 9, 72, 3, 3, 1, ((1, 1), (1, 1))),
    (4, 112, 112, 32, 3, 1, 1, ((1, 1), (1, 1))),
    (4, 112, 112, 96, 3, 2, 1, ((1, 1), (1, 1))),
    (8, 56, 56, 144, 3, 1, 1, ((1, 1), (1, 1))),
    (8, 14, 14, 672, 5, 2, 1, ((2, 2), (2, 2))),
    (8, 7, 7, 960, 3, 1, 1, ((1, 1), (1, 1))),
    (4, 28, 28, 120, 5, 1, 1, ((2, 2), (2, 2))),
]


def check(report: dict) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for case in CHECKS:
        n, h, w, c, k, s, d, pads = case
        rg, cg = geometry(*case)
        x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
        kern = jnp.asarray(rng.standard_normal((k, k, 1, c)), jnp.float32)
        ref = jax.jit(lambda x, kern, s=s, pads=pads, d=d: xla_conv(x, kern, s, pads, d, "highest"))
        y_ref, vjp_ref = jax.vjp(ref, x, kern)
        got = jax.jit(lambda x, kern, rg=rg, cg=cg: pdw.depthwise(x, kern, rg, cg))
        y, vjp = jax.vjp(got, x, kern)
        g = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
        entry = {"case": str(case)}
        for name, a, b in (("fwd", y, y_ref), ("dx", vjp(g)[0], vjp_ref(g)[0]), ("dk", vjp(g)[1], vjp_ref(g)[1])):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            entry[name] = (float(np.abs(a - b).max()), float(np.linalg.norm(a - b) / np.linalg.norm(b)))
        # fp32 at 1e-5, as the CPU tests: absolute for the output and input gradient, relative to the largest
        # value for the kernel gradient (a sum over every output pixel).
        dk_scale = max(1.0, float(np.abs(np.asarray(vjp_ref(g)[1])).max()))
        ok = entry["fwd"][0] <= 1e-5 and entry["dx"][0] <= 1e-5 and entry["dk"][0] <= 1e-5 * dk_scale
        ok = ok and y.shape == y_ref.shape
        entry["ok"] = bool(ok)
        rows.append(entry)
        errors = "  ".join(f"{key} max {entry[key][0]:.1e} rel {entry[key][1]:.1e}" for key in ("fwd", "dx", "dk"))
        log(f"check {case}: {'ok' if ok else 'FAIL'}  {errors}")
    from flax_dsconv import DepthwiseConv

    x = jnp.asarray(rng.standard_normal((4, 29, 30, 40)), jnp.float32)
    for kernel, stride, padding in ((3, 1, "torch"), (3, 2, "SAME"), ((3, 5), (2, 1), "VALID")):
        convs = {impl: DepthwiseConv(kernel, stride, padding, implementation=impl) for impl in ("xla", "pallas")}
        variables = convs["xla"].init(jax.random.key(0), x)
        out = {}
        for impl, conv in convs.items():

            def loss(v, x, conv=conv):
                return jnp.sum(jnp.sin(conv.apply(v, x)))

            with jax.default_matmul_precision("highest"):
                out[impl] = jax.tree.leaves(jax.jit(jax.value_and_grad(loss, (0, 1)))(variables, x))
        # The loss sums ~100k outputs: each leaf's max |Δ| relative to its largest value (at least 1).
        err = max(
            float(jnp.abs(a - b).max() / max(1.0, float(jnp.abs(b).max())))
            for a, b in zip(out["pallas"], out["xla"], strict=True)
        )
        ok = err <= 1e-5
        rows.append({"case": f"DepthwiseConv {kernel} {stride} {padding}", "scaled_max_abs": err, "ok": ok})
        log(f"check DepthwiseConv({kernel}, {stride}, {padding!r}): {'ok' if ok else 'FAIL'}  pallas vs xla {err:.1e}")
    report["check"] = rows


def layers(report: dict, peak: float | None) -> None:
    rng = np.random.default_rng(1)
    out = report.setdefault("layers", [])
    for n, h, w, c, s, sweep in LAYERS:
        layer(rng, out, peak, n, h, w, c, s, sweep)


# N, H, W, C, stride, whether to sweep tiles and time the gradients (else the forward defaults only)
LAYERS = [(256, 56, 56, 144, 1, True), (256, 112, 112, 96, 2, True), (256, 56, 56, 144, 2, False)]
LAYERS += [(256, 14, 14, 576, 1, False), (256, 112, 112, 32, 1, False)]


def layer(rng, out: list, peak: float | None, n: int, h: int, w: int, c: int, s: int, sweep: bool = True) -> None:
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.bfloat16)
    kern = jnp.asarray(rng.standard_normal((3, 3, 1, c)) * 0.3, jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    ho, wo = (h + 2 - 3) // s + 1, (w + 2 - 3) // s + 1
    nbytes = 2 * (x.size + n * ho * wo * c + kern.size)
    tag = f"N{n}·{h}²·C{c} s{s}"

    def row(name, seconds, first, nbytes=nbytes):
        gbps = nbytes / seconds / 1e9 if nbytes else None
        frac = f"  {gbps:7.0f} GB/s ({100 * gbps / peak:4.1f}%)" if gbps and peak else ""
        log(f"{tag} {name:<46} {1e3 * seconds:8.3f} ms  first {first:6.2f} s{frac}")
        out.append({"layer": tag, "name": name, "ms": 1e3 * seconds, "first_s": first, "gbps": gbps})

    def attempt(name, fn, *args, nbytes=nbytes):
        try:
            row(name, *timed(fn, *args), nbytes=nbytes)
        except Exception as e:  # e.g. a tile shape Triton rejects: report it and go on
            log(f"{tag} {name} failed: {type(e).__name__}: {str(e)[:400]}")

    attempt("xla fwd", jax.jit(lambda x, k: xla_conv(x, k, s, pads, 1)), x, kern)
    try:  # PyTorch's depthwise forward on the same input, channels_last bf16, for the ratio
        import torch

        tx = torch.from_numpy(np.asarray(x, np.float32)).permute(0, 3, 1, 2).cuda().to(torch.bfloat16)
        tx = tx.contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False).cuda().to(torch.bfloat16)
        conv = conv.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True

        def torch_fwd():
            with torch.no_grad():
                y = conv(tx)
            torch.cuda.synchronize()
            return y

        row("torch eager fwd", *timed(torch_fwd))
    except Exception as e:
        log(f"{tag} torch failed: {type(e).__name__}: {str(e)[:200]}")
    taps = kern.reshape(9, c)
    spec = (3, s, 1, 1, 1)
    fwd_geom, dx_geom = pdw.forward_geometry(spec), pdw.input_grad_geometry(spec)
    unit = s == 1  # unit stride runs the flattened-row kernels (RowTiles), others the channel blocks (Tiles)
    sweeps = SWEEPS["row" if unit else "block"] if sweep else {"fwd": [], "dx": [], "dk": []}
    make, make_dk = (pdw.RowTiles, pdw.RowGradTiles) if unit else (pdw.BlockTiles, pdw.BlockTiles)
    for tiles in (None, *(make(*t) for t in sweeps["fwd"])):
        fwd = jax.jit(lambda x, t, tiles=tiles: pdw.gather_correlate(x, t, (ho, wo), fwd_geom, fwd_geom, tiles))
        attempt(f"pallas fwd {tiles and tuple(tiles)}", fwd, x, taps)
    g = jnp.asarray(rng.standard_normal((n, ho, wo, c)), jnp.bfloat16)
    if not sweep:
        return
    for tiles in (None, *(make(*t) for t in sweeps["dx"])):
        dx = jax.jit(lambda g, t, tiles=tiles: pdw.gather_correlate(g, t, (h, w), dx_geom, dx_geom, tiles))
        attempt(f"pallas dx {tiles and tuple(tiles)}", dx, g, taps)
    for tiles in (None, *(make_dk(*t) for t in sweeps["dk"])):
        dk = jax.jit(lambda x, g, tiles=tiles: pdw.kernel_grad(x, g, fwd_geom, fwd_geom, tiles))
        attempt(f"pallas dk {tiles and tuple(tiles)}", dk, x, g)
    import flax_dsconv

    for impl in ("xla", "pallas"):
        mod = flax_dsconv.DepthwiseConv(3, strides=s, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, implementation=impl)
        variables = {"params": {"kernel": kern}}

        def loss(x, v, mod=mod):
            return jnp.sum(mod.apply(v, x).astype(jnp.float32) * g)

        attempt(f"module {impl} fwd", jax.jit(mod.apply), variables, x)
        attempt(f"module {impl} grad (dx, dk)", jax.jit(jax.grad(loss, (0, 1))), x, variables, nbytes=0)


# Tile shapes tried besides the defaults. Row tiles: (rows, row elements, warps); row kernel-gradient tiles:
# (row elements, images per program, warps); channel-block tiles: (rows, columns, channels, warps).
SWEEPS = {
    "row": {
        "fwd": [(2, 1024, 4), (8, 512, 4), (4, 512, 4), (1, 2048, 8), (8, 1024, 8), (16, 256, 4)],
        "dx": [(8, 512, 4), (1, 2048, 8)],
        "dk": [(512, 2, 4), (512, 4, 4), (1024, 4, 4), (256, 2, 4), (1024, 4, 8)],
    },
    "block": {
        "fwd": [(8, 16, 64, 4), (4, 16, 32, 4), (16, 8, 32, 4), (8, 8, 64, 4), (16, 16, 16, 4)],
        "dx": [(8, 16, 64, 4)],
        "dk": [(1, 16, 64, 4), (2, 8, 32, 4), (1, 16, 16, 4)],
    },
}


def v2_state(depthwise: str, batch: int):
    import torchvision

    from flax_dsconv import from_torch, optim, train

    module, variables = from_torch(torchvision.models.mobilenet_v2())
    module = module.clone(dtype=jnp.bfloat16, depthwise=depthwise)
    # The train step donates its state: the inference workload keeps its own copy of the variables.
    state = train.create_train_state(module, jax.tree.map(jnp.copy, variables), optim.sgd(0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 224, 224, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 1000, batch))
    return module, variables, state, x, y, train.jit_train_step()


def model(report: dict, impls: list[str], batch: int, infer_batch: int, profile_dir: pathlib.Path | None) -> None:
    out = report.setdefault("model", [])
    for impl in impls:
        module, variables, state, x, y, step = v2_state(impl, batch)
        key = jax.random.key(0)
        holder = [state]

        def run(holder=holder, step=step, x=x, y=y, key=key):
            holder[0], metrics = step(holder[0], x, y, key)
            return metrics["loss"]

        try:
            median, first = timed(run)
        except Exception:
            log(f"V2 train {impl} failed:\n{traceback.format_exc()[-3000:]}")
            continue
        rate = batch / median
        log(f"V2 train b{batch} {impl:<8} {1e3 * median:8.2f} ms  {rate:8.0f} img/s  first call {first:6.1f} s")
        out.append({"workload": "train", "impl": impl, "ms": 1e3 * median, "first_s": first})
        xi = jnp.asarray(np.random.default_rng(1).standard_normal((infer_batch, 224, 224, 3), dtype=np.float32))
        median_i, first_i = timed(jax.jit(module.apply), variables, xi)
        rate = infer_batch / median_i
        log(f"V2 infer b{infer_batch} {impl:<8} {1e3 * median_i:8.2f} ms  {rate:8.0f} img/s  first {first_i:6.1f} s")
        out.append({"workload": "inference", "impl": impl, "ms": 1e3 * median_i, "first_s": first_i})
        if profile_dir is not None:
            profile(run, profile_dir / impl, report, impl)


def profile(run, directory: pathlib.Path, report: dict, impl: str, steps: int = 5) -> None:
    try:
        with jax.profiler.trace(str(directory), create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(run())
        trace = next(directory.rglob("perfetto_trace.json.gz"))
        events = json.loads(gzip.decompress(trace.read_bytes()))
        events = events["traceEvents"] if isinstance(events, dict) else events
        names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
        gpu = {pid for pid, name in names.items() if "GPU" in name or "gpu" in name or "device" in name.lower()}
        totals: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for e in events:
            if e.get("ph") == "X" and e.get("pid") in gpu and "dur" in e:
                totals[e["name"]] += e["dur"] / steps
                counts[e["name"]] += 1
        total = sum(totals.values())
        log(f"profile {impl}: {total / 1e3:.2f} ms of GPU events per step; processes {sorted(set(names.values()))[:8]}")
        top = sorted(totals.items(), key=lambda kv: -kv[1])[:40]
        for name, us in top:
            log(f"  {us / 1e3:7.3f} ms  {counts[name] // steps:4d}x  {name[:110]}")
        report.setdefault("profile", {})[impl] = {"total_ms": total / 1e3, "top": [(n, us) for n, us in top]}
    except Exception:
        log(f"profile {impl} failed:\n{traceback.format_exc()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sections", nargs="*", default=["check", "layers", "model", "profile"])
    parser.add_argument("--impls", nargs="*", default=["pallas", "xla"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--infer-batch", type=int, default=1024)
    parser.add_argument("--out", default="gpu_pallas_out")
    parser.add_argument("--trace", default="/tmp/gpu_pallas_trace")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = jax.devices()[0]
    peak = peak_gbps(device.device_kind)
    log(f"jax {jax.__version__}, {device.device_kind}, peak {peak} GB/s")
    report: dict = {"device": device.device_kind, "jax": jax.__version__}
    trace = pathlib.Path(args.trace) if "profile" in args.sections else None
    sections = {
        "check": lambda: check(report),
        "layers": lambda: layers(report, peak),
        "model": lambda: model(report, args.impls, args.batch, args.infer_batch, trace),
    }
    unknown = set(args.sections) - {*sections, "profile"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from check, layers, model, profile")
    for name in args.sections:
        if name not in sections:  # 'profile' runs inside 'model'
            continue
        start = time.perf_counter()
        try:
            sections[name]()
        except Exception:
            log(f"section {name} failed:\n{traceback.format_exc()[-3000:]}")
        log(f"== {name}: {time.perf_counter() - start:.1f} s")
        (out / "report.json").write_text(json.dumps(report, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
