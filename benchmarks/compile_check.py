"""torch.compile check: graph breaks (torch._dynamo.explain) and compiled inference / training vs eager.

On a tiny random Mask2FormerDINOv3 (ViT or ConvNeXt) it

1. counts graphs and graph breaks of an inference forward and of a training step (forward + loss) with
   `torch._dynamo.explain`, and prints where each break happens (file, line) — ours or upstream's;
2. runs `torch.compile(model)` (inductor) for inference and compares it with eager;
3. runs a compiled training step (forward + loss + backward) and compares loss and gradients with eager.

Run by hand (compiling takes minutes on a small CPU), e.g.:

    python benchmarks/compile_check.py --backbone vit
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tiny_configs import tiny_config  # noqa: E402

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation  # noqa: E402


def _targets(batch: int, size: int):
    generator = torch.Generator().manual_seed(0)
    masks = [(torch.rand(3, size, size, generator=generator) > 0.5).float() for _ in range(batch)]
    classes = [torch.randint(0, 3, (3,), generator=generator) for _ in range(batch)]
    return masks, classes


def explain(fn, *args) -> None:
    """Print graph / break counts and the distinct break reasons with their innermost frames."""
    result = torch._dynamo.explain(fn)(*args)
    print(f"  graphs: {result.graph_count}, graph breaks: {result.graph_break_count}")
    seen = set()
    for reason in result.break_reasons:
        frames = [(f.filename.split("site-packages/")[-1], f.lineno, f.name) for f in reason.user_stack[-2:]]
        key = (reason.reason.splitlines()[0][:100], tuple(frames))
        if key in seen:
            continue
        seen.add(key)
        print(f"  - {key[0]}")
        for filename, line, name in frames:
            print(f"      at {filename}:{line} ({name})")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the checks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=["vit", "convnext"], default="vit")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--skip-inductor", action="store_true", help="only count graph breaks")
    parser.add_argument("--skip-explain", action="store_true", help="skip the graph-break count")
    parser.add_argument("--skip-inference", action="store_true", help="skip the compiled inference check")
    args = parser.parse_args(argv)
    # The loss draws random points (torch.rand); inductor's own RNG would draw other ones than eager. Use eager's RNG
    # in compiled code so that compiled and eager training steps can be compared exactly.
    torch._inductor.config.fallback_random = True

    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config(args.backbone))
    pixel_values = torch.randn(2, 3, args.size, args.size)
    mask_labels, class_labels = _targets(2, args.size)

    def train_loss(pixel_values, mask_labels, class_labels):
        return model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss

    if not args.skip_explain:
        print("inference forward (eval, no_grad):")
        model.eval()
        with torch.no_grad():
            explain(model, pixel_values)
        print("training forward + loss:")
        model.train()
        explain(train_loss, pixel_values, mask_labels, class_labels)
        torch._dynamo.reset()
    if args.skip_inductor:
        return

    if not args.skip_inference:
        model.eval()
        compiled = torch.compile(model)
        with torch.no_grad():
            start = time.perf_counter()
            compiled_out = compiled(pixel_values)
            compile_seconds = time.perf_counter() - start
            eager_out = model(pixel_values)
        error = (compiled_out.masks_queries_logits - eager_out.masks_queries_logits).abs().max().item()
        print(f"compiled inference: first call {compile_seconds:.0f} s, max |compiled - eager| masks = {error:.2e}")

    model.train()
    compiled_step = torch.compile(train_loss)
    torch.manual_seed(1)
    start = time.perf_counter()
    loss = compiled_step(pixel_values, mask_labels, class_labels)
    loss.backward()
    compile_seconds = time.perf_counter() - start
    compiled_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(1)
    eager_loss = train_loss(pixel_values, mask_labels, class_labels)
    eager_loss.backward()
    scale = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    worst = max(
        (compiled_grads[n] - p.grad).abs().max().item() for n, p in model.named_parameters() if n in compiled_grads
    )
    print(
        f"compiled training step: first call {compile_seconds:.0f} s, loss {loss.item():.6f} vs eager "
        f"{eager_loss.item():.6f}, max gradient difference {worst:.2e} (largest gradient {scale:.2e})"
    )


if __name__ == "__main__":
    main()
