"""Chat templates in the shape of the real checkpoints' templates, written for vlmnb's tests from their facts.

vlmnb's tiny zoo has imitation templates with `{% generation %}` markers and an end-of-turn token everywhere. The
real checkpoints differ in ways that decide which tokens carry loss. The facts below were read from the checkpoints'
own templates (their `chat_template.json`, as mirrored in public code: transformers' conversion scripts and tests,
OpenVINO GenAI's template fallback table, projects that embed them); each template here is written anew to render
the same text for the golden cases, not copied.

| family | checkpoint | answer written as | trimmed | what ends the answer | system prompt | images | bos |
|---|---|---|---|---|---|---|---|
| llava | llava-hf/llava-1.5-7b-hf | `ASSISTANT: ` + text + `' '` | no | nothing (a space) | bare text + `' '`, no role | `<image>\\n` per image, before the text | tokenizer adds `<s>`; template none |
| llava_next | llava-hf/llava-v1.6-mistral-7b-hf | `[/INST]` + `' '` + text | no | `</s>` (an older revision: the plain text `<\\s>`) | refused (raise) | `<image>\\n` before the text | tokenizer adds `<s>` |
| idefics3 | HuggingFaceM4/Idefics3-8B-Llama3 | `Assistant: ` + text | no | `<end_of_utterance>` then `\\n` | `System: ` turn | `<image>` in place | template writes `<|begin_of_text|>`; the tokenizer too |
| smolvlm | HuggingFaceTB/SmolVLM-256M-Instruct | `Assistant: ` + text | no | `<end_of_utterance>` then `\\n` | `System: ` turn | `<image>` in place | template writes `<|im_start|>` |
| qwen2_vl, qwen2_5_vl | Qwen/Qwen2-VL-2B-Instruct, Qwen2.5-VL-3B-Instruct | `<|im_start|>assistant\\n` + text | no | `<|im_end|>` then `\\n` | `system` turn; default "You are a helpful assistant." | `<|vision_start|><|image_pad|><|vision_end|>` in place | none |
| qwen3_vl | Qwen/Qwen3-VL-2B-Instruct | as Qwen2-VL | no | `<|im_end|>` then `\\n` | `system` turn, no default | as Qwen2-VL | none |
| gemma3 | google/gemma-3-4b-it | `<start_of_turn>model\\n` + text trimmed | yes | `<end_of_turn>` then `\\n` | folded into the first user turn, then a blank line | `<start_of_image>` in place | template writes `<bos>`; the tokenizer too |
| mllama | meta-llama/Llama-3.2-11B-Vision-Instruct | header + `\\n\\n` + text trimmed | yes | `<|eot_id|>` | system header; refused when the conversation has an image | `<|image|>` in place | template writes `<|begin_of_text|>`; the tokenizer too |

String content: the Qwen, Gemma 3 and Mllama templates accept `content` as a plain string; the llava, llava_next,
Idefics3 and SmolVLM templates iterate the content as a list of items, so a plain string renders as nothing.
PaliGemma has no chat template (its processor's prefix/suffix route is tested elsewhere); Mistral 3 needs torchvision.
"""
from __future__ import annotations
import copy
from dataclasses import dataclass
from functools import lru_cache

from tokenizers import processors

from vlmnb.load import tiny_model


@dataclass(frozen=True)
class Facts:
    "What a real template does, in the terms the loss mask cares about."
    example: str                 # the registry's example checkpoint
    lead: str                    # what the template writes right before an answer that tokenizes with it (" " or "")
    trims_answer: bool           # the template strips the answer's surrounding whitespace
    end_of_turn: str | None      # the special token written right after the answer, or None
    system: bool                 # a system prompt is accepted (with text-only conversations at least)
    string_content: bool         # `content` may be a plain string
    bos: str | None              # the bos token that must start each row, once
    tokenizer_adds_bos: bool     # the real tokenizer prepends bos itself
    refuses: str = ""            # what the template raises for


# ---- templates, written from the facts above ----
LLAVA_15 = (  # role in capitals, images first, every text followed by a space, no end-of-turn token
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'].upper() + ': ' }}{% endif %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

def _llava_next(end: str) -> str:  # [INST] images text [/INST] answer END, system refused
    return ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' }}"
            "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
            "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %}{{ ' [/INST]' }}"
            "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'][0]['text'] + '" + end + " ' }}"
            "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

LLAVA_NEXT = _llava_next("</s>")
LLAVA_NEXT_OLD = _llava_next("<\\\\s>")  # the older revision: a backslash, not the eos token

def _idefics(bos: str) -> str:  # Role: text<end_of_utterance>\n, ':' alone when the turn starts with an image
    return (bos + "{% for m in messages %}{{ m['role'] | capitalize }}"
            "{% if m['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
            "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% elif c['type'] == 'image' %}{{ '<image>' }}"
            "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

def _chatml(default_system: bool) -> str:
    default = ("{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
               if default_system else "")
    return ("{% for m in messages %}" + default + "<|im_start|>{{ m['role'] }}\n"
            "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
            "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

GEMMA3 = (  # bos, system folded into the first user turn, 'model' for the assistant, everything trimmed
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first = (messages[0]['content'] if messages[0]['content'] is string else messages[0]['content'][0]['text']) + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set first = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' + (first if loop.first else '') }}"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<start_of_image>' }}{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

MLLAMA = (  # bos, a system header only without images (with images a system prompt is refused), everything trimmed
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] %}{% set turns = messages[1:] %}{% else %}{% set sys = '' %}{% set turns = messages %}{% endif %}"
    "{% set ns = namespace(images=false) %}{% for m in turns %}{% if m['content'] is not string %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{% set ns.images = true %}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if ns.images and sys %}{{ raise_exception('Prompting with images is incompatible with system messages.') }}{% endif %}"
    "{% if not ns.images %}{{ '<|start_header_id|>system<|end_header_id|>\n\n' + sys | trim + '<|eot_id|>' }}{% endif %}"
    "{% for m in turns %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|image|>' }}{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

TEMPLATES = {"llava": LLAVA_15, "llava_next": LLAVA_NEXT, "idefics3": _idefics("<|begin_of_text|>"), "smolvlm": _idefics("<|im_start|>"),
             "qwen2_vl": _chatml(True), "qwen2_5_vl": _chatml(True), "qwen3_vl": _chatml(False), "gemma3": GEMMA3, "mllama": MLLAMA}

FACTS = {
    "llava": Facts("llava-hf/llava-1.5-7b-hf", " ", False, None, True, False, "<s>", True),
    "llava_next": Facts("llava-hf/llava-v1.6-mistral-7b-hf", " ", False, "</s>", False, False, "<s>", True, "a system prompt"),
    "idefics3": Facts("HuggingFaceM4/Idefics3-8B-Llama3", " ", False, "<end_of_utterance>", True, False, "<|begin_of_text|>", True),
    "smolvlm": Facts("HuggingFaceTB/SmolVLM-256M-Instruct", " ", False, "<end_of_utterance>", True, False, None, False),
    "qwen2_vl": Facts("Qwen/Qwen2-VL-2B-Instruct", "", False, "<|im_end|>", True, True, None, False),
    "qwen2_5_vl": Facts("Qwen/Qwen2.5-VL-3B-Instruct", "", False, "<|im_end|>", True, True, None, False),
    "qwen3_vl": Facts("Qwen/Qwen3-VL-2B-Instruct", "", False, "<|im_end|>", True, True, None, False),
    "gemma3": Facts("google/gemma-3-4b-it", "", True, "<end_of_turn>", True, True, "<bos>", True),
    "mllama": Facts("meta-llama/Llama-3.2-11B-Vision-Instruct", "", True, "<|eot_id|>", True, True, "<|begin_of_text|>", True,
                    "a system prompt in a conversation with an image"),
}


def _prepend_bos(tokenizer) -> None:
    "Make the tiny fast tokenizer prepend bos, as the real Llama, Mistral and Gemma tokenizers do."
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)])])


@lru_cache(maxsize=None)
def _tiny(model_type: str):
    return tiny_model(model_type)


def real_like_processor(model_type: str, template: str | None = None):
    "A tiny processor of `model_type` with the real-shaped template installed, and a bos-prepending tokenizer where the real one has it."
    processor = copy.deepcopy(_tiny(model_type)[1])
    processor.chat_template = template or TEMPLATES[model_type]
    if FACTS[model_type].tokenizer_adds_bos: _prepend_bos(processor.tokenizer)
    return processor
