"""KV-cache retention (LANGUAGE.md "Retention"): ``auto`` derived from the pattern
(``auto.py``), policies of position and norm terms (``policy.py``) and a cache that frees memory
(``cache.py``, imports torch)."""
