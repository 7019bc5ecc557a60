"""Loss masks under templates in the shape of the real checkpoints' (see chat_templates.py for their facts).

Every golden expectation is written from the facts (what the template writes before and after an answer, whether it
trims, which token ends the turn), never computed by vlmnb. The `online` tests run the same checks with each registry
entry's real processor from the Hub.
"""
import pytest
import torch

from chat_templates import FACTS, LLAVA_NEXT_OLD, TEMPLATES, real_like_processor
from vlmnb.collate import CollateError, VLMCollator, loss_runs, template_end_of_turn, token_budget, token_table
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


def expected_runs(family: str, answers: list[str]) -> list[str]:
    "Each answer as the template writes it, then its end-of-turn token, or the eos vlmnb appends where there is none."
    f, proc = FACTS[family], real_like_processor(family)
    end = f.end_of_turn or proc.tokenizer.eos_token
    return [f.lead + (a.strip() if f.trims_answer else a) + end for a in answers]


def sample(case: str) -> dict:
    messages, n_images, _ = CASES[case]
    return {"messages": messages, "images": IMAGES[:n_images]}


def applicable(family: str, case: str) -> bool:
    return case != "system prompt" or FACTS[family].system


@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_turn_detected_from_the_template(family):
    proc = real_like_processor(family)
    assert template_end_of_turn(proc) == FACTS[family].end_of_turn
    assert VLMCollator(proc, model_type=family).eos_appended == (FACTS[family].end_of_turn is None)


@pytest.mark.parametrize("family,case", [(f, c) for f in FAMILIES for c in sorted(CASES) if applicable(f, c)])
def test_golden_loss_runs(family, case):  # llava_next refuses a system prompt: tested with the refusals below
    proc = real_like_processor(family)
    batch = VLMCollator(proc, model_type=family)([sample(case)])
    assert loss_runs(batch, proc) == expected_runs(family, CASES[case][2])


@pytest.mark.parametrize("family", FAMILIES)
def test_right_padded_mixed_batch(family):
    proc = real_like_processor(family)
    cases = [c for c in ("single", "trailing newline", "two images", "system prompt") if applicable(family, c)]
    batch = VLMCollator(proc, model_type=family)([sample(c) for c in cases])
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1
    for row, c in enumerate(cases):
        assert loss_runs(batch, proc, row) == expected_runs(family, CASES[c][2]), c
        assert not batch["attention_mask"][row, : lengths[row]].eq(0).any(), "padding is on the right"
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == -100).all()


@pytest.mark.parametrize("family", [f for f in FAMILIES if FACTS[f].bos])
def test_exactly_one_bos_per_row(family):
    proc = real_like_processor(family)
    assert proc.tokenizer("x")["input_ids"][0] == proc.tokenizer.bos_token_id or not FACTS[family].tokenizer_adds_bos
    batch = VLMCollator(proc, model_type=family)([sample("single"), sample("multi-turn")])
    bos = proc.tokenizer.convert_tokens_to_ids(FACTS[family].bos)
    for row in range(2):
        ids = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        assert ids[0] == bos and ids.count(bos) == 1
        assert batch["labels"][row][0] == -100


@pytest.mark.parametrize("family", [f for f in FAMILIES if FACTS[f].string_content])
def test_string_content(family):
    proc = real_like_processor(family)
    messages = [{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "red\n"}]
    batch = VLMCollator(proc, model_type=family)([{"messages": messages, "images": []}])
    assert loss_runs(batch, proc) == expected_runs(family, ["red\n"])


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
    table = token_table(on, sample("single"))
    assert [(r["text"], r["role"], r["has_loss"]) for r in table if r["appended"]] == [("</s>", "assistant", True)]
    assert "appends </s> (eos)" in on.stop_note and "not trained to stop" in off.stop_note


def test_llava_next_old_revision_writes_no_eos_token():
    "The older LLaVA-NeXT template writes the text `<\\s>`, which is not the eos token: vlmnb appends the real one."
    proc = real_like_processor("llava_next", LLAVA_NEXT_OLD)
    assert template_end_of_turn(proc) is None
    runs = loss_runs(VLMCollator(proc, model_type="llava_next")([sample("single")]), proc)
    assert runs == [" red</s>"]


@pytest.mark.parametrize("family,messages", [
    ("mllama", [system("Be brief."), user("Colour?", 1), assistant("red")]),
    ("llava_next", [system("Be brief."), user("Colour?", 1), assistant("red")]),
    ("gemma3", [user("Colour?", 1), user("Really?"), assistant("red")]),
])
def test_template_refusals_are_bad_samples(family, messages):
    proc = real_like_processor(family)
    collator = VLMCollator(proc, model_type=family)
    bad = {"messages": messages, "images": IMAGES[:1], "source_index": 41}
    with pytest.raises(CollateError, match="sample 41: the chat template refused it"):
        collator([bad])
    report = token_budget([bad, {**sample("single"), "source_index": 42}], collator)
    assert [(p.index, p.kind) for p in report.problems] == [(41, "template")] and [r.index for r in report.rows] == [42]


def test_mllama_accepts_a_system_prompt_without_images():
    proc = real_like_processor("mllama")
    batch = VLMCollator(proc, model_type="mllama")([sample("system prompt")])
    assert loss_runs(batch, proc) == ["red<|eot_id|>"]


# ---------------------------------------------------------------- the real processors (online)
@pytest.mark.online
@pytest.mark.parametrize("family", FAMILIES)
def test_real_processor_golden(family):
    from vlmnb.load import LoadError, load_processor
    assert ARCHS[family].example == FACTS[family].example
    try: proc = load_processor(FACTS[family].example)
    except (LoadError, OSError) as e: pytest.skip(f"{FACTS[family].example} cannot be loaded here (gated or offline): {e}")
    assert template_end_of_turn(proc) == FACTS[family].end_of_turn
    eos = proc.tokenizer.eos_token
    end = FACTS[family].end_of_turn or eos
    collator = VLMCollator(proc, model_type=family)
    for case in ("single", "multi-turn", "trailing newline", "trailing space"):
        batch = collator([sample(case)])
        runs = [r.lstrip(" ") for r in loss_runs(batch, proc)]  # real tokenizers differ in where a leading space sits
        want = [(a.strip() if FACTS[family].trims_answer else a) + end for a in CASES[case][2]]
        assert runs == want, (case, runs)
        if FACTS[family].bos:
            ids = batch["input_ids"][0].tolist()
            assert ids.count(proc.tokenizer.convert_tokens_to_ids(FACTS[family].bos)) == 1


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
