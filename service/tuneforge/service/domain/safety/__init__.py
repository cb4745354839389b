"""The safety report of a succeeded job: what its base and tuned models answer to fixed harmful requests and to
the job's own prompts, judged by a refusal classifier (:mod:`.refusals`) and the PII scanner (leaks of the
training file's personal data, :mod:`.leaks`); prompts in :mod:`.prompts`, the report and its page in
:mod:`.report`. The background work that runs it is ``executors/safety_reports.py``; see ``docs/privacy.md``.
"""
