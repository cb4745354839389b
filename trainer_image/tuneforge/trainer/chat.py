"""Ask a base model and its tuned adapter the same prompts: ``python -m tuneforge.trainer.chat``.

Used by the quick-start demo to show what fine-tuning changed. Greedy decoding, so the output is
reproducible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tuneforge.trainer.models import load_causal_lm, load_tokenizer, resolve_model


def generate(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    import torch

    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return str(tokenizer.decode(out[0][encoded["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.trainer.chat")
    parser.add_argument("--base", required=True, help="base model id or directory")
    parser.add_argument("--adapter", type=Path, help="a PEFT adapter directory (the downloaded tuned model)")
    parser.add_argument("--prompt", action="append", required=True)
    parser.add_argument("--system", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)

    import torch
    from peft import PeftModel

    torch.manual_seed(0)
    base_dir = resolve_model(args.base)
    tokenizer = load_tokenizer(
        args.adapter if args.adapter and (args.adapter / "tokenizer_config.json").is_file() else base_dir
    )
    model = load_causal_lm(base_dir, torch.float32)
    model.eval()
    tuned = PeftModel.from_pretrained(model, str(args.adapter)) if args.adapter else None
    for prompt in args.prompt:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}
        ]
        print(f"Q: {prompt}")
        if tuned is not None:
            with tuned.disable_adapter():
                base_answer = generate(tuned, tokenizer, messages, args.max_new_tokens)
            tuned_answer = generate(tuned, tokenizer, messages, args.max_new_tokens)
            print(f"  base : {base_answer}")
            print(f"  tuned: {tuned_answer}")
        else:
            print(f"  base : {generate(model, tokenizer, messages, args.max_new_tokens)}")
        print()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
