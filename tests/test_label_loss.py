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
from vlmnb.train import VLMTrainer, hidden_at, label_loss, label_loss_sum, next_token_mask, right_padded

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


def loss_and_grads(model, batch):
    total, count = label_loss(model, batch)
    (total / count).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return (total / count).item(), grads


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_right_padded_batches_train_the_same_without_their_padding_mask(model_type):
    """Causal attention never reaches the padding after a sample, so dropping the mask changes nothing: loss within 1e-6
    relative and every gradient within 1e-5 of the largest. Where `Arch.padding_mask` says why not (PaliGemma), it does."""
    torch.manual_seed(0)
    model, processor = tiny_model(model_type)
    model = no_dropout(model.float().train())
    batch = VLMCollator(processor, arch=ARCHS[model_type])(samples())
    assert (batch["attention_mask"] == 0).any() and right_padded(batch["attention_mask"])
    loss, grads = loss_and_grads(model, batch)
    loss_free, grads_free = loss_and_grads(model, {k: v for k, v in batch.items() if k != "attention_mask"})
    scale = max(g.abs().max().item() for g in grads.values())
    off = max((grads[n] - grads_free[n]).abs().max().item() for n in grads) / scale
    if ARCHS[model_type].padding_mask:
        assert off > 1e-3, f"{model_type} is said to need its padding mask, but trains the same without it"
    else:
        assert loss_free == pytest.approx(loss, rel=1e-6)
        assert off <= 1e-5


def test_without_the_padding_mask_sdpa_runs_as_causal(monkeypatch):
    "The speed comes from here: with no mask transformers builds none and calls sdpa with `is_causal`; with one, a 4-D mask."
    import transformers.integrations.sdpa_attention as sdpa
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((attn_mask is None, is_causal, q.shape[-2]))
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)
    monkeypatch.setattr(sdpa.torch.nn.functional, "scaled_dot_product_attention", spy)
    model, processor = tiny_model("llava")
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    batch = VLMCollator(processor, model_type="llava")(samples())
    n = batch["input_ids"].shape[1]
    label_loss(model.float(), batch)
    text = [c for c in calls if c[2] == n]
    assert text and all(not no_mask for no_mask, _, _ in text)
    calls.clear()
    label_loss(model.float(), {k: v for k, v in batch.items() if k != "attention_mask"})
    text = [c for c in calls if c[2] == n]
    assert text and all(no_mask and causal for no_mask, causal, _ in text)


def test_the_trainer_drops_the_mask_only_when_told_and_rows_are_right_padded(tmp_path):
    model, processor = tiny_model("smolvlm")
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append("attention_mask" in kw), with_kwargs=True)
    batch = VLMCollator(processor, model_type="smolvlm")(samples())
    args = transformers.TrainingArguments(str(tmp_path), report_to="none", use_cpu=True, remove_unused_columns=False)
    for padding_mask, mask, passed in ((True, batch["attention_mask"], True), (False, batch["attention_mask"], False),
                                       (False, batch["attention_mask"].flip(1), True)):  # left-padded rows keep their mask
        trainer = VLMTrainer(model=model, args=args, padding_mask=padding_mask)
        seen.clear()
        trainer.compute_loss(model, {**batch, "attention_mask": mask})
        assert seen == [passed], (padding_mask, passed)
    assert right_padded(torch.tensor([[1, 1, 0], [1, 1, 1]])) and not right_padded(torch.tensor([[0, 1, 1]]))
    assert not right_padded(None) and not right_padded(torch.tensor([[1, 0, 1]]))


def test_the_output_layer_runs_under_the_forwards_autocast():
    "The Trainer's autocast wraps the model's forward, not the loss: the chunks run the head in the dtype the forward used."
    torch.manual_seed(0)
    model, processor = tiny_model("smolvlm")
    model = model.float()
    batch = VLMCollator(processor, model_type="smolvlm")(samples())
    dtypes = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: dtypes.append(out.dtype) if out.shape[-2] else None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        own = model(**batch).loss.item()
        with hidden_at(model, next_token_mask(batch["labels"])) as got:
            model(**{k: v for k, v in batch.items() if k != "labels"})
    assert got["autocast"] == torch.bfloat16 and dtypes == [torch.bfloat16]
    dtypes.clear()
    total = label_loss_sum(got["hidden"], batch["labels"][:, 1:][batch["labels"][:, 1:] != -100],
                           model.get_output_embeddings(), autocast=got["autocast"])
    assert dtypes == [torch.bfloat16]
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert (total / n).item() == pytest.approx(own, rel=1e-3)  # the same bf16 logits as the model's own loss
    dtypes.clear()
    label_loss_sum(got["hidden"].float(), batch["labels"][:, 1:][batch["labels"][:, 1:] != -100], model.get_output_embeddings())
    assert dtypes == [torch.float32]  # no autocast asked: fp32
