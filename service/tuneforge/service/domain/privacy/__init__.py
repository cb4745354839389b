"""Personal data and secrets in text: what counts (:mod:`.detectors`), finding and redacting it in text and in
JSONL lines (:mod:`.scanner`), and the per-upload choice (report, reject, redact) of the upload path
(:mod:`.upload_scan`).

Hand-written patterns with checksums, not presidio: presidio's ``AnalyzerEngine`` cannot be built offline (it
downloads a spaCy model), its recognizers pull spaCy (hundreds of MB) into the service and its e-mail check
fetches the public-suffix list over the network; it has no secret recognizers. See ``docs/privacy.md``.
"""
