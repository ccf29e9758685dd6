"""Pure helpers of tools/benchmark.py: the analytic MAC model and the ratio table."""

from __future__ import annotations

RATES, MULT = 3, 4
STAGE_OF = {"conv1": 0, "layer1": 1, "layer2": 2, "layer3": 3, "layer4": 4}


def macs(model: str, size: int, insert_after: str, aspp_impl: str = "separable") -> tuple[float, float]:
    """(model MACs, MACs executed by ``aspp_impl``) per image, analytically."""
    s = (size + 6 - 7) // 2 + 1
    total = s * s * 7 * 7 * 3 * 64
    s = (s + 2 - 3) // 2 + 1
    ends = [(s, 64)]
    cin = 64
    for filters, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            st = stride if b == 0 else 1
            s = (s - 1) // st + 1
            total += s * s * (cin * filters + 9 * filters * filters + filters * 4 * filters)
            total += s * s * cin * 4 * filters if b == 0 else 0
            cin = 4 * filters
        ends.append((s, cin))
    total += 2048 * 2
    n, c = ends[STAGE_OF[insert_after]]
    if model == "aspp_module":
        n, c, total = size // 4, 256, 0
    if model == "resnet50":
        return total, total
    sep = RATES * n * n * (9 * c * MULT + c * MULT * c)
    dense = RATES * n * n * 9 * c * c
    return total + sep, total + (dense if aspp_impl.startswith("dense") else sep)



def ratio_table(results: list[dict]) -> str:
    """Each model vs plain resnet50 of the same implementation; keras vs the PyTorch
    reference (its "separable" ASPP, eager and compiled) and vs the fastest PyTorch result."""
    base = {(r["impl"], r["mode"]): r["img_per_s"] for r in results if r["model"] == "resnet50"}
    ref, best = {}, {}
    for r in results:
        if r["impl"].startswith("torch"):
            if r["aspp_impl"] == "separable":
                ref[(r["impl"], r["model"], r["mode"])] = r["img_per_s"]
            key = (r["model"], r["mode"])
            best[key] = max(best.get(key, 0.0), r["img_per_s"])
    model_only = {(r["model"], r["mode"]): r["img_per_s"] for r in results if r["impl"] == "keras"}
    head = ["impl", "model", "aspp_impl", "mode", "img/s", "vs_plain", "vs_torch_eager", "vs_torch_compile",
            "vs_torch_best", "vs_model_only"]
    rows = [head]
    for r in results:
        keras_row = r["impl"].startswith("keras")
        pipeline_row = r["impl"] in ("e2e", "loader")
        denominators = [base.get((r["impl"], r["mode"])) if r["model"] != "resnet50" else None,
                        ref.get(("torch_eager", r["model"], r["mode"])) if keras_row else None,
                        ref.get(("torch_compile", r["model"], r["mode"])) if keras_row else None,
                        best.get((r["model"], r["mode"])) if keras_row else None,
                        model_only.get((r["model"], r["mode"])) if pipeline_row else None]
        impl = r["impl"] + (f"[{r['label']}]" if r.get("label") else "")
        if r["impl"] == "loader":
            impl += f"[{r['workers']}{'p' if r['processes'] else 't'}{'' if r.get('shared_memory', True) else '/pipe'}]"
        rows.append([impl, r["model"], r["aspp_impl"], r["mode"], f"{r['img_per_s']:.1f}"]
                    + [f"{r['img_per_s'] / d:.2f}" if d else "-" for d in denominators])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)
