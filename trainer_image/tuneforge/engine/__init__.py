"""tuneforge's own inference engine: an OpenAI-compatible server over transformers + PEFT.

``python -m tuneforge.engine --model DIR --port P [--adapter NAME=DIR ...]`` serves ``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``, ``/health`` and vLLM's runtime adapter routes
(``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``). Concurrent requests share one batch: a single
generation thread admits new sequences at step boundaries (continuous batching) and runs every row with its
own LoRA adapter in the same forward pass (PEFT's ``adapter_names``).

Modules: :mod:`.protocol` (request models and their validation), :mod:`.sampling` (token choice per row),
:mod:`.textstream` (incremental detokenizing and stop strings), :mod:`.adapters` (adapter registry with an LRU
cap), :mod:`.batcher` (the generation loop and its KV cache), :mod:`.engine` (model, prompts, requests),
:mod:`.server` (the HTTP routes and OpenAI's response shapes). Heavy imports (torch, transformers, peft) happen
in :mod:`.batcher`, :mod:`.adapters` and :mod:`.engine` only.
"""
