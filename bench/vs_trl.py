#!/usr/bin/env python
"""vlmnb against a plain TRL `SFTTrainer`, side by side, in one run.

    python bench/vs_trl.py                      # LLaVA-shaped model, 320 samples: about 11 min on 2 CPU cores (21 with the peers)
    python bench/vs_trl.py --case qwen2-vl      # Qwen2-VL-shaped model, dynamic resolution
    python bench/vs_trl.py --case smolvlm --samples 64 --heldout 8        # real vocabulary: SmolVLM-256M's dimensions (49k tokens), 18 min
    python bench/vs_trl.py --case qwen2-vl-152k --samples 24 --heldout 8  # Qwen2-VL-2B's width and 152k vocabulary, 2 layers deep, 14 min
    python bench/vs_trl.py --quick              # a smoke run (CI): 8 samples, every run
    python bench/vs_trl.py --peers llamafactory,ms-swift,axolotl   # the peers too, each in its own venv (bench/peers.py)
    python bench/vs_trl.py --json results.json  # also write every number as JSON (the results notebook reads it)

Both tools get the same randomly-initialised model, the same synthetic data (written to disk once), the same LoRA
(rank, alpha, the language model's attention and MLP projections), learning rate, batch size, seed and epochs. Each
run trains in a process of its own and is measured the same way: batches are timed and counted where the Trainer
fetches them (`Trainer.get_batch_samples`, shared by both), and the held-out loss is computed after training by one
function, in fp32, one sample at a time, on answer tokens only.

Three comparisons:
  (a) defaults: what each tool does untuned. TRL: `SFTConfig` defaults (bf16, activation checkpointing, random
      batches) and `ModelConfig`'s LoRA dropout 0.05. vlmnb: `TrainConfig` defaults (precision, checkpointing and
      dropout chosen for the hardware and the run, length-grouped batches).
  (b) matched: both with the same dropout, checkpointing, precision, scheduler and optimizer; what remains is how
      vlmnb batches and computes the loss (logits only at labelled positions).
  (c) packed: vlmnb's defaults with `packing: true` (random batches, each packed into rows of its longest sample).

Real tokens are counted from the attention mask, or in a packed batch (no mask) from the position ids that restart
at each sample, the trailing padding left out.

The last line is `speedup_vs_trl: X`, X being (a)'s ratio of real (non-padding) tokens per second.
"""
from __future__ import annotations

import argparse, json, math, os, random, resource, subprocess, sys, tempfile, time
from pathlib import Path

REPORT_KEYS = ("tokens_per_s", "samples_per_s", "padding", "peak_rss_mib", "data_share", "mfu", "eval_loss", "train_s", "setup_s")

# ---------------------------------------------------------------- the two cases: model shape and image geometry
CASES = {
    "llava": dict(model_type="llava", text=dict(hidden_size=512, intermediate_size=896, num_hidden_layers=6, num_attention_heads=8),
                  vision=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=6,
                              image_size=224, patch_size=14)),
    "qwen2-vl": dict(model_type="qwen2_vl", text=dict(hidden_size=512, intermediate_size=896, num_hidden_layers=6, num_attention_heads=8),
                     vision=dict(depth=4, embed_dim=384, num_heads=6, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                                 temporal_patch_size=2)),
    # real vocabularies: the output layer and its loss at the sizes users train
    # one 512-px view an image (no splitting into up to 16 tiles, which on 2 CPU cores takes minutes a sample)
    "smolvlm": dict(model_type="smolvlm", preset="smolvlm-256m", image_processor={"do_image_splitting": False}),
    "qwen2-vl-152k": dict(model_type="qwen2_vl", preset="qwen2-vl-2b",
                          changes={"text_config": {"num_hidden_layers": 2}, "vision_config": {"depth": 2}}),
}
DATA_SEED = 0  # model weights and data are fixed; --seed is the training seed (LoRA init, batch order) shared by both tools
LM_TARGETS = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"  # SmolVLM: text_model

def build_model(case: str, out_dir: Path, seed: int) -> dict:
    "Save the case's randomly-initialised model and processor to `out_dir`; return the sizes the FLOP count needs."
    import torch, transformers as T
    from vlmnb.load import CHAT_TEMPLATES, image_only, tiny_tokenizer
    spec = CASES[case]
    if "preset" in spec:
        from vlmnb.load import preset_model
        model, processor = preset_model(spec["preset"], out_dir, seed=seed, changes=spec.get("changes"))
        for k, v in spec.get("image_processor", {}).items(): setattr(processor.image_processor, k, v)
        processor.save_pretrained(out_dir)
        return flop_sizes(model, case) | {"pad_id": processor.tokenizer.pad_token_id}
    tok = tiny_tokenizer(spec["model_type"])
    text = dict(spec["text"], num_key_value_heads=spec["text"]["num_attention_heads"], vocab_size=len(tok), initializer_range=0.02,
                max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if case == "llava":
        config = T.LlavaConfig(vision_config=T.CLIPVisionConfig(**spec["vision"]), text_config=T.LlamaConfig(**text),
                               image_token_id=tok.image_token_id, vision_feature_select_strategy="default", vision_feature_layer=-1)
        ip = T.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        processor = T.LlavaProcessor(ip, tok, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                     chat_template=CHAT_TEMPLATES["llava"])
    else:
        head = text["hidden_size"] // text["num_attention_heads"]
        text.update(bos_token_id=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                        "mrope_section": [head // 8, 3 * head // 16, 3 * head // 16]})
        ids = {k: tok.convert_tokens_to_ids(v) for k, v in dict(image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>").items()}
        config = T.Qwen2VLConfig(text_config=text, vision_config=dict(spec["vision"], hidden_size=text["hidden_size"]), **ids)
        ip = T.Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                        size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})
        processor = image_only(T.Qwen2VLProcessor)(ip, tok, chat_template=CHAT_TEMPLATES["qwen2_vl"])
    torch.manual_seed(seed)
    model = T.AutoModelForImageTextToText.from_config(config)
    model.save_pretrained(out_dir); processor.save_pretrained(out_dir)
    return flop_sizes(model, case) | {"pad_id": tok.pad_token_id}

def flop_sizes(model, case: str) -> dict:
    "Weights each token or patch is multiplied by, and the attention sizes, for the FLOP count."
    import torch
    def matmul_weights(module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)))
    kind = CASES[case]["model_type"]
    lm = model.model.text_model if kind == "smolvlm" else model.model.language_model
    vision = getattr(model.model, {"llava": "vision_tower", "smolvlm": "vision_model"}.get(kind, "visual"))
    tc = model.config.text_config
    extra = {}
    if kind in ("llava", "smolvlm"):
        vc = model.config.vision_config
        vision_layers, vision_width = vc.num_hidden_layers, vc.hidden_size
        projector = matmul_weights(model.model.multi_modal_projector if kind == "llava" else model.model.connector)
        if kind == "smolvlm": extra = {"image_side": vc.image_size, "patch": vc.patch_size, "merge": model.config.scale_factor ** 2}
    else:
        vc = model.config.vision_config
        vision_layers, vision_width = vc.depth, vc.embed_dim
        projector = matmul_weights(vision.merger)  # counted per merged token, so taken out of the per-patch weights below
    return {"params": sum(p.numel() for p in model.parameters()), "lm_weights": matmul_weights(lm) + model.lm_head.weight.numel(),
            "lm_layers": tc.num_hidden_layers, "lm_width": tc.hidden_size, "vision_weights": matmul_weights(vision) - (projector if kind == "qwen2_vl" else 0),
            "vision_layers": vision_layers, "vision_width": vision_width, "projector_weights": projector, "case": case,
            "kind": kind, "vocab": model.lm_head.weight.shape[0], **extra}

def train_flops(sizes: dict, tokens: list[int], patches: list[int], image_tokens: int) -> float:
    """Model FLOPs of one training step: 3x the forward (PaLM's convention: 2 per weight per token, 4*L*d*T^2 for attention,
    no discount for causal masking or frozen weights, recomputation not counted); padding is not counted."""
    s = sizes
    fwd = sum(2 * s["lm_weights"] * t + 4 * s["lm_layers"] * s["lm_width"] * t * t for t in tokens)
    fwd += sum(2 * s["vision_weights"] * p + 4 * s["vision_layers"] * s["vision_width"] * p * p for p in patches)
    fwd += 2 * s["projector_weights"] * image_tokens
    return 3 * fwd

def real_lengths(batch, pad_id: int) -> list[int]:
    "Real tokens of each sample in a batch: from the attention mask, or in a packed batch from where the positions restart."
    import torch
    mask = batch.get("attention_mask")
    if torch.is_tensor(mask) and mask.dim() == 2: return mask.sum(1).tolist()  # packed: no mask, or a mapping of 4-D masks (Gemma)
    pos = batch["position_ids"][0] if batch["position_ids"].dim() == 3 else batch["position_ids"]
    out = []
    for r in range(pos.shape[0]):
        starts = (pos[r] == 0).nonzero().flatten().tolist() + [pos.shape[1]]
        for a, b in zip(starts, starts[1:]):
            if not (batch["input_ids"][r, a:b] == pad_id).all(): out.append(b - a)  # the trailing padding is a sequence of its own
    return out

# ---------------------------------------------------------------- synthetic data: images 160-640 px, 18% two images
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
RGB = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40), "purple": (130, 50, 170),
       "orange": (245, 140, 20), "black": (20, 20, 20), "white": (245, 245, 245)}
SHAPES = ["circle", "square", "triangle"]
PLACES = ["left", "right", "top", "bottom", "centre"]
QUESTIONS = ["Describe the image.", "What shapes do you see?", "Describe the shapes and where they are.", "What is in the picture?"]

def _image(rng: random.Random, path: Path) -> list[tuple[str, str, str]]:
    from PIL import Image, ImageDraw
    w, h = rng.randint(160, 640), rng.randint(160, 640)
    img = Image.new("RGB", (w, h), tuple(rng.randint(90, 170) for _ in range(3)))
    draw, shapes = ImageDraw.Draw(img), []
    for _ in range(rng.randint(1, 3)):
        colour, shape, place = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(PLACES)
        cx = {"left": 0.25, "right": 0.75}.get(place, 0.5) * w + rng.uniform(-0.1, 0.1) * w
        cy = {"top": 0.25, "bottom": 0.75}.get(place, 0.5) * h + rng.uniform(-0.1, 0.1) * h
        r = rng.uniform(0.08, 0.18) * min(w, h)
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == "circle": draw.ellipse(box, fill=RGB[colour])
        elif shape == "square": draw.rectangle(box, fill=RGB[colour])
        else: draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=RGB[colour])
        shapes.append((colour, shape, place))
    img.save(path, quality=90)
    return shapes

def _answer(rng: random.Random, shapes: list, n_tokens: int, tok) -> str:
    "A description of the shapes, continued with more sentences about them until it is about `n_tokens` long."
    first = " and ".join(f"a {c} {s}" for c, s, _ in shapes)
    sentences = [f"I see {first}."]
    while len(tok(" ".join(sentences), add_special_tokens=False).input_ids) < n_tokens:
        c, s, p = rng.choice(shapes)
        sentences.append(rng.choice([f"The {c} {s} is at the {p}.", f"There is a {c} {s} near the {p}.",
                                     f"The {s} at the {p} is {c}.", f"Next to the {p} edge sits the {c} {s}."]))
    ids = tok(" ".join(sentences), add_special_tokens=False).input_ids[:n_tokens]
    return tok.decode(ids).strip()

def make_data(folder: Path, n: int, seed: int, tok) -> Path:
    "`n` samples as canonical JSONL with JPEG files: answers 10-300 tokens (log-uniform), 18% of samples with two images."
    rng = random.Random(seed)
    (folder/"images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = 2 if rng.random() < 0.18 else 1
        paths = [folder/"images"/f"{i:05d}_{j}.jpg" for j in range(k)]
        shapes = [sh for p in paths for sh in _image(rng, p)]
        n_tokens = round(math.exp(rng.uniform(math.log(10), math.log(300))))
        content = [{"type": "image"} for _ in paths] + [{"type": "text", "text": rng.choice(QUESTIONS)}]
        rows.append({"messages": [{"role": "user", "content": content},
                                  {"role": "assistant", "content": [{"type": "text", "text": _answer(rng, shapes, n_tokens, tok)}]}],
                     "images": [str(p) for p in paths]})
    out = folder/"samples.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out

# ---------------------------------------------------------------- the peak a matmul reaches here, measured now
def matmul_peak(dtype_name: str, seconds: float = 1.0) -> float:
    "Best FLOP/s of square matmuls (1024-4096) in `dtype_name` on this process's device and threads."
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, dtype_name)
    best = 0.0
    for n in ((1024, 2048, 4096) if device == "cpu" else (4096, 8192)):
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        if device == "cuda": torch.cuda.synchronize()
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b; k += 1
            if device == "cuda": torch.cuda.synchronize()
        best = max(best, 2 * n**3 * k / (time.perf_counter() - t0))
    return best

# ---------------------------------------------------------------- the runs
RUNS = {  # name: (tool, comparison, settings beyond the shared ones)
    "trl-defaults": ("trl", "a", {}),
    "vlmnb-defaults": ("vlmnb", "a", {}),
    "trl-matched": ("trl", "b", {"dropout": 0.0, "gradient_checkpointing": False, "bf16": True, "scheduler": "linear", "optim": "adamw_torch_fused"}),
    "vlmnb-matched": ("vlmnb", "b", {"dropout": 0.0, "gradient_checkpointing": False, "bf16": True, "scheduler": "linear", "optim": "adamw_torch_fused"}),
    "vlmnb-packed": ("vlmnb", "c", {"packing": True}),
}

class Meter:
    "Times and counts every batch the Trainer fetches, and the training loop's wall time, peak RSS and VRAM."
    def __init__(self, sizes: dict):
        self.sizes, self.fetch_s, self.real, self.total, self.samples, self.flops = sizes, 0.0, 0, 0, 0, 0.0
        self.vision_flops = 0.0
        self.t_begin = self.t_end = None; self.model = None

    def install(self):
        import transformers
        original, meter = transformers.Trainer.get_batch_samples, self
        def get_batch_samples(trainer, epoch_iterator, num_batches, device):
            t0 = time.perf_counter()
            out = original(trainer, epoch_iterator, num_batches, device)
            meter.fetch_s += time.perf_counter() - t0
            for batch in out[0]: meter.count(batch)
            return out
        transformers.Trainer.get_batch_samples = get_batch_samples

    def count(self, batch):
        tokens = real_lengths(batch, self.sizes.get("pad_id", 0))
        self.real += sum(tokens); self.total += batch["input_ids"].numel(); self.samples += len(tokens)
        if "image_grid_thw" in batch:  # Qwen2-VL: patches per image; merged 2x2 into image tokens
            patches = batch["image_grid_thw"].prod(1).tolist()
            image_tokens = sum(patches) // 4
        elif self.sizes.get("kind") == "smolvlm":  # [samples, images, ...], all-zero images are padding; pixel shuffle merges patches
            n = int((batch["pixel_values"].flatten(2) != 0).any(-1).sum())
            side = self.sizes["image_side"] // self.sizes["patch"]
            patches, image_tokens = [side * side] * n, side * side // self.sizes["merge"] * n
        else:
            n = batch["pixel_values"].shape[0]
            side = self.sizes["image_side"] // self.sizes["patch"]
            patches, image_tokens = [side * side + 1] * n, side * side * n
        vision = train_flops(self.sizes, [], patches, image_tokens)  # tower and projector: what batching and the loss cannot touch
        self.flops += train_flops(self.sizes, tokens, [], 0) + vision; self.vision_flops += vision

    def callback(self):
        from transformers import TrainerCallback
        meter = self
        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                meter.t_begin = time.perf_counter()
                if _cuda(): import torch; torch.cuda.reset_peak_memory_stats()
            def on_train_end(self, args, state, control, model=None, **kw):
                if _cuda(): import torch; torch.cuda.synchronize()
                meter.t_end, meter.model = time.perf_counter(), model
                meter.rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                meter.vram = _vram()
        return Clock()

def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()

def _vram():
    import torch
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None

def _trl(work: Path, settings: dict, meter: Meter, args):
    import datasets, transformers
    from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config
    from vlmnb.load import load_processor  # the family's processor; with a video slot (Qwen2-VL, SmolVLM) built without it
    model = transformers.AutoModelForImageTextToText.from_pretrained(work/"model")
    processor = load_processor(str(work/"model"))
    rows = [json.loads(l) for l in (work/"train"/"samples.jsonl").read_text().splitlines()]
    features = datasets.Features({"messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(
        {"type": datasets.Value("string"), "text": datasets.Value("string")})}), "images": datasets.List(datasets.Image())})
    train_ds = datasets.Dataset.from_list(rows, features=features)
    lora = dict(use_peft=True, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_target_modules=LM_TARGETS)
    if "dropout" in settings: lora["lora_dropout"] = settings["dropout"]
    names = {"gradient_checkpointing": "gradient_checkpointing", "bf16": "bf16", "scheduler": "lr_scheduler_type", "optim": "optim"}
    extra = {names[k]: v for k, v in settings.items() if k in names}
    config = SFTConfig(output_dir=str(work/"runs"/args.worker), per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                       num_train_epochs=1, seed=args.seed, assistant_only_loss=True, max_length=None if CASES[args.case]["model_type"] == "qwen2_vl" else 1024,
                       report_to="none", save_strategy="no", logging_steps=10, disable_tqdm=True,
                       use_cpu=not _cuda(), **extra)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_ds, processing_class=processor,
                         peft_config=get_peft_config(ModelConfig(**lora)), callbacks=[meter.callback()])
    trainer.train()
    return {"lora_dropout": trainer.model.peft_config["default"].lora_dropout, "gradient_checkpointing": config.gradient_checkpointing,
            "precision": "bf16" if config.bf16 else ("fp16" if config.fp16 else "fp32"), "batching": config.train_sampling_strategy}

def _vlmnb(work: Path, settings: dict, meter: Meter, args):
    from vlmnb import train
    config = {"base_model": str(work/"model"), "datasets": [{"path": str(work/"train"/"samples.jsonl")}],
              "batch_size": args.batch_size, "learning_rate": args.lr, "epochs": 1, "seed": args.seed,
              "lora": {"r": args.lora_r, "alpha": args.lora_alpha}, "output_dir": str(work/"runs"/args.worker), "progress_bar": False,
              "overwrite_output_dir": True}  # a rerun in the same --workdir replaces its run
    if "dropout" in settings: config["lora"]["dropout"] = settings["dropout"]
    names = {"gradient_checkpointing": "gradient_checkpointing", "scheduler": "lr_scheduler", "optim": "optimizer"}
    config.update({names[k]: v for k, v in settings.items() if k in names})
    if "bf16" in settings: config["precision"] = "bf16" if settings["bf16"] else "fp32"
    if settings.get("packing"): config["packing"] = True
    result = train(config, callbacks=[meter.callback()])
    return result.metrics["settings"]

def heldout_loss(model, work: Path, case: str) -> float:
    "Mean cross-entropy per answer token on the held-out samples: fp32, one sample at a time, vlmnb's labels."
    import torch
    from vlmnb.collate import VLMCollator
    from vlmnb.data import load_samples
    from vlmnb.load import load_processor
    processor = load_processor(str(work/"model"))
    collator = VLMCollator(processor, model_type=CASES[case]["model_type"])
    samples = load_samples(str(work/"heldout"/"samples.jsonl"))
    model = model.float().eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for i in range(len(samples)):
            batch = {k: v.to(device) for k, v in collator([samples[i]]).items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            total += torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum").item()
            count += int((labels[0, 1:] != -100).sum())
    return total / count

def worker(args) -> None:
    "One run in this process: train, measure, write `runs/NAME.json`."
    t_start = time.perf_counter()
    if os.environ.get("VLMNB_BENCH_MMAP_THRESHOLD"):  # live memory, not the heap's high-water mark: every tensor of this size
        import ctypes                                    # or more is mapped on its own and returned at free (glibc; slow)
        ctypes.CDLL("libc.so.6").mallopt(-3, int(os.environ["VLMNB_BENCH_MMAP_THRESHOLD"]))  # M_MMAP_THRESHOLD, bytes
    work = Path(args.workdir)
    tool, comparison, settings = RUNS[args.worker]
    sizes = json.loads((work/"sizes.json").read_text())
    meter = Meter(sizes); meter.install()
    resolved = (_trl if tool == "trl" else _vlmnb)(work, settings, meter, args)
    train_s = meter.t_end - meter.t_begin
    peak = json.loads((work/"peak.json").read_text())[resolved["precision"] if resolved["precision"] != "fp16" else "bf16"]
    report = {"run": args.worker, "tool": tool, "comparison": comparison, **resolved,
              "tokens_per_s": meter.real / train_s, "samples_per_s": meter.samples / train_s, "padding": 1 - meter.real / meter.total,
              "peak_rss_mib": meter.rss, "peak_vram_mib": meter.vram, "data_share": meter.fetch_s / train_s,
              "mfu": meter.flops / train_s / peak, "train_s": train_s, "setup_s": meter.t_begin - t_start,
              "real_tokens": meter.real, "samples": meter.samples, "vision_share": meter.vision_flops / meter.flops,
              "trainable": sum(p.numel() for p in meter.model.parameters() if p.requires_grad)}
    report["eval_loss"] = heldout_loss(meter.model, work, args.case)
    (work/"runs").mkdir(exist_ok=True)
    (work/"runs"/f"{args.worker}.json").write_text(json.dumps(report, indent=1))

# ---------------------------------------------------------------- the driver
def environment() -> dict:
    "Commit, library versions and machine, for the results JSON."
    import platform, importlib.metadata as md
    try: commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError: commit = ""
    versions = {}
    for name in ("vlmnb", "torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        try: versions[name] = md.version(name)
        except md.PackageNotFoundError: versions[name] = None
    return {"commit": commit, "versions": versions, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "processor": platform.processor()}

def run_peers(args, work: Path, reports: dict) -> dict:
    "Each peer asked for, in its own venv and process (bench/peers.py); a peer that cannot run reports why."
    sys.path.insert(0, str(Path(__file__).parent))
    import peers
    out = {}
    for name in [n for n in args.peers.split(",") if n]:
        for setting in (peers.PEERS[name]["settings"] if name in peers.PEERS else ("unpacked",)):
            key = f"{name}-{setting}"
            out[key] = peers.run_peer(name, setting, work, args.case, args)
            r = out[key]
            print(f"  {key}: " + (f"did not run: {r['error']}" if "error" in r else
                                  f"{r['tokens_per_s']:.0f} tokens/s, eval loss {r.get('eval_loss', float('nan')):.4f}"), flush=True)
    return out

def _fmt(r: dict) -> list[str]:
    return [r["run"], f"{r['tokens_per_s']:.0f}", f"{r['samples_per_s']:.2f}", f"{r['padding']:.1%}", f"{r['peak_rss_mib']:.0f}",
            f"{r['data_share']:.1%}", f"{r['mfu']:.1%}", f"{r['eval_loss']:.4f}", f"{r['train_s']:.0f}", f"{r['setup_s']:.0f}",
            f"{r['precision']}, ckpt {'on' if r['gradient_checkpointing'] else 'off'}, dropout {r['lora_dropout']}, {r['batching']}"]

def table(reports: list[dict]) -> str:
    head = ["run", "tokens/s", "samples/s", "padding", "RSS MiB", "data", "MFU", "eval loss", "train s", "setup s", "settings"]
    rows = [head] + [_fmt(r) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, len(head) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows)

def compare(reports: dict, a: str, b: str, loss_tolerance: float) -> dict:
    v, t = reports[a], reports[b]
    return {"speedup": v["tokens_per_s"] / t["tokens_per_s"], "end_to_end": (t["train_s"] + t["setup_s"]) / (v["train_s"] + v["setup_s"]),
            "eval_loss_delta": v["eval_loss"] - t["eval_loss"], "loss_ok": v["eval_loss"] <= t["eval_loss"] * (1 + loss_tolerance),
            "rss_ratio": v["peak_rss_mib"] / t["peak_rss_mib"]}

def prepare(work: Path, args) -> dict:
    from vlmnb.load import tiny_tokenizer
    (work/"model").mkdir(parents=True, exist_ok=True)
    sizes = build_model(args.case, work/"model", DATA_SEED)
    if args.case == "llava": sizes.update(image_side=224, patch=14)
    tok = tiny_tokenizer(CASES[args.case]["model_type"])
    make_data(work/"train", args.samples, DATA_SEED, tok)
    make_data(work/"heldout", args.heldout, DATA_SEED + 10_000, tok)
    (work/"sizes.json").write_text(json.dumps(sizes))
    return sizes

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=list(CASES), default="llava")
    p.add_argument("--samples", type=int, default=320, help="training samples (320: the whole bench with every peer fits 30 min on 2 cores)")
    p.add_argument("--heldout", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    p.add_argument("--loss-tolerance", type=float, default=0.02, help="vlmnb's eval loss may exceed TRL's by this fraction")
    p.add_argument("--workdir", help="keep model, data and run folders here (default: a temporary folder)")
    p.add_argument("--json", help="write the reports and comparisons here")
    p.add_argument("--quick", action="store_true", help="a smoke run: 8 training and 2 held-out samples")
    p.add_argument("--peers", default="", help="comma-separated peers to run too, each in its own venv (bench/peers.py): "
                   "llamafactory, ms-swift, axolotl; `python bench/peers.py install` sets them up")
    p.add_argument("--worker", choices=list(RUNS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker: worker(args); return 0
    if args.quick: args.samples, args.heldout = 8, 2

    t0 = time.time()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vlmnb-bench-"))
    sizes = prepare(work, args)
    peak = {"bfloat16": matmul_peak("bfloat16"), "float32": matmul_peak("float32")}
    (work/"peak.json").write_text(json.dumps({"bf16": peak["bfloat16"], "fp32": peak["float32"]}))
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"case {args.case}: {sizes['params'] / 1e6:.1f}M parameters, {args.samples} training + {args.heldout} held-out samples, "
          f"batch {args.batch_size}, lr {args.lr}, LoRA r{args.lora_r}/alpha {args.lora_alpha} on the LM's attention+MLP; {device}")
    print(f"matmul peak measured now: bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 {peak['float32'] / 1e9:.0f} GFLOP/s "
          "(MFU is against the peak of the run's precision)")
    reports = {}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    for name in args.runs.split(","):
        cmd = [sys.executable, __file__, "--worker", name, "--workdir", str(work), "--case", args.case, "--batch-size", str(args.batch_size),
               "--lr", str(args.lr), "--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_alpha), "--seed", str(args.seed)]
        with open(work/f"{name}.log", "w") as log:
            done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            print(f"{name} failed (exit {done.returncode}); the end of {work/(name + '.log')}:\n" + "".join(open(work/f"{name}.log").readlines()[-30:]))
            return 1
        reports[name] = json.loads((work/"runs"/f"{name}.json").read_text())
        print(f"  {name}: {reports[name]['tokens_per_s']:.0f} tokens/s, eval loss {reports[name]['eval_loss']:.4f}", flush=True)
    print()
    print(table(list(reports.values())))
    peer_reports = run_peers(args, work, reports) if args.peers else {}
    result = {"case": args.case, "args": {k: v for k, v in vars(args).items() if k != "worker"}, "device": device, "sizes": sizes,
              "peak_flops": peak, "reports": reports, "peers": peer_reports, "seconds": time.time() - t0, "environment": environment()}
    print()
    for key, (v, t) in {"a": ("vlmnb-defaults", "trl-defaults"), "b": ("vlmnb-matched", "trl-matched"),
                        "c": ("vlmnb-packed", "trl-defaults")}.items():
        if v in reports and t in reports:
            c = result[key] = compare(reports, v, t, args.loss_tolerance)
            print(f"({key}) {v} / {t}: {c['speedup']:.2f}x tokens/s, {c['end_to_end']:.2f}x end to end (setup included); eval loss "
                  f"{c['eval_loss_delta']:+.4f} ({'within' if c['loss_ok'] else 'OUTSIDE'} {args.loss_tolerance:.0%}); RSS {c['rss_ratio']:.2f}x")
    if "vlmnb-packed" in reports and "vlmnb-defaults" in reports:
        r = reports["vlmnb-packed"]["tokens_per_s"] / reports["vlmnb-defaults"]["tokens_per_s"]
        result["packing_speedup"] = r
        print(f"packing: vlmnb-packed / vlmnb-defaults {r:.2f}x tokens/s; padding {reports['vlmnb-defaults']['padding']:.1%} -> "
              f"{reports['vlmnb-packed']['padding']:.1%}")
    for name, r in peer_reports.items():
        if "error" in r: print(f"peer {name}: did not run: {r['error']}"); continue
        if "vlmnb-defaults" in reports:
            c = result.setdefault("vs_peers", {})[name] = reports["vlmnb-defaults"]["tokens_per_s"] / r["tokens_per_s"]
            print(f"vlmnb-defaults / {name}: {c:.2f}x tokens/s; eval loss {reports['vlmnb-defaults']['eval_loss'] - r.get('eval_loss', float('nan')):+.4f}")
    print(f"whole benchmark: {(time.time() - t0) / 60:.1f} min")
    if args.json: Path(args.json).write_text(json.dumps(result, indent=1))
    if "a" in result: print(f"speedup_vs_trl: {result['a']['speedup']:.2f}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
