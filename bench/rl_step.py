"""Speed and memory of GRPO steps: tokens per second (the prompt and generated tokens TRL counts, `num_tokens`, over the
step time it measures, `step_time`) and the process's peak RSS, for the tiny Qwen2-VL and SmolVLM on this machine.
Generation is batched: a step's 4 prompts x 8 answers are one `generate` call. Each model runs in its own process, so
the peak RSS is its own. Writes bench/results/rl_step.json. Run: `.venv/bin/python bench/rl_step.py` (about a minute)."""
import json, os, platform, resource, subprocess, sys, warnings
from pathlib import Path


def one(arch: str, out: str) -> dict:
    warnings.filterwarnings("ignore")
    from vlmnb.train import train
    cfg = {"base_model": f"tiny:{arch}", "method": "grpo", "datasets": [{"path": "synthetic:colour_shapes", "n": 256}],
           "max_steps": 21, "batch_size": 32, "logging_steps": 1, "learning_rate": 1e-3, "seed": 0, "progress_bar": False,
           "rl": {"num_generations": 8, "max_completion_length": 16}, "output_dir": out, "overwrite_output_dir": True}
    rows = [h for h in train(cfg).history if "step_time" in h][1:]  # the first step warms up
    tokens = rows[-1]["num_tokens"] - rows[0]["num_tokens"]
    seconds = sum(h["step_time"] for h in rows[1:])
    return {"arch": arch, "steps": len(rows) - 1, "tokens_per_s": round(tokens / seconds), "seconds_per_step": round(seconds / (len(rows) - 1), 3),
            "answers_per_step": 32, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


if __name__ == "__main__":
    if len(sys.argv) > 2: print(json.dumps(one(sys.argv[1], sys.argv[2]))); sys.exit(0)
    results = []
    for arch in ("qwen2_vl", "smolvlm"):
        run = subprocess.run([sys.executable, __file__, arch, f"outputs/bench-rl-{arch}"], capture_output=True, text=True)
        if run.returncode: sys.exit(run.stderr[-3000:])
        results.append(json.loads(run.stdout.strip().splitlines()[-1])); print(results[-1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    path = Path(__file__).parent / "results" / "rl_step.json"
    path.write_text(json.dumps({"commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": results}, indent=1) + "\n")
    print(f"wrote {path}")
