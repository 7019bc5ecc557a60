"""GRPO, GSPO and DPO runs through TRL's trainers on tiny models of two families (Qwen2-VL, SmolVLM): the adapter moves,
the run folder has its metrics, curves and generations; a run killed with SIGKILL resumes to the adapter of an
uninterrupted one; the config keys (vlmnb's and Axolotl's) map or are refused by name; the pre-flight refuses what
would fail or mislead later (groups that do not divide, prompts without room to answer, a user reward that cannot be
called). Facts of the real artefacts are in the test names' comments: Axolotl 0.19's `rl:` values and `trl:` keys,
TRL 1.16's defaults, the layout of HuggingFaceH4/rlaif-v_formatted and openbmb/RLAIF-V-Dataset."""
import json, signal, time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlmnb.cli import main
from vlmnb.data import load_data, prepare
from vlmnb.load import tiny_model
from vlmnb.train import ConfigError, complete_checkpoints, make_config, preflight, train

from test_run_contract import launch, sigterm_at, write_data


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bases")
    for arch in ("qwen2_vl", "smolvlm"): tiny_model(arch, root / arch, seed=0)
    return {a: root / a for a in ("qwen2_vl", "smolvlm")}


def rl_config(base, out: Path, method="grpo", **kw) -> dict:
    data = "synthetic:colour_pairs" if method == "dpo" else "synthetic:colour_shapes"
    cfg = {"base_model": str(base), "method": method, "datasets": [{"path": data, "n": 24}],
           "eval_datasets": [{"path": data, "n": 4, "seed": 9}], "eval_samples": 4, "max_steps": 4, "batch_size": 4,
           "save_steps": 2, "save_total_limit": 5, "logging_steps": 1, "learning_rate": 5e-3, "max_new_tokens": 4, "seed": 0,
           "progress_bar": False, "output_dir": str(out)}
    if method != "dpo": cfg["rl"] = {"num_generations": 4, "rewards": ["exact_match", {"name": "cer", "weight": 0.5}]}
    for k, v in kw.items():
        if k == "rl": cfg["rl"] = {**cfg.get("rl", {}), **v}
        else: cfg[k] = v
    return cfg


def lora_b(folder: Path) -> torch.Tensor:
    w = load_file(folder / "adapter_model.safetensors")
    return torch.cat([v.flatten() for k, v in sorted(w.items()) if "lora_B" in k])


# --- runs of two families -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["qwen2_vl", "smolvlm"])
@pytest.mark.parametrize("method", ["grpo", "dpo"])
def test_a_short_run_moves_the_adapter_and_fills_the_run_folder(bases, tmp_path, arch, method):
    # A random tiny model never answers right: every answer of a group scores 0 on the task rewards, so the advantages are
    # 0 and nothing moves (TRL logs frac_reward_zero_std). A reward that differs within a group (the answer's length) does.
    (tmp_path / "lengths.py").write_text("def chars(completions, **kwargs):\n    return [len(c[0]['content']) / 10 for c in completions]\n")
    chars = f"{tmp_path / 'lengths.py'}:chars"
    result = train(rl_config(bases[arch], tmp_path / "run", method, **({"rl": {"rewards": ["exact_match", {"name": "cer", "weight": 0.5}, chars]}}
                                                                       if method == "grpo" else {})))
    out = tmp_path / "run"
    assert lora_b(out).abs().max() > 0  # LoRA's B starts at zero: any trained step moves it
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and m["steps"] == 4 and m["eval_samples"] == 4 and "accuracy" in m["after"]
    assert (out / "rewards.png").exists() and (out / "README.md").exists() and not (out / "ref").exists()
    assert [c.name for c in complete_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    history = json.loads((out / "history.json").read_text())
    if method == "grpo":
        assert {"reward", "rewards/exact_match/mean", "rewards/cer/mean"} <= set(history[0])
        assert m["trl"]["loss_type"] == "dapo" and m["trl"]["importance_sampling_level"] == "token" and m["trl"]["beta"] == 0.0
        rows = [json.loads(l) for l in (out / "generations.jsonl").read_text().splitlines()]
        assert rows and set(rows[0]["rewards"]) == {"exact_match", "cer", "chars"}
        assert all(r["reward"] == pytest.approx(r["rewards"]["exact_match"] + 0.5 * r["rewards"]["cer"] + len(r["answer"]) / 10) for r in rows)
        assert all(r["image"] and r["question"].startswith("What colour") for r in rows)
    else:
        assert {"rewards/margins", "rewards/accuracies"} <= set(history[0]) and m["trl"] == {"beta": 0.1, "loss_type": ["sigmoid"], "max_length": None}
    assert result.metrics["after"] == m["after"]


def test_gspo_is_grpo_with_sequence_ratios_and_the_papers_clipping(bases, tmp_path):
    # TRL's GSPO recipe: importance_sampling_level=sequence, loss_type=grpo, epsilon 3e-4, epsilon_high 4e-4.
    # Two passes over each batch (num_iterations 2), so the ratio is not 1 and sequence-level clipping is exercised.
    (tmp_path / "lengths.py").write_text("def chars(completions, **kwargs):\n    return [len(c[0]['content']) / 10 for c in completions]\n")
    train(rl_config(bases["qwen2_vl"], tmp_path / "run", "gspo", rl={"num_iterations": 2, "beta": 0.04,
                                                                      "rewards": ["exact_match", f"{tmp_path / 'lengths.py'}:chars"]}))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (m["trl"]["importance_sampling_level"], m["trl"]["loss_type"], m["trl"]["epsilon"], m["trl"]["epsilon_high"]) == ("sequence", "grpo", 3e-4, 4e-4)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert any("kl" in h for h in history)  # beta > 0: the KL term is computed and logged
    assert lora_b(tmp_path / "run").abs().max() > 0


def test_a_user_reward_from_a_file(bases, tmp_path):
    (tmp_path / "my_rewards.py").write_text("def short(completions, **kwargs):\n"
                                            "    return [1.0 if len(c[0]['content']) <= 3 else 0.0 for c in completions]\n")
    train(rl_config(bases["smolvlm"], tmp_path / "run", rl={"rewards": [f"{tmp_path / 'my_rewards.py'}:short"]}, max_steps=2))
    rows = [json.loads(l) for l in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert all(r["rewards"]["short"] == float(len(r["answer"]) <= 3) for r in rows)


def test_starting_from_an_sft_adapter(bases, tmp_path):
    sft = tmp_path / "sft"
    train({"base_model": str(bases["smolvlm"]), "datasets": [{"path": "synthetic:colour_shapes", "n": 16}], "max_steps": 2,
           "batch_size": 4, "output_dir": str(sft), "progress_bar": False})
    start = lora_b(sft)
    train(rl_config(bases["smolvlm"], tmp_path / "run", "dpo", init_adapter=str(sft)))
    after = lora_b(tmp_path / "run")
    assert start.shape == after.shape and not torch.equal(start, after)
    # the adapter only fits its own base model
    with pytest.raises(ConfigError, match="was trained on base_model"):
        preflight(make_config(rl_config(bases["qwen2_vl"], tmp_path / "other", "dpo", init_adapter=str(sft))))
    with pytest.raises(ConfigError, match="holds no LoRA adapter"):
        preflight(make_config(rl_config(bases["smolvlm"], tmp_path / "x", init_adapter=str(tmp_path))))


def test_a_killed_grpo_run_resumes_to_the_uninterrupted_adapter(bases, tmp_path):
    whole = rl_config(bases["qwen2_vl"], tmp_path / "whole", max_steps=10, rl={"beta": 0.04})
    train(whole)
    cut = tmp_path / "cut"; cut.mkdir()
    cfg = {**whole, "output_dir": str(cut / "run")}
    proc = launch(cut, cfg)
    t0 = time.time()
    while not complete_checkpoints(cut / "run"):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 240; time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()
    killed_at = int(complete_checkpoints(cut / "run")[-1].name.split("-")[1])
    assert killed_at < 10
    result = train({**cfg, "resume_from_checkpoint": True})
    assert result.metrics["resumed_from"] == killed_at and result.metrics["steps"] == 10
    a, b = load_file(tmp_path / "whole" / "adapter_model.safetensors"), load_file(cut / "run" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_sigterm_stops_a_dpo_run_with_a_checkpoint_and_exit_143(bases, tmp_path):
    cfg = rl_config(bases["smolvlm"], tmp_path / "run", "dpo", max_steps=60, save_steps=None)
    proc = launch(tmp_path, cfg)
    out = sigterm_at(proc, tmp_path)
    assert proc.returncode == 143 and "interrupted" in out, out[-3000:]
    done = complete_checkpoints(tmp_path / "run")
    assert len(done) == 1 and 3 <= int(done[0].name.split("-")[1]) < 60
    assert json.loads((tmp_path / "run" / "vlmnb-run.json").read_text())["status"] == "interrupted"


# --- the pre-flight -------------------------------------------------------------------------------------------------

def test_groups_must_divide_the_step(bases, tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size x gradient_accumulation_steps x processes = 6 x 1 x 1 = 6 answers"):
        preflight(make_config(rl_config(bases["smolvlm"], tmp_path / "r", batch_size=6)))


def test_prompts_without_room_to_answer_are_refused_by_index_or_skipped(bases, tmp_path):
    data = write_data(tmp_path, n=8, long_text=40)  # sample 2 asks a 40-word question
    cfg = rl_config(bases["smolvlm"], tmp_path / "r", datasets=[{"path": str(data)}], max_length=60, rl={"max_completion_length": 8})
    with pytest.raises(ConfigError, match=r"1 samples have no room to answer \(prompt \+ rl.max_completion_length over max_length=60 .*\): sample 2: \d+ tokens"):
        preflight(make_config(cfg))
    pf = preflight(make_config({**cfg, "on_bad_data": "skip"}))
    assert [(s["index"], s["kind"]) for s in pf.skipped] == [(2, "no_room")] and len(pf.rows) == 7 and 2 not in pf.rows["source_index"]
    assert pf.longest > 60


def test_dpo_counts_the_longer_answer(bases, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    long = "a very long rejected answer " * 10
    pairs.write_text("".join(json.dumps({"prompt": "Say hi", "chosen": "hi", "rejected": long if i == 1 else "bye"}) + "\n" for i in range(4)))
    cfg = rl_config(bases["smolvlm"], tmp_path / "r", "dpo", datasets=[{"path": str(pairs)}], eval_datasets=[], eval_samples=0, max_length=40)
    with pytest.raises(ConfigError, match=r"prompt \+ longer answer over max_length=40 .*\): sample 1: .* shorten those answers"):
        preflight(make_config(cfg))


def test_rewards_are_checked_before_anything_trains(bases, tmp_path):
    for rewards, says in (([], "rl.rewards is empty"), (["format"], "needs rl.answer_tags"),
                          (["nope_module.fn"], "importing nope_module failed"), (["vqa_accuracy"], "Use vqa_exact_match")):
        with pytest.raises(ConfigError, match=says):
            preflight(make_config(rl_config(bases["smolvlm"], tmp_path / "r", rl={"rewards": rewards})))


def test_paligemma_is_refused_for_rl(tmp_path):
    tiny_model("paligemma", tmp_path / "pg", seed=0)
    with pytest.raises(ConfigError, match="PaliGemma has no chat template"):
        preflight(make_config(rl_config(tmp_path / "pg", tmp_path / "r")))


def test_vlmnb_validate_covers_rl(bases, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**rl_config(bases["qwen2_vl"], tmp_path / "r"), "method": "grpo"}))
    assert main(["validate", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "grpo: 4 answers to each prompt, 1 prompt a step" in out and "rewards exact_match x1, cer x0.5" in out


# --- config keys ----------------------------------------------------------------------------------------------------

def base_cfg(**kw) -> dict:
    return {"base_model": "tiny:smolvlm", "datasets": [{"path": "synthetic:colour_shapes"}], **kw}


def test_contradictions_name_the_keys():
    cases = [({"rl": {"num_generations": 2}}, "rl.num_generations: these apply to method grpo, gspo or dpo"),
             ({"method": "dpo", "rl": {"rewards": ["anls"]}}, "rl.rewards: GRPO settings"),
             ({"method": "grpo", "packing": True}, "packing: method grpo"),
             ({"method": "grpo", "rl": {"num_generations": 1}}, "at least 2 answers"),
             ({"method": "grpo", "rl": {"temperature": 0}}, "temperature > 0"),
             ({"method": "grpo", "rl": {"answer_tags": ["<a>"]}}, "opening and a closing tag"),
             ({"method": "grpo", "init_adapter": "x", "lora": {"r": 8}}, "lora and init_adapter"),
             ({"method": "gspo", "rl": {"num_generation": 4}}, "unknown key 'rl.num_generation'; did you mean 'num_generations'")]
    for extra, says in cases:
        with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(".", r"\.")): make_config(base_cfg(**extra))
    assert make_config(base_cfg(rl="gspo")).method == "gspo"  # `rl: gspo` in a vlmnb config is the method


AXOLOTL = dict(base_model="tiny:smolvlm", adapter="lora", datasets=[{"path": "synthetic:colour_shapes"}])


def test_axolotl_grpo_keys():
    # Axolotl 0.19 (schemas/trl.py): the `trl:` section carries GRPO's settings; reward_funcs are dotted module.function
    # names importable from the working directory; reward_weights one per function; GSPO is rl: grpo with
    # trl.importance_sampling_level: sequence (Axolotl has no rl: gspo); scale_rewards may be a bool.
    c = make_config({**AXOLOTL, "rl": "grpo", "trl": {"beta": 0.001, "num_generations": 2, "max_completion_length": 128,
                                                        "temperature": 0.7, "top_p": 0.95, "use_vllm": False, "scale_rewards": True,
                                                        "reward_funcs": ["rwd.format_reward", "rwd.correctness_reward"],
                                                        "reward_weights": [1.0, 2.0], "log_completions": True,
                                                        "importance_sampling_level": "sequence", "loss_type": "dr_grpo"}})
    assert c.method == "gspo"
    assert (c.rl.beta, c.rl.num_generations, c.rl.max_completion_length, c.rl.temperature, c.rl.top_p, c.rl.scale_rewards,
            c.rl.loss_type) == (0.001, 2, 128, 0.7, 0.95, "group", "dr_grpo")
    assert [(r.name, r.weight) for r in c.rl.rewards] == [("rwd.format_reward", 1.0), ("rwd.correctness_reward", 2.0)]
    for bad, says in (({"trl": {"use_vllm": True}}, "trl.use_vllm"), ({"trl": {"entropy_coef": 0.1}}, "trl.entropy_coef: not a GRPO setting"),
                      ({"trl": {"reward_funcs": ["a.b", "c.d"], "reward_weights": [1.0]}}, "1 weights for 2 reward_funcs")):
        with pytest.raises(ConfigError, match=says): make_config({**AXOLOTL, "rl": "grpo", **bad})


def test_axolotl_dpo_keys_and_its_example_dataset_block():
    # Axolotl's examples/qwen2/dpo.yaml: rl: dpo, a dataset of type chat_template.default with field_messages: conversation,
    # field_chosen/field_rejected and a roles mapping with the usual names. Beta: trl.beta, else rl_beta (dpo_beta is its
    # deprecated name); dpo_loss_type is a list; rl: ipo is DPO with the ipo loss.
    c = make_config({**AXOLOTL, "rl": "dpo", "rl_beta": 0.2, "dpo_loss_type": ["hinge"],
                     "datasets": [{"path": "org/prefs", "type": "chat_template.default", "field_messages": "conversation",
                                   "field_chosen": "chosen", "field_rejected": "rejected",
                                   "roles": {"user": ["user"], "assistant": ["assistant"], "system": ["system"]}}]})
    assert (c.method, c.rl.beta, c.rl.loss_type) == ("dpo", 0.2, "hinge")
    assert c.datasets[0].column_map == {"conversation": "messages"}
    assert make_config({**AXOLOTL, "rl": "ipo", "dpo_beta": 0.3}).rl.model_dump(include={"beta", "loss_type"}) == {"beta": 0.3, "loss_type": "ipo"}
    assert make_config({**AXOLOTL, "rl": "dpo", "datasets": [{"path": "x.jsonl", "type": "chatml.intel"}]}).method == "dpo"
    assert make_config({**AXOLOTL, "rl": "dpo", "lora_model_dir": "outputs/sft"}).init_adapter == "outputs/sft"
    for bad, says in (({"rl": "kto"}, "rl='kto'"), ({"rl": "gdpo"}, "rl='gdpo'"), ({"rl": "dpo", "dpo_loss_type": ["sigmoid", "sft"]}, "one DPO loss"),
                      ({"rl": "grpo", "datasets": [{"path": "openai/gsm8k", "type": "rwd.gsm8k_transform"}]}, "not a transform function"),
                      ({"rl": "dpo", "datasets": [{"path": "x", "type": "chat_template.default", "roles": {"user": ["narrator"]}}]}, "narrator->user"),
                      ({"rl_beta": 0.1}, "RL settings without rl:")):
        with pytest.raises(ConfigError, match=says): make_config({**AXOLOTL, **bad})


# --- preference data ------------------------------------------------------------------------------------------------

def test_preference_layouts_of_real_datasets(tmp_path):
    # HuggingFaceH4/rlaif-v_formatted: `images` (a list), conversational `prompt`, `chosen`, `rejected`.
    # openbmb/RLAIF-V-Dataset: `image`, `question`, `chosen`, `rejected` (strings), plus metadata columns.
    from PIL import Image
    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    rows = [{"images": ["a.png"], "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
             "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}]},
            {"image": "a.png", "question": "Colour?", "chosen": "Red.", "rejected": "Blue.", "ds_name": "x", "origin_dataset": "y"},
            {"image": "a.png", "question": "Colour?", "chosen": "Red.", "rejected": "Red."},
            {"image": "missing.png", "question": "Colour?", "chosen": "Red.", "rejected": "Blue."}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds, report = prepare(tmp_path / "p.jsonl", layout="preference", on_error="skip")
    assert len(ds) == 2 and ds[0]["messages"] == ds[1]["messages"] and ds[0]["rejected"] == "Blue."
    assert [(p.index, p.kind) for p in report.problems] == [(2, "same_answer"), (3, "missing_file")]
    # the prepared-data cache keeps the layout apart
    again, _ = prepare(tmp_path / "p.jsonl", layout="preference", on_error="skip", cache=True)
    again, _ = prepare(tmp_path / "p.jsonl", layout="preference", on_error="skip", cache=True)
    assert again.with_format(None).to_list() == ds.with_format(None).to_list()
    sft, _ = prepare(tmp_path / "p.jsonl", on_error="skip", cache=True)
    assert "rejected" not in sft.column_names


@pytest.mark.online
def test_a_real_hub_preference_dataset_streams_into_dpo_rows():
    from vlmnb.rl import dpo_rows
    ds, report = load_data("HuggingFaceH4/rlaif-v_formatted", split="train[:4]", streaming=True, layout="preference")
    rows = dpo_rows(ds)
    assert len(rows) == 4 and rows[0]["images"] and rows[0]["chosen"][0]["role"] == "assistant"
    ds, _ = load_data("openbmb/RLAIF-V-Dataset", split="train[:4]", streaming=True, layout="preference")
    assert len(ds) == 4 and all(r for r in ds["rejected"])
