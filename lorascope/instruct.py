"""Prompt -> response examples for instruction tuning: token ids, and labels that put the loss on the
response only (how Biderman et al. 2024 train on their code and math sets).

    ids     the prompt's tokens, then the response's                     (at most seq_len)
    labels  IGNORE (-100) on every prompt token, the token itself on every response token; batches pad
            ids with the pad id and labels with IGNORE, so padding carries no loss either.

With the tokenizer's chat template (`chat_template=None`: wherever the tokenizer has one), the prompt is
the user turn rendered with the generation prompt (`<|im_start|>assistant\\n`, ...), and the response
is what rendering the assistant's turn adds to it, its end-of-turn tokens included, so that the model
learns to stop. Without a template, the prompt is tokenized with the tokenizer's own special tokens (a
BOS for Llama) and the response is followed by EOS.
"""

from __future__ import annotations

from lorascope.errors import LorascopeError

IGNORE = -100  # the label transformers' cross-entropy skips


def use_chat_template(tokenizer, chat_template: bool | None) -> bool:
    """Whether examples go through the tokenizer's chat template: `chat_template`, or where one exists."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat_template and not has:
        raise LorascopeError(
            f"task.chat_template=true but the tokenizer of {tokenizer.name_or_path} has no chat template; "
            "use task.chat_template=false (prompt tokens, response tokens, EOS)"
        )
    return has if chat_template is None else bool(chat_template)


def _templated(tokenizer, prompts: list[str], responses: list[str]) -> tuple[list[str], list[str]]:
    """(prompt, response) strings as the chat template renders them: the user turn with the generation
    prompt, and what the assistant's turn adds after it."""
    heads, tails = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": response}], tokenize=False
        )
        if not full.startswith(head):
            # Some templates render an earlier turn differently once an answer follows (reasoning
            # templates drop <think> blocks, ...): no split of the tokens would then be exact.
            raise LorascopeError(
                f"the chat template of {tokenizer.name_or_path} does not render the prompt as the start "
                "of the conversation, so the response's tokens cannot be told apart; use "
                "task.chat_template=false and put the template's text in the prompt field"
            )
        heads.append(head)
        tails.append(full[len(head) :])
    return heads, tails


def encode(
    tokenizer, prompts: list[str], responses: list[str], seq_len: int, chat_template: bool | None = None
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """(ids, labels, kept): per kept example its token ids and labels (IGNORE on the prompt), and the
    indices of the examples kept. Longer examples lose the end of their response; an example whose
    prompt alone fills seq_len has no response token left to learn from and is left out."""
    if use_chat_template(tokenizer, chat_template):
        # The rendered strings hold their special tokens (BOS, turn markers) as text already.
        heads, tails = _templated(tokenizer, prompts, responses)
        head_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
        tail_ids = tokenizer(tails, add_special_tokens=False)["input_ids"]
    else:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        head_ids = tokenizer(prompts)["input_ids"]
        tail_ids = [t + eos for t in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    ids, labels, kept = [], [], []
    for i, (head, tail) in enumerate(zip(head_ids, tail_ids, strict=True)):
        tail = tail[: max(0, seq_len - len(head))]  # a negative bound would cut from the end instead
        if len(head) + len(tail) < 2 or not tail:  # nothing to predict: the first token has no context
            continue
        ids.append(head + tail)
        labels.append([IGNORE] * len(head) + tail)
        kept.append(i)
    return ids, labels, kept
