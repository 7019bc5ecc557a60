"""Chat templates in the shape of the real checkpoints' templates, written for vlmnb's tests from their facts.

vlmnb's tiny zoo has imitation templates with `{% generation %}` markers and an end-of-turn token everywhere. The
real checkpoints differ in ways that decide which tokens carry loss. The facts below were read from the checkpoints'
own templates as public code mirrors them (sources under the table); each template here is written anew to render the
same text for the golden cases (checked by rendering both side by side), not copied.

| family | checkpoint | answer written as | trimmed | what ends the answer | system prompt | images | bos |
|---|---|---|---|---|---|---|---|
| llava | llava-hf/llava-1.5-7b-hf | `ASSISTANT: ` + text + `' '` (in `{% generation %}`) | no | nothing: a space | bare text + `' '`, no role | `<image>\\n` per image, before the text | tokenizer adds `<s>`; template none |
| llava_next | llava-hf/llava-v1.6-mistral-7b-hf | `[/INST]` + `' '` + first text item | no | `</s>` then `' '` (older revision: the plain text `<\\s>`) | `<<SYS>>\\n`..`\\n<</SYS>>\\n\\n`, no default | `<image>\\n` per image, before the text | tokenizer adds `<s>`; template none |
| idefics3 | HuggingFaceM4/Idefics3-8B-Llama3 | `Assistant: ` + text | no | `<end_of_utterance>` then `\\n` | `System: ` turn | `<image>` in place (`:` without space when the turn starts with one) | template writes `<|begin_of_text|>`; the tokenizer adds it too |
| smolvlm | HuggingFaceTB/SmolVLM-256M-Instruct | `Assistant: ` + text | no | `<end_of_utterance>` then `\\n` | `System: ` turn | as Idefics3 | template writes `<|im_start|>` (the bos); tokenizer none |
| qwen2_vl, qwen2_5_vl | Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2.5-VL-3B-Instruct | `<|im_start|>assistant\\n` + text | no | `<|im_end|>` then `\\n` | `system` turn; default "You are a helpful assistant." | `<|vision_start|><|image_pad|><|vision_end|>` in place | none |
| qwen3_vl | Qwen/Qwen3-VL-2B-Instruct | as Qwen2-VL | no | `<|im_end|>` then `\\n` | `system` turn (its text items only), no default | as Qwen2-VL | none |
| qwen3_5, qwen3_5_moe | Qwen/Qwen3.5-2B, Qwen/Qwen3.5-35B-A3B | `<|im_start|>assistant\\n` + text, trimmed; an answer after the last user turn gets `<think>\\n\\n</think>\\n\\n` first, earlier ones nothing | yes | `<|im_end|>` then `\\n` | `system` turn, first only, text trimmed, no default | `<|vision_start|><|image_pad|><|vision_end|>` in place (every content trimmed as a whole) | none |
| gemma3 | google/gemma-3-4b-it | `<start_of_turn>model\\n` + text, trimmed | yes | `<end_of_turn>` then `\\n` | folded into the first user turn + blank line | `<start_of_image>` in place | template writes `<bos>`; the tokenizer adds it too |
| mllama | meta-llama/Llama-3.2-11B-Vision-Instruct | header + `\\n\\n` + text | no | `<|eot_id|>` | system header (with "Cutting Knowledge Date" and today's date), only without images | `<|image|>` in place | template writes `<|begin_of_text|>`; the tokenizer adds it too |
| idefics2 | HuggingFaceM4/idefics2-8b (and -chatty: same template) | `Assistant: ` + text | no | `<end_of_utterance>` then `\\n` | `System: ` turn, no default | `<image>` in place (`:` without space when the turn starts with one); the processor expands each to fake + 64 `<image>` + fake (x5 with `do_image_splitting`) and puts a space after a closing fake that touches a word | none in the template; the tokenizer adds `<s>` |
| aya_vision | CohereLabs/aya-vision-8b | `<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>` + text | no | `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>` (two special tokens, both labelled; the second is eos) | `<|SYSTEM_TOKEN|>` turn; a long default Cohere preamble when there is none, which a first system message replaces | `<image>` per image, all before the text | tokenizer adds `<BOS_TOKEN>`; template none |
| gemma4 | google/gemma-4-31B-it | `<|turn>model\\n` + text, trimmed, thinking channels cut out | yes | `<turn|>` then `\\n` | `<|turn>system\\n` turn (content through `trim`: list content becomes its repr), no default | `\\n\\n<|image|>\\n\\n` in place | template writes `<bos>`; tokenizer none (add_bos_token false) |
| internvl | OpenGVLab/InternVL3-1B-hf | `<|im_start|>assistant\\n` + text | no | `<|im_end|>` then `\\n` | `system` turn, no default (the HF template; the original remote-code chat() and LLaMA-Factory's `intern_vl` add a Chinese one) | `<IMG_CONTEXT>\\n` per image, in place (the processor expands it to `<img>`, 256 per tile, `</img>`) | none (Qwen2 tokenizer, no bos) |
| glm4v | zai-org/GLM-4.1V-9B-Thinking | `<|assistant|>\\n` + content as written (a list is written as its Python repr) | no | nothing: the next turn's `<|user|>`, or the end of the text (vlmnb appends `<|user|>`) | `<|system|>\\n` + content (a list as its repr), no default | `<|begin_of_image|><|image|><|end_of_image|>` in place, no separator | template writes `[gMASK]<sop>`; no bos token |
| glm4v_moe, glm46v | zai-org/GLM-4.5V, zai-org/GLM-4.6V | `<|assistant|>\\n<think></think>\\n` + text, trimmed (an earlier `<think>..</think>` in the text is moved into the think block) | yes | as GLM-4.1V | `<|system|>\\n` + its text items, no default | as GLM-4.1V | as GLM-4.1V |
| llava_onevision | llava-hf/llava-onevision-qwen2-0.5b-ov-hf | `<|im_start|>assistant\\n` + text items joined (in `{% generation %}`) | no | `<|im_end|>` then `\\n` | `system` turn, no default | every `<image>\\n` first (then `<video>\\n`), then the text items | none |
| mistral3 (online only) | mistralai/Mistral-Small-3.1-24B-Instruct-2503 | `[/INST]` + first text item | no | `</s>` (the template writes eos_token) | `[SYSTEM_PROMPT]`..`[/SYSTEM_PROMPT]`; a long default with today's date | `[IMG]` in place | template writes `<s>`; the tokenizer adds it too |

Refusals (`raise_exception`): mllama, a system prompt in a conversation with an image ("Prompting with images is
incompatible with system messages."); gemma3, roles that do not alternate user/assistant after the system prompt;
llava_next, any role but system/user/assistant ("Only user and assistant roles are supported!", although it renders
system); mistral3, roles but system/user/assistant and content items but text/image; gemma4 refuses nothing (roles need not
alternate);
qwen3_5, a conversation without a
user turn ("No user query found in messages."), a system turn that is not first, an image in a system turn, roles
but system/user/assistant/tool and content items that are neither image, video nor text.
Qwen3.5 thinking: the generation prompt is `<|im_start|>assistant\\n<think>\\n` (thinking mode, the default) or, with
`enable_thinking=False`, `<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n`; vlmnb renders with enable_thinking=False,
so the empty think block is prompt text and the loss covers the answer and `<|im_end|>` only.
Aya Vision renders any role by name (`user`, `assistant`, `system`; others verbatim) and refuses nothing; its generation
prompt is `<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>` without `<|START_RESPONSE|>`, which the model writes itself (vlmnb
labels from the answer text on, so `<|START_RESPONSE|>` carries no label).
GLM-4.1V: only user turns are read item by item; a system or assistant turn given as a list of items is written as the
Python repr of the list (vlmnb renders text-only turns as strings for such templates, see `render`). GLM's own fine-tuning
scripts label the `<|user|>` after every answer and append one after the last (it is among the checkpoints' stop ids,
with `<|endoftext|>` and `<|observation|>`); vlmnb does the same through the registry's `stop_token`.
llava_onevision refuses nothing. InternVL refuses nothing; its template also writes `<video>\\n` for video items.
String content: the GLM, Qwen, InternVL, Aya Vision, Gemma 3, Gemma 4, Mllama and Mistral 3 templates accept `content` as a plain string; llava, Idefics2,
Idefics3, SmolVLM and LLaVA-OneVision iterate it as a list of items, so a plain string renders as nothing; llava_next indexes
`content[0]['text']`, which fails on a string. Quirks of the real templates kept here: Mllama takes the system prompt
as `content | trim`, so list content (vlmnb's canonical form) is written as the Python repr of the list; Qwen3-VL
keeps only the text items of a system prompt; Mistral 3 reads a system prompt as `content[0]['text']` even when it is a
string (and so fails on string content). Gemma 4 writes a system prompt as `content | trim` (list
content becomes the Python repr of the list, as Mllama's) and, with thinking off, ends the generation prompt with an
empty thought channel `<|channel>thought\\n<channel|>` that the rendered history never has (answers in a rendered
conversation follow `<|turn>model\\n` directly). llava-v1.6-vicuna-7b-hf ships the llava-1.5 template. PaliGemma has no chat
template (vlmnb uses the processor's prefix/suffix route); Mistral 3 needs torchvision and the tiny zoo has no Mistral 3
tokenizer, so it is checked online only.

Sources (repository: path):
- llava-1.5 and llava-v1.6-vicuna: openvinotoolkit/openvino.genai: src/cpp/src/chat_template_fallback_map.hpp (keyed
  "llava-1.5, llava-v1.6-vicuna (chat_template.json)"); huggingface/transformers: tests/models/llava_next/test_processing_llava_next.py.
- llava-v1.6-mistral, old (`<\\s>`) and current (`</s>`) revisions: huggingface/optimum-intel:
  optimum/exporters/openvino/utils.py ("llava-next old", "llava-next"); openvinotoolkit/openvino.genai:
  src/cpp/src/chat_template_fallback_map.hpp ("tiny-random-llava-next, llava-v1.6-mistral").
- Idefics3: huggingface/transformers: tests/models/idefics3/test_processing_idefics3.py (rendered template, and the
  processor's input ids starting with bos).
- SmolVLM: huggingface/transformers: tests/models/smolvlm/test_processing_smolvlm.py (template; input ids without bos).
- Idefics2: EricLBuehler/mistral.rs: mistralrs-core/src/pipeline/chat_template.rs (the idefics2-8b-chatty template with
  bos `<s>`, eos `</s>`, and its rendering of a system turn, images and an untrimmed answer); huggingface/transformers:
  tests/models/idefics2/test_processing_idefics2.py (pre-release: input ids start with the tokenizer's bos; its old
  default template still wrote `<s>`, the shipped one does not), src/transformers/models/idefics2/processing_idefics2.py
  (placeholder expansion); the idefics2-8b processor template as quoted in public fine-tuning code (same text).
- Qwen2-VL / Qwen2.5-VL: openvinotoolkit/openvino.genai: src/cpp/src/chat_template_fallback_map.hpp ("Qwen2-VL-2B-Instruct
  (tokenizer_config.json)"); johnmai-dev/Jinja: Tests/Template tests/VisionTests.swift.
- Qwen3-VL: the Qwen3-VL-8B-Instruct template as embedded (SHA-pinned) in public test code; hiyouga/LLaMA-Factory:
  src/llamafactory/data/template.py (qwen3_vl_nothink: no default system, `<|im_end|>\\n` after the answer).
- Qwen3.5 / Qwen3.5 MoE: the Qwen3.5-35B-A3B template as embedded (keyed "Qwen3.5-35B-A3B-Q8_0") in public Go test data,
  and the same template in GGUF metadata dumps (both found by find_string "System message cannot contain images");
  hiyouga/LLaMA-Factory: src/llamafactory/data/template.py (qwen3_5 as a ReasoningTemplate with `<|im_end|>\\n` after
  the answer; qwen3_5_nothink); transformers' processing_auto maps qwen3_5 and qwen3_5_moe to Qwen3VLProcessor.
- Gemma 3: huggingface/transformers: tests/models/gemma3/test_processing_gemma3.py, and the gemma-3 GGUF template
  copies (string system content variant).
- Mllama: johnmai-dev/Jinja: Tests/Template tests/VisionTests.swift (llama3_2visionChatTemplate); huggingface/transformers:
  tests/models/mllama/test_processing_mllama.py (the processor prepends bos).
- Mistral 3: huggingface/transformers: tests/models/mistral3/test_processing_mistral3.py.
- Aya Vision: Cohere's pre-release processor and template in public code (a fork's
  src/transformers/models/aya_vision/processing_aya_vision.py: the turn format with `<|START_RESPONSE|>`/`<|END_RESPONSE|>`
  around chatbot turns, the generation prompt ending at `<|CHATBOT_TOKEN|>`, the standard preamble, a leading system
  turn replacing it; and a test script with the message-based Jinja template: images first, string content accepted);
  huggingface/transformers: tests/models/aya_vision/test_processor_aya_vision.py (the released template writes a long
  default system prompt), src/transformers/models/aya_vision/processing_aya_vision.py (`<image>` expansion, tiles,
  `TILE_GLOBAL`), src/transformers/models/cohere2/configuration_cohere2.py (bos 5 = `<BOS_TOKEN>`, eos 255001 =
  `<|END_OF_TURN_TOKEN|>`, pad 0 = `<PAD>`); vllm-project/vllm examples (offline vision_language.py: a prompt of
  `<|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>...<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>`);
  aya-expanse / command-r7b tokenizer_config.json mirrors (`add_bos_token: true`). The released chat_template.json itself
  was not found in the stored sources: the default preamble's exact wording is not checked here (it is abbreviated).
- Gemma 4: ggml-org/llama.cpp: models/templates/gemma4.jinja and models/templates/google-gemma-4-31B-it-interleaved.jinja
  (the published template; the two agree on plain conversations); huggingface/transformers:
  src/transformers/models/gemma4/convert_gemma4_weights.py (tokenizer `add_bos_token=False`, the named special tokens,
  generation stops at eos, `<turn|>` and `<|tool_response>`; audio feature extractor in every processor);
  tests/models/gemma4/test_response_template_gemma4.py (`<|turn>model\\n` prefix, `<|channel>thought\\n...<channel|>`).
- InternVL (HF-native): huggingface/transformers: src/transformers/models/internvl/convert_internvl_weights_to_hf.py (the
  template the -hf checkpoints were converted with, as mirrored by Kethan1701/transformers at the same path; Qwen2.5-VL's
  tokenizer with `<img>`/`</img>`/`<IMG_CONTEXT>`/`<video>` as named extra tokens; eos forced to `<|im_end|>`);
  huggingface/transformers: tests/models/internvl/test_modeling_internvl.py (InternVL3-1B-hf prompts
  `<|im_start|>user\\n<IMG_CONTEXT>\\n...<|im_end|>\\n<|im_start|>assistant\\n`, the chat-template test giving the same
  answer, decoded outputs starting `user\\n` with no system turn); hiyouga/LLaMA-Factory: src/llamafactory/data/template.py
  (`intern_vl`: the original format's default Chinese system prompt, which the HF template does not write).
- GLM-4.1V: the zai-org/GLM-4.1V-9B-Thinking template at revision 3c1471e51dc811b589d4d12b1c1c7c1c941267c2 (sha256
  5232dbe7...) as quoted in a public renderer-validation report (found with find_string "<|begin_of_image|><|image|><|end_of_image|>\\n");
  vllm-project/vllm: examples/offline_inference/vision_language.py (run_glm4_1v prompt); hiyouga/LLaMA-Factory:
  src/llamafactory/data/template.py ("glm4v": prefix `[gMASK]<sop>`, `<|user|>\\n..<|assistant|>`, answer `\\n` + text,
  suffix `<|user|>`); THUDM/GLM-4: finetune_demo/finetune.py (`input_ids.append(151336)  # EOS token '<|user|>'`,
  labels shifted so the `<|user|>` after each answer carries loss).
- GLM-4.5V / GLM-4.6V: hiyouga/LLaMA-Factory: src/llamafactory/data/template.py ("glm4v_moe": thought words `<think>`,
  `</think>`, suffix `<|user|>`); the GLM-V family template (`visible_text` macro, `\\n<think></think>` before earlier
  answers, `'\\n' + content.strip()`, `/nothink` with enable_thinking=False) as mirrored in public test code for GLM-OCR
  and GLM-4.5; not checked against the GLM-4.5V repository itself (run the online test).
- LLaVA-OneVision: huggingface/transformers: src/transformers/models/llava_onevision/convert_llava_onevision_weights_to_hf.py
  (the template the llava-hf checkpoints were saved with; its JSON form is 824 bytes, the size of the Hub's
  chat_template.json); rogeherlor/ML_projects: LLaVA-Onevision/model/2_single_image_inference.py (a decoded
  llava-onevision-qwen2-7b-ov-hf prompt, `user\\n\\nWhat is shown in this image?\\nassistant\\n`: `<image>` then a newline);
  the Qwen2 tokenizer has no bos and ends turns with `<|im_end|>`. (transformers' tests/models/llava_onevision/
  test_processing_llava_onevision.py uses a different, test-only template: role + space, no newline after `<|im_end|>`.)
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
    end_of_turn: str | None      # the special token written right after the answer, or None (vlmnb then appends eos)
    system: bool                 # a system prompt is accepted (in a conversation without images at least)
    string_content: bool         # `content` may be a plain string (user and assistant turns)
    bos: str | None              # the bos token that must start each row, once
    tokenizer_adds_bos: bool     # the real tokenizer prepends bos itself
    template_writes_bos: bool    # the template writes bos at the start of the text
    default_system: str = ""     # the system prompt the template writes when a conversation has none
    refuses: str = ""            # what the template raises for
    appended: str | None = None  # what vlmnb appends where the template writes no end-of-turn token, if not eos (GLM: <|user|>)


# ---- templates, written from the facts above (newlines after a tag are written as expressions: transformers
# ---- renders with trim_blocks, which would eat them)
LLAVA_15 = (  # ROLE: , images first, every text followed by a space, the answer inside generation markers, no end token
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] | upper }}{{ ': ' }}{% endif %}"
    "{% for c in m['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ c['text'] ~ ' ' }}{% endgeneration %}{% else %}{{ c['text'] ~ ' ' }}{% endif %}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def _llava_next(end: str) -> str:  # <<SYS>> block, [INST] images text [/INST], ' ' answer END ' ', other roles refused
    return ("{% for m in messages %}"
            "{% if m['role'] == 'system' %}{{ '<<SYS>>\n' + m['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
            "{% elif m['role'] == 'user' %}{{ '[INST] ' }}"
            "{% for c in m['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
            "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{{ ' [/INST]' }}"
            "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'][0]['text'] + '" + end + " ' }}"
            "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


LLAVA_NEXT = _llava_next("</s>")
LLAVA_NEXT_OLD = _llava_next("<\\\\s>")  # the older revision: a backslash and an s, not the eos token


def _idefics(bos: str) -> str:  # Role: text<end_of_utterance>\n, ':' alone when the turn starts with an image
    return ("{{ '" + bos + "' }}{% for m in messages %}{{ m['role'] | capitalize }}"
            "{{ ':' if m['content'][0]['type'] == 'image' else ': ' }}"
            "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>' }}{% elif c['type'] == 'text' %}{{ c['text'] }}"
            "{% endif %}{% endfor %}{{ '<end_of_utterance>\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def _chatml(default_system: bool) -> str:  # <|im_start|>role\n ... <|im_end|>\n; Qwen2's default system, or none (Qwen3)
    default = ("{% if loop.first and m['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
               if default_system else "")
    return ("{% for m in messages %}" + default + "{{ '<|im_start|>' ~ m['role'] ~ '\n' }}"
            "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
            "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


GEMMA3 = (  # bos, system folded into the first user turn, 'model' for the assistant, every text trimmed
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first = (messages[0]['content'] if messages[0]['content'] is string else messages[0]['content'][0]['text']) ~ '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set first = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% if (m['role'] == 'user') != (loop.index0 is even) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else m['role']) ~ '\n' ~ (first if loop.first else '') }}"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<start_of_image>' }}{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

MLLAMA = (  # bos; a dated system header only without images (a system prompt with images is refused); nothing trimmed
    "{{ bos_token }}{% set day = strftime_now('%d %b %Y') if strftime_now is defined else '26 Jul 2024' %}"
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] | trim %}{% set turns = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set turns = messages %}{% endif %}"
    "{% set seen = namespace(image=false) %}{% for m in turns %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{% set seen.image = true %}{% endif %}{% endfor %}{% endfor %}"
    "{% if seen.image and sys != '' %}{{ raise_exception('Prompting with images is incompatible with system messages.') }}{% endif %}"
    "{% if not seen.image %}{{ '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: ' ~ day ~ '\n\n' ~ sys ~ '<|eot_id|>' }}{% endif %}"
    "{% for m in turns %}{{ '<|start_header_id|>' ~ m['role'] ~ '<|end_header_id|>\n\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|image|>' }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

IDEFICS2 = _idefics("")  # Idefics3's shape without a bos: the Mistral tokenizer prepends <s> itself

AYA_PREAMBLE = "# System Preamble\n(the checkpoint's standard Cohere preamble, about 3,000 characters, abbreviated here)"

AYA_VISION = (  # a default preamble unless the first message is a system one; role tokens by name; images first; no trim
    "{% if messages[0]['role'] == 'system' %}{% set turns = messages %}{% else %}"
    "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' ~ preamble ~ '<|END_OF_TURN_TOKEN|>' }}{% set turns = messages %}{% endif %}"
    "{% set role_tokens = {'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|><|START_RESPONSE|>', 'system': '<|SYSTEM_TOKEN|>'} %}"
    "{% for m in turns %}{{ '<|START_OF_TURN_TOKEN|>' ~ role_tokens.get(m['role'], m['role']) }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] if c['type'] == 'image' %}{{ '<image>' }}{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}"
    "{{ '<|END_RESPONSE|>' if m['role'] == 'assistant' else '' }}{{ '<|END_OF_TURN_TOKEN|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}").replace("preamble", repr(AYA_PREAMBLE))

GEMMA4 = (  # bos; a system turn only for a system prompt (or thinking on), its content through trim; 'model' for the
    # assistant; user text trimmed, each image as <|image|> between blank lines; an answer trimmed, with any thinking
    # channel cut out; nothing refused; thinking off: the generation prompt opens an empty thought channel
    "{% macro shown(s) %}{% set kept = namespace(text='') %}{% for chunk in s.split('<channel|>') %}"
    "{% set kept.text = kept.text ~ chunk.split('<|channel>')[0] %}{% endfor %}{{ kept.text | trim }}{% endmacro %}"
    "{{ bos_token }}{% set thinking = enable_thinking | default(false) %}{% set turns = messages %}"
    "{% if thinking or messages[0]['role'] in ['system', 'developer'] %}{{ '<|turn>system\n' }}{% if thinking %}{{ '<|think|>\n' }}{% endif %}"
    "{% if messages[0]['role'] in ['system', 'developer'] %}{{ messages[0]['content'] | trim }}{% set turns = messages[1:] %}{% endif %}"
    "{{ '<turn|>\n' }}{% endif %}"
    "{% for m in turns %}{% set model = m['role'] == 'assistant' %}{{ '<|turn>' ~ ('model' if model else m['role']) ~ '\n' }}"
    "{% if m['content'] is string %}{{ shown(m['content']) if model else m['content'] | trim }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ shown(c['text']) if model else c['text'] | trim }}"
    "{% elif c['type'] == 'image' %}{{ '\n\n<|image|>\n\n' }}{% endif %}{% endfor %}{% endif %}{{ '<turn|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\n' }}{% if not thinking %}{{ '<|channel>thought\n<channel|>' }}{% endif %}{% endif %}")

QWEN3_5 = (  # ChatML with a user turn required; every content trimmed; an empty think block before answers after the last query
    "{% set q = namespace(at=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}{% set q.at = loop.index0 %}{% endif %}{% endfor %}"
    "{% if q.at == -1 %}{{ raise_exception('No user query found in messages.') }}{% endif %}"
    "{% for m in messages %}{% set body = namespace(s='') %}"
    "{% if m['content'] is string %}{% set body.s = m['content'] %}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{% if m['role'] == 'system' %}{{ raise_exception('System message cannot contain images.') }}{% endif %}"
    "{% set body.s = body.s ~ '<|vision_start|><|image_pad|><|vision_end|>' %}"
    "{% elif c['type'] == 'text' %}{% set body.s = body.s ~ c['text'] %}"
    "{% else %}{{ raise_exception('Unexpected item type in content.') }}{% endif %}{% endfor %}{% endif %}"
    "{% set text = body.s | trim %}"
    "{% if m['role'] == 'system' %}{% if not loop.first %}{{ raise_exception('System message must be at the beginning.') }}{% endif %}"
    "{{ '<|im_start|>system\n' ~ text ~ '<|im_end|>\n' }}"
    "{% elif m['role'] == 'user' %}{{ '<|im_start|>user\n' ~ text ~ '<|im_end|>\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' ~ ('<think>\n\n</think>\n\n' if loop.index0 > q.at else '') ~ text ~ '<|im_end|>\n' }}"
    "{% else %}{{ raise_exception('Unexpected message role.') }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' ~ ('\n</think>\n\n' if enable_thinking is defined and enable_thinking is false else '') }}{% endif %}")

INTERNVL = (  # chatml turns with no default system prompt; each image item becomes <IMG_CONTEXT> and a newline, in place
    "{% for m in messages %}{{ '<|im_start|>' ~ m['role'] ~ '\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{{ {'image': '<IMG_CONTEXT>\n', 'video': '<video>\n'}.get(c['type'], '') }}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

GLM4V = (  # [gMASK]<sop>; role markers with a newline; images as begin/image/end in place; system and assistant content printed as given
    "{{ '[gMASK]<sop>' }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ '<|system|>\n' ~ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<|user|>\n' }}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'video' %}{{ '<|begin_of_video|><|video|><|end_of_video|>' }}"
    "{% elif c['type'] == 'image' %}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% elif m['role'] == 'assistant' %}{{ '<|assistant|>' ~ (m['metadata'] if m['metadata'] else '') ~ '\n' ~ m['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def _glm_text(var: str) -> str:  # the text items of a turn (string content as is)
    return (f"{{% if {var} is string %}}{{% set t = {var} %}}{{% else %}}{{% set t = namespace(s='') %}}"
            f"{{% for c in {var} %}}{{% if c['type'] == 'text' %}}{{% set t.s = t.s ~ c['text'] %}}{{% endif %}}{{% endfor %}}"
            "{% set t = t.s %}{% endif %}")


GLM45V = (  # as GLM4V, list content read item by item everywhere; every answer after an empty think block (or its own), trimmed
    "{{ '[gMASK]<sop>' }}{% set last = namespace(user=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set last.user = loop.index0 %}{% endif %}{% endfor %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}" + _glm_text("m['content']") + "{{ '<|system|>\n' ~ t }}"
    "{% elif m['role'] == 'user' %}{{ '<|user|>\n' }}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '/nothink' }}{% endif %}"
    "{% elif m['role'] == 'assistant' %}" + _glm_text("m['content']") + "{% set thought = '' %}"
    "{% if '</think>' in t %}{% set thought = t.split('</think>')[0].split('<think>')[-1].strip() %}{% set t = t.split('</think>')[-1] %}{% endif %}"
    "{{ '<|assistant|>\n<think>' ~ (thought if loop.index0 > last.user else '') ~ '</think>' }}"
    "{% if t.strip() %}{{ '\n' ~ t.strip() }}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% if enable_thinking is defined and not enable_thinking %}"
    "{{ '<think></think>\n' }}{% endif %}{% endif %}")

LLAVA_ONEVISION = (  # ChatML turns with no default system; in a turn every image as <image> and a newline, then its texts
    "{% for m in messages %}{{ '<|im_start|>' ~ m['role'] ~ '\n' }}"
    "{% for c in m['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'video' %}{{ '<video>\n' }}{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ c['text'] }}{% endgeneration %}{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TEMPLATES = {"llava": LLAVA_15, "llava_next": LLAVA_NEXT, "idefics3": _idefics("<|begin_of_text|>"), "smolvlm": _idefics("<|im_start|>"),
             "qwen2_vl": _chatml(True), "qwen2_5_vl": _chatml(True), "qwen3_vl": _chatml(False), "gemma3": GEMMA3, "mllama": MLLAMA,
             "idefics2": IDEFICS2, "aya_vision": AYA_VISION, "gemma4": GEMMA4, "qwen3_5": QWEN3_5, "qwen3_5_moe": QWEN3_5,
             "internvl": INTERNVL,
             "glm4v": GLM4V, "glm4v_moe": GLM45V, "glm46v": GLM45V,
             "llava_onevision": LLAVA_ONEVISION}

_QWEN3_5_REFUSES = "a conversation without a user turn; a system prompt that is not first; an image in a system prompt"
_MISTRAL_SYSTEM = "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI"  # the default's opening words

FACTS = {  # example, lead, trims, end of turn, system, string content, bos, tokenizer adds bos, template writes bos
    "llava": Facts("llava-hf/llava-1.5-7b-hf", " ", False, None, True, False, "<s>", True, False),
    "llava_next": Facts("llava-hf/llava-v1.6-mistral-7b-hf", " ", False, "</s>", True, False, "<s>", True, False,
                        refuses="a role other than system, user and assistant"),
    "idefics3": Facts("HuggingFaceM4/Idefics3-8B-Llama3", " ", False, "<end_of_utterance>", True, False, "<|begin_of_text|>", True, True),
    "idefics2": Facts("HuggingFaceM4/idefics2-8b", " ", False, "<end_of_utterance>", True, False, "<s>", True, False),
    "smolvlm": Facts("HuggingFaceTB/SmolVLM-256M-Instruct", " ", False, "<end_of_utterance>", True, False, "<|im_start|>", False, True),
    "qwen2_vl": Facts("Qwen/Qwen2-VL-2B-Instruct", "", False, "<|im_end|>", True, True, None, False, False,
                      default_system="You are a helpful assistant."),
    "qwen2_5_vl": Facts("Qwen/Qwen2.5-VL-3B-Instruct", "", False, "<|im_end|>", True, True, None, False, False,
                        default_system="You are a helpful assistant."),
    "qwen3_vl": Facts("Qwen/Qwen3-VL-2B-Instruct", "", False, "<|im_end|>", True, True, None, False, False),
    "qwen3_5": Facts("Qwen/Qwen3.5-2B", "", True, "<|im_end|>", True, True, None, False, False, refuses=_QWEN3_5_REFUSES),
    "qwen3_5_moe": Facts("Qwen/Qwen3.5-35B-A3B", "", True, "<|im_end|>", True, True, None, False, False, refuses=_QWEN3_5_REFUSES),
    "gemma3": Facts("google/gemma-3-4b-it", "", True, "<end_of_turn>", True, True, "<bos>", True, True,
                    refuses="roles that do not alternate user/assistant"),
    "mllama": Facts("meta-llama/Llama-3.2-11B-Vision-Instruct", "", False, "<|eot_id|>", True, True, "<|begin_of_text|>", True, True,
                    refuses="a system prompt in a conversation with an image"),
    "gemma4": Facts("google/gemma-4-31B-it", "", True, "<turn|>", True, True, "<bos>", False, True),
    "internvl": Facts("OpenGVLab/InternVL3-1B-hf", "", False, "<|im_end|>", True, True, None, False, False),
    "glm4v": Facts("zai-org/GLM-4.1V-9B-Thinking", "", False, None, True, True, None, False, False, appended="<|user|>"),
    "glm4v_moe": Facts("zai-org/GLM-4.5V", "", True, None, True, True, None, False, False, appended="<|user|>"),
    "glm46v": Facts("zai-org/GLM-4.6V", "", True, None, True, True, None, False, False, appended="<|user|>"),
    "llava_onevision": Facts("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "", False, "<|im_end|>", True, False, None, False, False),
    "mistral3": Facts("mistralai/Mistral-Small-3.1-24B-Instruct-2503", "", False, "</s>", True, True, "<s>", True, True,
                      default_system=_MISTRAL_SYSTEM, refuses="a role other than system, user and assistant; content items other than text and image"),
    "aya_vision": Facts("CohereLabs/aya-vision-8b", "", False, "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", True, True, "<BOS_TOKEN>",
                        True, False, default_system=AYA_PREAMBLE),
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
