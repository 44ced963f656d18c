"""Tool calling for ChatML models whose chat template has no tools branch (SmolLM2, the embedded model).

TRL's tool loop needs two things from a tokenizer: a chat template that renders a whole tool-calling exchange
(the tools' schemas, an assistant turn's calls, a tool's result) message by message, and a ``response_template`` that
tells transformers' ``parse_response`` where a reply's calls are. SmolLM2's template renders only ``role`` and
``content``; :func:`add_tool_calling` gives its tokenizer a template that renders exactly as before when no tools are
passed and otherwise lists the tools in the system turn and writes calls as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the JSON form Qwen2.5 and Hermes-style models use, so a
model fine-tuned on those formats reads it too). Tool results come back as a ``tool`` turn.

Tokenizers whose template already renders tools (Qwen2.5, Qwen3, Llama 3.1, ...) are left as they are; TRL knows
their response formats.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "add_tool_calling", "renders_tools"]

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

TOOL_INSTRUCTIONS = (
    "\nTo call a tool, write its name and arguments as JSON between "
    + TOOL_CALL_OPEN
    + " and "
    + TOOL_CALL_CLOSE
    + ", for example "
    + TOOL_CALL_OPEN
    + '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    + TOOL_CALL_CLOSE
    + ". A reply may hold several calls; their results come back in tool turns. When the request is done, reply "
    "without a call."
)

# Each message renders on its own (TRL appends tool results by rendering only the new messages), and without tools
# the output is SmolLM2's own template's, character for character.
CHATML_TOOL_TEMPLATE = (
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set system, turns = messages[0].content, messages[1:] -%}"
    "{%- else -%}{%- set system, turns = '" + SMOLLM_SYSTEM + "', messages -%}{%- endif -%}"
    "{{ '<|im_start|>system\\n' + system }}"
    "{%- if tools -%}"
    "{{ '\\n\\nYou can call these tools (JSON schemas, one per line):\\n' }}"
    "{%- for tool in tools %}{{ (tool.function if tool.function is defined else tool) | tojson }}{{ '\\n' }}"
    "{%- endfor -%}"
    "{{ " + json.dumps(TOOL_INSTRUCTIONS) + " }}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- for message in turns -%}"
    "{%- if message.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' + (message.content or '') }}"
    "{%- for call in message.tool_calls or [] -%}"
    "{%- set function = call.function if call.function is defined else call -%}"
    "{%- set arguments = function.arguments if function.arguments is string else function.arguments | tojson -%}"
    "{{ '"
    + TOOL_CALL_OPEN
    + "{\"name\": ' + (function.name | tojson) + ', \"arguments\": ' + arguments + '}"
    + TOOL_CALL_CLOSE
    + "' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# How parse_response reads a reply in that template: any number of JSON calls between the tool-call tags, and the
# text around them as the content, up to <|im_end|>.
CHATML_TOOL_RESPONSE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": TOOL_CALL_OPEN,
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def renders_tools(tokenizer: Any) -> bool:
    """Whether ``tokenizer``'s chat template shows a tool's name to the model when tools are passed."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    probe = {"type": "function", "function": {"name": "probe_tool_x7", "description": "d", "parameters": {}}}
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=[probe], tokenize=False)
    except Exception:  # a template that cannot take tools at all
        return False
    return "probe_tool_x7" in text


def add_tool_calling(tokenizer: Any) -> Any:
    """Give a ChatML tokenizer without a tools branch the tool-calling template and its response parser (in place,
    and returned). A tokenizer that already renders tools is returned unchanged; any other template is refused,
    because rewriting it would change what the model was trained to read."""
    if renders_tools(tokenizer):
        return tokenizer
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" not in template:
        raise ValueError(
            "this tokenizer's chat template renders no tools and is not ChatML, so resrl_trl cannot add a tools "
            "branch to it: pass a model whose template renders tools (Qwen2.5, Qwen3, Llama 3.1) or set "
            "tokenizer.chat_template and tokenizer.response_template yourself"
        )
    tokenizer.chat_template = CHATML_TOOL_TEMPLATE
    tokenizer.response_template = CHATML_TOOL_RESPONSE
    return tokenizer
