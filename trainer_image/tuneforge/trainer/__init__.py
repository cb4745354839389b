"""The tuneforge trainer: runs one JobSpec (SFT, DPO, reward model, reinforcement) and reports progress.

Entry point: ``python -m tuneforge.trainer --spec jobspec.json`` (or env ``TUNEFORGE_JOBSPEC``).
"""
