"""The loss computed only where labels are (`vlmnb.train.label_loss`, `VLMTrainer`): the same loss and gradients as the
model's own full computation for every zoo family, chunked or not, and a loss that does not depend on how an optimizer
step's samples are split into batches."""
import warnings

import pytest
import torch
import transformers

from vlmnb.collate import VLMCollator
from vlmnb.data import colour_shapes
from vlmnb.load import ARCHS, TINY_ARCHS, tiny_model
from vlmnb.train import VLMTrainer, hidden_at, label_loss, label_loss_sum, next_token_mask

warnings.filterwarnings("ignore")


def samples(n=4):
    "Synthetic samples with answers of different lengths (so batches differ in label counts)."
    ds = colour_shapes(n, seed=1)
    out = [ds[i] for i in range(n)]
    long = "It is a red circle on a grey ground, drawn small and near the middle of the picture, with nothing else there."
    out[1]["messages"][-1]["content"] = [{"type": "text", "text": long}]
    return out


def no_dropout(model):
    for m in model.modules():
        if isinstance(getattr(m, "p", None), float): m.p = 0.0
    return model


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_same_loss_and_gradients_as_the_full_computation(model_type):
    "fp32, every parameter trainable: loss within 1e-6 relative, every gradient within 1e-5 of the largest (chunks of 5 positions)."
    torch.manual_seed(0)
    model, processor = tiny_model(model_type)
    model = no_dropout(model.float().train())
    batch = VLMCollator(processor, arch=ARCHS[model_type])(samples())
    full = model(**batch).loss
    full.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with hidden_at(model, next_token_mask(batch["labels"])) as got:
        out = model(**inputs)
    assert out.logits.shape[1] == 0, "the model's output layer ran on every position"
    labels = batch["labels"]
    targets = labels[:, 1:][labels[:, 1:] != -100]
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    total = label_loss_sum(got["hidden"], targets, model.get_output_embeddings(), softcap, rows=5)
    (total / len(targets)).backward()
    assert (total / len(targets)).item() == pytest.approx(full.item(), rel=1e-6)
    scale = max(g.abs().max().item() for g in expected.values())
    got_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got_grads) == set(expected)
    for n, g in expected.items():
        assert (got_grads[n] - g).abs().max().item() <= 1e-5 * scale, n


def test_label_loss_counts_what_the_trainer_counts():
    model, processor = tiny_model("smolvlm")
    batch = VLMCollator(processor, model_type="smolvlm")(samples())
    _, count = label_loss(model.float(), batch)
    assert count == int((batch["labels"][:, 1:] != -100).sum())


def one_step(model_type, batch_size, accumulation, trainer_class, tmp_path):
    "LoRA-free: every parameter of the tiny model after one SGD step on the same four samples."
    torch.manual_seed(0)
    model, processor = tiny_model(model_type)
    model = no_dropout(model.float())
    args = transformers.TrainingArguments(str(tmp_path), per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                                          max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", report_to="none",
                                          save_strategy="no", remove_unused_columns=False, use_cpu=True, seed=0, disable_tqdm=True)
    trainer = trainer_class(model=model, args=args, train_dataset=samples(), data_collator=VLMCollator(processor, model_type=model_type))
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "smolvlm"])
def test_one_step_does_not_depend_on_how_the_step_is_split(model_type, tmp_path):
    """Four samples in one batch, or two batches of two accumulated: the same update. Qwen2.5-VL's own loss does not take
    the step's token count (transformers' `accepts_loss_kwargs = False`), so the plain Trainer's update differs there."""
    whole = one_step(model_type, 4, 1, VLMTrainer, tmp_path/"a")
    split = one_step(model_type, 2, 2, VLMTrainer, tmp_path/"b")
    moved = max((whole[n] - split[n]).abs().max().item() for n in whole)
    assert moved < 1e-5, moved
    if model_type == "qwen2_5_vl":
        plain_whole = one_step(model_type, 4, 1, transformers.Trainer, tmp_path/"c")
        plain_split = one_step(model_type, 2, 2, transformers.Trainer, tmp_path/"d")
        assert max((plain_whole[n] - plain_split[n]).abs().max().item() for n in whole) > 100 * max(moved, 1e-7)
        assert max((plain_whole[n] - whole[n]).abs().max().item() for n in whole) < 1e-5  # one batch: the same loss
