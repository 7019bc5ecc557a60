#!/usr/bin/env python
"""When bf16 autocast pays on a CPU: forward and backward of a 4-layer Llama, fp32 against bf16 autocast, by width.

    python bench/cpu_bf16.py

Batch 4 x 300 tokens, base weights frozen (as under LoRA), the embeddings trainable so the backward runs through
every layer. Prints seconds per step for each precision and their ratio; `vlmnb.train.auto_precision` turns bf16 on
for a CPU with native bf16 only from the width where the ratio passes 1 (128 on the machine it was measured on).
"""
import time

import torch
import transformers


def step_seconds(model, input_ids, bf16: bool, seconds: float = 3.0) -> float:
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
    step(); step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds: step(); n += 1
    return (time.perf_counter() - t0) / n


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: "
          f"{torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()}")
    print(f"{'width':>6} {'fp32 s':>8} {'bf16 s':>8} {'bf16 speedup':>13}")
    for width in (64, 128, 256, 384, 512):
        heads = max(2, width // 64)
        config = transformers.LlamaConfig(hidden_size=width, intermediate_size=int(width * 1.75) // 16 * 16, num_hidden_layers=4,
                                          num_attention_heads=heads, num_key_value_heads=heads, vocab_size=1024)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
        for p in model.parameters(): p.requires_grad_(False)
        model.model.embed_tokens.weight.requires_grad_(True)
        input_ids = torch.randint(0, 1024, (4, 300))
        fp32, bf16 = step_seconds(model, input_ids, False), step_seconds(model, input_ids, True)
        print(f"{width:>6} {fp32:>8.3f} {bf16:>8.3f} {fp32 / bf16:>12.2f}x")


if __name__ == "__main__":
    main()
