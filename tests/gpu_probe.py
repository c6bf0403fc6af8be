"""One prepared GPU check for moe-harness (a readiness review without a GPU). Run from the repository root:

    python tests/gpu_probe.py [--out DIR] [--budget-s 420] [--dry]     # --dry: tiny shapes on CPU (logic check)

Sections, cheapest and most decisive first; each has its own time limit and writes its figures to
OUT/gpu_probe.json as it finishes, so a killed run still leaves what it measured:
  env       card, capability, torch / CUDA versions
  syncs     host syncs per train_step of gpu_paper's five routers (size base), 1st and 2nd half of a run
  router    bf16 vs float32 router logits at the paper_1b router shape: routing changes, ties, sign flips
  experts   grouped_mm vs loop (bf16): agreement on uneven + empty groups, time, syncs; fp32 grouped_mm
            (the transformers families' path) time
  paper1b   one paper_1b train step (gpu_paper settings, loss_free): step time, tokens/s, peak memory
  peakmem   peak_mem_mb of a small run after a large one in the same process (never reset?)
  oom       a run that OOMs: status, memory still allocated after run_or_fail, after gc, next run ok?
  family    qwen3_moe vs the proxy at the same size: time and syncs of one fwd/bwd under autocast
  compile   train.compile at size base: first-step (compile) time, graphs, recompiles, compiled/eager step ratio
"""
from __future__ import annotations

import argparse, contextlib, gc, json, math, os, signal, statistics, sys, time, traceback, warnings
from pathlib import Path

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--out", default=os.environ.get("OUT", "gpu_probe_out"))
ap.add_argument("--budget-s", type=float, default=420)
ap.add_argument("--dry", action="store_true")
ap.add_argument("--only", default="")
args = ap.parse_args()
OUT = Path(args.out); OUT.mkdir(parents=True, exist_ok=True)
DEV = "cpu" if args.dry else "cuda"
T0 = time.time()
RESULTS: dict = {}
if args.dry:
    torch.set_num_threads(1)


def save():
    (OUT / "gpu_probe.json").write_text(json.dumps(RESULTS, indent=1, default=str))


class Timeout(Exception):
    pass


@contextlib.contextmanager
def limit(seconds):
    def handler(*_):
        raise Timeout(f"section over {seconds}s")
    old = signal.signal(signal.SIGALRM, handler); signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0); signal.signal(signal.SIGALRM, old)


def section(name, seconds):
    def wrap(fn):
        if args.only and name not in args.only.split(","):
            return fn
        left = args.budget_s - (time.time() - T0)
        if left < 10:
            RESULTS[name] = {"skipped": "budget spent"}; save(); return fn
        t = time.time()
        try:
            with limit(min(seconds, left)):
                RESULTS[name] = fn()
        except BaseException as e:  # noqa: BLE001 - a section's failure is a finding
            RESULTS[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}",
                             "where": [f"{f.filename}:{f.lineno}" for f in traceback.extract_tb(e.__traceback__)][-4:]}
        RESULTS[name] = {**(RESULTS[name] or {}), "section_s": round(time.time() - t, 1)}
        print(f"[{time.time() - T0:6.1f}s] {name}: {json.dumps(RESULTS[name], default=str)[:600]}", flush=True)
        save()
        if DEV == "cuda":
            gc.collect(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        return fn
    return wrap


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def count_syncs():
    """Each synchronizing CUDA call (torch.cuda.set_sync_debug_mode('warn')), with the harness frame."""
    found = []
    if DEV != "cuda":
        yield found; return
    real_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1] if "/harness/" in f.filename or "transformers" in f.filename]
            found.append(f"{frames[-1].filename.split('/')[-1]}:{frames[-1].lineno}" if frames else "?")
        else:
            real_show(message, category, filename, lineno, file, line)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = real_show


from harness.suites.keys import resolve  # noqa: E402
from harness.engine.train import Trainer, corpus_for, run  # noqa: E402
from harness.suites.runner import run_or_fail  # noqa: E402

SIZE = "tiny" if args.dry else "base"
SMALL = {"model.dim": 64, "model.num_heads": 4, "model.seq_len": 64, "model.expert_hidden": 64} if args.dry else {}
GPU_PAPER = [("sigmoid_topk", {}), ("sigmoid_topk_aux", {}), ("loss_free", {}), ("deepseek_v3", {}),
             ("dynamic_k", {"router.bias_rate": 1e-3})]


def settings(**kw):
    base = {"size": SIZE, "train.device": DEV, "train.steps": 20, "train.batch_size": 4 if args.dry else 16,
            "train.grad_accum": 2, "train.eval_every": 0, "train.dense_probe_steps": 0, "train.checkpoint_every": 0,
            **SMALL}
    if args.dry:
        base.update({"train.dtype": "bfloat16", "model.expert_impl": "grouped_mm"})
    return {**base, **kw}


@section("env", 30)
def env():
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0], "dry": args.dry}
    if DEV == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(card=p.name, capability=torch.cuda.get_device_capability(0), mem_gib=round(p.total_memory / 2**30, 1),
                   gpus=torch.cuda.device_count(), visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    from harness.engine.moe import grouped_mm_unsupported
    out["harness_grouped_mm_bf16"] = grouped_mm_unsupported(torch.device(DEV), torch.bfloat16, 1024, 704) or "supported"
    return out


@section("syncs", 120)
def syncs():
    out = {}
    for router, extra in GPU_PAPER:
        tr = Trainer(resolve(settings(router=router, **extra)), corpus_for(resolve(settings(router=router, **extra))),
                     progress=False, on_eval=None)
        tr.window_tokens, tr.window_time = 0, 0.0
        tr.train_step(0); tr.train_step(1); sync()
        with count_syncs() as first:
            tr.train_step(2); sync()
        tr.metrics.costs += [{}] * 12  # now in the run's second half (BiasDynamics compares update signs there)
        with count_syncs() as second:
            tr.one_step(15); sync()
        out[router] = {"train_step_1st_half": len(first), "one_step_2nd_half": len(second),
                       "where": sorted(set(first + second)), "moe_layers": len(tr.layers), "grad_accum": 2}
        del tr; gc.collect()
    return out


@section("router", 60)
def router_precision():
    T, D, E, K = (2048, 256, 64, 6) if args.dry else (16384, 1024, 64, 6)
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(T, D, device=DEV, generator=g); x = x * torch.rsqrt(x.square().mean(-1, keepdim=True))
    out = {}
    for scale in (1.0, 4.0):
        w = (torch.rand(E, D, device=DEV, generator=g) * 2 - 1) * D**-0.5 * scale  # nn.Linear init, x scale
        z32 = x @ w.T
        with torch.autocast(DEV, dtype=torch.bfloat16):
            zbf = torch.nn.functional.linear(x, w).float()
        for spread in (0.0, 0.05):
            b = (torch.rand(E, device=DEV, generator=g) - 0.5) * 2 * spread
            s32, sbf = torch.sigmoid(z32) + b, torch.sigmoid(zbf) + b
            m32 = torch.zeros(T, E, dtype=torch.bool, device=DEV).scatter_(1, s32.topk(K, -1).indices, True)
            mbf = torch.zeros(T, E, dtype=torch.bool, device=DEV).scatter_(1, sbf.topk(K, -1).indices, True)
            q = T * K / E
            top = sbf.topk(K + 1, -1).values
            out[f"logit_sd{z32.std().item():.2f}_bias{spread}"] = {
                "tokens_changed": round((m32 != mbf).any(-1).float().mean().item(), 4),
                "signF_flips_of_64": int((torch.sign(m32.sum(0) - q) != torch.sign(mbf.sum(0) - q)).sum()),
                "k_boundary_ties": round((top[:, K - 1] == top[:, K]).float().mean().item(), 4)}
    return out


@section("experts", 90)
def experts():
    from harness.engine.moe import Experts
    E, D, H, T, K = (16, 64, 64, 512, 4) if args.dry else (64, 1024, 704, 16384, 6)
    torch.manual_seed(0)
    mod = Experts(E, D, H).to(DEV)
    A = T * K
    # uneven loads with empty experts, as a collapsing router gives
    w = torch.rand(E, device=DEV) ** 4; w[:3] = 0
    counts = torch.distributions.Multinomial(A, probs=w / w.sum()).sample().long()
    x = torch.randn(A, D, device=DEV)
    res = {"empty_experts": int((counts == 0).sum()), "max_over_mean": round(counts.max().item() / counts.float().mean().item(), 2)}
    outs = {}
    for impl in ("grouped_mm", "loop"):
        mod.impl = impl
        for p in mod.parameters():
            p.grad = None
        xi = x.clone().requires_grad_()
        try:
            with torch.autocast(DEV, dtype=torch.bfloat16):
                y = mod(xi, counts)
            y.float().square().mean().backward()
            outs[impl] = (y.float(), xi.grad.float(), mod.w1.grad.float().clone())
            times = []
            for _ in range(5):
                sync(); t = time.perf_counter()
                with torch.autocast(DEV, dtype=torch.bfloat16):
                    y = mod(xi, counts)
                y.float().square().mean().backward(); sync(); times.append(time.perf_counter() - t)
            with count_syncs() as s:
                with torch.autocast(DEV, dtype=torch.bfloat16):
                    y = mod(xi, counts)
                y.float().square().mean().backward(); sync()
            res[impl] = {"fwd_bwd_ms": round(1e3 * statistics.median(times), 2), "syncs": len(s)}
        except Exception as e:  # noqa: BLE001
            res[impl] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    if len(outs) == 2:
        rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        res["rel_err_grouped_vs_loop"] = {n: round(rel(a, b), 5) for n, a, b in
                                          zip(("y", "x_grad", "w1_grad"), outs["grouped_mm"], outs["loop"])}
    # the transformers families' path: float32 operands (their weights), which torch runs by its fallback
    offs = counts.cumsum(0).to(torch.int32)
    w32 = mod.w1.detach()
    times = []
    with count_syncs() as s:
        for _ in range(3):
            sync(); t = time.perf_counter(); torch._grouped_mm(x, w32, offs=offs); sync(); times.append(time.perf_counter() - t)
    xb, wb = x.bfloat16(), w32.bfloat16()
    tb = []
    for _ in range(3):
        sync(); t = time.perf_counter(); torch._grouped_mm(xb, wb, offs=offs); sync(); tb.append(time.perf_counter() - t)
    res["grouped_mm_one_call_ms"] = {"fp32 (families)": round(1e3 * min(times), 2), "bf16": round(1e3 * min(tb), 2),
                                     "fp32_syncs_per_call": len(s) / 3}
    return res


@section("paper1b", 120)
def paper1b():
    if args.dry:
        return {"skipped": "dry"}
    cfg = resolve({"size": "paper_1b", "router": "loss_free", "train.device": "cuda", "train.batch_size": 16,
                   "train.grad_accum": 1, "train.steps": 20, "train.eval_every": 0, "train.dense_probe_steps": 0,
                   "train.checkpoint_every": 0})
    torch.cuda.reset_peak_memory_stats()
    tr = Trainer(cfg, corpus_for(cfg), progress=False, on_eval=None)
    after_build = torch.cuda.memory_allocated() / 2**30
    times = []
    for s in range(4):
        sync(); t = time.perf_counter(); tr.train_step(s); sync(); times.append(time.perf_counter() - t)
    tokens = cfg.train.batch_size * cfg.model.seq_len
    return {"params_B": round(sum(p.numel() for p in tr.model.parameters()) / 1e9, 3),
            "alloc_after_build_gib": round(after_build, 1), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
            "micro_step_s": [round(t, 3) for t in times], "tokens_per_s": round(tokens / statistics.median(times[1:])),
            "note": "gpu_paper uses grad_accum 4: 4 such micro-batches per optimizer step"}


@section("peakmem", 60)
def peakmem():
    if args.dry:
        return {"skipped": "dry"}
    big = run(resolve(settings(router="loss_free", **{"train.steps": 3})))
    small = run(resolve({"size": "tiny", "router": "loss_free", "train.device": "cuda", "train.steps": 3,
                         "train.eval_every": 0, "train.dense_probe_steps": 0, "train.checkpoint_every": 0}))
    return {"base_peak_mem_mb": round(big.record["peak_mem_mb"]), "tiny_after_base_peak_mem_mb": round(small.record["peak_mem_mb"]),
            "reset_between_runs": small.record["peak_mem_mb"] < big.record["peak_mem_mb"]}


@section("oom", 60)
def oom():
    if args.dry:
        return {"skipped": "dry"}
    before = torch.cuda.memory_allocated()
    too_big = resolve({"size": "paper_1b", "router": "loss_free", "train.device": "cuda", "train.batch_size": 128,
                       "train.steps": 2, "train.eval_every": 0, "train.dense_probe_steps": 0, "train.checkpoint_every": 0})
    rec = run_or_fail(too_big, progress=False).record
    after = torch.cuda.memory_allocated(); gc.collect(); after_gc = torch.cuda.memory_allocated()
    nxt = run_or_fail(resolve(settings(router="loss_free", **{"train.steps": 3})), progress=False).record
    return {"status": rec["status"], "error": str(rec.get("error", ""))[:120],
            "gib_held_after_run_or_fail": round((after - before) / 2**30, 2),
            "gib_held_after_gc": round((after_gc - before) / 2**30, 2), "next_run": nxt["status"]}


@section("family", 90)
def family():
    from harness.engine.model import build_model
    res = {}
    for fam in ("harness", "qwen3_moe"):
        kw = settings(router="loss_free", **({"model.family": fam} if fam != "harness" else {}))
        if fam != "harness":  # NOTE: a family builds its own experts (transformers' implementation)
            kw.pop("model.expert_impl", None)
        cfg = resolve(kw)
        torch.manual_seed(0)
        m = build_model(cfg.model, cfg.router_cfg).to(DEV)
        x = torch.randint(0, 256, (cfg.train.batch_size, cfg.model.seq_len), device=DEV)
        times = []
        for i in range(4):
            sync(); t = time.perf_counter()
            with count_syncs() if i == 3 else contextlib.nullcontext([]) as s:
                with torch.autocast(DEV, dtype=torch.bfloat16):
                    loss = m(x).float().logsumexp(-1).mean()
                loss.backward(); sync()
            times.append(time.perf_counter() - t)
        res[fam] = {"fwd_bwd_ms": round(1e3 * statistics.median(times[1:]), 1), "syncs": len(s),
                    "where": sorted(set(s))[:6], "params_M": round(sum(p.numel() for p in m.parameters()) / 1e6, 1)}
        if fam != "harness":
            res[fam]["experts_implementation"] = m.hf.config._experts_implementation
        del m; gc.collect()
    return res


@section("compile", 240)
def compiled():
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters
    out = {}
    for comp in (False, True):
        dynamo.reset(); counters.clear()
        cfg = resolve(settings(router="loss_free", **{"train.compile": comp, "train.grad_accum": 1}))
        tr = Trainer(cfg, corpus_for(cfg), progress=False, on_eval=None)
        times = []
        for s in range(8):
            sync(); t = time.perf_counter(); tr.train_step(s); sync(); times.append(time.perf_counter() - t)
        out["compiled" if comp else "eager"] = {"first_step_s": round(times[0], 2), "median_step_ms": round(1e3 * statistics.median(times[3:]), 1),
                                                "graphs": counters["stats"]["unique_graphs"],
                                                "graph_breaks": sum(counters["graph_break"].values())}
        del tr; gc.collect()
    out["compiled_over_eager_step_time"] = round(out["compiled"]["median_step_ms"] / out["eager"]["median_step_ms"], 3)
    return out


print(f"done in {time.time() - T0:.0f}s -> {OUT / 'gpu_probe.json'}")
