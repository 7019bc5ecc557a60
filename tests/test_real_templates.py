"""Loss masks under templates in the shape of the real checkpoints' (see chat_templates.py for their facts).

The golden label runs below are written out from the facts (what the template writes before and after an answer,
whether it trims, which token ends the turn, or that none does and vlmnb appends eos), never computed by vlmnb;
`test_fixture_follows_the_facts` checks the table and the fixtures against the facts. The `online` tests run the same
checks with each registry entry's real processor from the Hub (expectations from the same facts).
"""
import pytest

from chat_templates import FACTS, LLAVA_NEXT_OLD, TEMPLATES, real_like_processor
from vlmnb.collate import CollateError, VLMCollator, loss_runs, render, template_end_of_turn, token_budget, token_table
from vlmnb.data import colour_shapes
from vlmnb.load import ARCHS

FAMILIES = sorted(TEMPLATES)
IMAGES = [colour_shapes(2, seed=3)[k]["images"][0] for k in range(2)]


def user(text, n_images=0): return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}
def assistant(text): return {"role": "assistant", "content": [{"type": "text", "text": text}]}
def system(text): return {"role": "system", "content": [{"type": "text", "text": text}]}


CASES = {  # name: (messages, number of images, answers)
    "single": ([user("What colour is the circle?", 1), assistant("red")], 1, ["red"]),
    "multi-turn": ([user("What colour is it?", 1), assistant("red"), user("Sure?"), assistant("yes, red")], 1, ["red", "yes, red"]),
    "two images": ([user("Which colours?", 2), assistant("red and blue")], 2, ["red and blue"]),
    "trailing space": ([user("Colour?", 1), assistant("red ")], 1, ["red "]),
    "trailing newline": ([user("Colour?", 1), assistant("red\n")], 1, ["red\n"]),
    "newline, two turns": ([user("Colour?", 1), assistant("red\n"), user("And now?"), assistant("blue\n\n")], 1, ["red\n", "blue\n\n"]),
    "system prompt": ([system("Answer in one word."), user("Colour?"), assistant("red")], 0, ["red"]),
}

# The runs of labelled tokens each case must give, decoded with the tiny tokenizer. llava and llava_next read the same
# (an appended </s> for llava, the template's own </s> for llava_next); the space before the answer belongs to its
# first token where the template writes `: ` or `] ` right before it.
_SPACE_LED = lambda end: {
    "single": [f" red{end}"], "multi-turn": [f" red{end}", f" yes, red{end}"], "two images": [f" red and blue{end}"],
    "trailing space": [f" red {end}"], "trailing newline": [f" red\n{end}"], "newline, two turns": [f" red\n{end}", f" blue\n\n{end}"],
    "system prompt": [f" red{end}"]}
GOLDEN = {
    "llava": _SPACE_LED("</s>"),
    "llava_next": _SPACE_LED("</s>"),
    "idefics3": _SPACE_LED("<end_of_utterance>"),
    "smolvlm": _SPACE_LED("<end_of_utterance>"),
    "idefics2": _SPACE_LED("<end_of_utterance>"),
    "qwen2_vl": {"single": ["red<|im_end|>"], "multi-turn": ["red<|im_end|>", "yes, red<|im_end|>"], "two images": ["red and blue<|im_end|>"],
                 "trailing space": ["red <|im_end|>"], "trailing newline": ["red\n<|im_end|>"],
                 "newline, two turns": ["red\n<|im_end|>", "blue\n\n<|im_end|>"], "system prompt": ["red<|im_end|>"]},
    "gemma3": {"single": ["red<end_of_turn>"], "multi-turn": ["red<end_of_turn>", "yes, red<end_of_turn>"],
               "two images": ["red and blue<end_of_turn>"], "trailing space": ["red<end_of_turn>"], "trailing newline": ["red<end_of_turn>"],
               "newline, two turns": ["red<end_of_turn>", "blue<end_of_turn>"], "system prompt": ["red<end_of_turn>"]},
    "mllama": {"single": ["red<|eot_id|>"], "multi-turn": ["red<|eot_id|>", "yes, red<|eot_id|>"], "two images": ["red and blue<|eot_id|>"],
               "trailing space": ["red <|eot_id|>"], "trailing newline": ["red\n<|eot_id|>"],
               "newline, two turns": ["red\n<|eot_id|>", "blue\n\n<|eot_id|>"], "system prompt": ["red<|eot_id|>"]},
}
_AYA_END = "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"  # both tokens carry a label: generation stops at the second (eos)
GOLDEN["aya_vision"] = {
    "single": [f"red{_AYA_END}"], "multi-turn": [f"red{_AYA_END}", f"yes, red{_AYA_END}"], "two images": [f"red and blue{_AYA_END}"],
    "trailing space": [f"red {_AYA_END}"], "trailing newline": [f"red\n{_AYA_END}"],
    "newline, two turns": [f"red\n{_AYA_END}", f"blue\n\n{_AYA_END}"], "system prompt": [f"red{_AYA_END}"]}
GOLDEN["gemma4"] = {case: [r.replace("<end_of_turn>", "<turn|>") for r in runs] for case, runs in GOLDEN["gemma3"].items()}  # trimmed too
GOLDEN["qwen2_5_vl"] = GOLDEN["qwen3_vl"] = GOLDEN["internvl"] = GOLDEN["llava_onevision"] = GOLDEN["qwen2_vl"]  # InternVL: the same chatml turns
GOLDEN["qwen3_5"] = GOLDEN["qwen3_5_moe"] = {  # trimmed like Gemma 3; the empty think block before the last answer carries no loss
    "single": ["red<|im_end|>"], "multi-turn": ["red<|im_end|>", "yes, red<|im_end|>"], "two images": ["red and blue<|im_end|>"],
    "trailing space": ["red<|im_end|>"], "trailing newline": ["red<|im_end|>"], "newline, two turns": ["red<|im_end|>", "blue<|im_end|>"],
    "system prompt": ["red<|im_end|>"]}
# GLM: nothing follows the last answer in the template; the next turn's <|user|> follows the others, and vlmnb appends one
# after the last (GLM's own fine-tuning recipe): every answer's run ends with <|user|>. GLM-4.5V/4.6V trim the answer.
GOLDEN["glm4v"] = {"single": ["red<|user|>"], "multi-turn": ["red<|user|>", "yes, red<|user|>"], "two images": ["red and blue<|user|>"],
                   "trailing space": ["red <|user|>"], "trailing newline": ["red\n<|user|>"],
                   "newline, two turns": ["red\n<|user|>", "blue\n\n<|user|>"], "system prompt": ["red<|user|>"]}
GOLDEN["glm4v_moe"] = GOLDEN["glm46v"] = {
    "single": ["red<|user|>"], "multi-turn": ["red<|user|>", "yes, red<|user|>"], "two images": ["red and blue<|user|>"],
    "trailing space": ["red<|user|>"], "trailing newline": ["red<|user|>"], "newline, two turns": ["red<|user|>", "blue<|user|>"],
    "system prompt": ["red<|user|>"]}


def sample(case: str, **extra) -> dict:
    messages, n_images, _ = CASES[case]
    return {"messages": messages, "images": IMAGES[:n_images], **extra}


def applicable(family: str, case: str) -> bool:
    return case != "system prompt" or FACTS[family].system


def from_facts(family: str, answers: list[str], eos: str) -> list[str]:
    "Each answer as the template writes it, then its end-of-turn token, or the eos vlmnb appends where there is none."
    f = FACTS[family]
    return [f.lead + (a.strip() if f.trims_answer else a) + (f.end_of_turn or f.appended or eos) for a in answers]


# ---------------------------------------------------------------- the fixtures say what the facts say
@pytest.mark.parametrize("family", FAMILIES)
def test_fixture_follows_the_facts(family):
    "The tiny processor with the real-shaped template: bos from the tokenizer and from the template, the default system prompt."
    f, proc = FACTS[family], real_like_processor(family)
    tok = proc.tokenizer
    assert (tok("red")["input_ids"][0] == tok.bos_token_id) == f.tokenizer_adds_bos
    text = render(proc, CASES["single"][0])
    assert text.startswith(tok.bos_token or "\0") == f.template_writes_bos
    assert f.bos is None or tok.bos_token == f.bos
    assert (f.default_system and f.default_system in text) or (not f.default_system and "system" not in text.lower())
    for case, (_, _, answers) in CASES.items():  # the golden table is the facts, written out
        if applicable(family, case): assert GOLDEN[family][case] == from_facts(family, answers, tok.eos_token), case


# ---------------------------------------------------------------- vlmnb against the real shapes
@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_turn_detected_from_the_template(family):
    proc = real_like_processor(family)
    assert template_end_of_turn(proc) == FACTS[family].end_of_turn
    assert VLMCollator(proc, model_type=family).eos_appended == (FACTS[family].end_of_turn is None)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_append_eos_resolution(family):
    "None: append where the template writes no end-of-turn token; False: never; True: always."
    proc = real_like_processor(family)
    assert [VLMCollator(proc, model_type=family, append_eos=a).eos_appended for a in (None, False, True)] == \
           [FACTS[family].end_of_turn is None, False, True]


@pytest.mark.parametrize("family,case", [(f, c) for f in FAMILIES for c in CASES if applicable(f, c)])
def test_golden_loss_runs(family, case):
    "Each answer as the template renders it (its own trailing space/newline kept unless the template trims), then the stop token."
    proc = real_like_processor(family)
    batch = VLMCollator(proc, model_type=family)([sample(case)])
    assert loss_runs(batch, proc) == GOLDEN[family][case]


@pytest.mark.parametrize("family", FAMILIES)
def test_right_padded_mixed_batch(family):
    proc = real_like_processor(family)
    cases = [c for c in ("single", "trailing newline", "two images", "system prompt", "newline, two turns") if applicable(family, c)]
    batch = VLMCollator(proc, model_type=family)([sample(c) for c in cases])
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1
    for row, c in enumerate(cases):
        assert loss_runs(batch, proc, row) == GOLDEN[family][c], c
        assert batch["attention_mask"][row, : lengths[row]].all() and not batch["attention_mask"][row, lengths[row]:].any(), "padding on the right"
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == -100).all()


@pytest.mark.parametrize("family", [f for f in FAMILIES if FACTS[f].bos])
def test_exactly_one_bos_per_row(family):
    "Where the tokenizer prepends bos and the template writes it too, a row still starts with exactly one, without a label."
    proc = real_like_processor(family)
    batch = VLMCollator(proc, model_type=family)([sample("single"), sample("multi-turn"), sample("two images")])
    bos = proc.tokenizer.convert_tokens_to_ids(FACTS[family].bos)
    for row in range(3):
        ids = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        assert ids[0] == bos and ids.count(bos) == 1 and batch["labels"][row][0] == -100


@pytest.mark.parametrize("family", [f for f in FAMILIES if FACTS[f].string_content])
def test_string_content(family):
    proc = real_like_processor(family)
    messages = [{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "red\n"}]
    batch = VLMCollator(proc, model_type=family)([{"messages": messages, "images": []}])
    assert loss_runs(batch, proc) == GOLDEN[family]["trailing newline"]


@pytest.mark.parametrize("family", [f for f in FAMILIES if not FACTS[f].string_content])
def test_string_content_the_template_drops_is_an_error(family):
    "These templates render a plain-string answer as nothing (or fail on it): vlmnb says so instead of training on no answer."
    proc = real_like_processor(family)
    messages = [user("Colour?"), {"role": "assistant", "content": "red"}]
    with pytest.raises(CollateError, match="sample 0: (turn 1's answer 'red' is not in the text the chat template renders|the chat template refused it)"):
        VLMCollator(proc, model_type=family)([{"messages": messages, "images": []}])


def test_llava_appends_eos_and_can_be_told_not_to():
    proc = real_like_processor("llava")
    on, off = VLMCollator(proc, model_type="llava"), VLMCollator(proc, model_type="llava", append_eos=False)
    assert loss_runs(on([sample("multi-turn")]), proc) == [" red</s>", " yes, red</s>"]
    assert loss_runs(off([sample("multi-turn")]), proc) == [" red", " yes, red"]
    table = token_table(on, sample("trailing newline"))
    assert [(r["text"], r["role"], r["has_loss"]) for r in table if r["appended"]] == [("</s>", "assistant", True)]
    assert not any(r["appended"] for r in token_table(off, sample("trailing newline")))
    assert "appends </s> (eos)" in on.stop_note and "not trained to stop" in off.stop_note


def test_llava_next_old_revision_writes_no_eos_token():
    "The older LLaVA-NeXT template writes the text `<\\s>`, which is not the eos token: vlmnb appends the real one."
    proc = real_like_processor("llava_next", LLAVA_NEXT_OLD)
    assert template_end_of_turn(proc) is None
    collator = VLMCollator(proc, model_type="llava_next")
    assert collator.eos_appended
    assert loss_runs(collator([sample("single")]), proc) == [" red</s>"]
    assert loss_runs(collator([sample("newline, two turns")]), proc) == [" red\n</s>", " blue\n\n</s>"]
    assert [r["text"] for r in token_table(collator, sample("single")) if r["appended"]] == ["</s>"]


def test_llava_next_current_revision_ends_answers_itself():
    "The current template writes the real </s>: nothing is appended, nothing is marked appended."
    collator = VLMCollator(real_like_processor("llava_next"), model_type="llava_next")
    assert not collator.eos_appended and not any(r["appended"] for r in token_table(collator, sample("single")))


@pytest.mark.parametrize("family,messages", [
    ("mllama", [system("Be brief."), user("Colour?", 1), assistant("red")]),
    ("gemma3", [user("Colour?", 1), user("Really?"), assistant("red")]),
    ("llava_next", [user("Colour?", 1), {"role": "tool", "content": [{"type": "text", "text": "red"}]}, assistant("red")]),
    ("qwen3_5", [user("Colour?", 1), system("Be brief."), assistant("red")]),
])
def test_template_refusals_are_bad_samples(family, messages):
    "A sample the real template raises for is a bad sample: named by index in the error, reported by the budget audit."
    collator = VLMCollator(real_like_processor(family), model_type=family)
    bad = {"messages": messages, "images": IMAGES[:1], "source_index": 41}
    with pytest.raises(CollateError, match="sample 41: the chat template refused it .*(Rewrite the sample|leave it out)"):
        collator([bad])
    report = token_budget([bad, sample("single", source_index=42)], collator)
    assert [(p.index, p.kind) for p in report.problems] == [(41, "template")] and [r.index for r in report.rows] == [42]


def test_processor_without_a_chat_template():
    "Real PaliGemma checkpoints ship no chat template: generation still finds its stop token; a chat family says what is missing."
    import copy
    from vlmnb.eval import end_of_turn_ids
    from vlmnb.load import tiny_model
    pali = copy.copy(tiny_model("paligemma")[1]); pali.chat_template = None
    assert end_of_turn_ids(pali) == [pali.tokenizer.eos_token_id]
    assert VLMCollator(pali, model_type="paligemma").end_of_turn == pali.tokenizer.eos_token
    bare = real_like_processor("smolvlm"); bare.chat_template = None
    with pytest.raises(CollateError, match="does not have a chat template.*give the processor a chat template, or set append_eos"):
        VLMCollator(bare, model_type="smolvlm")


# ---------------------------------------------------------------- the real processors (online)
def _real_processor(family: str):
    "The registry entry's example checkpoint's processor from the Hub, or a skip that says why it cannot be had here."
    from vlmnb.load import LoadError, has_torchvision, load_processor
    arch = ARCHS[family]
    if family == "mistral3" and not has_torchvision(): pytest.skip("mistral3's processor needs torchvision, which is not installed")
    try: return load_processor(arch.example, arch=arch)
    except (LoadError, OSError) as e: pytest.skip(f"{arch.example} cannot be loaded here (gated, needs a login, or offline): {e}")


def _unlead(runs: list[str]) -> list[str]:
    return [r.lstrip(" ") for r in runs]  # SentencePiece decodes drop the space that starts a decoded piece; byte-level ones keep it


@pytest.mark.online
@pytest.mark.parametrize("family", sorted(FACTS))
def test_real_processor_golden(family):
    f = FACTS[family]
    assert ARCHS[family].example == f.example, "the registry's example changed: check its template's facts again"
    proc = _real_processor(family)
    tok = proc.tokenizer
    assert template_end_of_turn(proc) == f.end_of_turn
    collator = VLMCollator(proc, model_type=family)
    assert collator.eos_appended == (f.end_of_turn is None)
    cases = [c for c in CASES if applicable(family, c)]
    for case in cases:
        batch = collator([sample(case)])
        assert _unlead(loss_runs(batch, proc)) == _unlead(from_facts(family, CASES[case][2], tok.eos_token)), case
        ids = batch["input_ids"][0].tolist()
        if f.bos: assert ids.count(tok.convert_tokens_to_ids(f.bos)) == 1, case
    batch = collator([sample(c) for c in cases])  # right-padded, mixed
    for row, case in enumerate(cases):
        assert _unlead(loss_runs(batch, proc, row)) == _unlead(from_facts(family, CASES[case][2], tok.eos_token)), case
    if f.string_content:
        messages = [{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "red\n"}]
        runs = loss_runs(collator([{"messages": messages, "images": []}]), proc)
        assert _unlead(runs) == _unlead(from_facts(family, ["red\n"], tok.eos_token))
    if f.refuses.startswith("a system prompt in a conversation with an image"):
        with pytest.raises(CollateError, match="the chat template refused it"):
            collator([{"messages": [system("Be brief."), user("Colour?", 1), assistant("red")], "images": IMAGES[:1]}])


@pytest.mark.online
def test_real_paligemma_prefix_suffix_route():
    "No chat template: the processor's suffix is the answer, followed by eos; both carry loss, the prefix does not."
    proc = _real_processor("paligemma")
    assert not proc.chat_template
    collator = VLMCollator(proc, model_type="paligemma")
    batch = collator([sample("single"), sample("trailing newline")])
    eos = proc.tokenizer.eos_token
    for row in range(2):
        assert loss_runs(batch, proc, row) == ["red" + eos]
        ids = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        assert ids.count(proc.tokenizer.bos_token_id) == 1
