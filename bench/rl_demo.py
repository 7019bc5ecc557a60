"""The RL notebook's demonstration, measured: a partly-trained SFT adapter (the demo's tiny SmolVLM on colour_shapes,
60 of its 300 steps), then GRPO and DPO from that adapter with three seeds each. Prints and writes
bench/results/rl_demo.json: held-out greedy accuracy (200 samples) before and after, and the mean reward of the
answers sampled in the first and last logged steps. Run: `.venv/bin/python bench/rl_demo.py` (about 10 minutes on 2 cores)."""
import json, platform, subprocess, sys, time, warnings
from pathlib import Path

warnings.filterwarnings("ignore")
from vlmnb.train import demo_config, train

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/rl-demo")
SEEDS = (0, 1, 2)


def rl_run(method: str, sft: Path, seed: int) -> dict:
    data = "synthetic:colour_pairs" if method == "dpo" else "synthetic:colour_shapes"
    cfg = {"base_model": "tiny:smolvlm", "init_adapter": str(sft), "method": method,
           "datasets": [{"path": data, "n": 1000, "seed": 2}], "eval_datasets": [{"path": data, "n": 200, "seed": 999}],
           "eval_samples": 200, "logging_steps": 5, "max_new_tokens": 8, "seed": seed,
           "output_dir": str(OUT / f"{method}-{seed}"), "overwrite_output_dir": True, "progress_bar": False}
    if method == "dpo": cfg.update(max_steps=100, batch_size=16, learning_rate=3e-3)
    else: cfg.update(max_steps=150, batch_size=64, learning_rate=1e-3, rl={"num_generations": 8, "max_completion_length": 6})  # at 3e-3, 2 of 3 seeds collapsed
    t0 = time.time()
    m = train(cfg).metrics
    return {"method": method, "seed": seed, "seconds": round(time.time() - t0, 1), "steps": m["steps"],
            "accuracy_before": m["before"]["accuracy"], "accuracy_after": m["after"]["accuracy"],
            **{k: m[k] for k in ("first_reward", "last_reward", "first_margins", "last_margins") if k in m}}


if __name__ == "__main__":
    sft = OUT / "sft"
    t0 = time.time()
    sft_acc = train(demo_config(str(sft), max_steps=60, progress_bar=False)).metrics["after"]["accuracy"]
    runs = [rl_run(method, sft, seed) for method in ("grpo", "dpo") for seed in SEEDS]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"commit": commit, "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "sft_steps": 60,
              "sft_accuracy": sft_acc, "runs": runs, "seconds": round(time.time() - t0)}
    for method in ("grpo", "dpo"):
        gains = [r["accuracy_after"] - r["accuracy_before"] for r in runs if r["method"] == method]
        result[f"{method}_min_gain"] = min(gains)
        print(f"{method}: held-out accuracy gain per seed {[f'{g:+.1%}' for g in gains]}")
    for r in runs: print(r)
    path = Path(__file__).parent / "results" / "rl_demo.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
