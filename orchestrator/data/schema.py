"""Validation and normalisation of raw records (no tokenizer involved).

Each ``normalize_*`` function takes one raw record (a dict) and returns a
normalised form, or raises :class:`DataError` with ``field`` set (the caller
adds file and line). Normalised prompts / responses are either plain strings
or lists of cleaned message dicts; turning them into text and tokens is
``tokenize.py``'s job.

Accepted record shapes
----------------------
SFT (:func:`normalize_sft`)
    ``{"prompt": str | messages, "response" | "completion": str | messages}``
    or ``{"messages": [...]}`` (conversational; must end with an assistant
    turn and have a system/user/tool message before the first trained
    assistant turn).
Pairwise (:func:`normalize_pairwise`)
    ``{"prompt", "chosen", "rejected"}`` with strings, or ``prompt`` as a
    message list and ``chosen`` / ``rejected`` as message lists (TRL's
    conversational format; if they repeat the prompt messages at their start
    the repeat is removed), or no ``prompt`` and ``chosen`` / ``rejected`` as
    full conversations (Anthropic-HH style): the longest shared message prefix
    is the prompt.
Point-wise (:func:`normalize_pointwise`)
    an SFT record plus ``"label"``: bool (TRL KTO) or a number in [0, 1].
Prompts (:func:`normalize_prompt`)
    ``{"prompt": str | messages}`` (or ``{"messages": [...]}``); every other
    field is kept as metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from hbat.orchestrator.data.errors import DataError, type_name

__all__ = [
    "ROLES",
    "Message",
    "Pair",
    "PromptItem",
    "PreferenceItem",
    "check_label",
    "check_messages",
    "check_text",
    "normalize_pairwise",
    "normalize_pointwise",
    "normalize_prompt",
    "normalize_sft",
]

ROLES = ("system", "user", "assistant", "tool")
Message = dict[str, Any]
Text = Union[str, list[Message]]


@dataclass
class Pair:
    """A prompt and the response to learn / score.

    ``response`` is a string or a message list that ends with an assistant
    turn; in a list, assistant turns carry the loss (see tokenize.py).
    """

    prompt: Text
    response: Text
    prompt_field: str = "prompt"
    response_field: str = "response"


@dataclass
class PreferenceItem:
    prompt: Text
    chosen: Text
    rejected: Text
    prompt_field: str = "prompt"


@dataclass
class PromptItem:
    prompt: Text
    prompt_field: str
    meta: dict[str, Any]


def _fail(field: str | None, reason: str) -> DataError:
    return DataError(reason, field=field)


def _missing(record: dict, field: str) -> bool:
    return field not in record or record[field] is None


def check_text(value: Any, field: str) -> str:
    """A non-empty (after strip) string."""
    if not isinstance(value, str):
        raise _fail(field, f"expected a non-empty string, got {type_name(value)}")
    if not value.strip():
        raise _fail(field, "expected a non-empty string, got an empty string")
    return value


def _content(value: Any, field: str) -> str:
    """Message content: a string, or a list of text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                texts.append(part)
            elif (
                isinstance(part, dict)
                and part.get("type", "text") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
            else:
                raise _fail(
                    f"{field}[{j}]",
                    "expected a text part {'type': 'text', 'text': str} "
                    f"(only text content is supported), got {type_name(part)}",
                )
        return "".join(texts)
    raise _fail(field, f"expected a string, got {type_name(value)}")


def check_messages(value: Any, field: str) -> list[Message]:
    """A non-empty list of ``{"role", "content"}`` dicts; returns cleaned copies.

    Keys with a null value (Parquet fills absent struct fields with nulls) are
    dropped; other extra keys (``name``, ``tool_calls``...) are kept for the
    chat template.
    """
    if not isinstance(value, list):
        raise _fail(field, f"expected a list of messages, got {type_name(value)}")
    if not value:
        raise _fail(field, "expected a non-empty list of messages, got an empty list")
    out: list[Message] = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise _fail(where, f"expected a message object with 'role' and 'content', got {type_name(msg)}")
        if _missing(msg, "role"):
            raise _fail(f"{where}.role", "missing field")
        role = msg["role"]
        if not isinstance(role, str) or role not in ROLES:
            shown = repr(role) if isinstance(role, str) else type_name(role)
            raise _fail(
                f"{where}.role",
                f"expected one of {', '.join(map(repr, ROLES))}, got {shown}",
            )
        if _missing(msg, "content"):
            raise _fail(f"{where}.content", "missing field")
        clean = {k: v for k, v in msg.items() if v is not None}
        clean["content"] = _content(msg["content"], f"{where}.content")
        out.append(clean)
    return out


def _check_prompt(value: Any, field: str) -> Text:
    if isinstance(value, list):
        return check_messages(value, field)
    if isinstance(value, str):
        return check_text(value, field)
    raise _fail(field, f"expected a non-empty string or a list of messages, got {type_name(value)}")


def _check_response_messages(msgs: list[Message], field: str, offset: int = 0) -> None:
    """A response message list must contain and end with an assistant turn."""
    if not any(m["role"] == "assistant" for m in msgs):
        raise _fail(field, "no assistant turn (the response needs an assistant message)")
    if msgs[-1]["role"] != "assistant":
        raise _fail(
            f"{field}[{offset + len(msgs) - 1}].role",
            f"the last message must be from the assistant, got {msgs[-1]['role']!r}",
        )
    last = offset + len(msgs) - 1
    if not msgs[-1]["content"].strip():
        raise _fail(f"{field}[{last}].content", "expected a non-empty string, got an empty string")


def _check_response(value: Any, field: str) -> Text:
    if isinstance(value, list):
        msgs = check_messages(value, field)
        _check_response_messages(msgs, field)
        return msgs
    if isinstance(value, str):
        return check_text(value, field)
    raise _fail(field, f"expected a non-empty string or a list of messages, got {type_name(value)}")


def _as_messages(prompt: Text) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _strip_prompt_prefix(prompt: Text, response: Text) -> Text:
    """Drop a copy of the prompt messages at the start of a response list."""
    if isinstance(response, list):
        head = _as_messages(prompt)
        if len(response) > len(head) and response[: len(head)] == head:
            return response[len(head) :]
    return response


def _split_conversation(msgs: list[Message], field: str) -> tuple[list[Message], list[Message]]:
    """Split a full SFT conversation into prompt (context) and response part.

    The response part starts at the first assistant message that follows a
    system/user/tool message; leading assistant messages (a greeting) are
    context. It must end with an assistant message.
    """
    first_ctx = next((i for i, m in enumerate(msgs) if m["role"] != "assistant"), None)
    if not any(m["role"] == "assistant" for m in msgs):
        raise _fail(field, "no assistant turn (SFT needs at least one assistant message)")
    if first_ctx is None:
        raise _fail(field, "no system/user/tool message before the assistant turn")
    start = next((i for i in range(first_ctx, len(msgs)) if msgs[i]["role"] == "assistant"), None)
    if start is None:
        raise _fail(field, "no assistant turn after the first user/system/tool message")
    _check_response_messages(msgs[start:], field, offset=start)
    return msgs[:start], msgs[start:]


def normalize_sft(record: dict[str, Any]) -> Pair:
    if not _missing(record, "messages"):
        msgs = check_messages(record["messages"], "messages")
        prompt, response = _split_conversation(msgs, "messages")
        return Pair(prompt, response, "messages", "messages")
    has_resp = not _missing(record, "response")
    has_comp = not _missing(record, "completion")
    if _missing(record, "prompt"):
        if has_resp or has_comp:
            raise _fail("prompt", "missing field")
        raise _fail(
            "prompt",
            "missing field (expected 'prompt' with 'response'/'completion', or 'messages')",
        )
    if has_resp and has_comp:
        raise _fail("completion", "give either 'response' or 'completion', not both")
    if not (has_resp or has_comp):
        raise _fail("response", "missing field (or 'completion')")
    rfield = "response" if has_resp else "completion"
    prompt = _check_prompt(record["prompt"], "prompt")
    response = _strip_prompt_prefix(prompt, _check_response(record[rfield], rfield))
    return Pair(prompt, response, "prompt", rfield)


def check_label(value: Any, field: str = "label") -> float:
    """bool, or a finite number in [0, 1]; returned as float."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        x = float(value)
        if math.isfinite(x) and 0.0 <= x <= 1.0:
            return x
        raise _fail(field, f"expected a bool or a number in [0, 1], got {value!r}")
    raise _fail(field, f"expected a bool or a number in [0, 1], got {type_name(value)}")


def normalize_pointwise(record: dict[str, Any]) -> tuple[Pair, float]:
    if _missing(record, "label"):
        raise _fail("label", "missing field")
    label = check_label(record["label"])
    return normalize_sft(record), label


def _common_prefix(a: list[Message], b: list[Message]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def normalize_pairwise(record: dict[str, Any]) -> PreferenceItem:
    for name in ("chosen", "rejected"):
        if _missing(record, name):
            raise _fail(name, "missing field")
    if not _missing(record, "prompt"):
        prompt = _check_prompt(record["prompt"], "prompt")
        chosen = _strip_prompt_prefix(prompt, _check_response(record["chosen"], "chosen"))
        rejected = _strip_prompt_prefix(prompt, _check_response(record["rejected"], "rejected"))
        return PreferenceItem(prompt, chosen, rejected, "prompt")
    # Implicit prompt (Anthropic-HH style): full conversations, shared prefix = prompt.
    if not isinstance(record["chosen"], list) or not isinstance(record["rejected"], list):
        raise _fail(
            "prompt",
            "missing field (without 'prompt', 'chosen' and 'rejected' must be full "
            "message lists whose shared beginning is the prompt)",
        )
    chosen = check_messages(record["chosen"], "chosen")
    rejected = check_messages(record["rejected"], "rejected")
    n = _common_prefix(chosen, rejected)
    for msgs in (chosen, rejected):  # each side keeps its final assistant turn
        last_assistant = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=0)
        n = min(n, last_assistant)
    if n == 0:
        raise _fail(
            "prompt",
            "missing field ('chosen' and 'rejected' share no prompt messages to use as the prompt)",
        )
    _check_response_messages(chosen[n:], "chosen", offset=n)
    _check_response_messages(rejected[n:], "rejected", offset=n)
    return PreferenceItem(chosen[:n], chosen[n:], rejected[n:], "chosen")


def normalize_prompt(record: dict[str, Any]) -> PromptItem:
    field = "prompt"
    if _missing(record, "prompt"):
        if _missing(record, "messages"):
            raise _fail("prompt", "missing field")
        field = "messages"
    prompt = _check_prompt(record[field], field)
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise _fail(
            f"{field}[{len(prompt) - 1}].role",
            "a prompt must not end with an assistant message (the policy writes that turn)",
        )
    meta = {k: v for k, v in record.items() if k != field and not (k == "prompt" and v is None)}
    return PromptItem(prompt, field, meta)
