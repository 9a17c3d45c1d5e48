"""Which kernels run where: the one place that turns what the machine has into a plan per device and mode.

A plan names the kernel families a model is prepared with:
- `pack`: linear layers pre-packed for oneDNN (x86 only) and the time-major feature extractor;
- `int8`: the audio encoder's and the AR blocks' big linear layers in int8 (fast mode only):
  "onednn" (u8 x s8 with VNNI: full 8-bit activations, per-token or per-tensor scales) or
  "fbgemm" (torch's dynamic quantised linear; on CPUs without VNNI its AVX2 kernel adds pairs of u8 x s8 products
  in 16 bits, which can saturate, so activations get 7 bits there);
- `dtype`: the dtype of the low-precision parts in fast mode (bf16 only where the CPU computes it natively,
  fp16 on GPUs, else fp32);
- `attention`: "bmm" (fast mode's batched-GEMM attention on CPU) or "sdpa" (torch's fused kernel);
- `pos_conv`: the audio encoder's positional convolution, "conv" (torch's) or "fft" (fast mode on CPU,
  fast/posconv.py);
- `gelu_post_op`: the encoder's packed fp32 feed-forward GEMMs apply the GELU themselves (AVX-512 only: there
  it is faster, on AVX2 slower; the same values either way);
- `fuse_qkv`: the query/key/value projections of the encoder and the AR blocks as one stacked GEMM (fast/fused.py;
  packed fp32 or fbgemm int8; the same values), on the AVX2 plans where it was measured faster.

CPU plans, best first: "avx512" (AVX-512: int8 by VNNI where present, bf16 where native), "avx2-vnni" (AVX2 with
AVX-VNNI: oneDNN int8), "avx2" (any AVX2 CPU: fbgemm int8, fp32 for the rest), "generic" (no x86-only kernel:
what an ARM64 CPU gets; plain fp32, bf16/fp16 in fast mode only where torch reports native support).
GPUs: "cuda" and "mps" (torch's own kernels; fp16 in fast mode).

`FLAMETALK_CPU_PLAN=generic|avx2|avx2-vnni|avx512` forces a CPU plan; a plan this CPU cannot run is refused with
one warning line and the best one it can run is used. `FLAMETALK_INT8=0` keeps fast mode's linears in float.
Every kernel a plan needs is tried on a small layer first (`probe`); one that fails or computes wrongly makes
the plan fall back to the next one, with one warning line.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CPU_PLANS: tuple[str, ...] = ("avx512", "avx2-vnni", "avx2", "generic")  # best first
PLAN_ENV = "FLAMETALK_CPU_PLAN"
INT8_ENV = "FLAMETALK_INT8"
PROBE_TOLERANCE = 0.05  # relative error a probe's int8 / low-precision result may have against fp64


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU and this torch build offer, as far as FlameTalk's kernels care."""

    machine: str  # platform.machine(): x86_64, AMD64, arm64, aarch64
    model: str  # CPU model name where the OS tells it
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    avx2: bool
    avx512: bool  # AVX-512 F/BW/VL/DQ, what oneDNN's and torch's AVX-512 kernels need
    avx512_vnni: bool
    avx_vnni: bool  # the VEX (AVX2) encoding of VNNI: Intel client CPUs since Alder Lake
    avx512_bf16: bool
    amx: bool
    onednn: bool  # torch built with oneDNN (mkldnn) and its packed-linear ops present
    fbgemm: bool  # torch's fbgemm quantised engine present (x86)
    native_bf16: bool  # torch reports native bf16 matmul on this CPU
    native_fp16: bool

    @property
    def x86(self) -> bool:
        return _is_x86(self.machine)


def _is_x86(machine: str) -> bool:
    return machine.lower() in ("x86_64", "amd64", "i686", "x86")


@dataclass(frozen=True)
class Plan:
    """The kernels one device and mode run (see the module docstring)."""

    name: str
    device: str  # "cpu", "cuda", "mps"
    mode: str  # "exact", "fast"
    pack: bool
    int8: str | None
    dtype: str  # "float32", "bfloat16", "float16"
    attention: str  # "bmm", "sdpa"
    pos_conv: str = "conv"  # the encoder's positional convolution: "conv" (torch's) or "fft" (fast/posconv.py)
    gelu_post_op: bool = False  # packed fp32 feed-forward GEMMs apply the encoder's GELU as oneDNN's post-op
    fuse_qkv: bool = False  # query/key/value projections as one stacked GEMM (fast/fused.py)
    fallback_from: str | None = None  # the plan that was asked for or chosen first, when this one replaced it
    reason: str | None = None  # why it was replaced

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "int8"}

    def summary(self) -> str:
        parts = [f"{self.name} plan", "oneDNN packed" if self.pack else "plain torch linears"]
        if self.int8:
            parts.append(f"int8 ({self.int8})")
        parts.append(self.dtype)
        return ", ".join(parts)

    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)


def _cpuinfo() -> tuple[set[str], str]:
    """(CPU flags, model name) as the OS lists them (Linux /proc/cpuinfo, read once); elsewhere (set(), platform's)."""
    flags: set[str] | None = None
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if flags is None and line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                elif not model and line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if flags is not None and model:
                    break
    except OSError:
        pass
    return flags or set(), model or platform.processor() or platform.machine()


def _call(obj: Any, name: str) -> bool:
    fn = getattr(obj, name, None)
    try:
        return bool(fn()) if callable(fn) else False
    except Exception:  # a missing or failing query means "not supported"
        return False


@functools.cache
def detect() -> CpuFeatures:
    """Read this machine's CPU features once per process (torch's own queries first, the OS's flags second)."""
    import torch

    flags, model = _cpuinfo()
    cap = torch.backends.cpu.get_cpu_capability()
    mkldnn_ops = getattr(torch.ops, "mkldnn", None)
    onednn = bool(torch.backends.mkldnn.is_available() and mkldnn_ops is not None
                  and hasattr(mkldnn_ops, "_reorder_linear_weight") and hasattr(mkldnn_ops, "_linear_pointwise"))
    engines = getattr(torch.backends.quantized, "supported_engines", [])
    x86 = _is_x86(platform.machine())
    avx512_bf16 = _call(torch.cpu, "_is_avx512_bf16_supported")
    amx = _call(torch.cpu, "_is_amx_tile_supported")
    return CpuFeatures(
        machine=platform.machine(),
        model=model,
        torch_capability=cap,
        avx2=_call(torch.cpu, "_is_avx2_supported") or "avx2" in flags,
        avx512=_call(torch.cpu, "_is_avx512_supported"),
        avx512_vnni=_call(torch.cpu, "_is_vnni_supported"),
        avx_vnni="avx_vnni" in flags,
        avx512_bf16=avx512_bf16,
        amx=amx,
        onednn=onednn,
        fbgemm="fbgemm" in engines,
        # oneDNN also says "supported" where it emulates (x86 AVX-512 without BF16): native needs the instructions
        native_bf16=_call(mkldnn_ops, "_is_mkldnn_bf16_supported") and (avx512_bf16 or amx or not x86),
        native_fp16=_call(mkldnn_ops, "_is_mkldnn_fp16_supported") and not x86,
    )


def missing_for(name: str, f: CpuFeatures) -> str | None:
    """The CPU feature a CPU plan needs and this machine lacks (None: it can run the plan)."""
    if name == "generic":
        return None
    if not f.x86:
        return f"an x86-64 CPU (this is {f.machine})"
    if not f.onednn:
        return "torch built with oneDNN"
    if name == "avx512" and not f.avx512:
        return "AVX-512"
    if name == "avx2-vnni" and not (f.avx2 and (f.avx_vnni or f.avx512_vnni)):
        return "AVX-VNNI"
    if not f.avx2:
        return "AVX2"
    return None


def _int8_allowed() -> bool:
    return os.environ.get(INT8_ENV, "1") != "0"


def cpu_plan(name: str, mode: str, f: CpuFeatures | None = None) -> Plan:
    """The CPU plan `name` for `mode`, its parts chosen by what this CPU computes natively."""
    f = detect() if f is None else f
    if name not in CPU_PLANS:
        raise ValueError(f"unknown CPU plan {name!r}; use one of {', '.join(CPU_PLANS)}")
    # oneDNN's GELU post-op is faster than a separate GELU pass with AVX-512 and slower with AVX2 only (its erf
    # there: 16.0 vs 12.4 ms for a 199 x 1024 -> 4096 GEMM + GELU, BENCHMARKS.md); the values are the same.
    # Query/key/value as one stacked GEMM where measured faster (AVX2: oneDNN fp32 and fbgemm int8; not measured
    # on AVX-512, so left off there); the same values.
    avx2 = name in ("avx2", "avx2-vnni")
    exact = Plan(name, "cpu", mode, pack=name != "generic", int8=None, dtype="float32", attention="sdpa",
                 gelu_post_op=name == "avx512", fuse_qkv=avx2)
    if mode == "exact":
        return exact
    if mode != "fast":
        raise ValueError(f"unknown mode {mode!r}")
    int8 = None
    if _int8_allowed():
        if name == "avx512":
            int8 = "onednn" if f.avx512_vnni else ("fbgemm" if f.fbgemm else None)
        elif name == "avx2-vnni":
            int8 = "onednn"
        elif name == "avx2":
            int8 = "fbgemm" if f.fbgemm else None
    if name == "avx512":
        dtype = "bfloat16" if (f.avx512_bf16 or f.amx) else "float32"
    elif name == "generic":
        dtype = "bfloat16" if f.native_bf16 else ("float16" if f.native_fp16 else "float32")
    else:
        dtype = "float32"
    # bmm attention: faster than torch's CPU flash kernel at these short sequences, in bf16 and in fp32 alike;
    # the positional convolution through the FFT: the same values up to fp32 rounding, in half the time
    return replace(exact, int8=int8, dtype=dtype, attention="bmm", pos_conv="fft",
                   fuse_qkv=avx2 and int8 != "onednn")  # oneDNN int8 shares the quantised input instead


def gpu_plan(device_type: str, mode: str) -> Plan:
    """CUDA / MPS: torch's own kernels; fp16 for fast mode's low-precision parts."""
    return Plan(device_type, device_type, mode, pack=False, int8=None,
                dtype="float16" if mode == "fast" else "float32", attention="sdpa")


_warned: set[str] = set()


def _warn(message: str) -> None:
    """One line on stderr, once per process for the same message (a worker chooses a plan per model load)."""
    if message not in _warned:
        _warned.add(message)
        print(f"flametalk: warning: {message}", file=sys.stderr, flush=True)


def candidate_cpu_plans(f: CpuFeatures | None = None) -> tuple[list[str], str | None]:
    """CPU plans this machine can run, best first, starting at the forced one; plus a warning for a forced plan
    it cannot run."""
    f = detect() if f is None else f
    runnable = [n for n in CPU_PLANS if missing_for(n, f) is None]
    forced = os.environ.get(PLAN_ENV, "").strip().lower()
    if not forced or forced == "auto":
        return runnable, None
    if forced not in CPU_PLANS:
        return runnable, (f"{PLAN_ENV}={forced} is not a plan (use one of {', '.join(CPU_PLANS)} or auto); "
                          f"using {runnable[0]}")
    lacking = missing_for(forced, f)
    if lacking is not None:
        return runnable, f"{PLAN_ENV}={forced} needs {lacking}; using {runnable[0]}"
    return runnable[runnable.index(forced):], None


def choose(device: torch.device | str, mode: str, warn: bool = True) -> Plan:
    """The plan for `device` and `mode`: on CPU the best (or forced) plan whose kernels pass their probe."""
    import torch

    device_type = torch.device(device).type
    if device_type != "cpu":
        return gpu_plan(device_type, mode)
    names, note = candidate_cpu_plans()
    if note and warn:
        _warn(note)
    first: tuple[str, str] | None = None  # (plan, failure) of the first plan that failed its probe
    for name in names:
        plan = cpu_plan(name, mode)
        failure = probe(plan)
        if failure is None:
            if first is not None:
                plan = replace(plan, fallback_from=first[0], reason=first[1])
            return plan
        first = first or (name, failure)
        if warn:
            _warn(f"the {name} plan's {failure} on this CPU; trying the next plan")
    raise AssertionError("the generic plan needs no special kernel and cannot fail its probe")


@functools.cache
def _probe_kernel(kind: str, dtype: str) -> str | None:
    """Run one kernel family on a small layer against fp64; None if it works, else what went wrong."""
    import torch

    from . import int8 as int8_mod
    from .packed import PackedLinear

    gen = torch.Generator().manual_seed(7)
    layer = torch.nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 64, generator=gen) * 0.1)
        layer.bias.copy_(torch.randn(48, generator=gen) * 0.1)
    layer.requires_grad_(False)
    x = torch.randn(5, 64, generator=gen)
    want = x.double() @ layer.weight.double().T + layer.bias.double()
    low = getattr(torch, dtype)
    try:
        if kind == "pack":
            lin = torch.nn.Linear(64, 48).to(low).requires_grad_(False)
            with torch.no_grad():
                lin.weight.copy_(layer.weight)
                lin.bias.copy_(layer.bias)
            got = PackedLinear(lin)(x.to(low))
        elif kind == "onednn":
            if not int8_mod.onednn_int8_available():
                return "oneDNN int8 ops are missing in this torch"
            got = int8_mod.Int8Linear(layer, per_token=True)(x.to(low))
        elif kind == "fbgemm":
            got = int8_mod.FbgemmInt8Linear(layer, reduce_range=True)(x.to(low))
        elif kind == "lowp":
            got = torch.nn.functional.linear(x.to(low), layer.weight.to(low), layer.bias.to(low))
        else:
            raise ValueError(kind)
    except Exception as err:  # any failure means: do not use this kernel here
        return f"{kind} kernel ({dtype}) failed: {' '.join(str(err).split())[:160]}"
    err = float((got.double() - want).norm() / want.norm())
    if not err < PROBE_TOLERANCE:
        return f"{kind} kernel ({dtype}) computes wrongly (relative error {err:.3g})"
    return None


def probe(plan: Plan) -> str | None:
    """None if every kernel the CPU plan needs works here, else the first failure."""
    if plan.device != "cpu":
        return None
    checks = []
    if plan.pack:
        checks.append(("pack", "float32"))
        if plan.dtype != "float32":
            checks.append(("pack", plan.dtype))
    elif plan.dtype != "float32":
        checks.append(("lowp", plan.dtype))
    if plan.int8:
        checks.append((plan.int8, plan.dtype))
    for kind, dtype in checks:
        failure = _probe_kernel(kind, dtype)
        if failure is not None:
            return failure
    return None


def features_dict() -> dict[str, Any]:
    f = detect()
    return {**asdict(f), "x86": f.x86}
