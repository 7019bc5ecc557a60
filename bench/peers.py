#!/usr/bin/env python
"""Other fine-tuning tools in the benchmark: LLaMA-Factory, ms-swift and Axolotl, each in a virtualenv and a process of its own.

    python bench/peers.py install [--peers llamafactory,ms-swift,axolotl]      # once: venvs under $VLMNB_PEERS
    python bench/peers.py run --workdir WORK [--peers ...] [--check-isolation] [--results DIR]
                                               # after `bench/vs_trl.py --workdir WORK` made WORK's model, data and peaks

Each peer gets what `bench/vs_trl.py` gives vlmnb and TRL: the same randomly-initialised model (WORK/model), the same
training samples (WORK/train/samples.jsonl, converted to the peer's own data layout), the same LoRA (rank, alpha, the
language model's q/k/v/o/gate/up/down projections, dropout 0), learning rate, batch size, seed, one epoch, linear schedule,
activation checkpointing off. It is measured inside its own process the way `vs_trl.Meter` measures vlmnb and TRL: a
`sitecustomize` that this file writes patches `transformers.Trainer.get_batch_samples` (fetch time, real tokens, samples,
padding) and adds a callback to every Trainer (train wall time, peak RSS, trainable parameters). The held-out loss of the
peer's adapter is then computed here, in vlmnb's environment, by `vs_trl.heldout_loss`.

Qwen2-VL's model folder names vlmnb's image-only processor (no torchvision anywhere): each peer process registers it
through `vlmnb.load` (the repo root is on its PYTHONPATH) where vlmnb imports with the peer's transformers (LLaMA-Factory's
5.6), else through a class built here by the same means as `vlmnb.load.image_only` (ms-swift's 5.19 and Axolotl's 5.16,
where importing vlmnb.load fails on a processor class those versions cannot import); each report says which
(`image_only_processor`).

No peer is a vlmnb dependency. torch stays at the version of this environment's (2.13.0) in every venv (a constraints
file); torchvision is never installed. Nothing at module level imports more than the standard library: the peers'
processes load this file too (for the token counting).
"""
from __future__ import annotations

import argparse, functools, json, math, os, signal, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "2.13.0"
VERSION_KEYS = ("transformers", "peft", "trl", "accelerate", "datasets", "torch")

def peers_home() -> Path:
    "Where the peers' venvs live: $VLMNB_PEERS, else ~/.cache/vlmnb-peers."
    return Path(os.environ.get("VLMNB_PEERS") or Path.home()/".cache"/"vlmnb-peers")

# ---------------------------------------------------------------- the peers, and how each is installed on a CPU machine
# LLaMA-Factory's own requirements pin torch-family packages that pip would take as CUDA 2.14 builds: installed without its
# dependencies, then its declared requirements less torch, torchvision and torchaudio (its multimodal plugin imports
# torchaudio at module level, for audio only: a stub package stands in). gradio is left out too: only its web UI imports
# it, and pip backtracks through dozens of 50 MB gradio releases for it. ms-swift installs as it is. Axolotl's full
# requirement list brings GPU-only kernels (kernels, xformers, flash-attn, liger, torchao): installed without its
# dependencies, then the pinned subset its SFT path imports (its == pins for transformers, peft, trl, accelerate, datasets).
AXOLOTL_REQUIREMENTS = [
    "transformers==5.16.1", "peft==0.20.0", "trl==1.9.0", "accelerate==1.13.0", "datasets==4.8.4", "huggingface_hub==1.17.0",
    "tokenizers==0.23.1", "packaging==26.0", "typing-extensions==4.15.0", "optimum==1.16.2", "pydantic==2.12.5", "PyYAML==6.0.3",
    "python-dotenv==1.0.1", "zstandard==0.22.0", "axolotl-contribs-lgpl==0.0.7", "axolotl-contribs-mit==0.0.6", "sentencepiece",
    "addict", "fire", "requests", "einops", "colorama", "numpy>=2.1,<3.0", "scipy", "art", "fastcore", "pillow",
    # imported on its training path though not in the subset above: telemetry, numba, the CPU build of bitsandbytes,
    # triton (imported, never run on CPU), evaluate, the loggers it imports even when off, the NVML bindings
    "posthog", "numba", "bitsandbytes==0.50.2", "triton==3.9.0", "evaluate==0.4.1", "wandb", "tensorboard", "nvidia-ml-py"]

PEERS = {
    "llamafactory": {"package": "llamafactory", "version": "0.9.5", "settings": ("unpacked", "neat_packing"),
                     "no_deps": True, "requirements": "metadata", "drop": ("torch", "torchvision", "torchaudio", "gradio"),
                     "stub_torchaudio": True},
    "ms-swift": {"package": "ms-swift", "version": "4.6.0", "settings": ("unpacked",), "no_deps": False,
                 # Qwen2-VL: swift's template calls qwen_vl_utils (its dependencies would bring torchvision)
                 "extra_no_deps": ["qwen-vl-utils==0.0.14"]},
    "axolotl": {"package": "axolotl", "version": "0.19.0", "settings": ("unpacked",), "no_deps": True,
                "requirements": AXOLOTL_REQUIREMENTS},
}
WHY_NOT = {  # settings a peer has but that cannot run here: said in the report when asked for (messages seen on this machine)
    ("ms-swift", "packing"): 'ms-swift 4.6 refuses packing and padding_free without flash-attention (CUDA only): "ValueError: The '
                             '"packing" feature requires a flash attention implementation."; with that check bypassed, its sdpa '
                             'batches are not isolated (packed samples attend to each other)',
    ("axolotl", "packing"): "Axolotl 0.19 has no sample packing for multimodal datasets (they need skip_prepare_dataset, so there "
                            "are no token lengths to pack by): sample_packing: true stops with \"ValueError: Column 'input_ids' "
                            "doesn't exist.\"",
}

def venv_dir(name: str, home: Path | None = None) -> Path: return (home or peers_home())/name/"venv"
def venv_python(name: str, home: Path | None = None) -> Path: return venv_dir(name, home)/"bin"/"python"
def stamp_file(name: str, home: Path | None = None) -> Path: return (home or peers_home())/name/"installed.json"

def _run(cmd: list, log: Path, **kw) -> None:
    "Run `cmd`, appending its output to `log`; raise with the log's end when it fails."
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n"); f.flush()
        done = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, **kw)
    if done.returncode:
        tail = "".join(open(log).readlines()[-25:])
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (exit {done.returncode}); end of {log}:\n{tail}")

def _declared_requirements(python: Path, package: str, drop: tuple) -> list[str]:
    "The installed `package`'s own requirements (no extras), less the ones in `drop`, as pip lines."
    code = ("import importlib.metadata as m, json, sys; "
            f"print(json.dumps([r for r in (m.requires({package!r}) or []) if 'extra ==' not in r]))")
    reqs = json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)
    def name(r): return re.split(r"[<>=!~;\[ (]", r, 1)[0].strip().lower().replace("_", "-")
    return [r.split(";")[0].strip() if "python_version" not in r else r for r in reqs if name(r) not in drop]

TORCHAUDIO_STUB = '''"""Stand-in for torchaudio, written by vlmnb's bench/peers.py: the real CPU wheel of the version a peer pins needs
CUDA libraries; the peer imports torchaudio at module level and uses it only for audio, which the benchmark has none of."""
__version__ = "0.0.0+vlmnb.stub"
def __getattr__(name):
    raise ImportError(f"torchaudio is a stub in this venv (no audio here): torchaudio.{name}")
'''

def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return Path(out)

def versions(python: Path, package: str) -> dict:
    "The versions of the peer and of the libraries it trains with, in the venv of `python`."
    code = ("import importlib.metadata as m, json\n"
            "def v(n):\n try: return m.version(n)\n except m.PackageNotFoundError: return None\n"
            f"print(json.dumps({{n: v(n) for n in {[package, *VERSION_KEYS]!r}}}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    found = json.loads(out)
    return {"peer": found.pop(package), **found}

def install(name: str, home: Path | None = None, force: bool = False, log=print) -> dict:
    "Install peer `name` into its own venv (idempotent: a stamp file with its versions makes a second call a no-op)."
    home = home or peers_home()
    spec, stamp = PEERS[name], stamp_file(name, home)
    if stamp.exists() and venv_python(name, home).exists() and not force:
        log(f"{name}: already installed ({stamp})")
        return json.loads(stamp.read_text())
    (home/name).mkdir(parents=True, exist_ok=True)
    pin = home/"torch-pin.txt"
    pin.write_text(f"torch=={TORCH}\n")
    pip_log = home/name/"pip-install.log"
    t0 = time.time()
    if not venv_python(name, home).exists():
        _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv_dir(name, home)], pip_log)
    py = venv_python(name, home)
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-c", pin]
    log(f"{name}: installing into {venv_dir(name, home)} (log: {pip_log})")
    _run(pip + [f"torch=={TORCH}"], pip_log)  # first, on its own: the CPU build this machine has
    target = f"{spec['package']}=={spec['version']}"
    if spec["no_deps"]:
        _run(pip + ["--no-deps", target], pip_log)
        reqs = spec["requirements"]
        if reqs == "metadata": reqs = _declared_requirements(py, spec["package"], spec.get("drop", ()))
        (home/name/"requirements.txt").write_text("\n".join(reqs) + "\n")
        _run(pip + ["-r", home/name/"requirements.txt"], pip_log)
    else:
        _run(pip + [target], pip_log)
    if spec.get("extra_no_deps"): _run(pip + ["--no-deps", *spec["extra_no_deps"]], pip_log)
    if spec.get("stub_torchaudio"):
        stub = _site_packages(py)/"torchaudio"
        stub.mkdir(exist_ok=True); (stub/"__init__.py").write_text(TORCHAUDIO_STUB)
    found = versions(py, spec["package"])
    problems = []
    if found["torch"] != TORCH and not str(found["torch"]).startswith(TORCH + "+"): problems.append(f"torch is {found['torch']}, not {TORCH}")
    if found["peer"] != spec["version"]: problems.append(f"{spec['package']} is {found['peer']}, not {spec['version']}")
    code = "import importlib.util as u; print(*[n for n in ('torchvision', 'kernels') if u.find_spec(n)])"
    unwanted = subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.split()
    if unwanted: problems.append(f"{' and '.join(unwanted)} got installed (never wanted here)")
    if problems: raise RuntimeError(f"{name}: " + "; ".join(problems) + f" (see {pip_log})")
    info = {"peer": name, "package": spec["package"], "versions": found, "venv": str(venv_dir(name, home)),
            "install_s": round(time.time() - t0, 1), "torchaudio_stub": bool(spec.get("stub_torchaudio"))}
    stamp.write_text(json.dumps(info, indent=1))
    log(f"{name}: installed {found}")
    return info

def write_versions(home: Path | None = None) -> Path:
    "Gather every installed peer's stamp into $VLMNB_PEERS/versions.json."
    home = home or peers_home()
    out = {n: json.loads(stamp_file(n, home).read_text())["versions"] for n in PEERS if stamp_file(n, home).exists()}
    (home/"versions.json").write_text(json.dumps(out, indent=1))
    return home/"versions.json"


# ---------------------------------------------------------------- the benchmark's samples in each peer's data layout
# The bench's canonical row: {"messages": [{"role", "content": [{"type": "image"} | {"type": "text", "text"}]}], "images": [path]}
# (the images fill the {"type": "image"} slots in order).
IMAGE = "<image>"  # LLaMA-Factory's and ms-swift's placeholder in a text turn

def _parts_to_text(content) -> str:
    if isinstance(content, str): return content
    return "".join(IMAGE if c["type"] == "image" else c["text"] for c in content)

def _text_to_parts(text: str) -> list[dict]:
    parts = []
    for i, piece in enumerate(text.split(IMAGE)):
        if i: parts.append({"type": "image"})
        if piece: parts.append({"type": "text", "text": piece})
    return parts

def to_placeholder_rows(rows: list[dict]) -> list[dict]:
    "LLaMA-Factory (sharegpt) and ms-swift: each turn's content one string, `<image>` where an image goes; paths in `images`."
    for r in rows:
        if any(IMAGE in c.get("text", "") for m in r["messages"] if not isinstance(m["content"], str) for c in m["content"]):
            raise ValueError(f"a sample's text contains {IMAGE!r}, the placeholder the peer reads as an image")
    return [{"messages": [{"role": m["role"], "content": _parts_to_text(m["content"])} for m in r["messages"]],
             "images": list(r.get("images", []))} for r in rows]

def from_placeholder_rows(rows: list[dict]) -> list[dict]:
    return [{"messages": [{"role": m["role"], "content": _text_to_parts(m["content"])} for m in r["messages"]],
             "images": list(r.get("images", []))} for r in rows]

def to_axolotl_rows(rows: list[dict]) -> list[dict]:
    "Axolotl (chat_template, multimodal): content lists whose image parts carry their own `path`; no `images` column."
    out = []
    for r in rows:
        paths = iter(r.get("images", []))
        out.append({"messages": [{"role": m["role"], "content": [
            {"type": "image", "path": str(next(paths))} if c["type"] == "image" else {"type": "text", "text": c["text"]}
            for c in m["content"]]} for m in r["messages"]]})
        if next(paths, None) is not None: raise ValueError("a sample has more images than image slots")
    return out

def from_axolotl_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        images = [c["path"] for m in r["messages"] for c in m["content"] if c["type"] == "image"]
        out.append({"messages": [{"role": m["role"], "content": [{"type": "image"} if c["type"] == "image" else dict(c)
                                                                  for c in m["content"]]} for m in r["messages"]],
                    "images": images})
    return out

LF_DATASET = "vlmnb_bench"

def write_data(peer: str, samples: Path, out: Path) -> Path:
    "Convert the bench's samples.jsonl into `peer`'s layout under `out`; return what the peer's config names."
    rows = [json.loads(l) for l in samples.read_text().splitlines() if l.strip()]
    out.mkdir(parents=True, exist_ok=True)
    if peer == "llamafactory":
        (out/"train.json").write_text(json.dumps(to_placeholder_rows(rows)))
        (out/"dataset_info.json").write_text(json.dumps({LF_DATASET: {
            "file_name": "train.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}, indent=1))
        return out
    converted = to_placeholder_rows(rows) if peer == "ms-swift" else to_axolotl_rows(rows)
    path = out/("swift.jsonl" if peer == "ms-swift" else "axolotl.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in converted))
    return path

# ---------------------------------------------------------------- each peer's config, from the run settings
TEMPLATES = {  # case -> the peer's own name for the family's chat format
    "llamafactory": {"llava": "llava", "qwen2-vl": "qwen2_vl"},
    "ms-swift": {"llava": "llava1_5_hf", "qwen2-vl": "qwen2_vl"},  # also swift's model_type
    "axolotl": {"llava": "llava", "qwen2-vl": "qwen2_vl"},
}
LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AXOLOTL_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj"

def settings_for(args) -> dict:
    "The run settings every peer gets, from the bench's arguments (vs_trl's matched comparison: dropout 0, no checkpointing)."
    return {"batch_size": args.batch_size, "lr": args.lr, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "seed": args.seed,
            "bf16": bool(getattr(args, "bf16", True)), "optim": getattr(args, "optim", "adamw_torch_fused"),
            "max_length": getattr(args, "max_length", 4096), "pack_length": getattr(args, "pack_length", 2048),
            "cpu": not _has_cuda()}

def make_config(peer: str, setting: str, case: str, model: Path, data: Path, out: Path, s: dict) -> dict:
    "The peer's configuration (a dict: YAML keys, or `swift sft` flags) for one run."
    if (peer, "packing") in WHY_NOT and setting != "unpacked": raise ValueError(WHY_NOT[(peer, "packing")])
    if setting not in PEERS[peer]["settings"]: raise ValueError(f"{peer} has no setting {setting!r} (known: {PEERS[peer]['settings']})")
    template = TEMPLATES[peer][case]
    if peer == "llamafactory":
        packed = setting == "neat_packing"
        c = {"model_name_or_path": str(model), "trust_remote_code": False, "flash_attn": "sdpa",
             "stage": "sft", "do_train": True, "finetuning_type": "lora",
             # "all": every linear layer of the language model (the vision tower and projector are frozen by default)
             "lora_target": "all", "lora_rank": s["lora_r"], "lora_alpha": s["lora_alpha"], "lora_dropout": 0.0,
             "dataset_dir": str(data), "dataset": LF_DATASET, "template": template,
             "cutoff_len": s["pack_length"] if packed else s["max_length"],
             "image_max_pixels": 28 * 28 * 1280, "image_min_pixels": 28 * 28,  # the processor's own bounds: no resizing by LF
             "overwrite_cache": True, "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
             "output_dir": str(out), "overwrite_output_dir": True, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
             "plot_loss": False, "disable_tqdm": True,
             # a packed row holds several samples: one row per step, about as many tokens as an unpacked batch
             "per_device_train_batch_size": 1 if packed else s["batch_size"], "gradient_accumulation_steps": 1,
             "num_train_epochs": 1.0, "learning_rate": s["lr"], "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
             "optim": s["optim"], "bf16": s["bf16"], "fp16": False, "seed": s["seed"], "data_seed": s["seed"],
             "disable_gradient_checkpointing": True,  # LLaMA-Factory turns checkpointing on unless told
             "use_cpu": s["cpu"]}
        if packed: c.update(packing=True, neat_packing=True)
        return c
    if peer == "ms-swift":
        return {"model": str(model), "model_type": template, "template": template, "dataset": str(data),
                "split_dataset_ratio": 0, "dataset_num_proc": 1, "max_length": s["max_length"],
                "tuner_type": "lora", "lora_rank": s["lora_r"], "lora_alpha": s["lora_alpha"], "lora_dropout": 0.0,
                "target_modules": "all-linear",  # the language model's linear layers (vision tower and aligner frozen)
                "per_device_train_batch_size": s["batch_size"], "gradient_accumulation_steps": 1, "num_train_epochs": 1,
                "learning_rate": s["lr"], "lr_scheduler_type": "linear", "warmup_ratio": 0.0, "optim": s["optim"],
                "torch_dtype": "float32", "bf16": s["bf16"],  # fp32 weights, bf16 autocast: as vlmnb and TRL
                "fp16": False,
                "gradient_checkpointing": False, "attn_impl": "sdpa", "check_model": False, "use_cpu": s["cpu"], "seed": s["seed"], "data_seed": s["seed"],
                "logging_steps": 1, "eval_strategy": "no", "save_strategy": "epoch", "save_only_model": True, "save_total_limit": 1, "report_to": "none",
                "dataloader_num_workers": 0, "output_dir": str(out), "add_version": False, "disable_tqdm": True}
    return {"base_model": str(model), "processor_type": "AutoProcessor", "skip_prepare_dataset": True, "remove_unused_columns": False,
            "sample_packing": False, "chat_template": template,
            "datasets": [{"path": str(data), "ds_type": "json", "type": "chat_template", "field_messages": "messages"}],
            "val_set_size": 0, "sequence_len": s["max_length"], "adapter": "lora", "lora_r": s["lora_r"], "lora_alpha": s["lora_alpha"],
            "lora_dropout": 0.0, "lora_target_modules": AXOLOTL_TARGETS, "micro_batch_size": s["batch_size"],
            "gradient_accumulation_steps": 1, "num_epochs": 1, "learning_rate": s["lr"], "optimizer": s["optim"],
            "lr_scheduler": "linear", "warmup_steps": 0, "bf16": s["bf16"], "fp16": False, "tf32": False,
            "attn_implementation": "sdpa", "gradient_checkpointing": False, "logging_steps": 1, "save_strategy": "no",
            "output_dir": str(out), "dataset_prepared_path": str(out/"prepared"), "seed": s["seed"],
            # the fused LoRA kernels are Triton (GPU only) and come on by themselves for `adapter: lora`
            "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False, "lora_embedding_kernel": False}

def to_yaml(config: dict) -> str:
    "YAML for a flat-ish config: every value written as JSON, which YAML reads as the same value."
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items())

def to_flags(config: dict) -> list[str]:
    return [a for k, v in config.items() for a in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))]

def command(peer: str, config: dict, run_dir: Path, home: Path) -> list[str]:
    "The peer's training command for `config` (the YAML is written to `run_dir`)."
    bin_ = venv_dir(peer, home)/"bin"
    if peer == "ms-swift": return [str(bin_/"swift"), "sft", *to_flags(config)]
    path = run_dir/("config.yaml" if peer == "llamafactory" else "config.yml")
    path.write_text(to_yaml(config))
    if peer == "llamafactory": return [str(bin_/"llamafactory-cli"), "train", str(path)]
    return [str(bin_/"axolotl"), "train", str(path), "--launcher", "python"]

# ---------------------------------------------------------------- counting a batch: real tokens, samples, images
def _allowed(mask4d):
    "A 4D attention mask (batch, 1, query, key) as booleans: True where a query may attend to a key."
    import torch
    m = mask4d[:, 0]
    if m.dtype == torch.bool: return m
    if m.is_floating_point() and float(m.min()) < 0: return m > float(m.min()) / 2  # additive: 0 allowed, a large negative not
    return m != 0

def _sample_ids(batch):
    "Per row, which sample each position belongs to (1, 2, ... within the row; 0 for padding)."
    import torch
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        if int(mask.max()) <= 1: return (mask != 0).long()
        return mask.long()  # sample indices (flash-attention packing); 0 is padding
    if mask is not None and mask.dim() == 4:
        allowed = _allowed(mask)
        real = allowed.diagonal(dim1=1, dim2=2)  # a real token may attend to itself; padding attends to nothing
        after = torch.zeros_like(real)
        after[:, 1:] = allowed[:, 1:, :-1].diagonal(dim1=1, dim2=2)  # token i may attend to token i-1
        return torch.cumsum((real & ~after).long(), 1) * real
    pos = batch.get("position_ids")
    if pos is None: raise ValueError("a batch without an attention mask needs position ids to tell its samples apart")
    if pos.dim() == 3: pos = pos[0]  # multimodal RoPE (sections, rows, length): the first section restarts with each sample
    if pos.shape != ids.shape: raise ValueError(f"position ids {tuple(pos.shape)} do not match input ids {tuple(ids.shape)}")
    return torch.cumsum((pos == 0).long(), 1)

def count_batch(batch, image_token_id: int | None = None, merge: int = 4, per_image: int | None = None) -> dict:
    """Real (non-padding) tokens per sample in one batch as a Trainer fetches it, however it is laid out: a 2D 0/1 mask (one
    sample a row), a 2D mask of sample indices (1, 2, ... per packed sample, 0 padding), a 4D mask (packed samples kept
    apart: a token is real when it may attend to itself, a sample starts where a token may not attend to the one before),
    or no mask (padding-free: a sample starts where the position ids restart at 0). Real tokens are vlmnb's definition:
    prompt and answer tokens, image tokens included. Also: the token positions the batch holds, and its images. With
    `image_token_id`, also the image tokens the batch holds against those its images have (an `image_grid_thw`'s patches /
    `merge`, or `per_image` each, LLaVA): a peer that does not expand its image placeholders trains on less than the
    images (see ms-swift's Qwen2-VL template)."""
    ids = batch["input_ids"]
    rows, length = ids.shape
    seg = _sample_ids(batch)
    tokens = []
    for r in range(rows):
        real = seg[r][seg[r] > 0]
        tokens += [t for t in (real.bincount().tolist()[1:] if len(real) else []) if t > 0]
    grid, pixels = batch.get("image_grid_thw"), batch.get("pixel_values")
    out = {"tokens": tokens, "positions": rows * length, "grid": grid.tolist() if grid is not None else None,
           "images": int(grid.shape[0]) if grid is not None else (int(pixels.shape[0]) if pixels is not None else 0)}
    if image_token_id is not None and (grid is not None or per_image):
        out["image_tokens"] = int(((ids == image_token_id) & (seg > 0)).sum())
        out["image_tokens_expected"] = (sum(int(t * h * w) // merge for t, h, w in grid.tolist()) if grid is not None
                                        else out["images"] * per_image)
    return out

def batch_flops(sizes: dict, counted: dict) -> float:
    "Training FLOPs of one counted batch, by vs_trl.train_flops (the same count as vlmnb's and TRL's runs)."
    vs_trl = _vs_trl()
    if counted["grid"] is not None:  # Qwen2-VL: patches per image, merged 2x2 into image tokens
        patches = [t * h * w for t, h, w in counted["grid"]]
        image_tokens = sum(patches) // 4
    else:  # LLaVA: a fixed square of patches per image (+1 class token in the vision tower)
        side = sizes["image_side"] // sizes["patch"]
        patches, image_tokens = [side * side + 1] * counted["images"], side * side * counted["images"]
    return vs_trl.train_flops(sizes, counted["tokens"], patches, image_tokens)

def _vs_trl():
    import importlib.util
    if "vs_trl" in sys.modules: return sys.modules["vs_trl"]
    spec = importlib.util.spec_from_file_location("vs_trl", Path(__file__).with_name("vs_trl.py"))
    mod = importlib.util.module_from_spec(spec); sys.modules["vs_trl"] = mod; spec.loader.exec_module(mod)
    return mod

# ---------------------------------------------------------------- inside a peer's process (loaded by the generated sitecustomize)
SITECUSTOMIZE = '''# Written by vlmnb's bench/peers.py for one peer run: registers vlmnb's image-only Qwen2-VL processor when asked, and
# measures the training the way bench/vs_trl.py measures vlmnb and TRL. All of it is in peers.py's in_peer_process().
import os, sys
try:
    import importlib.util as _u
    _spec = _u.spec_from_file_location("_vlmnb_bench_peers", os.environ["VLMNB_PEERS_FILE"])
    _mod = _u.module_from_spec(_spec); sys.modules[_spec.name] = _mod; _spec.loader.exec_module(_mod)
    _mod.in_peer_process()
except Exception as _e:  # never break the interpreter's start-up: the run then reports what is missing
    print(f"vlmnb peers sitecustomize: {_e!r}", file=sys.stderr)
'''

IMAGE_ONLY_SHIM = "shim"  # in_peer_process records which registration served: "vlmnb.load" or this, with why

def register_image_only() -> str:
    """Register the image-only Qwen2-VL processor the model folder names (`Qwen2VLImageOnlyProcessor`). First choice:
    vlmnb's own (`import vlmnb.load`, the repo root being on PYTHONPATH). If vlmnb cannot be imported in the peer's venv
    (its transformers is older than vlmnb's), the same class built by the same means as `vlmnb.load.image_only`."""
    try:
        import vlmnb.load  # noqa: F401  registers every image-only processor with AutoProcessor
        return "vlmnb.load"
    except Exception as e:
        why = f"{type(e).__name__}: {e}"
    import inspect
    from transformers import AutoProcessor, PretrainedConfig, Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin
    family = Qwen2VLProcessor
    class _NoVideo(ProcessorMixin):
        def __init__(self, *args, **kwargs):
            kwargs.update(zip(family.get_attributes(), args)); kwargs.pop("video_processor", None)
            ProcessorMixin.__init__(self, **kwargs)
        @classmethod
        def get_attributes(cls): return [a for a in family.get_attributes() if a != "video_processor"]
    named = [p for n, p in list(inspect.signature(family.__init__).parameters.items())[1:]
             if n != "video_processor" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    head = ", ".join(p.name if p.default is p.empty else f"{p.name}=_defaults[{p.name!r}]" for p in named)
    ns = {"_defaults": {p.name: p.default for p in named}, "_family": family}
    exec(f"def __init__(self, {head}, **kwargs): _family.__init__(self, {', '.join(f'{p.name}={p.name}' for p in named)}, "
         "video_processor=None, **kwargs)", ns)
    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)
    cls = type("Qwen2VLImageOnlyProcessor", (family, _NoVideo), {"__init__": ns["__init__"], "apply_chat_template": apply_chat_template})
    key = type("_Qwen2VLImageOnlyProcessorKey", (PretrainedConfig,), {"model_type": "_vlmnb_qwen2vlimageonlyprocessor"})
    AutoProcessor.register(key, cls, exist_ok=True)
    return f"{IMAGE_ONLY_SHIM} (vlmnb not importable here: {why[:300]})"

def import_qwen_vl_utils() -> None:
    """ms-swift's Qwen2-VL template imports qwen_vl_utils, whose module level imports torchvision (used for video only):
    import it once against throwaway torchvision stand-ins, removed right after so that transformers still sees none."""
    import enum, types
    names = ("torchvision", "torchvision.io", "torchvision.transforms")
    saved = {n: sys.modules.get(n) for n in names}
    tv, io, tr = (types.ModuleType(n) for n in names)
    tv.__version__, tv.io, tv.transforms = "0.0.0+stub", io, tr
    tr.InterpolationMode = enum.Enum("InterpolationMode", {"NEAREST": "nearest", "BILINEAR": "bilinear", "BICUBIC": "bicubic",
                                                          "LANCZOS": "lanczos"})
    sys.modules.update(dict(zip(names, (tv, io, tr))))
    try:
        import qwen_vl_utils.vision_process  # noqa: F401
    finally:
        for n, m in saved.items():
            if m is None: sys.modules.pop(n, None)
            else: sys.modules[n] = m

class PeerMeter:
    "vs_trl.Meter's measurements, inside a peer's process; written to $VLMNB_PEER_METER when training ends."
    def __init__(self, path: Path):
        self.path, self.fetch_s, self.batches, self.t_begin, self.wall_begin = path, 0.0, [], None, None
        self.notes = {}
        token = os.environ.get("VLMNB_PEER_IMAGE_TOKEN")  # the image placeholder; patches per image token or tokens per image
        self.image_token_id, self.merge = (int(token) if token else None), int(os.environ.get("VLMNB_PEER_MERGE", "4"))
        self.per_image = int(os.environ["VLMNB_PEER_PER_IMAGE"]) if os.environ.get("VLMNB_PEER_PER_IMAGE") else None

    def patch(self, trainer_module) -> None:
        Trainer, meter = trainer_module.Trainer, self
        original_fetch, original_init = Trainer.get_batch_samples, Trainer.__init__
        # functools.wraps keeps the signatures visible: ms-swift reads Trainer.__init__'s parameters to choose its keywords
        @functools.wraps(original_fetch)
        def get_batch_samples(trainer, epoch_iterator, num_batches, *args, **kwargs):
            t0 = time.perf_counter()
            out = original_fetch(trainer, epoch_iterator, num_batches, *args, **kwargs)
            meter.fetch_s += time.perf_counter() - t0
            for batch in out[0]: meter.batches.append(count_batch(batch, meter.image_token_id, meter.merge, meter.per_image))
            return out
        @functools.wraps(original_init)
        def __init__(trainer, *args, **kwargs):
            original_init(trainer, *args, **kwargs)
            trainer.add_callback(meter.callback(trainer_module))
        Trainer.get_batch_samples, Trainer.__init__ = get_batch_samples, __init__

    def callback(self, trainer_module):
        meter = self
        class Clock(trainer_module.TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                meter.watch_compute(model)
                meter.t_begin, meter.wall_begin = time.perf_counter(), time.time()
                meter.fetch_s, meter.batches = 0.0, []
            def on_train_end(self, args, state, control, model=None, **kw):
                meter.finish(args, model)
        return Clock()

    def watch_compute(self, model) -> None:
        "What a language-model projection really computes in: its output dtype and autocast's state, at the first forward."
        import torch
        self.compute = {}
        layer = next((m for n, m in (model.named_modules() if model is not None else []) if isinstance(m, torch.nn.Linear)
                      and "language_model" in n and n.endswith("q_proj.base_layer")), None)
        if layer is None: return
        def hook(module, inputs, output):
            if not self.compute:
                self.compute.update(output_dtype=str(output.dtype).removeprefix("torch."), autocast=torch.is_autocast_enabled("cpu")
                                    or (torch.cuda.is_available() and torch.is_autocast_enabled("cuda")))
        layer.register_forward_hook(hook)

    def finish(self, args, model) -> None:
        import resource
        train_s = time.perf_counter() - self.t_begin
        params = list(model.parameters()) if model is not None else []
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
        peft = getattr(model, "peft_config", None) or {}
        lora = next(iter(peft.values()), None)
        report = {"train_s": train_s, "wall_begin": self.wall_begin, "fetch_s": self.fetch_s, "batches": self.batches,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "trainable": sum(p.numel() for p in params if p.requires_grad),
                  "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params if p.requires_grad}),
                  "weight_dtypes": dtypes, "frozen_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params if not p.requires_grad}),
                  "lora_dropout": getattr(lora, "lora_dropout", None),
                  "target_modules": sorted(lora.target_modules) if lora is not None and not isinstance(lora.target_modules, str)
                                    else getattr(lora, "target_modules", None),
                  "gradient_checkpointing": bool(args.gradient_checkpointing or getattr(model, "is_gradient_checkpointing", False)),
                  "precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32"),
                  "batching": "length-grouped" if getattr(args, "group_by_length", False) else "random",
                  "optim": str(getattr(args.optim, "value", args.optim)), "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)), "learning_rate": args.learning_rate,
                  "per_device_train_batch_size": args.per_device_train_batch_size, "seed": args.seed,
                  "compute": getattr(self, "compute", {}), **self.notes}
        self.path.write_text(json.dumps(report))

def _on_import(module_name: str, then) -> None:
    "Call `then(module)` right after `module_name` is first imported (a meta-path finder wrapping its loader)."
    import importlib.abc, importlib.machinery
    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != module_name: return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None: return spec
            run = spec.loader.exec_module
            def exec_module(module):
                run(module); then(module)
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, Finder())

def cpu_training_arguments(module) -> None:
    """On a machine without CUDA, `TrainingArguments(bf16=True)` is refused unless `use_cpu` is set. LLaMA-Factory and
    ms-swift take `use_cpu` in their configs; Axolotl's config has no such key, so its TrainingArguments get it here."""
    original = module.TrainingArguments.__post_init__
    @functools.wraps(original)
    def __post_init__(self, *args, **kwargs):
        self.use_cpu = True
        return original(self, *args, **kwargs)
    module.TrainingArguments.__post_init__ = __post_init__

def swift_qwen_token_ids(module) -> None:
    """ms-swift's Qwen2-VL template has the original Qwen vocabulary's image and video token ids written into the class
    (151655, 151656) and expands only those into an image's tokens; the bench's model has a vocabulary of its own. Left
    as is, every image stays one placeholder token and the model's embedding hook scatters only the first features of
    the images into them, silently (found by the image token count in the batches). Set to the model's own ids here."""
    image, video = (int(x) for x in os.environ["VLMNB_PEER_SWIFT_QWEN_IDS"].split(","))
    module.Qwen2VLTemplate.image_token_id, module.Qwen2VLTemplate.video_token_id = image, video

def in_peer_process() -> None:
    "What the generated sitecustomize does in every Python process of a peer's run (each switched on by an env var)."
    notes = {}
    if os.environ.get("VLMNB_PEER_USE_CPU"):
        if "transformers.training_args" in sys.modules: cpu_training_arguments(sys.modules["transformers.training_args"])
        else: _on_import("transformers.training_args", cpu_training_arguments)
    if os.environ.get("VLMNB_PEER_IMAGE_ONLY"): notes["image_only_processor"] = register_image_only()
    if os.environ.get("VLMNB_PEER_QWEN_VL_UTILS"): import_qwen_vl_utils()
    if os.environ.get("VLMNB_PEER_SWIFT_QWEN_IDS"):
        if "swift.template.templates.qwen" in sys.modules: swift_qwen_token_ids(sys.modules["swift.template.templates.qwen"])
        else: _on_import("swift.template.templates.qwen", swift_qwen_token_ids)
    if os.environ.get("VLMNB_PEER_METER"):
        meter = PeerMeter(Path(os.environ["VLMNB_PEER_METER"]))
        meter.notes = notes
        if "transformers.trainer" in sys.modules: meter.patch(sys.modules["transformers.trainer"])
        else: _on_import("transformers.trainer", meter.patch)

# ---------------------------------------------------------------- one peer run, from the bench's work folder
def peer_env(peer: str, case: str, run_dir: Path, home: Path, model: Path) -> dict:
    "The peer process's environment: its venv first on PATH, offline, the generated sitecustomize and the repo root on PYTHONPATH."
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    site = run_dir/"site"
    site.mkdir(parents=True, exist_ok=True)
    (site/"sitecustomize.py").write_text(SITECUSTOMIZE)
    env.update({"PATH": f"{venv_dir(peer, home)/'bin'}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": f"{site}{os.pathsep}{ROOT}",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "HF_DATASETS_CACHE": str(run_dir/"cache"/"datasets"), "MODELSCOPE_CACHE": str(run_dir/"cache"/"modelscope"),
                "USE_MODELSCOPE_HUB": "0", "WANDB_MODE": "disabled", "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1",
                "VLMNB_PEERS_FILE": str(Path(__file__).resolve()), "VLMNB_PEER_METER": str(run_dir/"meter.json")})
    if peer == "axolotl" and not _has_cuda(): env["VLMNB_PEER_USE_CPU"] = "1"
    config = json.loads((Path(model)/"config.json").read_text())
    env["VLMNB_PEER_IMAGE_TOKEN"] = str(config.get("image_token_id", config.get("image_token_index")))  # to check that every image reaches the model whole
    if case == "llava":
        vision = config["vision_config"]
        env["VLMNB_PEER_PER_IMAGE"] = str((vision["image_size"] // vision["patch_size"]) ** 2)  # the "default" strategy: no CLS
    if case == "qwen2-vl":
        env["VLMNB_PEER_MERGE"] = str(config["vision_config"].get("spatial_merge_size", 2) ** 2)
        env["VLMNB_PEER_IMAGE_ONLY"] = "1"
        if peer == "ms-swift":
            env["VLMNB_PEER_QWEN_VL_UTILS"] = "1"
            env["VLMNB_PEER_SWIFT_QWEN_IDS"] = f"{config['image_token_id']},{config['video_token_id']}"
    return env

def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False

def find_adapter(out: Path) -> Path | None:
    "The newest folder under `out` holding a PEFT adapter."
    found = sorted(out.rglob("adapter_model.safetensors"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None

def adapter_parameters(adapter: Path) -> int:
    "The number of LoRA parameters saved in `adapter`."
    from safetensors import safe_open
    with safe_open(str(adapter/"adapter_model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if "lora_" in k)

def expected_trainable(work: Path, args) -> int:
    "LoRA parameters of vlmnb's and TRL's runs: rank `lora_r` on the language model's seven projections (vs_trl.LM_TARGETS)."
    import transformers
    from peft import LoraConfig, get_peft_model
    import vlmnb.load  # noqa: F401  the image-only processor the model folder names
    model = transformers.AutoModelForImageTextToText.from_pretrained(work/"model")
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=_vs_trl().LM_TARGETS))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

def eval_loss(work: Path, case: str, adapter: Path) -> float:
    "The held-out loss of base model + the peer's adapter, in this (vlmnb's) environment, by vs_trl.heldout_loss."
    import transformers
    from peft import PeftModel
    import vlmnb.load  # noqa: F401
    base = transformers.AutoModelForImageTextToText.from_pretrained(work/"model", dtype="float32")
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    return _vs_trl().heldout_loss(model, work, case)

def _tail(path: Path, n: int = 40) -> str:
    try: return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-n:])
    except OSError: return ""

def _run_group(cmd: list, env: dict, cwd: Path, log: Path, timeout: float) -> int | None:
    "Run `cmd` in a process group of its own (ms-swift's CLI starts a child); on timeout end the whole group, return None."
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); proc.wait()
            return None

def run_peer(name: str, setting: str, work: Path, case: str, args) -> dict:
    """Train peer `name` with `setting` ("unpacked", "neat_packing") on the bench's work folder, in its venv and its own
    process; return a report shaped like vs_trl's (also written to WORK/runs/NAME-SETTING.json). A peer that cannot run
    gives a report with "error" saying why, instead of raising."""
    work, home = Path(work), peers_home()
    run = f"{name}-{setting}"
    report = {"run": run, "tool": name, "setting": setting, "case": case, "comparison": "peers"}
    run_dir = work/"peers"/run
    try:
        if name not in PEERS: raise ValueError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
        if setting not in PEERS[name]["settings"]:
            raise ValueError(WHY_NOT.get((name, "packing")) if "pack" in setting and (name, "packing") in WHY_NOT
                             else f"{name} has no setting {setting!r} here (known: {', '.join(PEERS[name]['settings'])})")
        if not venv_python(name, home).exists() or not stamp_file(name, home).exists():
            raise FileNotFoundError(f"{name} is not installed: no venv at {venv_dir(name, home)} "
                                    f"(run `python bench/peers.py install --peers {name}`, or set VLMNB_PEERS)")
        stamp = json.loads(stamp_file(name, home).read_text())
        report["versions"] = stamp["versions"]
        if run_dir.exists(): shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        s = settings_for(args)
        data = write_data(name, work/"train"/"samples.jsonl", run_dir/"data")
        config = make_config(name, setting, case, work/"model", data, run_dir/"out", s)
        report["config"] = config
        cmd = command(name, config, run_dir, home)
        report["command"] = " ".join(cmd)
        env = peer_env(name, case, run_dir, home, work/"model")
        log = run_dir/"train.log"
        report["log"] = str(log)
        report["loadavg_before"] = os.getloadavg()[0]  # the machine may be shared: how busy it was around the run
        t0 = time.time()
        returncode = _run_group(cmd, env, run_dir, log, getattr(args, "timeout", 3600))
        report["loadavg_after"] = os.getloadavg()[0]
        if returncode is None: raise RuntimeError(f"no result within {getattr(args, 'timeout', 3600)} s; end of {log}:\n{_tail(log)}")
        if returncode:
            last = next((l for l in reversed(_tail(log).splitlines()) if l.strip()), "")
            raise RuntimeError(f"{name} exited with {returncode}: {last.strip()}\n(end of {log}:)\n{_tail(log)}")
        if not (run_dir/"meter.json").exists():
            raise RuntimeError(f"{name} finished but no Trainer in its process reached on_train_end (nothing measured); end of {log}:\n{_tail(log)}")
        m = json.loads((run_dir/"meter.json").read_text())
        report.update(measured(m, work, t0))
        if setting != "unpacked": report["batching"] = f"{setting.replace('_', ' ')}, {report['batching']}"
        rows = sum(1 for l in (work/"train"/"samples.jsonl").read_text().splitlines() if l.strip())
        if report["samples"] != rows:  # e.g. LLaMA-Factory drops a sample longer than its cutoff when packing
            report["warning"] = "; ".join(filter(None, [report.get("warning"), f"{report['samples']} samples trained, of {rows} in the data (see {log})"]))
        adapter = find_adapter(run_dir/"out")
        if adapter is None: raise RuntimeError(f"{name} trained but saved no adapter under {run_dir/'out'}")
        report["adapter"] = str(adapter)
        report["trainable_adapter"] = adapter_parameters(adapter)
        report["trainable_expected"] = expected_trainable(work, args)
        report["trainable_ok"] = report["trainable"] == report["trainable_adapter"] == report["trainable_expected"]
        report["eval_loss"] = eval_loss(work, case, adapter)
    except Exception as e:
        report["error"] = f"{type(e).__name__}: {e}"
    (work/"runs").mkdir(parents=True, exist_ok=True)
    (work/"runs"/f"{run}.json").write_text(json.dumps(report, indent=1, default=str))
    return report

def measured(m: dict, work: Path, launched: float) -> dict:
    "vs_trl's report numbers from what the peer's process measured (`m`, its meter.json)."
    batches = m["batches"]
    if not batches: raise RuntimeError("no batch was counted: the peer's Trainer does not fetch through Trainer.get_batch_samples")
    real = sum(sum(b["tokens"]) for b in batches)
    positions = sum(b["positions"] for b in batches)
    samples = sum(len(b["tokens"]) for b in batches)
    train_s = m["train_s"]
    seen = sum(b.get("image_tokens", 0) for b in batches)
    expected = sum(b.get("image_tokens_expected", 0) for b in batches)
    out = {k: m.get(k) for k in ("precision", "gradient_checkpointing", "lora_dropout", "batching", "optim", "lr_scheduler_type",
                                 "learning_rate", "per_device_train_batch_size", "seed", "weight_dtypes", "frozen_dtypes", "trainable_dtypes", "compute",
                                 "target_modules", "image_only_processor")}
    out.update({"tokens_per_s": real / train_s, "samples_per_s": samples / train_s, "padding": 1 - real / positions,
                "peak_rss_mib": m["peak_rss_mib"], "peak_vram_mib": None, "data_share": m["fetch_s"] / train_s,
                "train_s": train_s, "setup_s": m["wall_begin"] - launched, "real_tokens": real, "samples": samples,
                "steps": len(batches), "trainable": m["trainable"], "mfu": None})
    if expected:
        out["image_tokens"], out["image_tokens_expected"] = seen, expected
        if seen != expected:
            out["warning"] = (f"the batches hold {seen} image tokens where the images have {expected}: the peer did not expand its "
                              "image placeholders, so its language model trains on less than the images")
    sizes_path, peak_path = work/"sizes.json", work/"peak.json"
    if sizes_path.exists() and peak_path.exists():
        sizes, peak = json.loads(sizes_path.read_text()), json.loads(peak_path.read_text())
        if sizes.get("case") == "llava": sizes.setdefault("image_side", 224); sizes.setdefault("patch", 14)
        flops = sum(batch_flops(sizes, b) for b in batches)
        out["mfu"] = flops / train_s / peak["bf16" if m["precision"] != "fp32" else "fp32"]
    else:
        out["mfu_note"] = f"no {sizes_path.name}/{peak_path.name} in the work folder (made by bench/vs_trl.py): MFU not computed"
    return out

# ---------------------------------------------------------------- LLaMA-Factory's neat packing keeps samples apart: checked
LF_ISOLATION = r"""# Written by vlmnb's bench/peers.py; runs in LLaMA-Factory's venv. For every packed row LLaMA-Factory builds from the bench's
# data with the run's config (its own dataset pipeline and SFTDataCollatorWith4DAttentionMask), the logits of each sample
# inside the row are compared with the same sample collated alone. Control: the same packed row with a plain all-ones mask.
import json, sys, torch
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer, load_model
from llamafactory.data import get_template_and_fix_tokenizer, get_dataset, SFTDataCollatorWith4DAttentionMask
config, out_path = json.loads(open(sys.argv[1]).read()), sys.argv[2]
def setup(packed):
    c = {**config, "packing": packed, "neat_packing": packed, "output_dir": config["output_dir"] + ("-packed" if packed else "-plain"),
         "bf16": False, "cutoff_len": config["cutoff_len"] if packed else max(config["cutoff_len"], 8192)}
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(c)
    tm = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tm["tokenizer"], data_args)
    ds = get_dataset(template, model_args, data_args, training_args, stage="sft", **tm)["train_dataset"]
    return model_args, finetuning_args, tm, template, ds
model_args, finetuning_args, tm, template, packed_ds = setup(True)
plain_ds = setup(False)[-1]
model = load_model(tm["tokenizer"], model_args, finetuning_args, is_trainable=False).float().eval()
def collate(rows, neat):
    return SFTDataCollatorWith4DAttentionMask(template=template, model=model, pad_to_multiple_of=8, label_pad_token_id=-100,
        block_diag_attn=neat, neat_packing=neat, attn_implementation=model.config._attn_implementation,
        compute_dtype=torch.float32, **tm)([dict(r) for r in rows])
def logits(batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels" and v is not None}, use_cache=False).logits[0]
plain = {tuple(r["input_ids"]): r for r in plain_ds}
report = {"rows": [], "max_diff": 0.0, "control_min_diff": None, "samples": 0, "model_type": model.config.model_type}
for ex in packed_ds:
    bounds = ex["packing_params"]["sequence_boundaries"]
    batch = collate([ex], True)
    mask4d = batch["attention_mask"]
    out = logits(batch)
    control = logits({**batch, "attention_mask": torch.ones(batch["input_ids"].shape, dtype=torch.long)})
    row = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        ids = tuple(ex["input_ids"][s:e])
        if ids not in plain: continue  # the padding at the row's end
        alone = logits(collate([plain[ids]], False))
        d, leak = float((out[s:e] - alone[:e - s]).abs().max()), float((control[s:e] - alone[:e - s]).abs().max())
        row.append({"start": s, "tokens": e - s, "max_diff": d, "control_diff": leak if s else None})
        report["max_diff"] = max(report["max_diff"], d); report["samples"] += 1
        if s: report["control_min_diff"] = leak if report["control_min_diff"] is None else min(report["control_min_diff"], leak)
    report["rows"].append({"mask_shape": list(mask4d.shape), "samples": row})
open(out_path, "w").write(json.dumps(report, indent=1))
print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
"""

def check_isolation(work: Path, case: str, args, tolerance: float = 1e-3) -> dict:
    """Do LLaMA-Factory's neat-packed rows keep samples apart here (sdpa, CPU)? In its venv, each sample's logits in a packed
    row (built by LLaMA-Factory from the bench's data with the neat_packing run's config) against the sample alone; a
    control row without the block mask must differ, or the check would prove nothing."""
    home = peers_home()
    if not stamp_file("llamafactory", home).exists(): return {"error": "llamafactory is not installed (python bench/peers.py install)"}
    run_dir = Path(work)/"peers"/"llamafactory-isolation"
    if run_dir.exists(): shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    data = write_data("llamafactory", Path(work)/"train"/"samples.jsonl", run_dir/"data")
    config = make_config("llamafactory", "neat_packing", case, Path(work)/"model", data, run_dir/"out", settings_for(args))
    (run_dir/"config.json").write_text(json.dumps(config))
    (run_dir/"check.py").write_text(LF_ISOLATION)
    env = peer_env("llamafactory", case, run_dir, home, Path(work)/"model")
    env.pop("VLMNB_PEER_METER")
    with open(run_dir/"check.log", "w") as f:
        done = subprocess.run([str(venv_python("llamafactory", home)), str(run_dir/"check.py"), str(run_dir/"config.json"),
                               str(run_dir/"isolation.json")], env=env, cwd=run_dir, stdout=f, stderr=subprocess.STDOUT,
                              timeout=getattr(args, "timeout", 3600))
    if done.returncode: return {"error": f"the check exited with {done.returncode}; end of {run_dir/'check.log'}:\n{_tail(run_dir/'check.log')}"}
    r = json.loads((run_dir/"isolation.json").read_text())
    r["isolated"] = r["max_diff"] <= tolerance and r["samples"] > 0
    r["control_detects_leaks"] = r["control_min_diff"] is not None and r["control_min_diff"] > 100 * max(r["max_diff"], 1e-6)
    r.update(case=case, tolerance=tolerance, pack_length=config["cutoff_len"], versions=json.loads(stamp_file("llamafactory", home).read_text())["versions"])
    return r

# ---------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="install the peers, each into its own venv under $VLMNB_PEERS")
    i.add_argument("--peers", default=",".join(PEERS))
    i.add_argument("--force", action="store_true", help="reinstall even where a stamp says it is done")
    r = sub.add_parser("run", help="train the peers on a work folder made by bench/vs_trl.py --workdir")
    r.add_argument("--workdir", required=True)
    r.add_argument("--case", choices=("llava", "qwen2-vl"), help="default: the work folder's (sizes.json)")
    r.add_argument("--peers", default=",".join(PEERS))
    r.add_argument("--settings", help="comma-separated: unpacked, neat_packing (default: each peer's own list)")
    r.add_argument("--batch-size", type=int); r.add_argument("--lr", type=float); r.add_argument("--seed", type=int)
    r.add_argument("--lora-r", type=int); r.add_argument("--lora-alpha", type=int)
    r.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="bf16 as vs_trl's matched runs (default)")
    r.add_argument("--optim", default="adamw_torch_fused")
    r.add_argument("--max-length", type=int, default=4096, help="cutoff for unpacked runs (no sample here is longer)")
    r.add_argument("--pack-length", type=int, default=2048, help="tokens in one packed row (LLaMA-Factory neat_packing: one "
                   "row a step, about the tokens of an unpacked batch of 4; a sample longer than this is dropped by LLaMA-Factory)")
    r.add_argument("--timeout", type=int, default=3600)
    r.add_argument("--results", help="also copy each report here as CASE-PEER-SETTING.json")
    r.add_argument("--check-isolation", action="store_true", help="also check that LLaMA-Factory's neat-packed samples stay apart")
    args = p.parse_args(argv)
    if args.cmd == "install":
        failed = []
        for n in args.peers.split(","):
            try: install(n, force=args.force)
            except Exception as e: print(f"{n}: install failed: {e}", file=sys.stderr); failed.append(n)
        print(f"versions: {write_versions()}")
        return 1 if failed else 0
    work = Path(args.workdir)
    bench = json.loads((work/"vs_trl.json").read_text())["args"] if (work/"vs_trl.json").exists() else {}
    for k, default in (("batch_size", 4), ("lr", 2e-4), ("seed", 0), ("lora_r", 16), ("lora_alpha", 32)):
        if getattr(args, k) is None: setattr(args, k, bench.get(k, default))
    args.bf16 = args.precision == "bf16"
    case = args.case or json.loads((work/"sizes.json").read_text())["case"]
    reports = []
    for n in args.peers.split(","):
        for setting in (args.settings.split(",") if args.settings else PEERS.get(n, {}).get("settings", ("unpacked",))):
            print(f"{n} {setting} ({case}) ...", flush=True)
            rep = run_peer(n, setting, work, case, args)
            reports.append(rep)
            if args.results:
                Path(args.results).mkdir(parents=True, exist_ok=True)
                (Path(args.results)/f"{case}-{n}-{setting}.json").write_text(json.dumps(rep, indent=1, default=str))
            if "error" in rep: print(f"  {rep['run']}: ERROR {rep['error'][:2000]}", flush=True)
            else: print(f"  {rep['run']}: {rep['tokens_per_s']:.0f} tokens/s, eval loss {rep['eval_loss']:.4f}, {rep['samples']} samples "
                        f"in {rep['steps']} steps, frozen weights {'/'.join(rep['frozen_dtypes'] or ['?'])}, trainable {rep['trainable']} "
                        f"({'same as vlmnb' if rep['trainable_ok'] else 'DIFFERS from vlmnb: ' + str(rep['trainable_expected'])})"
                        + (f"; WARNING {rep['warning']}" if rep.get("warning") else ""), flush=True)
    isolated = True
    if args.check_isolation and "llamafactory" in args.peers.split(","):
        iso = check_isolation(work, case, args)
        isolated = iso.get("isolated", False)
        if args.results:
            Path(args.results).mkdir(parents=True, exist_ok=True)
            (Path(args.results)/f"{case}-llamafactory-isolation.json").write_text(json.dumps(iso, indent=1))
        print("LLaMA-Factory neat_packing isolation:", iso.get("error") or
              f"{'samples kept apart' if iso['isolated'] else 'SAMPLES LEAK'} (max |packed - alone| {iso['max_diff']:.2e} over "
              f"{iso['samples']} samples; control without the block mask: {iso['control_min_diff']:.2e})", flush=True)
    ok = [r for r in reports if "error" not in r]
    ours = [json.loads(f.read_text()) for f in sorted((work/"runs").glob("*.json")) if json.loads(f.read_text()).get("tool") in ("vlmnb", "trl")]
    if ok or ours:  # vs_trl's table; a peer's precision also says what its frozen weights were kept in
        shown = [{**r, "mfu": r["mfu"] if r["mfu"] is not None else float("nan"),
                  "precision": f"{r['precision']} ({'/'.join(x.replace('bfloat16', 'bf16').replace('float32', 'fp32') for x in r['frozen_dtypes'])} weights)"}
                 for r in ok]
        print(); print(_vs_trl().table(ours + shown))
    return 0 if len(ok) == len(reports) and isolated else 1

if __name__ == "__main__":
    sys.exit(main())
