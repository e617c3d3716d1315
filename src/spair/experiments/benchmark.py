"""How fast SPAIR trains and infers on this machine: ``spair benchmark``.

For every image size and lateral-connection mode ("wavefront", "raster": the same model one cell at
a time, "no-lateral": lookback L = 0) a fresh worker process builds the default model, feeds it a
batch of generated scenes and measures (``weights="pretrained"`` starts from the shipped model's
weights instead of a fresh initialization, i.e. boxes of digit size as during most of a training run,
where the renderer's windows are small; ``amp=True`` runs the forward passes under bf16 autocast)

- the training step (forward, backward, gradient clipping, Adam) and the inference pass (what
  detection runs: the encoder and the background, no rendering, ``sample="mean"``) in images/s;
- the training step split by component: backbone, lateral heads (box, depth and presence
  networks), glimpses, object encoder, object decoder, rendering, KL terms, the rest of the forward
  pass, backward, optimizer. The split comes from extra steps with timers hooked onto the modules
  and functions (forward hooks, wrapped functions), so it never slows the timed steps down;
- peak memory (the worker's maximum resident set size);
- the FLOP rate: the model's FLOPs per image counted from its layer shapes (convolutions and linear
  layers exactly; bilinear sampling as 4 multiply-adds per value, compositing per window pixel)
  times images/s, against the FLOP rate of a large fp32 matmul measured in the same setting.

Each case runs in its own process so that peak memory and allocator settings are per case. Times
are wall-clock by default; on a machine shared with other work, ``clock="cpu"`` (process CPU time)
with one thread is the steadier measure. ``--allocators`` instead compares malloc settings
(glibc tunables, tcmalloc, jemalloc) on the 48×48 training step.

Results go to ``DIR/benchmark.json``, ``DIR/benchmark.md`` (the Markdown table) and
``DIR/benchmark.png``; ``DIR/allocators.json`` / ``.md`` for the allocator study.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError, SpairError
from ..io import atomic_write, write_json_atomic, write_text_atomic

FORMAT = "spair-benchmark-1"
MODES = ("wavefront", "raster", "no-lateral")
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((48, 48), (64, 64), (84, 84), (128, 128), (256, 256), (210, 160))
QUICK_SIZES: tuple[tuple[int, int], ...] = ((48, 48),)
COMPONENTS = ("backbone", "lateral heads", "glimpses", "object encoder", "object decoder", "rendering", "KL",
              "other forward", "backward", "optimizer")

#: Malloc settings compared by ``--allocators``: name → environment for the worker. "glibc default"
#: clears GLIBC_TUNABLES; tcmalloc and jemalloc are used when their Debian libraries are installed.
GLIBC_VARIANTS: dict[str, str | None] = {
    "glibc default": None,
    "mmap_threshold=32M": "glibc.malloc.mmap_threshold=33554432",
    "mmap 32M + trim 4G": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296",
    "mmap 32M + trim 4G + top_pad 256M": ("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:"
                                          "glibc.malloc.top_pad=268435456"),
    "trim 4G + top_pad 256M": "glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456",
    "mmap 32M + trim 4G + top_pad 1G": ("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:"
                                        "glibc.malloc.top_pad=1073741824"),
}
PRELOAD_LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "apt-get install libtcmalloc-minimal4"),
    "jemalloc": ("libjemalloc.so.2", "apt-get install libjemalloc2"),
}
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


WEIGHTS = ("init", "pretrained")


@dataclass
class BenchmarkConfig:
    """What ``spair benchmark`` measures."""

    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    modes: tuple[str, ...] = MODES
    batch_size: int = 32
    threads: int = 0                 # torch threads in the workers; 0 = every core
    warmup: int = 3                  # untimed training steps before the timed ones (the first steps
                                     # fault in the allocator's pages and Adam's state: slower)
    steps: int = 3                   # timed training steps (the median is reported)
    split_steps: int = 1             # instrumented steps for the component split
    inference_batches: int = 3       # timed inference batches (median)
    clock: str = "wall"              # "wall" or "cpu": which time the tables and rates use
    seed: int = 0
    timeout: float = 1800.0          # seconds per worker
    matmul_seconds: float = 1.0      # how long the matmul FLOP rate is measured
    model_overrides: tuple[str, ...] = ()
    amp: bool = False                # bf16 autocast for the forward passes (as ``spair train amp=true``)
    weights: str = "init"            # "init": a fresh model; "pretrained": the shipped model's weights

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ConfigError(f"benchmark modes: expected some of {', '.join(MODES)}, got {', '.join(self.modes) or 'none'}")
        if self.weights not in WEIGHTS:
            raise ConfigError(f"benchmark weights: expected one of {', '.join(WEIGHTS)}, got '{self.weights}'")
        if self.clock not in ("wall", "cpu"):
            raise ConfigError(f"benchmark clock: expected 'wall' or 'cpu', got '{self.clock}'")
        if self.batch_size < 1 or self.steps < 1 or self.warmup < 0 or self.split_steps < 0 or self.inference_batches < 1:
            raise ConfigError("benchmark: batch size, steps and inference batches must be at least 1")
        for h, w in self.sizes:
            if h < 1 or w < 1:
                raise ConfigError(f"benchmark sizes: {h}x{w} is not a valid image size")


def quick_config(**kw: Any) -> BenchmarkConfig:
    """Seconds per case: 48×48 images, batch 4, one timed step (for tests and smoke runs)."""
    base = dict(sizes=QUICK_SIZES, batch_size=4, warmup=1, steps=1, split_steps=1, inference_batches=1,
                matmul_seconds=0.2)
    base.update(kw)
    return BenchmarkConfig(**base)


# =============================================================================================
# Counting FLOPs
# =============================================================================================


def model_flops(model: Any, image_hw: tuple[int, int]) -> dict[str, float]:
    """Forward FLOPs per image (2 per multiply-add) of ``model`` on an image of ``image_hw``, by part.

    Convolutions and linear layers are counted exactly from the shapes one forward pass sees (forward
    hooks on a batch of one); glimpses as bilinear sampling (4 multiply-adds per value plus 8 FLOPs
    per sample position for the weights); rendering per sprite and window pixel: 5 bilinear samples,
    the compositing products and the sums (about 60 FLOPs), over the window the configured bound on
    the box size gives; the count-prior KL as ~20 FLOPs per (cell, count) pair. Backward passes cost
    about twice the forward FLOPs (see :func:`training_flops`).
    """
    import torch
    from torch import nn

    from ..ops.render import render_window

    cfg = model.cfg
    H, W = image_hw
    counts: dict[str, float] = defaultdict(float)
    first_conv = {"flops": 0.0}
    names = {"backbone": model.backbone, "lateral heads": (model.box_net, model.depth_net, model.pres_net),
             "object encoder": model.obj_encoder, "object decoder": model.obj_decoder}
    owner: dict[nn.Module, str] = {}
    for part, mods in names.items():
        for mod in (mods if isinstance(mods, tuple) else (mods,)):
            for sub in mod.modules():
                owner[sub] = part

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        part = owner.get(mod, "other")
        if isinstance(mod, nn.Conv2d):
            f = 2.0 * output.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] / mod.groups
            if not first_conv["flops"]:
                first_conv["flops"] = f
        else:
            f = 2.0 * output.numel() * mod.in_features
        counts[part] += f

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.enable_grad():  # the training forward: every conv runs as its module (hooks see it)
            model(torch.zeros(1, 3, H, W, device=next(model.parameters()).device), 0.0, sample="mean")
    finally:
        for h in handles:
            h.remove()
    gh, gw = model.grid_shape(H, W)
    N = gh * gw
    oh, ow = cfg.object_shape
    counts["glimpses"] = N * (3 * oh * ow * 8.0 + oh * ow * 8.0)
    wh, ww = render_window((H, W), (oh, ow), (cfg.max_hw * cfg.anchor[0], cfg.max_hw * cfg.anchor[1]))
    counts["rendering"] = N * wh * ww * 60.0 + N * oh * ow * 10.0 + H * W * 3 * 6.0
    counts["KL"] = N * (N + 1) * 20.0 + N * (4 + cfg.A + 1) * 10.0
    counts["total"] = sum(v for k, v in counts.items() if k != "total")
    counts["first conv"] = first_conv["flops"]
    return dict(counts)


def training_flops(fwd: dict[str, float]) -> float:
    """FLOPs of one training step per image: forward + backward ≈ 3 × forward, less the first
    convolution's input gradient (the image needs none)."""
    return 3.0 * fwd["total"] - fwd.get("first conv", 0.0)


def measure_matmul_flops(threads: int = 0, n: int = 1024, seconds: float = 1.0, clock: str = "wall") -> float:
    """FLOP/s of an n×n fp32 matmul with ``threads`` torch threads (best of repeated timings), per
    second of wall-clock time or, with ``clock="cpu"``, of process CPU time."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    now = time.process_time if clock == "cpu" else time.perf_counter
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best, start = math.inf, time.perf_counter()
    while time.perf_counter() - start < seconds or best is math.inf:
        t = now()
        for _ in range(4):
            torch.mm(a, b, out=out)
        best = min(best, max(now() - t, 1e-9) / 4)
    return 2.0 * n ** 3 / best


# =============================================================================================
# One case, measured inside a worker process
# =============================================================================================


class _Clock:
    """Wall and CPU time accumulated per component name."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._open: dict[str, tuple[float, float]] = {}

    def start(self, name: str) -> None:
        self._open[name] = (time.perf_counter(), time.process_time())

    def stop(self, name: str) -> None:
        t, c = self._open.pop(name)
        self.wall[name] += time.perf_counter() - t
        self.cpu[name] += time.process_time() - c

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)


@contextlib.contextmanager
def instrumented(model: Any, clock: _Clock) -> Iterator[None]:
    """Time the model's parts into ``clock`` while the block runs: forward hooks on the networks,
    wrappers around the glimpse, render and KL functions. Everything is restored on exit."""
    from ..models import spair as spair_module

    handles = []
    groups = {"backbone": (model.backbone,), "lateral heads": (model.box_net, model.depth_net, model.pres_net),
              "object encoder": (model.obj_encoder,), "object decoder": (model.obj_decoder,)}
    for name, mods in groups.items():
        for mod in mods:
            handles.append(mod.register_forward_pre_hook(lambda m, i, name=name: clock.start(name)))
            handles.append(mod.register_forward_hook(lambda m, i, o, name=name: clock.stop(name)))

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a: Any, **kw: Any) -> Any:
            with clock.span(name):
                return fn(*a, **kw)
        return wrapper

    patched = {"extract_glimpses": "glimpses", "render_windowed": "rendering", "render": "rendering"}
    saved = {k: getattr(spair_module, k) for k in patched}
    for k, name in patched.items():
        setattr(spair_module, k, timed(name, saved[k]))
    model.kl_terms = timed("KL", model.kl_terms)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for k, fn in saved.items():
            setattr(spair_module, k, fn)
        del model.kl_terms


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports kB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024.0


def run_case(size: tuple[int, int], mode: str, cfg: BenchmarkConfig) -> dict[str, Any]:
    """Measure one (image size, mode) case in this process; see the module docstring."""
    import torch

    from ..config import apply_overrides
    from ..data.scenes import SceneConfig, generate_scenes
    from ..models.io import load_model
    from ..models.spair import Spair, SpairConfig

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rss_start = _rss_mb()
    overrides = list(cfg.model_overrides) + (["n_lookback=0"] if mode == "no-lateral" else [])
    pretrained = load_model() if cfg.weights == "pretrained" else None
    model_cfg = apply_overrides(pretrained.cfg if pretrained is not None else SpairConfig(), overrides)
    schedule = "raster" if mode == "raster" else "wavefront"
    torch.manual_seed(cfg.seed)
    model = Spair(model_cfg)
    loaded = copy_matching_weights(pretrained, model) if pretrained is not None else None
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cfg.amp else contextlib.nullcontext
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    H, W = size
    scenes = generate_scenes(SceneConfig(image_size=(H, W), n_objects=(1, 9)), cfg.batch_size, seed=cfg.seed)
    x = torch.from_numpy(scenes.images).permute(0, 3, 1, 2).float().div_(255.0)
    gen = torch.Generator()
    log_odds = math.log(0.0125)

    def train_step(step: int) -> None:
        gen.manual_seed(cfg.seed * 1000 + step)
        with autocast():
            out = model(x, log_odds, sample="relaxed", schedule=schedule, generator=gen)
            loss = out.losses.total.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    model.train()
    for i in range(cfg.warmup):
        train_step(i)
    wall, cpu = [], []
    for i in range(cfg.steps):
        t, c = time.perf_counter(), time.process_time()
        train_step(cfg.warmup + i)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)

    clock = _Clock()
    for i in range(cfg.split_steps):
        gen.manual_seed(cfg.seed * 1000 + 999 + i)
        with clock.span("step"):
            with clock.span("forward"), instrumented(model, clock), autocast():
                out = model(x, log_odds, sample="relaxed", schedule=schedule, generator=gen)
                loss = out.losses.total.mean()
            with clock.span("backward"):
                opt.zero_grad(set_to_none=True)
                loss.backward()
            with clock.span("optimizer"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
        del out, loss
    split: dict[str, dict[str, float]] = {}
    if cfg.split_steps:
        n = cfg.split_steps
        for which, table in (("wall", clock.wall), ("cpu", clock.cpu)):
            parts = {k: table[k] / n for k in COMPONENTS if k in table}
            known = sum(v for k, v in parts.items() if k not in ("backward", "optimizer"))
            parts["other forward"] = max(table["forward"] / n - known, 0.0)
            parts["step"] = table["step"] / n
            split[which] = {k: parts.get(k, 0.0) for k in (*COMPONENTS, "step")}

    model.eval()
    inf_wall, inf_cpu = [], []
    with torch.inference_mode(), autocast():
        model(x, sample="mean", schedule=schedule, render_image=False)
        for _ in range(cfg.inference_batches):
            t, c = time.perf_counter(), time.process_time()
            model(x, sample="mean", schedule=schedule, render_image=False)
            inf_wall.append(time.perf_counter() - t)
            inf_cpu.append(time.process_time() - c)
    fwd = model_flops(model, (H, W))
    gh, gw = model.grid_shape(H, W)
    return {
        "size": [H, W], "mode": mode, "batch_size": cfg.batch_size, "grid": [gh, gw],
        "sequential_steps": len(model_sequential_steps(gh, gw, model_cfg.n_lookback, schedule)),
        "train_step_s": {"wall": _median(wall), "cpu": _median(cpu), "wall_all": wall, "cpu_all": cpu},
        "inference_batch_s": {"wall": _median(inf_wall), "cpu": _median(inf_cpu)},
        "split_s": split,
        "flops_per_image": {"forward": fwd, "training": training_flops(fwd)},
        "peak_rss_mb": _rss_mb(), "rss_before_mb": rss_start,
        "threads": torch.get_num_threads(), "amp": cfg.amp, "weights": cfg.weights,
        "pretrained_tensors_loaded": loaded,
    }


def copy_matching_weights(source: Any, target: Any) -> list[int]:
    """Copy every parameter and buffer of ``source`` into ``target`` whose name and shape match (all of
    them for the same architecture; the lateral heads' first layers differ when ``target`` has another
    lookback). Returns [tensors copied, tensors in ``target``]."""
    dst = target.state_dict()
    same = {k: v for k, v in source.state_dict().items() if k in dst and dst[k].shape == v.shape}
    target.load_state_dict(same, strict=False)
    return [len(same), len(dst)]


def model_sequential_steps(gh: int, gw: int, lookback: int, schedule: str) -> tuple[Any, ...]:
    from ..models.spair import make_schedule

    return make_schedule(gh, gw, lookback, schedule).groups


def _worker_main(argv: list[str]) -> int:
    """``python -m spair.experiments.benchmark --worker JSON``: run one job, print its JSON result."""
    job = json.loads(argv[argv.index("--worker") + 1])
    cfg = BenchmarkConfig(**{k: (tuple(tuple(s) for s in v) if k == "sizes" else tuple(v) if isinstance(v, list) else v)
                             for k, v in job["config"].items()})
    if job["kind"] == "matmul":
        result: dict[str, Any] = {"matmul_flops": measure_matmul_flops(cfg.threads, seconds=cfg.matmul_seconds,
                                                                       clock=cfg.clock)}
    else:
        result = run_case(tuple(job["size"]), job["mode"], cfg)
    print("SPAIR-BENCHMARK-RESULT " + json.dumps(result), flush=True)
    return 0


# =============================================================================================
# The driver
# =============================================================================================


def _run_worker(job: dict[str, Any], cfg: BenchmarkConfig, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one job in a fresh interpreter; returns its result or {"error": message}."""
    src = str(Path(__file__).resolve().parents[2])
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = src + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    child_env.setdefault("SPAIR_NO_REEXEC", "1")
    payload = json.dumps({**job, "config": asdict(cfg)})
    try:
        proc = subprocess.run([sys.executable, "-m", "spair.experiments.benchmark", "--worker", payload],
                              capture_output=True, text=True, timeout=cfg.timeout, env=child_env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {cfg.timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("SPAIR-BENCHMARK-RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    code = proc.returncode
    reason = f"killed by signal {-code} (out of memory?)" if code < 0 else f"exit code {code}"
    return {"error": f"worker failed ({reason}): {tail}"}


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "ld_preload": os.environ.get("LD_PRELOAD"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def run_benchmark(cfg: BenchmarkConfig, out_dir: str | os.PathLike | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every case (one worker process each); write ``benchmark.json``, ``.md`` and ``.png`` into
    ``out_dir`` (after each case, so an interrupted run keeps what it measured). Returns the results."""
    out = Path(out_dir) if out_dir is not None else None
    results: dict[str, Any] = {"format": FORMAT, "config": asdict(cfg), "machine": machine_info(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": []}
    mm = _run_worker({"kind": "matmul"}, cfg)
    if "error" in mm:
        raise SpairError(f"benchmark: measuring the matmul FLOP rate failed: {mm['error']}")
    results["matmul_flops"] = mm["matmul_flops"]
    log(f"fp32 matmul: {mm['matmul_flops'] / 1e9:.1f} GFLOP/s ({cfg.threads or os.cpu_count()} threads)")
    for size in cfg.sizes:
        for mode in cfg.modes:
            t0 = time.perf_counter()
            r = _run_worker({"kind": "case", "size": list(size), "mode": mode}, cfg)
            r.setdefault("size", list(size))
            r.setdefault("mode", mode)
            results["cases"].append(r)
            if "error" in r:
                log(f"{size[0]}x{size[1]} {mode}: {r['error']}")
            else:
                log(f"{size[0]}x{size[1]} {mode}: train {throughput(r, 'train', cfg.clock):.1f} img/s, "
                    f"inference {throughput(r, 'inference', cfg.clock):.1f} img/s, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB ({time.perf_counter() - t0:.0f} s)")
            results["targets"] = evaluate_targets(results)
            if out is not None:
                write_results(results, out)
    results["targets"] = evaluate_targets(results)
    if out is not None:
        write_results(results, out, plot=True)
    return results


# =============================================================================================
# Reading the results
# =============================================================================================


def throughput(case: dict[str, Any], what: str, clock: str = "wall") -> float:
    """Images per second of a case: ``what`` = "train" or "inference"."""
    key = "train_step_s" if what == "train" else "inference_batch_s"
    return case["batch_size"] / case[key][clock]


def flop_rate(case: dict[str, Any], clock: str = "wall") -> float:
    return case["flops_per_image"]["training"] * throughput(case, "train", clock)


def _find(results: dict[str, Any], size: tuple[int, int], mode: str) -> dict[str, Any] | None:
    for c in results["cases"]:
        if tuple(c["size"]) == tuple(size) and c["mode"] == mode and "error" not in c:
            return c
    return None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets, each with its measured value (None when its cases were not run)."""
    clock = results["config"]["clock"]
    out = []

    def add(name: str, value: float | None, goal: float, unit: str, higher: bool = True) -> None:
        ok = None if value is None else (value >= goal if higher else value <= goal)
        out.append({"target": name, "value": value, "goal": goal, "unit": unit, "higher_is_better": higher, "met": ok})

    small, big = _find(results, (64, 64), "wavefront"), _find(results, (256, 256), "wavefront")
    add("training step time 256x256 / 64x64 (wavefront; 16 = linear in area)",
        big["train_step_s"][clock] / small["train_step_s"][clock] if small and big else None, 20.0, "x", higher=False)
    c48 = _find(results, (48, 48), "wavefront")
    add("training throughput at 48x48 (wavefront)", throughput(c48, "train", clock) if c48 else None, 300.0, "img/s")
    add("inference throughput at 48x48 (wavefront)", throughput(c48, "inference", clock) if c48 else None, 1000.0, "img/s")
    raster = _find(results, (256, 256), "raster")
    add("wavefront speed-up over raster at 256x256 (training step)",
        raster["train_step_s"][clock] / big["train_step_s"][clock] if raster and big else None, 2.0, "x")
    add("training FLOP rate / fp32 matmul FLOP rate at 48x48 (wavefront)",
        flop_rate(c48, clock) / results["matmul_flops"] if c48 else None, 0.25, "")
    return out


def markdown_table(results: dict[str, Any]) -> str:
    """The results as Markdown: one row per case, the component split, and the targets."""
    cfg = results["config"]
    clock = cfg["clock"]
    m = results["machine"]
    weights = "the shipped model's weights" if cfg.get("weights") == "pretrained" else "freshly initialized weights"
    lines = [f"SPAIR benchmark: batch {cfg['batch_size']}, {cfg['threads'] or m['cores']} threads, "
             f"{m['cpu']} ({m['cores']} cores), torch {m['torch']}, {clock} clock; "
             f"{'bf16 autocast' if cfg.get('amp') else 'fp32'}; "
             f"{weights}; median of {cfg['steps']} timed steps after {cfg.get('warmup', 1)} untimed; "
             f"fp32 matmul {results['matmul_flops'] / 1e9:.1f} GFLOP/s.", "",
             "| image | mode | steps/pass | train img/s | infer img/s | step ms | GFLOP/img (train) | GFLOP/s | % of matmul | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in results["cases"]:
        name = f"{c['size'][0]}×{c['size'][1]}"
        if "error" in c:
            lines.append(f"| {name} | {c['mode']} | | | | | | | | {c['error']} |")
            continue
        rate = flop_rate(c, clock)
        lines.append(f"| {name} | {c['mode']} | {c['sequential_steps']} | {throughput(c, 'train', clock):.1f} | "
                     f"{throughput(c, 'inference', clock):.1f} | {1000 * c['train_step_s'][clock]:.1f} | "
                     f"{c['flops_per_image']['training'] / 1e9:.2f} | {rate / 1e9:.1f} | "
                     f"{100 * rate / results['matmul_flops']:.0f}% | {c['peak_rss_mb']:.0f} |")
    split_cases = [c for c in results["cases"] if "error" not in c and c.get("split_s")]
    if split_cases:
        lines += ["", f"Training step split (ms, {clock} clock, instrumented steps):", "",
                  "| image | mode | " + " | ".join(COMPONENTS) + " | step |",
                  "|---|---|" + "---:|" * (len(COMPONENTS) + 1)]
        for c in split_cases:
            s = c["split_s"][clock]
            lines.append(f"| {c['size'][0]}×{c['size'][1]} | {c['mode']} | "
                         + " | ".join(f"{1000 * s[k]:.1f}" for k in (*COMPONENTS, "step")) + " |")
    targets = results.get("targets") or []
    if targets:
        lines += ["", "| target | goal | measured | met |", "|---|---:|---:|---|"]
        for t in targets:
            goal = f"{'≥' if t['higher_is_better'] else '≤'} {t['goal']:g}{(' ' + t['unit']) if t['unit'] else ''}"
            val = "not run" if t["value"] is None else f"{t['value']:.3g}{(' ' + t['unit']) if t['unit'] else ''}"
            met = "" if t["met"] is None else ("yes" if t["met"] else "no")
            lines.append(f"| {t['target']} | {goal} | {val} | {met} |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Step time against image area per mode (log-log, with a linear-in-area guide) and the
    component split of the wavefront step per size; written atomically as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clock = results["config"]["clock"]
    ok = [c for c in results["cases"] if "error" not in c]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode in MODES:
        pts = sorted((c["size"][0] * c["size"][1], 1000 * c["train_step_s"][clock]) for c in ok if c["mode"] == mode)
        if pts:
            ax1.plot(*zip(*pts), "o-", label=mode)
    wf = sorted((c["size"][0] * c["size"][1], 1000 * c["train_step_s"][clock]) for c in ok if c["mode"] == "wavefront")
    if wf:
        a0, t0 = wf[0]
        areas = [a for a, _ in wf]
        ax1.plot(areas, [t0 * a / a0 for a in areas], "k:", label="linear in area")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("image area (pixels)")
    ax1.set_ylabel(f"training step ({clock} ms, batch {results['config']['batch_size']})")
    ax1.legend()
    ax1.grid(True, which="both", alpha=0.3)
    split = [c for c in ok if c["mode"] == "wavefront" and c.get("split_s")]
    if split:
        labels = [f"{c['size'][0]}×{c['size'][1]}" for c in split]
        bottom = [0.0] * len(split)
        for k in COMPONENTS:
            share = [c["split_s"][clock][k] / max(c["split_s"][clock]["step"], 1e-12) for c in split]
            ax2.bar(labels, share, bottom=bottom, label=k)
            bottom = [b + s for b, s in zip(bottom, share)]
        ax2.set_ylabel("share of the training step (wavefront)")
        ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def write_results(results: dict[str, Any], out_dir: Path, plot: bool = False) -> None:
    write_json_atomic(out_dir / "benchmark.json", results)
    write_text_atomic(out_dir / "benchmark.md", markdown_table(results))
    if plot and any("error" not in c for c in results["cases"]):
        plot_results(results, out_dir / "benchmark.png")


# =============================================================================================
# Allocators
# =============================================================================================


def find_library(name: str) -> str | None:
    for d in LIBRARY_DIRS:
        p = Path(d) / name
        if p.exists():
            return str(p)
    return None


def allocator_variants() -> dict[str, dict[str, str | None]]:
    """name → {"GLIBC_TUNABLES": ..., "LD_PRELOAD": ...} for every setting available here."""
    out: dict[str, dict[str, str | None]] = {k: {"GLIBC_TUNABLES": v, "LD_PRELOAD": None}
                                             for k, v in GLIBC_VARIANTS.items()}
    for name, (lib, _) in PRELOAD_LIBRARIES.items():
        path = find_library(lib)
        if path:
            out[name] = {"GLIBC_TUNABLES": None, "LD_PRELOAD": path}
    return out


def run_allocators(cfg: BenchmarkConfig, batch_sizes: tuple[int, ...] = (32, 64),
                   size: tuple[int, int] = (48, 48), out_dir: str | os.PathLike | None = None,
                   log: Callable[[str], None] = print, variants: dict[str, dict[str, str | None]] | None = None,
                   rounds: int = 2) -> dict[str, Any]:
    """Training step time of the wavefront model under each malloc setting and batch size.

    The settings are interleaved over ``rounds`` rounds and the fastest round of each is kept, so
    slow phases of a busy machine hit every setting alike."""
    variants = variants or allocator_variants()
    cfg_split = BenchmarkConfig(**{**asdict(cfg), "split_steps": 0, "sizes": (size,), "modes": ("wavefront",)})
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for rnd in range(rounds):
        for bs in batch_sizes:
            for name, env_vars in variants.items():
                env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
                env.update({k: v for k, v in env_vars.items() if v})
                c = BenchmarkConfig(**{**asdict(cfg_split), "batch_size": bs})
                r = _run_worker({"kind": "case", "size": list(size), "mode": "wavefront"}, c, env)
                key = (name, bs)
                prev = rows.get(key)
                if "error" in r:
                    rows.setdefault(key, {"setting": name, "batch_size": bs, **env_vars, "error": r["error"]})
                    log(f"round {rnd + 1} batch {bs} {name}: {r['error']}")
                    continue
                step = r["train_step_s"][cfg.clock]
                if prev is None or "error" in prev or step < prev["step_s"]:
                    rows[key] = {"setting": name, "batch_size": bs, **env_vars, "step_s": step,
                                 "step_wall_s": r["train_step_s"]["wall"], "step_cpu_s": r["train_step_s"]["cpu"],
                                 "peak_rss_mb": r["peak_rss_mb"]}
                log(f"round {rnd + 1} batch {bs} {name}: {1000 * step:.1f} ms/step ({cfg.clock})")
    results = {"format": FORMAT, "kind": "allocators", "config": asdict(cfg), "machine": machine_info(),
               "size": list(size), "rows": list(rows.values())}
    for bs in batch_sizes:
        base = rows.get(("glibc default", bs))
        for r in results["rows"]:
            if r["batch_size"] == bs and base and "error" not in base and "error" not in r:
                r["speedup_vs_default"] = base["step_s"] / r["step_s"]
    if out_dir is not None:
        out = Path(out_dir)
        write_json_atomic(out / "allocators.json", results)
        write_text_atomic(out / "allocators.md", allocator_table(results))
    return results


def allocator_table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [f"Training step at {results['size'][0]}×{results['size'][1]} (wavefront), {cfg['clock']} clock, "
             f"{cfg['threads'] or results['machine']['cores']} threads:", "",
             "| allocator setting | batch | ms/step | vs glibc default | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['setting']} | {r['batch_size']} | {r['error']} | | |")
            continue
        sp = r.get("speedup_vs_default")
        lines.append(f"| {r['setting']} | {r['batch_size']} | {1000 * r['step_s']:.1f} | "
                     f"{'' if sp is None else f'{sp:.2f}×'} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # the worker entry point
    sys.exit(_worker_main(sys.argv[1:]))
