#!/usr/bin/env python
"""Peak memory of the output layer and its loss: every position's logits (the model's own loss) against vlmnb's logits
only at labelled positions, chunked (`vlmnb.train.label_loss_sum`), forward and backward, each in a process of its own.

    python bench/loss_memory.py                      # SmolVLM-256M's width and vocabulary (576, 49280), batch 4 x 1024
    python bench/loss_memory.py --vocab 151936 --hidden 1536   # Qwen2-VL-2B's
    python bench/loss_memory.py --json bench/results/loss-memory.json     # both, written for the results page

A quarter of the positions carry a label (answers; image and prompt tokens do not). Prints the peak RSS above the
process's baseline for each way, and their ratio; the baseline holds the hidden states and the (frozen) output layer.
"""
import argparse, json, resource, subprocess, sys
from pathlib import Path


def run(way: str, a) -> dict:
    import torch
    from vlmnb.train import label_loss_sum, next_token_mask
    torch.manual_seed(0)
    head = torch.nn.Linear(a.hidden, a.vocab, bias=False).requires_grad_(False)  # frozen, as under LoRA
    hidden = torch.randn(a.batch, a.length, a.hidden, requires_grad=True)
    labels = torch.randint(0, a.vocab, (a.batch, a.length))
    labels[torch.rand(a.batch, a.length) > a.labelled] = -100
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if way == "full":
        logits = head(hidden)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    else:
        mask = next_token_mask(labels)
        targets = labels[:, 1:][labels[:, 1:] != -100]
        loss = label_loss_sum(hidden[mask], targets, head) / len(targets)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"way": way, "loss": loss.item(), "peak_mib": (peak - base) / 1024}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=49280)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--labelled", type=float, default=0.25)
    p.add_argument("--json", help="measure SmolVLM-256M's and Qwen2-VL-2B's output layers and write both here")
    p.add_argument("--way", choices=["full", "labelled"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.way: print(json.dumps(run(a.way, a))); return 0
    if a.json:
        cases = {"smolvlm-256m": (49280, 576), "qwen2-vl-2b": (151936, 1536)}
        out = {name: measure(argparse.Namespace(**{**vars(a), "vocab": v, "hidden": h})) for name, (v, h) in cases.items()}
        Path(a.json).write_text(json.dumps(out, indent=1))
        return 0
    measure(a)
    return 0


def measure(a) -> dict:
    "Both ways, each in a process of its own; printed, and returned with the settings."
    args = [f"--{k}={v}" for k, v in vars(a).items() if k not in ("way", "json")]
    out = {w: json.loads(subprocess.run([sys.executable, __file__, f"--way={w}", *args], capture_output=True, text=True,
                                        check=True).stdout.splitlines()[-1]) for w in ("full", "labelled")}
    print(f"vocab {a.vocab}, hidden {a.hidden}, batch {a.batch} x {a.length}, {a.labelled:.0%} of positions labelled")
    for w, r in out.items(): print(f"  {w:9} peak above baseline {r['peak_mib']:8.0f} MiB   loss {r['loss']:.5f}")
    ratio = out["labelled"]["peak_mib"] / out["full"]["peak_mib"]
    print(f"loss_memory_ratio: {ratio:.3f}")
    return {"vocab": a.vocab, "hidden": a.hidden, "batch": a.batch, "length": a.length, "labelled": a.labelled,
            "full_mib": out["full"]["peak_mib"], "labelled_mib": out["labelled"]["peak_mib"], "ratio": ratio,
            "loss_full": out["full"]["loss"], "loss_labelled": out["labelled"]["loss"]}


if __name__ == "__main__":
    sys.exit(main())
